/**
 * The admin endpoint cannot starve the milter, and running out of file descriptors is never silent:
 * - connections a listener cannot take for lack of descriptors are counted (milterd_accept_errors_total,
 *   code EMFILE) and logged, the admin endpoint keeps answering, and the milter recovers once
 *   connections close;
 * - slow admin clients are capped and cut, and milter sessions go on meanwhile;
 * - `--admin inet:PORT` binds loopback;
 * - a refused negotiation is counted as decision `refused`.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { MilterClient, playMessage } from '../../src/client/index.js';
import { encodeCommand } from '../../src/protocol/encode.js';
import { Daemon, httpGet, parsePrometheus, sampleValue, type LogLine } from './helpers.js';

async function metric(adminPort: number, name: string, labels: Record<string, string> = {}): Promise<number> {
  const res = await httpGet(adminPort, '/metrics');
  assert.equal(res.status, 200);
  return sampleValue(parsePrometheus(res.body), name, labels);
}

/** Poll /metrics until `pred` holds for the value (bounded). */
async function metricUntil(
  adminPort: number,
  name: string,
  labels: Record<string, string>,
  pred: (v: number) => boolean,
): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const v = await metric(adminPort, name, labels);
    if (pred(v)) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${name} never reached the expected value`);
}

/** One whole message; resolves with where it stopped. */
async function oneMessage(milter: string): Promise<string | undefined> {
  const client = await MilterClient.connect(milter, { timeoutMs: 5000 });
  try {
    const result = await playMessage(client, {
      sender: '<a@example.org>',
      recipients: ['<b@example.net>'],
      headers: [['Subject', 'limits']],
      body: 'hello\r\n',
    });
    await client.quit();
    return result.stoppedAt;
  } finally {
    client.close();
  }
}

test('out of file descriptors: refused connections are counted (EMFILE) and logged, and the milter recovers', async (t) => {
  // 64 descriptors: about 20 are the runtime's, so the milter listener reaches its reserve after a dozen.
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1'], {}, { nofile: 64 });
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);
  const held: MilterClient[] = [];
  t.after(() => held.forEach((c) => c.close()));
  let refused = 0;
  for (let i = 0; i < 200 && refused === 0; i++) {
    try {
      held.push(await MilterClient.connect(milter, { timeoutMs: 5000 }));
    } catch {
      refused++;
    }
  }
  assert.ok(held.length > 0, 'some connections were served');
  assert.equal(refused, 1, 'then one was refused');
  // The admin endpoint still answers, and says why.
  assert.ok(
    (await metric(adminPort, 'milterd_accept_errors_total', { listener: milter, code: 'EMFILE' })) >= 1,
  );
  assert.equal((await httpGet(adminPort, '/healthz')).status, 200);
  const line = await d.waitFor(
    (l: LogLine) => l.msg === 'accept failed; the connection was closed' && l.code === 'EMFILE',
    'the accept error line',
  );
  assert.equal(line.listen, milter);
  assert.doesNotMatch(JSON.stringify(line), /stack/);

  // Descriptors come back when connections close: new sessions are served again.
  for (const c of held.splice(0)) await c.quit();
  await metricUntil(adminPort, 'milterd_sessions_open', {}, (v) => v === 0);
  assert.equal(await oneMessage(milter), 'eom');
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});

test('200 slow admin clients: the cap holds, they are cut, and milter sessions go on', async (t) => {
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1']);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);
  const sockets: net.Socket[] = [];
  t.after(() => sockets.forEach((s) => s.destroy()));
  let closed = 0;
  const allClosed = new Promise<void>((resolve) => {
    for (let i = 0; i < 200; i++) {
      const s = net.connect(adminPort, '127.0.0.1');
      sockets.push(s);
      s.on('error', () => undefined);
      s.resume(); // read (and discard) so that the server's FIN is seen
      // A request that never ends: headers without the final empty line.
      s.on('connect', () => s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n'));
      s.on('close', () => {
        if (++closed === 200) resolve();
      });
    }
  });
  // Beyond the default cap of 64, connections are closed at accept.
  for (let i = 0; i < 200 && closed < 200 - 64; i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(closed >= 200 - 64, `closed at accept: ${closed}`);
  // The milter is not affected.
  assert.equal(await oneMessage(milter), 'eom');
  // The slow ones are cut by the header timeout; then the endpoint answers again.
  await allClosed;
  assert.equal((await httpGet(adminPort, '/healthz')).status, 200);
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});

test('--admin inet:PORT without a host binds loopback', async (t) => {
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0']);
  t.after(() => d.kill());
  const { admin, adminPort } = await d.started();
  assert.match(String(admin), /^inet:\d+@127\.0\.0\.1$/);
  assert.ok(adminPort);
  assert.equal((await httpGet(adminPort, '/healthz')).status, 200);
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});

test('a refused negotiation is counted as decision "refused", not "continue"', async (t) => {
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1']);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);
  // An MTA that speaks protocol version 1 only: refused, no reply, connection closed.
  const port = Number(/inet:(\d+)@/.exec(milter)?.[1]);
  const raw = net.connect(port, '127.0.0.1');
  t.after(() => raw.destroy());
  raw.on('error', () => undefined);
  const received: Buffer[] = [];
  raw.on('data', (b: Buffer) => received.push(b));
  raw.write(encodeCommand({ kind: 'optneg', version: 1, actions: 0x1ff, protocol: 0x1fffff }));
  await new Promise<void>((resolve) => raw.on('close', () => resolve()));
  assert.equal(Buffer.concat(received).length, 0, 'no reply');
  await metricUntil(
    adminPort,
    'milterd_decisions_total',
    { stage: 'negotiate', decision: 'refused' },
    (v) => v === 1,
  );
  assert.equal(
    await metric(adminPort, 'milterd_decisions_total', { stage: 'negotiate', decision: 'continue' }),
    0,
  );
  assert.equal(await metric(adminPort, 'milterd_errors_total', { code: 'ERR_MILTER_NEGOTIATION' }), 1);
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});
