import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision, type Filter } from '../../../src/filter.js';
import { ShutdownPolicy } from '../../../src/policy/chain.js';
import { createShutdownPolicy, type PolicyRule } from '../../../src/policy/rules.js';
import { MemoryPolicyStore, type PolicyStore } from '../../../src/policy/store.js';
import { withShutdownPolicy } from '../../../src/policy/wrapper.js';
import { parsePolicy } from '../../../src/policy/load.js';
import type { ClientStats, PolicyFiredEvent } from '../../../src/policy/types.js';
import { LogRateLimiter } from '../../../src/logging/rate-limit.js';
import { memoryLogger } from '../../helpers/logs.js';
import { FakeMta, shutdownText } from './fake-context.js';

const client = (address: string): { hostname: string; family: 'inet'; port: number; address: string } => ({
  hostname: 'c.example',
  family: 'inet',
  port: 1,
  address,
});

/**
 * A shared store over `inner`: it answers by promise, so the policy guards it (deadline, breaker, local
 * shadow) as it does Redis; `replace` swaps some of its calls.
 */
function sharedStore(inner: MemoryPolicyStore, replace: Partial<PolicyStore> = {}): PolicyStore {
  return {
    sessionOpened: (c, s, n) => Promise.resolve(inner.sessionOpened(c, s, n)),
    sessionClosed: (c, s, n) => Promise.resolve(inner.sessionClosed(c, s, n)),
    addMessage: (c, w, n) => Promise.resolve(inner.addMessage(c, w, n)),
    messageCount: (c, w, n) => Promise.resolve(inner.messageCount(c, w, n)),
    ...replace,
  };
}

/**
 * A policy with one rule, `max` messages per client a minute, on a shared store over a memory store that
 * answers by promise (guarded like Redis) and can take a message back: messages count at MAIL.
 */
function reservingPolicy(max: number): { inner: MemoryPolicyStore; policy: ShutdownPolicy } {
  const inner = new MemoryPolicyStore();
  const store = sharedStore(inner, {
    addMessage: (c, w, n, id) => Promise.resolve(inner.addMessage(c, w, n, id)),
    removeMessage: (c, w, id, at) => Promise.resolve(inner.removeMessage(c, w, id, at)),
  });
  const rules: PolicyRule[] = [
    { name: 'rate', limit: { kind: 'max-messages-per-client', max, windowMs: 60_000 } },
  ];
  return { inner, policy: createShutdownPolicy({ dryRun: false, rules }, { store }) };
}

test('max-concurrent-sessions: the extra session gets 421 at HELO; closing frees the slot; no leftovers', async () => {
  const store = new MemoryPolicyStore();
  const policy = createShutdownPolicy(
    { dryRun: false, rules: [{ name: 'conc', limit: { kind: 'max-concurrent-sessions', max: 2 } }] },
    { store },
  );
  const filter = withShutdownPolicy({}, policy);
  const log = memoryLogger();
  const a = new FakeMta(filter, 'a', client('192.0.2.1'), log);
  const b = new FakeMta(filter, 'b', client('192.0.2.1'), log);
  const c = new FakeMta(filter, 'c', client('192.0.2.1'), log);
  const other = new FakeMta(filter, 'o', client('192.0.2.2'), log);
  for (const m of [a, b, c, other]) assert.equal(await m.connect(), 'continue', 'never decided at CONNECT');
  assert.equal(await a.helo(), 'continue');
  assert.equal(await b.helo(), 'continue');
  assert.equal(await c.helo(), '421', 'third concurrent session');
  assert.equal(await other.helo(), 'continue');
  await c.close();
  const d = new FakeMta(filter, 'd', client('192.0.2.1'), log);
  await d.connect();
  assert.equal(await d.helo(), '421', 'still two open (a, b) plus d');
  await d.close();
  await a.close();
  const e = new FakeMta(filter, 'e', client('192.0.2.1'), log);
  await e.connect();
  assert.equal(await e.helo(), 'continue', 'a closed: room again');
  for (const m of [b, e, other]) await m.close();
  assert.deepEqual(store.size, { clients: 0, windows: 0 });
});

