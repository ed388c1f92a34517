/**
 * In-process tests of the daemon's building blocks: metrics registry and exposition, value parsers,
 * config file reading with positions, the .eml splitter, the pretty log formatter, the reloadable filter.
 */
import {
  parseDuration as parsePolicyDuration,
  parseSize as parsePolicySize,
} from '../../src/policy/values.js';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ModuleRegistry, Registry } from '../../src/admin/metrics.js';
import { DaemonMetrics } from '../../src/admin/observer.js';
import { mergeSettings, parseConfigText, settingsToConfigObject } from '../../src/cli/config.js';
import { headerValueToSend, parseEml } from '../../src/cli/eml.js';
import { wireBytes } from '../../src/index.js';
import { formatPrettyLine } from '../../src/cli/log-output.js';
import { ReloadableFilter } from '../../src/cli/reloadable-filter.js';
import {
  formatDuration,
  parseAdmin,
  parseByteSize,
  parseDuration,
  parseListenList,
  parseSocketMode,
} from '../../src/cli/values.js';
import type { Filter, StageContext } from '../../src/filter.js';
import { parsePrometheus, sampleValue, type Exposition } from './helpers.js';

test('registry: exposition with HELP/TYPE, escaped labels and cumulative histogram buckets', () => {
  const r = new Registry();
  const c = r.counter({ name: 'x_total', help: 'a "counter"\nwith a line feed \\', labelNames: ['v'] });
  c.inc({ v: 'quote " backslash \\ newline \n end' });
  c.inc({ v: 'plain' }, 2);
  const g = r.gauge({ name: 'y', help: 'g' });
  g.set(-1.5);
  const h = r.histogram({ name: 'z_seconds', help: 'h', labelNames: ['stage'], buckets: [0.1, 1] });
  h.observe(0.05, { stage: 'eom' });
  h.observe(0.5, { stage: 'eom' });
  h.observe(5, { stage: 'eom' });
  const text = r.render();
  assert.ok(text.includes('# HELP x_total a "counter"\\nwith a line feed \\\\\n'));
  assert.ok(text.includes('x_total{v="quote \\" backslash \\\\ newline \\n end"} 1\n'));
  assert.ok(text.includes('z_seconds_bucket{stage="eom",le="0.1"} 1\n'));
  assert.ok(text.includes('z_seconds_bucket{stage="eom",le="1"} 2\n'));
  assert.ok(text.includes('z_seconds_bucket{stage="eom",le="+Inf"} 3\n'));
  assert.ok(text.includes('z_seconds_count{stage="eom"} 3\n'));
  const parsed = parsePrometheus(text);
  assert.equal(sampleValue(parsed, 'x_total', { v: 'quote " backslash \\ newline \n end' }), 1);
  assert.equal(sampleValue(parsed, 'y'), -1.5);
  assert.equal(sampleValue(parsed, 'z_seconds_sum', { stage: 'eom' }), 5.55);
});

test('registry: invalid names, labels, and decreasing counters are refused', () => {
  const r = new Registry();
  assert.throws(() => r.counter({ name: 'bad-name', help: '' }), TypeError);
  assert.throws(() => r.counter({ name: 'ok', help: '', labelNames: ['le'] }), TypeError);
  const c = r.counter({ name: 'c_total', help: '', labelNames: ['a'] });
  assert.throws(() => c.inc({ a: 'x' }, -1), RangeError);
  assert.throws(() => c.inc({}), TypeError);
  assert.throws(() => c.inc({ a: 'x', b: 'y' }), TypeError);
  assert.throws(() => r.counter({ name: 'c_total', help: '' }), TypeError);
});

