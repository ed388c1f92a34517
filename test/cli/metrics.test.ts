/**
 * `/metrics` through the real binary: the exposition parses as Prometheus text, and the counters move as
 * a scripted session runs (sessions, commands, decisions, latency, bytes, policy firings, protocol errors).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { MilterClient, playMessage } from '../../src/client/index.js';
import { Daemon, httpGet, parsePrometheus, sampleValue, type Exposition } from './helpers.js';

const CONNECT = {
  hostname: 'client.example.org',
  family: 'inet' as const,
  port: 40000,
  address: '192.0.2.20',
};

async function scrape(port: number): Promise<Exposition> {
  const res = await httpGet(port, '/metrics');
  assert.equal(res.status, 200);
  assert.match(res.type, /^text\/plain; version=0\.0\.4/);
  return parsePrometheus(res.body);
}

/** Scrape until `pred` holds (sessions close asynchronously after QUIT); bounded. */
async function scrapeUntil(port: number, pred: (e: Exposition) => boolean): Promise<Exposition> {
  for (let i = 0; i < 100; i++) {
    const e = await scrape(port);
    if (pred(e)) return e;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('metrics never reached the expected state');
}

test('the admin endpoint: /healthz, /readyz, 404 and 405', async (t) => {
  const d = new Daemon([
    '--listen',
    'inet:0@127.0.0.1',
    '--admin',
    'inet:0@127.0.0.1',
    '--max-connections',
    '1',
  ]);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);
  assert.deepEqual(JSON.parse((await httpGet(adminPort, '/healthz')).body), { status: 'ok' });
  assert.equal((await httpGet(adminPort, '/nope')).status, 404);
  // At the connection limit the daemon is not ready.
  const client = await MilterClient.connect(milter);
  t.after(() => client.close());
  const busy = await httpGet(adminPort, '/readyz');
  assert.equal(busy.status, 503);
  assert.equal((JSON.parse(busy.body) as { connections: number }).connections, 1);
  // A second connection is refused at the limit, and counted.
  await assert.rejects(MilterClient.connect(milter, { timeoutMs: 5000 }));
  const refused = await scrapeUntil(adminPort, (e) => sampleValue(e, 'milterd_sessions_refused_total') === 1);
  assert.equal(sampleValue(refused, 'milterd_sessions_open'), 1);
  await client.quit();
  await scrapeUntil(adminPort, (e) => sampleValue(e, 'milterd_sessions_open') === 0);
  assert.equal((await httpGet(adminPort, '/readyz')).status, 200);
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});

test('/metrics parses and every counter moves as a scripted session runs', async (t) => {
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1']);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);

  const before = await scrape(adminPort);
  for (const name of [
    'milterd_sessions_open',
    'milterd_sessions_total',
    'milterd_commands_total',
    'milterd_decisions_total',
    'milterd_callback_duration_seconds',
    'milterd_policy_shutdowns_total',
    'milterd_errors_total',
    'milterd_received_bytes_total',
    'milterd_sent_bytes_total',
    'milterd_config_reloads_total',
    'milterd_draining',
    'milterd_build_info',
  ]) {
    assert.ok(before.families.has(name), `${name} is exported`);
    assert.notEqual(before.families.get(name)?.help, '', `${name} has HELP`);
  }
  assert.equal(before.families.get('milterd_callback_duration_seconds')?.type, 'histogram');
  assert.equal(sampleValue(before, 'milterd_sessions_total'), 0);

  const client = await MilterClient.connect(milter);
  const result = await playMessage(client, {
    connect: CONNECT,
    helo: 'client.example.org',
    macros: { envfrom: { i: 'METRICS1' } },
    sender: '<a@example.org>',
    recipients: ['<b@example.net>', '<c@example.net>'],
    headers: [['Subject', 'metrics']],
    body: 'hello\r\n',
  });
  assert.equal(result.stoppedAt, 'eom');
  await client.quit();

  const after = await scrapeUntil(adminPort, (e) => sampleValue(e, 'milterd_sessions_open') === 0);
  const delta = (name: string, labels: Record<string, string> = {}): number =>
    sampleValue(after, name, labels) - sampleValue(before, name, labels);
  assert.equal(delta('milterd_sessions_total'), 1);
  assert.equal(delta('milterd_commands_total', { command: 'optneg' }), 1);
  assert.equal(delta('milterd_commands_total', { command: 'envfrom' }), 1);
  assert.equal(delta('milterd_commands_total', { command: 'envrcpt' }), 2);
  assert.equal(delta('milterd_commands_total', { command: 'eom' }), 1);
  assert.equal(delta('milterd_commands_total', { command: 'quit' }), 1);
  assert.equal(delta('milterd_decisions_total', { stage: 'envrcpt', decision: 'continue' }), 2);
  assert.equal(delta('milterd_decisions_total', { stage: 'eom', decision: 'continue' }), 1);
  assert.equal(delta('milterd_callback_duration_seconds_count', { stage: 'eom' }), 1);
  assert.equal(delta('milterd_callback_duration_seconds_bucket', { stage: 'eom', le: '+Inf' }), 1);
  assert.ok(delta('milterd_received_bytes_total') > 0);
  assert.ok(delta('milterd_sent_bytes_total') > 0);
});

test('/metrics counts shutdown-policy firings by reason and protocol errors by code', async (t) => {
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1']);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);

  // The default policy closes a session after 10 rejected recipients; the MTA reports its own
  // rejections (SMFIP_RCPT_REJ) with {rcpt_mailer}=error.
  const client = await MilterClient.connect(milter);
  await client.connect(CONNECT);
  await client.helo('client.example.org');
  await client.envfrom('<a@example.org>');
  let last = '';
  for (let i = 0; i < 12 && !last.startsWith('421'); i++) {
    client.macro('envrcpt', { '{rcpt_mailer}': 'error' });
    const r = await client.envrcpt(`<nobody${i}@example.net>`);
    last = r.kind === 'replyCode' ? r.text : r.kind;
  }
  client.abort();
  const helo = await client.helo('again.example.org');
  assert.equal(helo.kind, 'replyCode');
  assert.match(helo.kind === 'replyCode' ? helo.text : '', /^421 /);
  client.close();

  // A zero-length frame is a protocol error.
  const raw = net.connect(Number(/inet:(\d+)@/.exec(milter)?.[1]), '127.0.0.1');
  await new Promise<void>((resolve) => raw.on('connect', () => resolve()));
  raw.write(Buffer.from([0, 0, 0, 0]));
  await new Promise<void>((resolve) => raw.on('close', () => resolve()).on('error', () => undefined));

  const after = await scrapeUntil(
    adminPort,
    (e) =>
      sampleValue(e, 'milterd_errors_total', { code: 'ERR_MILTER_FRAME_EMPTY' }) === 1 &&
      sampleValue(e, 'milterd_sessions_open') === 0,
  );
  assert.equal(
    sampleValue(after, 'milterd_policy_shutdowns_total', { reason: 'max-rejected-recipients' }),
    1,
  );
  assert.equal(
    sampleValue(after, 'milterd_policy_decisions_total', {
      reason: 'max-rejected-recipients',
      mode: 'enforce',
    }),
    1,
  );
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});
