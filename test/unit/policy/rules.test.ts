import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  compileConditions,
  compileRule,
  createShutdownPolicy,
  limitReached,
  type RuleLimit,
} from '../../../src/policy/rules.js';
import { MemoryPolicyStore } from '../../../src/policy/store.js';
import { NetworkSet, parseCidr, parseDuration, parseSize } from '../../../src/policy/values.js';
import type { PolicyDecisionEvent } from '../../../src/policy/types.js';
import { record, type RecordOverrides } from './records.js';

/** [limit, record below the limit, record at the limit] */
const cases: Array<[RuleLimit, RecordOverrides, RecordOverrides]> = [
  [
    { kind: 'max-messages', max: 2 },
    { counters: { messagesAccepted: 1 } },
    { counters: { messagesAccepted: 2 } },
  ],
  // Discarded messages were "accepted" for the client: they count.
  [
    { kind: 'max-messages', max: 2 },
    { counters: { messagesAccepted: 1, messagesRejected: 5 } },
    { counters: { messagesAccepted: 1, messagesDiscarded: 1 } },
  ],
  // The limit is what is tolerated: the 4th rejected recipient fires with max 3.
  [
    { kind: 'max-rejected-recipients', max: 3 },
    { counters: { recipientsRejected: 3 } },
    { counters: { recipientsRejected: 4 } },
  ],
  [
    { kind: 'max-failed-messages', max: 3 },
    { counters: { messagesRejected: 1, messagesTempfailed: 1, messagesAborted: 9 } },
    { counters: { messagesRejected: 2, messagesTempfailed: 1 } },
  ],
  [
    { kind: 'max-failure-ratio', ratio: 0.5, minAttempts: 4 },
    // 3 failures out of 3 attempts: above the ratio, but not enough attempts yet.
    { counters: { messagesRejected: 3 } },
    { counters: { messagesRejected: 3, messagesAccepted: 1 } },
  ],
  [
    { kind: 'max-failure-ratio', ratio: 0.5, minAttempts: 4 },
    // Exactly the ratio is not above it.
    { counters: { messagesRejected: 2, messagesAccepted: 2 } },
    { counters: { messagesTempfailed: 3, messagesAccepted: 2 } },
  ],
  [
    { kind: 'max-bytes', max: 1000 },
    { counters: { bytesReceived: 999 } },
    { counters: { bytesReceived: 1000 } },
  ],
  [{ kind: 'max-session-age', maxMs: 60_000 }, { ageMs: 59_999 }, { ageMs: 60_000 }],
  [
    { kind: 'max-concurrent-sessions', max: 2 },
    { clientStats: { concurrentSessions: 2, messagesInWindow: {} } },
    { clientStats: { concurrentSessions: 3, messagesInWindow: {} } },
  ],
  [
    { kind: 'max-messages-per-client', max: 10, windowMs: 60_000 },
    { clientStats: { concurrentSessions: 1, messagesInWindow: { 60_000: 9, 1000: 50 } } },
    { clientStats: { concurrentSessions: 1, messagesInWindow: { 60_000: 10 } } },
  ],
];

for (const [limit, below, at] of cases) {
  test(`rule ${limit.kind} ${JSON.stringify(limit)}: quiet below the limit, fires at it`, () => {
    assert.equal(limitReached(limit, record(below)), false);
    assert.equal(limitReached(limit, record(at)), true);
    const hook = compileRule({ name: 'r', limit });
    assert.equal(hook(record(below)), undefined);
    const verdict = hook(record(at));
    assert.ok(verdict && verdict.shutdown);
    assert.equal(verdict.reason, limit.kind, 'the reason is the limit kind (bounded metric label)');
    assert.ok(typeof verdict.text === 'string' && verdict.text.length > 0);
  });
}

test('rule text overrides the default text of its kind', () => {
  const hook = compileRule({ name: 'r', limit: { kind: 'max-messages', max: 1 }, text: 'Bye now' });
  const v = hook(record({ counters: { messagesAccepted: 1 } }));
  assert.ok(v && v.text === 'Bye now');
});