test('module registry: a module registering again (reloaded) gets its metric back; clashes are refused', () => {
  const r = new Registry();
  r.counter({ name: 'milterd_daemon_total', help: 'the daemon' });
  const first = new ModuleRegistry(r).counter({ name: 'f_seen_total', help: 'seen', labelNames: ['kind'] });
  first.inc({ kind: 'a' });
  // A second instance (a SIGHUP reload of the module) on the same registry.
  const again = new ModuleRegistry(r).counter({ name: 'f_seen_total', help: 'seen', labelNames: ['kind'] });
  assert.equal(again, first);
  again.inc({ kind: 'a' });
  assert.match(r.render(), /^f_seen_total\{kind="a"\} 2$/m);
  const m = new ModuleRegistry(r);
  assert.throws(
    () => m.gauge({ name: 'f_seen_total', help: 'x', labelNames: ['kind'] }),
    /another type or labels/,
  );
  assert.throws(() => m.counter({ name: 'f_seen_total', help: 'x' }), /another type or labels/);
  assert.throws(() => m.counter({ name: 'milterd_daemon_total', help: 'x' }), /the daemon's own/);
});

test('daemon metrics: the observer feeds the series', () => {
  const m = new DaemonMetrics({ version: '1.2.3' });
  const o = m.observer;
  o.connectionOpened?.();
  o.command?.('optneg', 17);
  o.decision?.('eom', 'accept', 0.002);
  o.bytesWritten?.(30);
  o.error?.('ERR_MILTER_FRAME_EMPTY');
  m.policyFired('max-messages');
  const e = parsePrometheus(m.render());
  assert.equal(sampleValue(e, 'milterd_sessions_open'), 1);
  assert.equal(sampleValue(e, 'milterd_commands_total', { command: 'optneg' }), 1);
  assert.equal(sampleValue(e, 'milterd_received_bytes_total'), 17);
  assert.equal(sampleValue(e, 'milterd_sent_bytes_total'), 30);
  assert.equal(sampleValue(e, 'milterd_decisions_total', { stage: 'eom', decision: 'accept' }), 1);
  assert.equal(sampleValue(e, 'milterd_callback_duration_seconds_bucket', { stage: 'eom', le: '0.0025' }), 1);
  assert.equal(sampleValue(e, 'milterd_errors_total', { code: 'ERR_MILTER_FRAME_EMPTY' }), 1);
  assert.equal(sampleValue(e, 'milterd_policy_shutdowns_total', { reason: 'max-messages' }), 1);
  assert.equal(sampleValue(e, 'milterd_build_info', { version: '1.2.3' }), 1);
});

test('breaker gauges: the store and an upstream member encode a breaker state alike, one series per state', () => {
  const m = new DaemonMetrics({ version: '1.2.3' });
  const states = (e: Exposition, name: string, labels: Record<string, string> = {}) =>
    Object.fromEntries(
      ['closed', 'open', 'half-open'].map((state) => [state, sampleValue(e, name, { ...labels, state })]),
    );
  let e = parsePrometheus(m.render());
  assert.deepEqual(states(e, 'milterd_store_breaker_state'), { closed: 1, open: 0, 'half-open': 0 });
  m.store.breaker('open');
  m.memberBreakerState('dkim', 'open');
  e = parsePrometheus(m.render());
  assert.deepEqual(states(e, 'milterd_store_breaker_state'), { closed: 0, open: 1, 'half-open': 0 });
  assert.deepEqual(states(e, 'milterd_member_breaker_state', { member: 'dkim' }), {
    closed: 0,
    open: 1,
    'half-open': 0,
  });
  m.store.breaker('half-open');
  m.memberBreakerState('dkim', 'half-open');
  e = parsePrometheus(m.render());
  assert.deepEqual(states(e, 'milterd_store_breaker_state'), { closed: 0, open: 0, 'half-open': 1 });
  assert.deepEqual(states(e, 'milterd_member_breaker_state', { member: 'dkim' }), {
    closed: 0,
    open: 0,
    'half-open': 1,
  });
  // Both families: gauges labelled by state (the member's by member too), nothing else.
  const store = e.families.get('milterd_store_breaker_state');
  const member = e.families.get('milterd_member_breaker_state');
  assert.equal(store?.type, 'gauge');
  assert.equal(member?.type, 'gauge');
  assert.deepEqual(
    e.samples.filter((x) => x.name === 'milterd_store_breaker_state').map((x) => Object.keys(x.labels)),
    [['state'], ['state'], ['state']],
  );
});

test('value parsers', () => {
  assert.equal(parseDuration('500ms'), 500);
  assert.equal(parseDuration('30'), 30_000);
  assert.equal(parseDuration(2), 2000);
  assert.equal(parseDuration('1.5m'), 90_000);
  assert.throws(() => parseDuration('soon'));
  assert.equal(formatDuration(90_000), '90s');
  assert.equal(formatDuration(120_000), '2m');
  assert.equal(formatDuration(1500), '1500ms');
  assert.equal(parseSocketMode('0660'), 0o660);
  assert.equal(parseSocketMode(660), 0o660);
  assert.throws(() => parseSocketMode('0999'));
  assert.deepEqual(parseListenList('inet:1@127.0.0.1, unix:/x.sock'), ['inet:1@127.0.0.1', 'unix:/x.sock']);
  assert.throws(() => parseListenList('tcp:1'));
});

test('config text: positions of bad values, unknown fields and nested groups', () => {
  const text = [
    'logLevel: info',
    'timeouts:',
    '  idle: 5m',
    '  callback: x',
    'extra: 1',
    'admin: unix:/a',
    '',
  ].join('\n');
  const r = parseConfigText(text, '/etc/m.yaml');
  // In file order, with the column of the value (or of an unknown key).
  const got = r.problems.map((p) => [p.line, p.column, p.field]);
  assert.deepEqual(got, [
    [4, 13, 'timeouts.callback'],
    [5, 1, 'extra'],
    [6, 8, 'admin'],
  ]);
  assert.ok(r.problems.every((p) => p.file === '/etc/m.yaml' && p.code === 'ERR_MILTER_CONFIG'));
  assert.equal(r.values.timeoutIdle, 300_000);
});

test('config merge: cli > env > file > default, and relative policy paths follow the config file', () => {
  const file = parseConfigText(
    'maxConnections: 5\nlogLevel: debug\npolicy: p.yaml\ndrainTimeout: 1m\n',
    '/etc/milterd/m.yaml',
  );
  assert.deepEqual(file.problems, []);
  const r = mergeSettings(
    { maxConnections: { value: 7, source: 'cli' }, logLevel: { value: 'warn', source: 'env' } },
    file,
  );
  assert.equal(r.settings.maxConnections, 7);
  assert.equal(r.settings.logLevel, 'warn');
  assert.equal(r.settings.drainTimeout, 60_000);
  assert.deepEqual(r.settings.policy, { kind: 'file', path: '/etc/milterd/p.yaml' });
  assert.equal(r.sources.timeoutIdle, 'default');
  assert.equal(settingsToConfigObject(r.settings).drainTimeout, '1m');
});

test('eml: headers unfolded with LF, body with CRLF line ends, 8-bit bytes kept', () => {
  const m = parseEml(Buffer.from('Subject: a\n  b\nX-Empty:\nTo: x@y\n\nline 1\nline \xe9\n', 'latin1'));
  assert.deepEqual(m.headers, [
    ['Subject', ' a\n  b'],
    ['X-Empty', ''],
    ['To', ' x@y'],
  ]);
  assert.deepEqual(m.body, Buffer.from('line 1\r\nline \xe9\r\n', 'latin1'));
  assert.throws(() => parseEml(Buffer.from('no headers here\n')));
});

test('eml: header values are the exact bytes after the colon, 8-bit bytes included', () => {
  const file = Buffer.from(
    'Subject:x\r\nX-Two:  two\r\nX-Tab:\tt\r\nX-Latin1: caf\xe9\r\n' +
      'X-Fold: a\xe9\r\n\t\xff b\r\nX-Obs  : obsolete\r\n\r\nbody\r\n',
    'latin1',
  );
  const m = parseEml(file);
  assert.deepEqual(m.headers, [
    ['Subject', 'x'],
    ['X-Two', '  two'],
    ['X-Tab', '\tt'],
    ['X-Latin1', ' caf\udce9'],
    ['X-Fold', ' a\udce9\n\t\udcff b'],
    ['X-Obs', ' obsolete'],
  ]);
  assert.deepEqual(wireBytes(m.headers[4]?.[1] ?? ''), Buffer.from(' a\xe9\n\t\xff b', 'latin1'));
  // What an MTA sends: one space removed unless SMFIP_HDR_LEADSPC (milter-protocol.md §3.8).
  assert.deepEqual(
    m.headers.map(([, v]) => headerValueToSend(v, false)),
    ['x', ' two', '\tt', 'caf\udce9', 'a\udce9\n\t\udcff b', 'obsolete'],
  );
  assert.deepEqual(
    m.headers.map(([, v]) => headerValueToSend(v, true)),
    m.headers.map(([, v]) => v),
  );
  assert.deepEqual(m.body, Buffer.from('body\r\n'));
});

test('pretty log lines', () => {
  const line = formatPrettyLine(
    JSON.stringify({
      level: 40,
      time: 0,
      pid: 1,
      name: 'milterd',
      conn: '3',
      peer: '1.2.3.4:5',
      msg: 'hi',
      n: 2,
      s: 'a b',
    }),
  );
  assert.equal(line, '1970-01-01T00:00:00.000Z WARN  [conn=3 peer=1.2.3.4:5] hi n=2 s="a b"\n');
  assert.equal(formatPrettyLine('not json'), 'not json\n');
});

test('reloadable filter: connections keep the filter they started with, new ones get the new one', async () => {
  const calls: string[] = [];
  const make = (tag: string): Filter<unknown> => ({
    actions: [],
    helo: () => void calls.push(`${tag}:helo`),
    close: () => void calls.push(`${tag}:close`),
  });
  const r = new ReloadableFilter(make('A'));
  const f = r.filter;
  const ctx = (id: string): StageContext<unknown> => ({ id }) as unknown as StageContext<unknown>;
  assert.equal(typeof f.helo, 'function');
  assert.equal(f.eom, undefined, 'absent callbacks stay absent (negotiated away)');
  await f.helo?.(ctx('1'), 'x');
  r.replace({ ...make('B'), eom: () => undefined });
  assert.equal(typeof f.eom, 'function');
  await f.helo?.(ctx('1'), 'x');
  await f.helo?.(ctx('2'), 'x');
  await f.close?.(ctx('1'));
  await f.close?.(ctx('2'));
  assert.deepEqual(calls, ['A:helo', 'A:helo', 'B:helo', 'A:close', 'B:close']);
  assert.equal(r.pinnedCount, 0);
});

test('--admin: inet:PORT without a host is loopback (milter listeners keep libmilter reading: all addresses)', () => {
  assert.equal(parseAdmin('inet:9900'), 'inet:9900@127.0.0.1');
  assert.equal(parseAdmin('inet6:9900'), 'inet6:9900@[::1]');
  assert.equal(parseAdmin('inet:9900@0.0.0.0'), 'inet:9900@0.0.0.0', 'an explicit host stays');
  assert.equal(parseAdmin('off'), 'off');
  assert.deepEqual(parseListenList('inet:8890'), ['inet:8890@0.0.0.0']);
});

test('--log-buffer sizes: the one size parser (k is 1000, KiB 1024, as in the policy file), at least 4 KiB', () => {
  assert.equal(parseByteSize('1MiB'), 1024 * 1024);
  assert.equal(parseByteSize('256KiB'), 256 * 1024);
  assert.equal(parseByteSize('256k'), 256_000);
  assert.equal(parseByteSize('1MB'), 1_000_000);
  assert.equal(parseByteSize(8192), 8192);
  assert.equal(parseByteSize('65536'), 65536);
  for (const bad of ['1', '4095', '-5', 'x', '1 parsec', 100]) assert.throws(() => parseByteSize(bad));
});

test('one duration and one size parser: the CLI, the config file and the policy file read the same text the same way', () => {
  for (const text of ['3600', '600', '90s', '1.5m', '250ms', '1h', '1d', 45]) {
    assert.equal(parseDuration(text), parsePolicyDuration(text), String(text));
  }
  // A bare number is seconds everywhere ("3600" was refused for max-session-age while "600" was
  // accepted for timeouts.idle).
  assert.equal(parsePolicyDuration('3600'), 3_600_000);
  for (const text of ['8192', '4KiB', '1MB', '1M', '2GiB']) {
    assert.equal(parseByteSize(text), parsePolicySize(text), text);
  }
});