test('max-messages-per-client: counted across sessions within the window, new sessions refused too', async () => {
  let now = 0;
  const rules: PolicyRule[] = [
    { name: 'rate', limit: { kind: 'max-messages-per-client', max: 3, windowMs: 60_000 } },
  ];
  const policy = createShutdownPolicy({ dryRun: false, rules }, { now: () => now });
  const filter = withShutdownPolicy({}, policy);
  const s1 = new FakeMta(filter, 's1', client('198.51.100.5'));
  await s1.connect();
  assert.equal((await s1.message()).final, 'continue');
  assert.equal((await s1.message()).final, 'continue');
  await s1.close();
  const s2 = new FakeMta(filter, 's2', client('198.51.100.5'));
  await s2.connect();
  assert.equal((await s2.message()).final, 'continue', 'third message of the window');
  assert.equal((await s2.message()).final, '421');
  await s2.close();
  const s3 = new FakeMta(filter, 's3', client('198.51.100.5'));
  await s3.connect();
  assert.equal((await s3.message()).final, '421', 'a new session in the same window is refused at MAIL');
  await s3.close();
  now = 60_000;
  const s4 = new FakeMta(filter, 's4', client('198.51.100.5'));
  await s4.connect();
  assert.equal((await s4.message()).final, 'continue', 'next window');
  await s4.close();
});

test('max-messages-per-client: a session whose client reached the limit elsewhere meanwhile is refused at its next MAIL', async () => {
  const policy = createShutdownPolicy({
    dryRun: false,
    rules: [{ name: 'rate', limit: { kind: 'max-messages-per-client', max: 3, windowMs: 60_000 } }],
  });
  const filter = withShutdownPolicy({}, policy);
  const a = new FakeMta(filter, 'a', client('198.51.100.6'));
  const b = new FakeMta(filter, 'b', client('198.51.100.6'));
  await a.connect();
  await b.connect();
  assert.equal((await a.message()).final, 'continue', 'message 1 (a)');
  assert.equal((await b.message()).final, 'continue', 'message 2 (b)');
  assert.equal((await b.message()).final, 'continue', 'message 3 (b): the limit is reached');
  const next = await a.message();
  assert.equal(next.final, '421', "a's count was 1 after its message: MAIL reads the shared count again");
  assert.equal(next.endedAt, 'envfrom');
  await a.close();
  await b.close();
});

test('a failing store never cuts mail', async () => {
  const broken: PolicyStore = {
    sessionOpened: () => Promise.reject(new Error('redis down')),
    sessionClosed: () => {
      throw new Error('redis down');
    },
    addMessage: () => Promise.reject(new Error('redis down')),
    messageCount: () => Promise.reject(new Error('redis down')),
  };
  const policy = createShutdownPolicy(
    {
      dryRun: false,
      rules: [
        { name: 'conc', limit: { kind: 'max-concurrent-sessions', max: 1 } },
        { name: 'rate', limit: { kind: 'max-messages-per-client', max: 1, windowMs: 1000 } },
      ],
    },
    { store: broken },
  );
  const mta = new FakeMta(withShutdownPolicy({}, policy));
  await mta.connect();
  assert.equal(await mta.helo(), 'continue');
  assert.equal((await mta.message()).final, 'continue');
  await mta.close();
  assert.ok(
    mta.log.lines.some((l) => l.msg === 'shutdown policy store failed; rules apply their on-store-error'),
  );
});

test('a store failing for every session logs within the rate limit, and mail still passes', async () => {
  const log = memoryLogger();
  const down = (): Promise<never> => Promise.reject(new Error('redis down'));
  const policy = createShutdownPolicy(
    {
      dryRun: false,
      rules: [{ name: 'rate', limit: { kind: 'max-messages-per-client', max: 100, windowMs: 1000 } }],
    },
    {
      store: { sessionOpened: down, sessionClosed: down, addMessage: down, messageCount: down },
      logger: log.logger,
      logLimiter: new LogRateLimiter({ logger: log.logger, lines: 3, windowMs: 60_000 }),
    },
  );
  const filter = withShutdownPolicy({}, policy);
  for (let i = 0; i < 4; i++) {
    const mta = new FakeMta(filter, `conn-${i}`, client('192.0.2.1'), log);
    await mta.connect();
    assert.equal(await mta.helo(), 'continue');
    assert.equal((await mta.message()).final, 'continue');
    await mta.close();
  }
  const failed = log.lines.filter(
    (l) => l.msg === 'shutdown policy store failed; rules apply their on-store-error',
  );
  // 4 sessions, 3 calls each, all failed at once (within one store timeout: one failure for the breaker,
  // which stays closed): 3 warnings, whatever the number of sessions.
  assert.equal(failed.length, 3);
  assert.ok(failed.every((l) => l.level === 40));
});

