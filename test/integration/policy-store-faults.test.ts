/**
 * A real redis-server that freezes (SIGSTOP) or dies under a GuardedStore: every call answers within the
 * deadline with a coded error, the shared CircuitBreaker opens and stops calling, its probe closes it once
 * Redis is back; and each rule's on-store-error decides the session: allow (mail flows), tempfail (421),
 * local (this instance's own count against the limit divided by the instances).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { GuardedStore, type StoreCallEvent } from '../../src/policy/guarded-store.js';
import { createRedisPolicyStore, type RedisPolicyStore } from '../../src/policy/redis-store.js';
import { createShutdownPolicy, type OnStoreError } from '../../src/policy/rules.js';
import { withShutdownPolicy } from '../../src/policy/wrapper.js';
import { RedisServer } from '../helpers/redis.js';
import { FakeMta, concurrencyLimited, heldSessions } from '../unit/policy/fake-context.js';
import { storeCallCode as code, until } from '../unit/policy/store-suite.js';

let redis: RedisServer;
before(async () => {
  redis = await RedisServer.start();
});
after(() => redis?.stop());

async function guarded(options: { openMs?: number; instances?: number } = {}): Promise<{
  guard: GuardedStore;
  inner: RedisPolicyStore;
  calls: StoreCallEvent[];
}> {
  const inner = await createRedisPolicyStore({
    url: redis.url,
    prefix: `f${Math.random().toString(36).slice(2, 8)}:`,
  });
  await inner.ready();
  const calls: StoreCallEvent[] = [];
  const guard = new GuardedStore(inner, {
    timeoutMs: 50,
    instances: options.instances ?? 1,
    breaker: { failures: 2, openMs: options.openMs ?? 200 },
    onCall: (e) => calls.push(e),
  });
  return { guard, inner, calls };
}

test('SIGSTOP: calls fail at the deadline, then the breaker opens and nothing is called; SIGCONT: the probe closes it', async (t) => {
  const { guard, inner, calls } = await guarded();
  t.after(() => guard.close());
  t.after(() => redis.resume());
  assert.equal(await guard.sessionOpened('192.0.2.1', 'a'), 1);
  await redis.pause();
  assert.equal(await code(guard.sessionOpened('192.0.2.1', 'b')), 'ERR_MILTER_STORE_TIMEOUT');
  assert.equal(await code(guard.addMessage('192.0.2.1', 60_000, Date.now())), 'ERR_MILTER_STORE_TIMEOUT');
  assert.equal(guard.breakerState, 'open', 'two failures open it');
  const before = calls.length;
  assert.equal(
    await code(guard.messageCount('192.0.2.1', 60_000, Date.now())),
    'ERR_MILTER_STORE_UNAVAILABLE',
  );
  assert.deepEqual(calls.slice(before), [
    { op: 'message-count', seconds: 0, code: 'ERR_MILTER_STORE_UNAVAILABLE' },
  ]);
  // The local shadow counted everything meanwhile.
  assert.equal(guard.local.sessionCount('192.0.2.1'), 2);
  redis.resume();
  await until(
    async () => (await code(guard.sessionOpened('192.0.2.1', 'c'))) === 'ok',
    'the probe to succeed',
  );
  assert.equal(guard.breakerState, 'closed');
  // a and c are there; b's frozen call was not cancelled by the deadline and may have landed after SIGCONT.
  assert.ok((await inner.sessionOpened('192.0.2.1', 'c')) >= 2);
});

test('the CONNECT opening (lease and counts) is one guarded call: one metric, one deadline, one breaker outcome', async (t) => {
  const { guard, calls } = await guarded({ openMs: 60_000 });
  t.after(() => guard.close());
  t.after(() => redis.resume());
  await guard.addMessage('192.0.2.2', 60_000, Date.now());
  calls.length = 0;
  const o = await guard.sessionOpenedWithCounts('192.0.2.2', 'a', [60_000, 1_000]);
  assert.deepEqual([o.sessions, [...o.messages]], [1, [1, 0]], 'another window length is another log');
  assert.deepEqual(
    calls.map((c) => [c.op, c.code]),
    [['session-open', undefined]],
  );
  await redis.pause();
  assert.equal(
    await code(guard.sessionOpenedWithCounts('192.0.2.2', 'b', [60_000])),
    'ERR_MILTER_STORE_TIMEOUT',
  );
  assert.deepEqual(
    calls.slice(1).map((c) => [c.op, c.code]),
    [['session-open', 'ERR_MILTER_STORE_TIMEOUT']],
  );
  assert.equal(guard.breakerState, 'closed', 'one failure, not one per line (the breaker opens at two)');
  assert.equal(guard.local.sessionCount('192.0.2.2'), 2, 'the local shadow counted the lease');
});

test('a stall of milterd itself (the event loop held past the deadline) fails none of the calls Redis answered in time; the breaker stays closed', async (t) => {
  const { guard, calls } = await guarded();
  t.after(() => guard.close());
  for (let round = 0; round < 12; round++) {
    const opened = Array.from({ length: 64 }, (_, i) =>
      guard.sessionOpened(`192.0.2.${i % 4}`, `s${round}.${i}`),
    );
    // Held while the batch is in flight or still waiting for its interval, in a timer or after the poll.
    const hold = (): void => {
      const end = performance.now() + 80;
      while (performance.now() < end);
    };
    if (round % 3 === 0) setTimeout(hold, 1);
    else if (round % 3 === 1) setImmediate(() => setImmediate(hold));
    else setTimeout(hold, 12);
    const settled = await Promise.allSettled(opened);
    assert.deepEqual(
      settled.filter((r) => r.status === 'rejected').map((r) => String(r.reason)),
      [],
      `round ${round}`,
    );
    await Promise.all(opened.map((_, i) => guard.sessionClosed(`192.0.2.${i % 4}`, `s${round}.${i}`)));
  }
  assert.equal(guard.breakerState, 'closed');
  assert.deepEqual(
    calls.filter((c) => c.code !== undefined),
    [],
  );
});

test('killed: calls fail fast (no offline queue) with ERR_MILTER_STORE_FAILED; restarted: the store works again', async (t) => {
  const { guard, calls } = await guarded();
  t.after(() => guard.close());
  assert.equal(await guard.addMessage('192.0.2.2', 60_000, Date.now()), 1);
  await redis.kill();
  t.after(() => redis.restart().catch(() => undefined));
  const failed = await code(guard.addMessage('192.0.2.2', 60_000, Date.now()));
  assert.ok(['ERR_MILTER_STORE_FAILED', 'ERR_MILTER_STORE_TIMEOUT'].includes(failed), failed);
  assert.ok(calls.some((c) => c.code === 'ERR_MILTER_STORE_FAILED' || c.code === 'ERR_MILTER_STORE_TIMEOUT'));
  await redis.restart();
  await until(
    async () => (await code(guard.messageCount('192.0.2.2', 60_000, Date.now()))) === 'ok',
    'the store to come back',
  );
  assert.equal(
    await guard.addMessage('192.0.2.2', 60_000, Date.now()),
    1,
    'a restarted Redis without persistence starts empty',
  );
});

async function verdicts(onStoreError: OnStoreError | undefined, instances: number): Promise<string[]> {
  const { guard } = await guarded({ instances, openMs: 60_000 });
  const filter = concurrencyLimited(guard, 4, onStoreError);
  await redis.pause();
  let held: Awaited<ReturnType<typeof heldSessions>> | undefined;
  try {
    held = await heldSessions(filter, '192.0.2.9', 4);
  } finally {
    redis.resume();
    await held?.close();
    await guard.close();
  }
  return held.helos;
}

test('on-store-error with Redis frozen: allow lets every session in (the default), tempfail answers 421, local applies limit / instances to this instance', async () => {
  assert.deepEqual(await verdicts(undefined, 1), ['continue', 'continue', 'continue', 'continue']);
  assert.deepEqual(await verdicts('allow', 1), ['continue', 'continue', 'continue', 'continue']);
  assert.deepEqual(await verdicts('tempfail', 1), ['421', '421', '421', '421']);
  // 4 sessions fleet-wide over 2 instances: this one lets 2 in.
  assert.deepEqual(await verdicts('local', 2), ['continue', 'continue', '421', '421']);
});

test('a live session renews its lease past many TTLs; when its milterd dies (connection gone, never closed) the lease expires on its own', async (t) => {
  const ttl = 300;
  const prefix = `r${Math.random().toString(36).slice(2, 8)}:`;
  const dying = await createRedisPolicyStore({ url: redis.url, prefix, leaseTtlMs: ttl });
  const observer = await createRedisPolicyStore({ url: redis.url, prefix, leaseTtlMs: ttl });
  await Promise.all([dying.ready(), observer.ready()]);
  t.after(() => Promise.all([dying.close(), observer.close()]));
  const policy = createShutdownPolicy(
    { dryRun: false, rules: [{ name: 'conc', limit: { kind: 'max-concurrent-sessions', max: 5 } }] },
    { store: dying },
  );
  const mta = new FakeMta(withShutdownPolicy({}, policy), 'live', {
    hostname: 'c',
    family: 'inet',
    port: 1,
    address: '192.0.2.44',
  });
  await mta.connect();
  const leases = async (): Promise<number> => {
    const n = await observer.sessionOpened('192.0.2.44', 'probe');
    await observer.sessionClosed('192.0.2.44', 'probe');
    return n - 1;
  };
  // The CONNECT reply does not wait for the lease (it goes with the store's next batch).
  await until(async () => (await leases()) === 1, "the session's lease");
  // Five TTLs later the session is still counted: SessionTracker renewed it every TTL/3.
  const [s0] = (await observer.client.call('TIME')) as [string];
  await until(async () => {
    const [s] = (await observer.client.call('TIME')) as [string];
    return Number(s) >= Number(s0) + 2;
  }, 'two seconds of server time');
  assert.equal(await leases(), 1, 'renewed');
  // The milterd dies: its connection goes, the session is never closed.
  dying.client.disconnect();
  await until(async () => (await leases()) === 0, 'the lease to expire on its own');
  await mta.close();
});
