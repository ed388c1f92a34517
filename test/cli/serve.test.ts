/**
 * The daemon's life cycle through the real binary: SIGTERM drain with a session in flight (it completes),
 * forced drain after the deadline, SIGHUP reload of a good and a bad configuration.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { MilterClient, playMessage, type MessageScript } from '../../src/client/index.js';
import { manyKeysYaml } from '../helpers/big-yaml.js';
import { Daemon, httpGet, parsePrometheus, sampleValue, type LogLine } from './helpers.js';

const CONNECT = {
  hostname: 'client.example.org',
  family: 'inet' as const,
  port: 40000,
  address: '192.0.2.10',
};

/** A message script; `headers`/`body` kept tiny. */
function message(n: number): MessageScript {
  return {
    sender: `<sender${n}@example.org>`,
    recipients: ['<rcpt@example.net>'],
    headers: [
      ['From', `sender${n}@example.org`],
      ['Subject', `message ${n}`],
    ],
    body: `body ${n}\r\n`,
  };
}

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-serve-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('SIGTERM drains: readiness turns false, new connections are refused, the open session completes', async (t) => {
  const d = new Daemon([
    '--listen',
    'inet:0@127.0.0.1',
    '--admin',
    'inet:0@127.0.0.1',
    '--drain-timeout',
    '60s',
  ]);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);
  assert.equal((await httpGet(adminPort, '/readyz')).status, 200);

  const client = await MilterClient.connect(milter);
  t.after(() => client.close());
  client.macro('connect', { j: 'mx.example.net' });
  await client.connect(CONNECT);
  assert.equal((await client.helo('client.example.org')).kind, 'continue');
  client.macro('envfrom', { i: 'DRAIN1' });
  assert.equal((await client.envfrom('<a@example.org>')).kind, 'continue');
  assert.equal((await client.envrcpt('<b@example.net>')).kind, 'continue');

  d.signal('SIGTERM');
  await d.waitFor((l) => String(l.msg).startsWith('draining'), 'draining');
  const ready = await httpGet(adminPort, '/readyz');
  assert.equal(ready.status, 503);
  assert.equal((JSON.parse(ready.body) as { draining: boolean }).draining, true);
  assert.equal((await httpGet(adminPort, '/healthz')).status, 200, 'still alive while draining');
  await assert.rejects(MilterClient.connect(milter, { timeoutMs: 2000 }), 'no new milter connections');

  // The session in flight runs to its end.
  assert.equal((await client.data()).kind, 'continue');
  await client.header('Subject', 'in flight');
  await client.eoh();
  await client.body(Buffer.from('still here\r\n'));
  client.macro('eom', { i: 'DRAIN1' });
  const eom = await client.eom();
  assert.equal(eom.reply.kind, 'continue');
  assert.deepEqual(
    eom.modifications.map((m) => m.kind),
    ['addHeader'],
  );
  await client.quit();

  const exit = await d.exited;
  assert.equal(exit.code, 0);
  // The per-connection child logger: connection id, MTA peer, and the queue id once known.
  const passed = d.lines.find((l) => l.msg === 'message passed');
  assert.equal(passed?.txn, 'DRAIN1');
  assert.match(String(passed?.conn), /^\d+$/);
  assert.match(String(passed?.peer), /^127\.0\.0\.1:\d+$/);
  assert.equal(passed?.client, CONNECT.address);
  assert.ok(d.lines.some((l) => l.msg === 'milterd stopped'));
});

test('SIGTERM with a session that never quits: closed after --drain-timeout, exit 0', async (t) => {
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--drain-timeout', '300ms']);
  t.after(() => d.kill());
  const { milter } = await d.started();
  const client = await MilterClient.connect(milter);
  t.after(() => client.close());
  await client.connect(CONNECT);
  d.signal('SIGTERM');
  const exit = await d.exited;
  assert.equal(exit.code, 0);
  assert.ok(d.lines.some((l) => l.msg === 'milterd stopped'));
  // The daemon closed the session it could not wait for (the close event may trail the exit event).
  for (let i = 0; i < 100 && !client.closed; i++) await new Promise((r) => setTimeout(r, 50));
  assert.equal(client.closed, true);
});