test('conditions through the wrapper: authenticated clients exempt, custom text in the 421', async () => {
  const policy = createShutdownPolicy({
    dryRun: false,
    rules: [
      {
        name: 'anon',
        limit: { kind: 'max-messages', max: 1 },
        when: { authenticated: false },
        text: 'Authenticate to send more',
      },
    ],
  });
  const filter = withShutdownPolicy({}, policy);
  const auth = new FakeMta(filter, 'auth');
  await auth.connect();
  for (let i = 0; i < 3; i++) assert.equal((await auth.message({ auth: 'alice' })).final, 'continue');
  const anon = new FakeMta(filter, 'anon');
  await anon.connect();
  assert.equal((await anon.message()).final, 'continue');
  assert.equal(shutdownText(await filter.envfrom?.(anon.ctx, '<x@x.test>', [])), 'Authenticate to send more');
});

test('an armed shutdown fires at DATA and at unknown commands too', async () => {
  const fired: PolicyFiredEvent['stage'][] = [];
  const policy = createShutdownPolicy({
    dryRun: false,
    rules: [{ name: 'dict', limit: { kind: 'max-rejected-recipients', max: 0 } }],
  });
  policy.on('fired', (e) => fired.push(e.stage));
  const filter = withShutdownPolicy({}, policy);
  const mta = new FakeMta(filter);
  await mta.connect();
  // One good recipient, then one the MTA rejected: armed, the MTA ignores that reply; DATA gets the 421.
  const m = await mta.message({ rcpts: ['<ok@x.test>', { address: '<no@x.test>', mtaRejected: true }] });
  assert.deepEqual([m.final, m.endedAt], ['421', 'data']);
  assert.equal(await mta.unknown('VRFY x'), '421');
  assert.deepEqual(fired, ['data', 'unknown']);
});

test('a throwing user envrcpt counts as a rejected recipient (failure decision) and arms only', async () => {
  const policy = createShutdownPolicy({
    dryRun: false,
    rules: [{ name: 'dict', limit: { kind: 'max-rejected-recipients', max: 0 } }],
  });
  const user: Filter = {
    envrcpt: () => {
      throw new Error('user bug');
    },
  };
  const filter = withShutdownPolicy(user, policy);
  const mta = new FakeMta(filter);
  await mta.connect();
  await filter.envfrom?.(mta.ctx, '<a@x.test>', []);
  await assert.rejects(Promise.resolve(filter.envrcpt?.(mta.ctx, '<b@x.test>', [])), /user bug/);
  assert.equal(await mta.helo(), '421', 'armed for the next command');
});

test('a throwing user eom counts as tempfailed; with failureDecision accept it is not a failure', async () => {
  for (const [failureDecision, failures] of [
    ['tempfail', 1],
    ['accept', 0],
  ] as const) {
    const policy = new ShutdownPolicy();
    let seenFailures = -1;
    policy.registerLast('look', (r) => void (seenFailures = r.failures));
    const filter = withShutdownPolicy(
      {
        eom: () => {
          throw new Error('bug');
        },
      },
      policy,
      { failureDecision },
    );
    const mta = new FakeMta(filter);
    await mta.connect();
    await filter.envfrom?.(mta.ctx, '<a@x.test>', []);
    await assert.rejects(Promise.resolve(filter.eom?.(mta.ctx)));
    assert.equal(seenFailures, failures, failureDecision);
  }
});