test('condition client: CIDR v4 and v6, single addresses, IPv4-mapped IPv6', () => {
  const when = compileConditions({ client: ['192.0.2.0/24', '2001:db8::/32', '198.51.100.7'] });
  const at = (address: string): boolean =>
    when(
      record({
        client: { address, hostname: 'h', port: 1, family: address.includes(':') ? 'inet6' : 'inet' },
      }),
    );
  assert.equal(at('192.0.2.200'), true);
  assert.equal(at('192.0.3.1'), false);
  assert.equal(at('2001:db8:1::5'), true);
  assert.equal(at('2001:db9::5'), false);
  assert.equal(at('198.51.100.7'), true);
  assert.equal(at('198.51.100.8'), false);
  assert.equal(at('::ffff:192.0.2.9'), true);
  assert.equal(at('IPv6:2001:db8::1'), true);
  assert.equal(at(''), false);
  assert.equal(when(record({ client: undefined })), false);
});

test('condition not-client excludes networks; clients without an address pass', () => {
  const when = compileConditions({ notClient: ['127.0.0.0/8', '::1'] });
  const at = (address: string): boolean =>
    when(record({ client: { address, hostname: 'h', port: 1, family: 'inet' } }));
  assert.equal(at('127.0.0.1'), false);
  assert.equal(at('::1'), false);
  assert.equal(at('192.0.2.1'), true);
  assert.equal(at(''), true);
});

test('condition authenticated true/false', () => {
  const authOnly = compileConditions({ authenticated: true });
  const anonOnly = compileConditions({ authenticated: false });
  assert.equal(authOnly(record({ authenticated: 'alice' })), true);
  assert.equal(authOnly(record()), false);
  assert.equal(anonOnly(record({ authenticated: 'alice' })), false);
  assert.equal(anonOnly(record()), true);
});

test('condition helo: case-insensitive regex; no HELO never matches', () => {
  const when = compileConditions({ helo: '^\\[?\\d+\\.\\d+\\.\\d+\\.\\d+\\]?$' });
  assert.equal(when(record({ helo: '[192.0.2.1]' })), true);
  assert.equal(when(record({ helo: 'mail.example.org' })), false);
  assert.equal(when(record()), false);
  assert.equal(compileConditions({ helo: 'EXAMPLE' })(record({ helo: 'mx.example.org' })), true);
});

test('conditions are ANDed; a rule whose condition fails never fires', () => {
  const hook = compileRule({
    name: 'r',
    limit: { kind: 'max-messages', max: 1 },
    when: { client: ['192.0.2.0/24'], authenticated: false },
  });
  const full = { counters: { messagesAccepted: 5 } };
  assert.ok(hook(record(full)));
  assert.equal(hook(record({ ...full, authenticated: 'bob' })), undefined);
  assert.equal(
    hook(record({ ...full, client: { address: '203.0.113.1', hostname: 'h', port: 1, family: 'inet' } })),
    undefined,
  );
});

test('createShutdownPolicy registers rules in order, as last hooks; per-rule dry-run', async () => {
  const decisions: PolicyDecisionEvent[] = [];
  const policy = createShutdownPolicy(
    {
      dryRun: false,
      rules: [
        { name: 'trial', limit: { kind: 'max-messages', max: 1 }, dryRun: true },
        { name: 'bytes', limit: { kind: 'max-bytes', max: 10 } },
        { name: 'window', limit: { kind: 'max-messages-per-client', max: 5, windowMs: 60_000 } },
      ],
    },
    { onDecision: (e) => decisions.push(e) },
  );
  policy.registerFirst('mine-first', () => false);
  policy.registerLast('mine-last', () => false);
  assert.deepEqual(policy.list(), ['mine-first', 'trial', 'bytes', 'window', 'mine-last']);
  assert.equal(policy.trackBytes, true, 'a max-bytes rule turns byte tracking on');
  assert.deepEqual(policy.clientWindows, [60_000]);
  const v = await policy.evaluate(record({ counters: { messagesAccepted: 1, bytesReceived: 10 } }));
  assert.equal(v?.hook, 'bytes');
  assert.deepEqual(
    decisions.map((d) => [d.hook, d.mode]),
    [
      ['trial', 'dry-run'],
      ['bytes', 'enforce'],
    ],
  );
});

