/**
 * The daemon under strict Node options. `--pending-deprecation` turns `process.binding` (which the direct
 * write fast path needs) into a deprecated function, and `--throw-deprecation` makes its warning an
 * uncaught exception on the next tick: touched at import time, it killed the daemon at start, even with
 * `--shared-read-buffer false`. Node internals are now touched only when a fast path is used, and a
 * deprecated one counts as unavailable: the daemon falls back to the public path and says so at debug.
 * Under `npm test` this file also runs with each Node version of the matrix (scripts/test.sh).
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { MilterClient, playMessage } from '../../src/client/index.js';
import { Daemon, httpGet, type LogLine } from './helpers.js';

const STRICT = '--pending-deprecation --throw-deprecation';

/** Two messages over two connections (one after the other): the daemon serves, and keeps serving. */
async function twoMessages(milter: string): Promise<void> {
  for (const n of [1, 2]) {
    const client = await MilterClient.connect(milter);
    try {
      const result = await playMessage(client, {
        connect: { hostname: 'client.example.org', family: 'inet', port: 40000, address: '192.0.2.10' },
        helo: 'client.example.org',
        sender: `<sender${n}@example.org>`,
        recipients: ['<rcpt@example.net>'],
        headers: [['Subject', `message ${n}`]],
        body: `body ${n}\r\n`,
      });
      assert.equal(result.stoppedAt, 'eom', `message ${n} reached the end of message`);
      assert.equal(result.reply.kind, 'continue');
      // The default policy's filter adds its header: the reply with a modification went out whole.
      assert.deepEqual(
        result.eom?.modifications.map((m) => m.kind),
        ['addHeader'],
      );
      await client.quit();
    } finally {
      client.close();
    }
  }
}

/**
 * Start `milterd serve` with NODE_OPTIONS=`nodeOptions`, push two messages through, ask the admin endpoint,
 * stop it cleanly.
 */
async function serveWith(t: TestContext, nodeOptions: string, extra: string[]): Promise<Daemon> {
  const args = ['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1', '--log-level', 'debug'];
  const d = new Daemon([...args, ...extra], { NODE_OPTIONS: nodeOptions });
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  await twoMessages(milter);
  assert.ok(adminPort);
  assert.equal((await httpGet(adminPort, '/healthz')).status, 200);
  assert.match((await httpGet(adminPort, '/metrics')).body, /^milterd_sessions_total 2$/m);
  d.signal('SIGTERM');
  const exit = await d.exited;
  const crash = d.lines.find((l) => l.msg === 'uncaught error');
  assert.equal(crash, undefined, `no uncaught error: ${JSON.stringify(crash)}`);
  assert.deepEqual(exit, { code: 0, signal: null }, `clean exit; stderr: ${d.stderr}`);
  assert.doesNotMatch(d.stderr, /DeprecationWarning/);
  return d;
}

const fastPaths = (d: Daemon): LogLine[] =>
  d.lines.filter((l) => typeof l.directWrites === 'boolean' && l.level === 20);

test(`NODE_OPTIONS="${STRICT}": the daemon starts and serves with shared reads; direct writes fall back`, async (t) => {
  const d = await serveWith(t, STRICT, []);
  const said = fastPaths(d);
  assert.equal(said.length, 1, 'said once');
  // process.binding is deprecated under --pending-deprecation on every Node version: never called.
  assert.equal(said[0]?.directWrites, false);
  assert.match(String(said[0]?.directWritesOff), /DEP0111/);
  // Shared reads use net internals that emit no deprecation: still on.
  assert.equal(said[0]?.sharedReadAccept, true);
});

test(`NODE_OPTIONS="${STRICT}" with --shared-read-buffer false: the daemon starts and serves`, async (t) => {
  const d = await serveWith(t, STRICT, ['--shared-read-buffer', 'false']);
  // The fast paths are off: nothing probed their internals, so there is nothing to report.
  assert.deepEqual(fastPaths(d), []);
});

test('without deprecation flags both fast paths are in use, said once at debug', async (t) => {
  const d = await serveWith(t, '', []);
  const said = fastPaths(d);
  assert.equal(said.length, 1);
  assert.equal(said[0]?.directWrites, true, JSON.stringify(said[0]));
  assert.equal(said[0]?.sharedReadAccept, true);
});