test('per-connection state is dropped at close and rebuilt at a new CONNECT (QUIT_NC)', async () => {
  const policy = createShutdownPolicy({
    dryRun: false,
    rules: [{ name: 'm', limit: { kind: 'max-messages', max: 1 } }],
  });
  const filter = withShutdownPolicy({ eom: () => Decision.continue }, policy);
  const mta = new FakeMta(filter);
  await mta.connect();
  await mta.message();
  assert.equal((await mta.message()).final, '421');
  await mta.close();
  await mta.connect();
  assert.equal((await mta.message()).final, 'continue', 'a fresh session on the same milter connection');
});

const inet6 = (address: string): { hostname: string; family: 'inet6'; port: number; address: string } => ({
  hostname: 'c6.example',
  family: 'inet6',
  port: 1,
  address,
});

/**
 * Open a session per address under a max-concurrent-sessions: 1 rule (plus `config`'s clientPrefix);
 * the HELO answer of each.
 */
async function concurrentHelos(
  addresses: Array<ReturnType<typeof inet6> | ReturnType<typeof client>>,
  config: Partial<Parameters<typeof createShutdownPolicy>[0]> = {},
): Promise<string[]> {
  const store = new MemoryPolicyStore();
  const policy = createShutdownPolicy(
    {
      ...config,
      dryRun: false,
      rules: [{ name: 'one', limit: { kind: 'max-concurrent-sessions', max: 1 } }],
    },
    { store },
  );
  const filter = withShutdownPolicy({}, policy);
  const sessions = addresses.map((info, i) => new FakeMta(filter, `s${i}`, info));
  for (const s of sessions) await s.connect();
  const answers: string[] = [];
  for (const s of sessions) answers.push(await s.helo());
  for (const s of sessions) await s.close();
  assert.deepEqual(store.size, { clients: 0, windows: 0 });
  return answers;
}

test('IPv6 clients are counted by /64: two addresses of one /64 share one limit, other /64s do not', async () => {
  assert.deepEqual(
    await concurrentHelos([inet6('2001:db8:1:2::1'), inet6('2001:db8:1:2:ffff:ffff:ffff:fffe')]),
    ['continue', '421'],
    'same /64',
  );
  assert.deepEqual(
    await concurrentHelos([inet6('2001:db8:1:2::1'), inet6('2001:db8:1:3::1')]),
    ['continue', 'continue'],
    'neighbouring /64',
  );
  // The forms the MTAs send: Sendmail's IPv6: tag, fully expanded; upper case; a zone id.
  assert.deepEqual(
    await concurrentHelos([
      inet6('IPv6:2001:0db8:0001:0002:0000:0000:0000:0005'),
      inet6('2001:DB8:1:2::9'),
      inet6('fe80::1%eth0'),
      inet6('fe80::2%eth1'),
    ]),
    ['continue', '421', 'continue', '421'],
  );
});

test('max-messages-per-client: rotating addresses inside a /64 does not reset the count', async () => {
  const rules: PolicyRule[] = [
    { name: 'rate', limit: { kind: 'max-messages-per-client', max: 2, windowMs: 60_000 } },
  ];
  const policy = createShutdownPolicy({ dryRun: false, rules }, { now: () => 0 });
  const filter = withShutdownPolicy({}, policy);
  const finals: string[] = [];
  for (let i = 1; i <= 3; i++) {
    const s = new FakeMta(filter, `r${i}`, inet6(`2001:db8:aa:bb::${i.toString(16)}`));
    await s.connect();
    finals.push((await s.message()).final);
    await s.close();
  }
  assert.deepEqual(finals, ['continue', 'continue', '421']);
});

test('IPv4-mapped IPv6 clients count as their IPv4 address', async () => {
  assert.deepEqual(await concurrentHelos([client('192.0.2.7'), inet6('::ffff:192.0.2.7')]), [
    'continue',
    '421',
  ]);
  assert.deepEqual(await concurrentHelos([inet6('::ffff:c000:207'), client('192.0.2.7')]), [
    'continue',
    '421',
  ]);
  // IPv4 stays per address by default.
  assert.deepEqual(await concurrentHelos([client('192.0.2.7'), inet6('::ffff:192.0.2.8')]), [
    'continue',
    'continue',
  ]);
});