test('createShutdownPolicy: config options, overridable in code', () => {
  const p = createShutdownPolicy({ dryRun: true, hookTimeoutMs: 250, replyText: 'cfg', rules: [] });
  assert.equal(p.dryRun, true);
  assert.equal(p.hookTimeoutMs, 250);
  assert.equal(p.replyText, 'cfg');
  assert.equal(p.trackBytes, false, 'no max-bytes rule: bytes are not tracked');
  const q = createShutdownPolicy({ dryRun: true, rules: [] }, { dryRun: false, trackBytes: true });
  assert.equal(q.dryRun, false);
  assert.equal(q.trackBytes, true);
});

test('MemoryPolicyStore: concurrent sessions, idempotent close, no leftover keys', () => {
  const s = new MemoryPolicyStore();
  assert.equal(s.sessionOpened('192.0.2.1', 'a'), 1);
  assert.equal(s.sessionOpened('192.0.2.1', 'b'), 2);
  assert.equal(s.sessionOpened('192.0.2.1', 'b'), 2, 'idempotent per session id');
  assert.equal(s.sessionOpened('192.0.2.2', 'c'), 1);
  s.sessionClosed('192.0.2.1', 'a');
  s.sessionClosed('192.0.2.1', 'a');
  assert.equal(s.sessionOpened('192.0.2.1', 'd'), 2);
  s.sessionClosed('192.0.2.1', 'b');
  s.sessionClosed('192.0.2.1', 'd');
  s.sessionClosed('192.0.2.2', 'c');
  s.sessionClosed('192.0.2.9', 'never');
  assert.equal(s.size.clients, 0);
});

test('MemoryPolicyStore: sliding windows per client and length, expired logs swept', () => {
  const s = new MemoryPolicyStore({ sweepIntervalMs: 1000 });
  const H = 3_600_000;
  assert.equal(s.addMessage('a', H, 10), 1);
  assert.equal(s.addMessage('a', H, 20), 2);
  assert.equal(s.addMessage('a', 60_000, 20), 1, 'another window length is another log');
  assert.equal(s.addMessage('b', H, 30), 1);
  assert.equal(s.messageCount('a', H, 40), 2);
  assert.equal(s.messageCount('zzz', H, 40), 0);
  assert.equal(s.messageCount('a', H, H + 1), 2, 'no reset at a boundary: both are younger than 1h');
  assert.equal(s.messageCount('a', H, H + 10), 1, 'the first left the window 1h after it was counted');
  assert.equal(s.messageCount('a', H, H + 30), 0);
  assert.equal(s.size.windows, 1, "expired logs are swept; b's message is still in its window");
  assert.equal(s.addMessage('a', H, H + 35), 1);
  assert.equal(s.messageCount('a', H, 2 * H + 35), 0);
  assert.equal(s.size.windows, 0, 'everything expired');
});

test('value parsers: durations, sizes, CIDR', () => {
  assert.equal(parseDuration('1h'), 3_600_000);
  assert.equal(parseDuration('1.5m'), 90_000);
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration(30), 30_000);
  assert.throws(() => parseDuration('1 hour'));
  assert.throws(() => parseDuration(-1));
  assert.equal(parseSize(100), 100);
  assert.equal(parseSize('10MB'), 10_000_000);
  assert.equal(parseSize('10M'), 10_000_000);
  assert.equal(parseSize('1KiB'), 1024);
  assert.equal(parseSize('2gib'), 2 * 1024 ** 3);
  assert.throws(() => parseSize('10 parsecs'));
  assert.throws(() => parseSize(1.5));
  assert.deepEqual(parseCidr('192.0.2.0/24'), { address: '192.0.2.0', prefix: 24, type: 'ipv4' });
  assert.deepEqual(parseCidr('::1'), { address: '::1', prefix: 128, type: 'ipv6' });
  assert.throws(() => parseCidr('192.0.2.0/33'));
  assert.throws(() => parseCidr('example.org/8'));
  assert.throws(() => parseCidr('10.0.0.0/'));
  assert.equal(new NetworkSet(['10.0.0.0/8']).has('10.1.2.3'), true);
  assert.equal(new NetworkSet(['10.0.0.0/8']).has('not an ip'), false);
});
