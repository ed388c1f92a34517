/**
 * The process/runtime series, `milterd_max_connections`, the config-load gauges and
 * `milterd_messages_total{outcome}`: exported, and moving as the daemon and its sessions do.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { DaemonMetrics, messageOutcome } from '../../src/admin/observer.js';
import { MilterClient, playMessage, type MessageScript } from '../../src/client/index.js';
import { Decision, type Filter } from '../../src/filter.js';
import { startServer } from '../helpers/server.js';
import { Daemon, httpGet, parsePrometheus, sampleValue, type Exposition } from './helpers.js';

const CONNECT = {
  hostname: 'client.example.org',
  family: 'inet' as const,
  port: 40000,
  address: '192.0.2.21',
};

function message(n: number): MessageScript {
  return {
    sender: `<sender${n}@example.org>`,
    recipients: ['<rcpt@example.net>'],
    headers: [['Subject', `message ${n}`]],
    body: `body ${n}\r\n`,
  };
}

async function scrape(port: number): Promise<Exposition> {
  const res = await httpGet(port, '/metrics');
  assert.equal(res.status, 200);
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

test('message outcomes: which decisions end a message, and as what', () => {
  assert.equal(messageOutcome('eom', 'continue'), 'accept');
  assert.equal(messageOutcome('eom', 'accept'), 'accept');
  assert.equal(messageOutcome('eom', 'reject'), 'reject');
  assert.equal(messageOutcome('eom', 'tempfail'), 'tempfail');
  assert.equal(messageOutcome('eom', 'discard'), 'discard');
  assert.equal(messageOutcome('envfrom', 'tempfail'), 'tempfail');
  assert.equal(messageOutcome('body', 'reject'), 'reject');
  assert.equal(messageOutcome('header', 'accept'), 'accept');
  // Not (yet) the end of a message.
  assert.equal(messageOutcome('envfrom', 'continue'), undefined);
  assert.equal(messageOutcome('body', 'skip'), undefined);
  // At RCPT a reject or tempfail refuses one recipient; accept and discard apply to the message.
  assert.equal(messageOutcome('envrcpt', 'reject'), undefined);
  assert.equal(messageOutcome('envrcpt', 'tempfail'), undefined);
  assert.equal(messageOutcome('envrcpt', 'discard'), 'discard');
  // Before or outside a message.
  assert.equal(messageOutcome('connect', 'reject'), undefined);
  assert.equal(messageOutcome('helo', 'tempfail'), undefined);
  assert.equal(messageOutcome('unknown', 'reject'), undefined);
  assert.equal(messageOutcome('negotiate', 'refused'), undefined);
});

test('milterd_messages_total counts a message rejected at end of message and one discarded at RCPT', async (t) => {
  const metrics = new DaemonMetrics({ version: 'test' });
  t.after(() => metrics.stop());
  const filter: Filter = {
    envrcpt: (_ctx, recipient) => (recipient.includes('trash') ? Decision.discard : Decision.continue),
    eom: () => Decision.reject({ code: 550, xcode: '5.7.1', text: 'not here' }),
  };
  const { address } = await startServer(t, { filter, observer: metrics.observer });
  const client = await MilterClient.connect(address.spec);
  t.after(() => client.close());
  const rejected = await playMessage(client, { ...message(1), connect: CONNECT, helo: 'client.example.org' });
  assert.equal(rejected.stoppedAt, 'eom');
  const discarded = await playMessage(client, { ...message(2), recipients: ['<trash@example.net>'] });
  assert.equal(discarded.stoppedAt, 'envrcpt');
  await client.quit();
  const e = parsePrometheus(metrics.render());
  assert.equal(sampleValue(e, 'milterd_messages_total', { outcome: 'reject' }), 1);
  assert.equal(sampleValue(e, 'milterd_messages_total', { outcome: 'discard' }), 1);
  assert.equal(sampleValue(e, 'milterd_messages_total', { outcome: 'accept' }), 0);
  assert.equal(sampleValue(e, 'milterd_messages_total', { outcome: 'tempfail' }), 0);
});

test('process and runtime series of a live daemon, and milterd_max_connections', async (t) => {
  const d = new Daemon([
    '--listen',
    'inet:0@127.0.0.1',
    '--admin',
    'inet:0@127.0.0.1',
    '--max-connections',
    '37',
  ]);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);
  const before = Date.now() / 1000;
  const e = await scrape(adminPort);
  for (const [name, type] of [
    ['process_cpu_seconds_total', 'counter'],
    ['process_cpu_user_seconds_total', 'counter'],
    ['process_cpu_system_seconds_total', 'counter'],
    ['process_resident_memory_bytes', 'gauge'],
    ['process_open_fds', 'gauge'],
    ['process_max_fds', 'gauge'],
    ['process_start_time_seconds', 'gauge'],
    ['nodejs_heap_size_used_bytes', 'gauge'],
    ['nodejs_heap_size_total_bytes', 'gauge'],
    ['nodejs_eventloop_lag_seconds', 'gauge'],
    ['nodejs_eventloop_lag_p99_seconds', 'gauge'],
    ['nodejs_eventloop_lag_max_seconds', 'gauge'],
    ['nodejs_gc_duration_seconds', 'histogram'],
    ['milterd_max_connections', 'gauge'],
  ] as const) {
    assert.equal(e.families.get(name)?.type, type, `${name} is exported as a ${type}`);
  }
  assert.equal(sampleValue(e, 'milterd_max_connections'), 37);
  assert.ok(sampleValue(e, 'process_cpu_seconds_total') > 0);
  assert.ok(sampleValue(e, 'process_resident_memory_bytes') > 1e6);
  const fds = sampleValue(e, 'process_open_fds');
  // At least stdin/stdout/stderr, the milter and admin listeners and the scrape's own connection.
  assert.ok(fds >= 5, `process_open_fds ${fds}`);
  assert.ok(sampleValue(e, 'process_max_fds') > fds);
  const start = sampleValue(e, 'process_start_time_seconds');
  assert.ok(start <= before + 1 && start > before - 120, `process_start_time_seconds ${start}`);
  // The GC histogram has a series for every kind from the start.
  for (const kind of ['minor', 'major', 'incremental', 'weakcb']) {
    assert.ok(
      e.samples.some((s) => s.name === 'nodejs_gc_duration_seconds_count' && s.labels.kind === kind),
      `nodejs_gc_duration_seconds{kind="${kind}"}`,
    );
  }

  // Descriptors are counted at each scrape: open connections show.
  const clients = await Promise.all(Array.from({ length: 4 }, () => MilterClient.connect(milter)));
  t.after(() => clients.forEach((c) => c.close()));
  const busy = await scrapeUntil(adminPort, (x) => sampleValue(x, 'milterd_sessions_open') === 4);
  assert.ok(sampleValue(busy, 'process_open_fds') >= fds + 4);
  for (const c of clients) await c.quit();
  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});

test('config-load gauges follow SIGHUP; messages_total counts accepted and tempfailed messages', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-metrics-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const policyFile = path.join(dir, 'policy.yaml');
  const configFile = path.join(dir, 'milterd.yaml');
  await writeFile(policyFile, 'version: 1\nrules:\n  - name: one\n    max-messages: 1\n');
  await writeFile(configFile, 'listen: inet:0@127.0.0.1\nadmin: inet:0@127.0.0.1\npolicy: policy.yaml\n');
  const d = new Daemon(['--config', configFile]);
  t.after(() => d.kill());
  const { milter, adminPort } = await d.started();
  assert.ok(adminPort);

  const first = await scrape(adminPort);
  assert.equal(sampleValue(first, 'milterd_config_last_reload_successful'), 1);
  const loadedAt = sampleValue(first, 'milterd_config_last_reload_success_timestamp_seconds');
  assert.ok(loadedAt > Date.now() / 1000 - 120);

  // Two messages on one connection: the first is accepted, the second MAIL gets the policy's 421.
  const client = await MilterClient.connect(milter);
  t.after(() => client.close());
  await playMessage(client, { ...message(1), connect: CONNECT, helo: 'client.example.org' });
  const second = await playMessage(client, message(2));
  assert.equal(second.envfrom?.kind, 'replyCode');
  client.close();
  const counted = await scrapeUntil(adminPort, (e) => sampleValue(e, 'milterd_sessions_open') === 0);
  assert.equal(sampleValue(counted, 'milterd_messages_total', { outcome: 'accept' }), 1);
  assert.equal(sampleValue(counted, 'milterd_messages_total', { outcome: 'tempfail' }), 1);
  assert.equal(sampleValue(counted, 'milterd_messages_total', { outcome: 'reject' }), 0);

  // A refused reload: 0, the timestamp of the last good load stays.
  await writeFile(policyFile, 'version: 1\nrules:\n  - name: broken\n    max-messages: plenty\n');
  d.signal('SIGHUP');
  await d.waitFor((l) => String(l.msg).startsWith('reload refused'), 'refusal');
  const bad = await scrape(adminPort);
  assert.equal(sampleValue(bad, 'milterd_config_last_reload_successful'), 0);
  assert.equal(sampleValue(bad, 'milterd_config_last_reload_success_timestamp_seconds'), loadedAt);

  // A good reload: 1 again.
  await writeFile(policyFile, 'version: 1\nrules: []\n');
  d.signal('SIGHUP');
  await d.waitFor((l) => l.msg === 'configuration reloaded', 'reload');
  const good = await scrape(adminPort);
  assert.equal(sampleValue(good, 'milterd_config_last_reload_successful'), 1);
  assert.ok(sampleValue(good, 'milterd_config_last_reload_success_timestamp_seconds') >= loadedAt);

  d.signal('SIGTERM');
  assert.equal((await d.exited).code, 0);
});