test('client-prefix is respected: wider and narrower IPv6 groups, IPv4 networks', async () => {
  const wide = parsePolicy('client-prefix:\n  ipv6: 48\n  ipv4: 24\n');
  assert.deepEqual(wide.clientPrefix, { ipv6: 48, ipv4: 24 });
  assert.deepEqual(
    await concurrentHelos([inet6('2001:db8:1:2::1'), inet6('2001:db8:1:3::1'), inet6('2001:db8:2::1')], wide),
    ['continue', '421', 'continue'],
  );
  assert.deepEqual(
    await concurrentHelos([client('192.0.2.1'), client('192.0.2.200'), client('192.0.3.1')], wide),
    ['continue', '421', 'continue'],
  );
  const exact = parsePolicy('client-prefix: { ipv6: 128 }\n');
  assert.deepEqual(await concurrentHelos([inet6('2001:db8:1:2::1'), inet6('2001:db8:1:2::2')], exact), [
    'continue',
    'continue',
  ]);
});

test('a shared store: clientStats is frozen, its local counts are read when asked, and they appear in JSON', async () => {
  const inner = new MemoryPolicyStore();
  // Not a MemoryPolicyStore itself: the policy guards it (deadline, breaker, local shadow) as it does Redis.
  const shared = sharedStore(inner);
  const rules: PolicyRule[] = [
    { name: 'rate', limit: { kind: 'max-messages-per-client', max: 100, windowMs: 60_000 } },
  ];
  const policy = createShutdownPolicy({ dryRun: false, rules }, { store: shared });
  const seen: Array<{ stats: ClientStats; json: unknown; local: ClientStats['local'] }> = [];
  policy.registerLast('spy', (record) => {
    const stats = record.clientStats;
    seen.push({ stats, json: JSON.parse(JSON.stringify(stats)), local: stats.local });
    return false;
  });
  const filter = withShutdownPolicy({}, policy);
  const a = new FakeMta(filter, 'a', client('192.0.2.40'));
  const b = new FakeMta(filter, 'b', client('192.0.2.40'));
  await a.connect();
  await b.connect();
  assert.equal((await a.message()).final, 'continue');
  await a.close();
  await b.close();
  const last = seen.at(-1);
  assert.ok(last !== undefined);
  assert.ok(Object.isFrozen(last.stats));
  assert.deepEqual(last.stats.storeErrors, { sessions: false, messages: false });
  assert.deepEqual(last.stats.messagesInWindow, { 60_000: 1 });
  // Read in the hook: both sessions open, one message.
  assert.deepEqual(last.local, { concurrentSessions: 2, messagesInWindow: { 60_000: 1 }, instances: 1 });
  assert.equal(last.stats.local, last.local, 'computed once, when first read');
  assert.deepEqual(last.json, {
    // a's own count when it opened (b came after); `local` is read now.
    concurrentSessions: 1,
    messagesInWindow: { 60000: 1 },
    storeErrors: { sessions: false, messages: false },
    local: { concurrentSessions: 2, messagesInWindow: { 60000: 1 }, instances: 1 },
  });
});

test("a session's end does not wait for its lease release: the user's close runs while the store has not answered", async () => {
  const inner = new MemoryPolicyStore();
  let releases = 0;
  let answer: (() => void) | undefined;
  // A shared store whose releases are answered only when the test says so.
  const slow = sharedStore(inner, {
    sessionClosed: (c, s, n) => {
      releases++;
      inner.sessionClosed(c, s, n);
      return new Promise<void>((resolve) => (answer = resolve));
    },
  });
  const policy = createShutdownPolicy(
    { dryRun: false, rules: [{ name: 'conc', limit: { kind: 'max-concurrent-sessions', max: 5 } }] },
    { store: slow },
  );
  let closed = 0;
  const mta = new FakeMta(
    withShutdownPolicy({ close: () => void closed++ }, policy),
    'a',
    client('192.0.2.41'),
  );
  await mta.connect();
  assert.equal(await mta.helo(), 'continue');
  await mta.close();
  assert.equal(releases, 1, 'the release was issued');
  assert.equal(closed, 1, "the user's close ran before the store answered");
  answer?.();
});

