/**
 * `milterd health` (the container HEALTHCHECK) against a live `milterd serve`: it reads the settings as
 * serve does (command line, environment, config file) and probes the admin endpoint's /healthz, or with
 * the admin endpoint off negotiates on the first listen socket. Exit 0 healthy, 1 unhealthy, 3 bad config.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { MilterClient } from '../../src/client/index.js';
import { freePort } from '../e2e/harness/proc.js';
import { tempDir } from '../helpers/wait.js';
import { Daemon, runMilterd } from './helpers.js';

test('admin endpoint in a config file: health probes its /healthz (via --config and MILTERD_CONFIG)', async (t) => {
  const dir = await tempDir(t);
  const adminPort = await freePort(false);
  const file = path.join(dir, 'milterd.yaml');
  await writeFile(file, `listen: unix:${dir}/m.sock\nadmin: inet:${adminPort}@127.0.0.1\n`);
  const daemon = new Daemon(['--config', file]);
  t.after(() => daemon.kill());
  await daemon.started();

  const expected = `healthy: GET http://127.0.0.1:${adminPort}/healthz: 200\n`;
  const byOption = await runMilterd(['health', '--config', file]);
  assert.deepEqual([byOption.code, byOption.stdout, byOption.stderr], [0, expected, '']);
  const byEnv = await runMilterd(['health'], { env: { MILTERD_CONFIG: file } });
  assert.deepEqual([byEnv.code, byEnv.stdout], [0, expected]);

  // The environment wins over the file, as for serve: nothing listens on that other port.
  const otherPort = await freePort(false);
  const overridden = await runMilterd(['health'], {
    env: { MILTERD_CONFIG: file, MILTERD_ADMIN: `inet:${otherPort}` },
  });
  assert.equal(overridden.code, 1);
  assert.equal(
    overridden.stdout,
    `unhealthy: GET http://127.0.0.1:${otherPort}/healthz: connect ECONNREFUSED 127.0.0.1:${otherPort}\n`,
  );
});

test('admin off: health negotiates on the first listen socket; a missing socket is unhealthy', async (t) => {
  const dir = await tempDir(t);
  const sock = `unix:${dir}/m.sock`;
  const daemon = new Daemon(['--listen', sock, '--admin', 'off']);
  t.after(() => daemon.kill());
  await daemon.started();

  const ok = await runMilterd(['health', '--listen', sock, '--admin', 'off']);
  assert.deepEqual(
    [ok.code, ok.stdout],
    [0, `healthy: admin endpoint off; milter negotiation on ${sock}: version 6\n`],
  );
  // The probe is a complete, clean session (negotiate, QUIT), not an error in the daemon's log.
  assert.equal(
    daemon.lines.filter((l) => (l.level ?? 0) >= 40).length,
    0,
    JSON.stringify(daemon.lines.filter((l) => (l.level ?? 0) >= 40)),
  );

  const missing = await runMilterd(['health', '--listen', `unix:${dir}/none.sock`, '--admin', 'off']);
  assert.equal(missing.code, 1);
  assert.match(
    missing.stdout,
    /^unhealthy: admin endpoint off; milter negotiation on unix:.*none\.sock: .*ENOENT/,
  );
});

test('admin off, at the connection limit: accepted and closed by milterd is alive, not unhealthy', async (t) => {
  const port = await freePort(false);
  const spec = `inet:${port}@127.0.0.1`;
  const daemon = new Daemon(['--listen', spec, '--admin', 'off', '--max-connections', '1']);
  t.after(() => daemon.kill());
  await daemon.started();
  const holder = await MilterClient.connect(spec);
  t.after(() => holder.close());

  const r = await runMilterd(['health', '--listen', spec, '--admin', 'off']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(
    r.stdout,
    /^healthy: admin endpoint off; milter negotiation on inet:\d+@127\.0\.0\.1: refused while draining/,
  );
});

test('nothing listening is unhealthy (exit 1); an invalid config file is a config error (exit 3)', async (t) => {
  const port = await freePort(false);
  const down = await runMilterd(['health', '--admin', `inet:${port}@127.0.0.1`]);
  assert.equal(down.code, 1);
  assert.match(down.stdout, /^unhealthy: GET http:\/\/127\.0\.0\.1:\d+\/healthz: .*ECONNREFUSED/);

  const dir = await tempDir(t);
  const bad = path.join(dir, 'bad.yaml');
  await writeFile(bad, 'admin: unix:/tmp/x\n');
  const invalid = await runMilterd(['health', '--config', bad]);
  assert.equal(invalid.code, 3);
  assert.match(invalid.stderr, /admin/);
});