test('SIGHUP reloads the policy; an invalid new file is refused and the old policy stays', async (t) => {
  const dir = await tempDir(t);
  const policyFile = path.join(dir, 'policy.yaml');
  const configFile = path.join(dir, 'milterd.yaml');
  await writeFile(policyFile, 'version: 1\nrules:\n  - name: generous\n    max-messages: 100\n');
  await writeFile(configFile, 'listen: inet:0@127.0.0.1\nadmin: inet:0@127.0.0.1\npolicy: policy.yaml\n');
  const d = new Daemon(['--config', configFile]);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);

  /** Two messages on one connection; the reply to the second MAIL. */
  const secondMail = async (): Promise<string> => {
    const client = await MilterClient.connect(milter);
    try {
      await playMessage(client, { ...message(1), connect: CONNECT, helo: 'client.example.org' });
      const r = await playMessage(client, message(2));
      return r.envfrom?.kind === 'replyCode' ? r.envfrom.text : (r.envfrom?.kind ?? 'none');
    } finally {
      await client.quit().catch(() => client.close());
    }
  };
  assert.equal(await secondMail(), 'continue');

  // A good reload: the new rule applies to new connections.
  await writeFile(
    policyFile,
    'version: 1\nrules:\n  - name: strict\n    max-messages: 1\n    text: one is enough\n',
  );
  d.signal('SIGHUP');
  const reloaded = await d.waitFor((l) => l.msg === 'configuration reloaded', 'reload');
  assert.deepEqual(reloaded.rules, ['strict']);
  assert.match(await secondMail(), /^421 4\.7\.0 one is enough/);

  // A bad reload: refused with file and line; the strict policy stays in force.
  await writeFile(policyFile, 'version: 1\nrules:\n  - name: broken\n    max-messages: plenty\n');
  d.signal('SIGHUP');
  const refused = await d.waitFor((l) => String(l.msg).startsWith('reload refused'), 'refusal');
  assert.equal(refused.level, 50);
  assert.equal(refused.file, policyFile);
  assert.equal(refused.line, 4);
  assert.match(await secondMail(), /^421 /);

  // A broken config file is refused the same way.
  await writeFile(policyFile, 'version: 1\nrules: []\n');
  await writeFile(
    configFile,
    'listen: inet:0@127.0.0.1\nadmin: inet:0@127.0.0.1\npolicy: policy.yaml\nlogLevel: 7\n',
  );
  d.signal('SIGHUP');
  await d.waitFor(
    (l) => String(l.msg).startsWith('reload refused') && l.field === 'logLevel',
    'config refusal',
  );
  assert.match(await secondMail(), /^421 /);

  const metrics = parsePrometheus((await httpGet(adminPort, '/metrics')).body);
  assert.equal(sampleValue(metrics, 'milterd_config_reloads_total', { result: 'ok' }), 1);
  assert.equal(sampleValue(metrics, 'milterd_config_reloads_total', { result: 'error' }), 2);

  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});

test('SIGHUP with a huge, a deeply nested or a 200 000-key policy: refused, located, and the daemon keeps serving', async (t) => {
  const dir = await tempDir(t);
  const policyFile = path.join(dir, 'policy.yaml');
  const configFile = path.join(dir, 'milterd.yaml');
  await writeFile(policyFile, 'version: 1\nrules:\n  - name: generous\n    max-messages: 100\n');
  await writeFile(configFile, 'listen: inet:0@127.0.0.1\npolicy: policy.yaml\n');
  const d = new Daemon(['--config', configFile]);
  t.after(() => d.kill());
  const { milter } = await d.started();
  const isRefusal = (l: LogLine): boolean => String(l.msg).startsWith('reload refused');
  /** The `n`-th refusal (1-based), once logged. */
  const refusal = (n: number, timeoutMs?: number): Promise<LogLine> =>
    d
      .waitFor(() => d.lines.filter(isRefusal).length >= n, `refusal ${n}`, timeoutMs)
      .then(() => d.lines.filter(isRefusal)[n - 1] as LogLine);
  const errMessage = (l: LogLine): string => String((l.err as { message?: unknown } | undefined)?.message);

  // Over 1 MiB: refused before parsing.
  await writeFile(policyFile, `version: 1\n# ${'x'.repeat(1024 * 1024)}\n`);
  d.signal('SIGHUP');
  const big = await refusal(1);
  assert.equal(big.file, policyFile);
  assert.match(errMessage(big), /policy file too large: 1048590 bytes/);

  // Nested 5000 deep, three times: a stack overflow in the YAML composer used to end in a V8 fatal error.
  await writeFile(policyFile, '['.repeat(5000));
  for (let n = 2; n <= 4; n++) {
    d.signal('SIGHUP');
    const deep = await refusal(n);
    assert.equal(deep.line, 1);
    assert.match(errMessage(deep), /nested deeper than 64 levels/);
  }

  // 200 000 keys: the old quadratic duplicate-key check stalled the daemon for minutes.
  const many = manyKeysYaml(200_000);
  await writeFile(policyFile, many.text);
  d.signal('SIGHUP');
  const dup = await refusal(5, 60_000);
  assert.equal(dup.line, many.duplicateLine);
  assert.match(errMessage(dup), /Map keys must be unique/);

  // Still alive and serving under the first policy.
  const client = await MilterClient.connect(milter);
  const r = await playMessage(client, { ...message(1), connect: CONNECT, helo: 'client.example.org' });
  assert.equal(r.eom?.reply.kind, 'continue');
  await client.quit();
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});

test('SIGHUP: settings that need a restart are reported, the log level applies at once', async (t) => {
  const dir = await tempDir(t);
  const configFile = path.join(dir, 'milterd.yaml');
  await writeFile(configFile, 'listen: inet:0@127.0.0.1\nlogLevel: info\n');
  const d = new Daemon(['--config', configFile]);
  t.after(() => d.kill());
  const { milter } = await d.started();
  await writeFile(configFile, 'listen: inet:0@127.0.0.1\nlogLevel: debug\nmaxConnections: 5\n');
  d.signal('SIGHUP');
  const warn = await d.waitFor((l) => String(l.msg).startsWith('reload: these settings'), 'restart warning');
  assert.deepEqual(warn.settings, ['maxConnections']);
  await d.waitFor((l) => l.msg === 'configuration reloaded', 'reload');
  // debug now on: a new connection logs its acceptance.
  const client = await MilterClient.connect(milter);
  await client.quit();
  await d.waitFor((l) => l.msg === 'connection accepted' && l.level === 20, 'debug line');
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});