test("Postfix's ABORT after a completed message does not wait for the message's store answer; the next MAIL does", async () => {
  const inner = new MemoryPolicyStore();
  const answers: Array<() => void> = [];
  // A shared store whose message counts are answered only when the test says so.
  const slow = sharedStore(inner, {
    addMessage: (c, w, n) => {
      const count = inner.addMessage(c, w, n);
      return new Promise<number>((resolve) => answers.push(() => resolve(count)));
    },
  });
  const rules: PolicyRule[] = [
    { name: 'rate', limit: { kind: 'max-messages-per-client', max: 1, windowMs: 60_000 } },
  ];
  const policy = createShutdownPolicy({ dryRun: false, rules }, { store: slow });
  let aborts = 0;
  const mta = new FakeMta(
    withShutdownPolicy({ abort: () => void aborts++ }, policy),
    'a',
    client('192.0.2.42'),
  );
  await mta.connect();
  assert.equal(await mta.helo(), 'continue');
  // EOM, then Postfix's two ABORTs: all answered while the store still holds the message's count.
  assert.equal((await mta.message({ postfixAbort: true })).final, 'continue');
  assert.equal(answers.length, 1, 'the count was issued');
  assert.equal(aborts, 0, 'no transaction was open: the user hears of no abort');
  // The next MAIL is where the message's verdict fires: it waits for the answer.
  let settled = false;
  const next = mta.message().then((trace) => {
    settled = true;
    return trace;
  });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(settled, false, 'MAIL waits for the store answer');
  answers.shift()?.();
  const trace = await next;
  assert.equal(trace.final, '421', 'the limit (1) was reached by the first message');
  assert.equal(trace.endedAt, 'envfrom');
  await mta.close();
});

test('max-messages-per-client, sessions at MAIL at the same moment on a shared store: exactly the limit pass; refused and aborted messages are taken back', async () => {
  const { inner, policy } = reservingPolicy(3);
  const filter = withShutdownPolicy({}, policy);
  const key = '198.51.100.70';
  const count = (): number => inner.messageCount(key, 60_000, Date.now());
  // One message first, aborted after its recipients: taken back, it leaves no count.
  const first = new FakeMta(filter, 'first', client(key));
  await first.connect();
  assert.equal((await first.message({ abortAfterRcpt: true })).endedAt, 'abort');
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(count(), 0, 'the aborted message was taken back');
  // Six sessions opened at once, whose MAILs all come before any message ends: counted after their
  // message, all six would pass. Each CONNECT takes its first message's place with reading the count.
  const mtas = Array.from({ length: 6 }, (_, i) => new FakeMta(filter, `m${i}`, client(key)));
  for (const m of mtas) await m.connect();
  const traces = await Promise.all(mtas.map((m) => m.message()));
  const finals = traces.map((t) => t.final);
  assert.equal(finals.filter((f) => f === 'continue').length, 3, finals.join(' '));
  assert.equal(finals.filter((f) => f === '421').length, 3, finals.join(' '));
  for (const t of traces) if (t.final === '421') assert.equal(t.endedAt, 'envfrom');
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(count(), 3, 'the three refused were taken back');
  // A session that ends inside its transaction (the MTA went away): its message was not sent.
  for (const m of [first, ...mtas]) await m.close();
  const late = new FakeMta(filter, 'late', client('198.51.100.71'));
  await late.connect();
  await late.filter.envfrom?.(late.ctx, '<a@example.org>', []);
  assert.equal(inner.messageCount('198.51.100.71', 60_000, Date.now()), 1, 'counted (at CONNECT)');
  await late.close();
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(
    inner.messageCount('198.51.100.71', 60_000, Date.now()),
    0,
    'closed mid-transaction: taken back',
  );
});

test('messages counted at MAIL: from MAIL to the outcome the rules see the messages before this one, in the shared and in the local counts alike', async () => {
  const { policy } = reservingPolicy(100);
  const seen: string[] = [];
  policy.registerLast('spy', (record) => {
    const { messagesInWindow, local } = record.clientStats;
    seen.push(`${record.event} ${messagesInWindow[60_000]} ${local?.messagesInWindow[60_000]}`);
    return false;
  });
  const unknownUser = Decision.reject({ code: 550, xcode: '5.1.1', text: 'No such user' });
  const filter = withShutdownPolicy(
    { envrcpt: (_ctx, rcpt) => (rcpt.startsWith('<bad') ? unknownUser : undefined) },
    policy,
  );
  const mta = new FakeMta(filter, 'a', client('198.51.100.72'));
  await mta.connect();
  const trace = await mta.message({ rcpts: ['<bad@example.net>', '<ok@example.net>'] });
  assert.equal(trace.final, 'continue');
  await mta.close();
  // CONNECT; MAIL (this message counted, the rules see 0); the rejected recipient, still 0 in both; the
  // outcome, 1 in both.
  assert.deepEqual(seen, ['connect 0 0', 'message 0 0', 'recipient 0 0', 'message 1 1']);
});

test('the first message is counted at CONNECT: a session that has not sent it holds its place; a later MAIL, a verdict and the end give places back', async () => {
  const { inner, policy } = reservingPolicy(2);
  const filter = withShutdownPolicy({}, policy);
  const key = '198.51.100.73';
  const count = (): number => inner.messageCount(key, 60_000, Date.now());
  const settle = (): Promise<unknown> => new Promise((resolve) => setImmediate(resolve));
  const idle = new FakeMta(filter, 'idle', client(key));
  await idle.connect();
  assert.equal(count(), 1, 'a session just opened holds a place');
  const busy = new FakeMta(filter, 'busy', client(key));
  await busy.connect();
  assert.equal((await busy.message()).final, 'continue', 'its own place');
  const second = await busy.message();
  assert.equal(second.final, '421', 'a later message is counted at its MAIL: the idle session holds a place');
  assert.equal(second.endedAt, 'envfrom');
  await settle();
  assert.equal(count(), 2, 'the refused one taken back');
  await idle.close();
  await busy.close();
  await settle();
  assert.equal(count(), 1, 'a session that sent nothing gives its place back at its end');
  const next = new FakeMta(filter, 'next', client(key));
  await next.connect();
  assert.equal((await next.message()).final, 'continue');
  const refused = new FakeMta(filter, 'refused', client(key));
  await refused.connect();
  await settle();
  assert.equal(count(), 2, 'refused at CONNECT: its place went back at once');
  assert.equal(await refused.helo(), '421');
  for (const m of [next, refused]) await m.close();
});

test('a CONNECT whose store call fails holds no place: it is taken back, and the first MAIL counts its message itself', async () => {
  const inner = new MemoryPolicyStore();
  const calls: string[] = [];
  let failAdd = true;
  const store = sharedStore(inner, {
    addMessage: (c, w, n, id) => {
      calls.push('add');
      if (failAdd) return Promise.reject(new Error('store down'));
      return Promise.resolve(inner.addMessage(c, w, n, id));
    },
    removeMessage: (c, w, id, at) => {
      calls.push('remove');
      return Promise.resolve(inner.removeMessage(c, w, id, at));
    },
  });
  const rules: PolicyRule[] = [
    { name: 'rate', limit: { kind: 'max-messages-per-client', max: 5, windowMs: 60_000 } },
  ];
  const { logger } = memoryLogger();
  const policy = createShutdownPolicy({ dryRun: false, rules }, { store, logger });
  const mta = new FakeMta(withShutdownPolicy({}, policy), 'a', client('198.51.100.74'));
  await mta.connect();
  assert.equal(await mta.helo(), 'continue', 'a failing store never cuts mail');
  assert.deepEqual(calls, ['add', 'remove'], 'the place asked for at CONNECT is taken back');
  failAdd = false;
  assert.equal((await mta.message()).final, 'continue');
  assert.deepEqual(calls, ['add', 'remove', 'add'], 'the MAIL counted its message');
  assert.equal(inner.messageCount('198.51.100.74', 60_000, Date.now()), 1);
  await mta.close();
});
