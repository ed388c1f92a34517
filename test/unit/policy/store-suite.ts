/**
 * The one test suite every PolicyStore passes (MemoryPolicyStore, RedisPolicyStore on one server and on
 * a 3-master Cluster): lease counts, idempotency, expiry of unrenewed leases, exact sliding-window counts.
 * Timing is only ever waited for (conditions), never asserted; where the sliding property needs time,
 * it is read from the store's own clock (Redis TIME) before and after.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { MilterStoreError } from '../../../src/errors.js';
import type { PolicyStore } from '../../../src/policy/store.js';

export interface SuiteStore {
  store: PolicyStore;
  /** The store's clock in ms (Redis: TIME; memory: the clock the suite passes as `now`). */
  clock(): Promise<number>;
  close(): Promise<void>;
}

export type StoreFactory = (options: { leaseTtlMs: number }) => Promise<SuiteStore>;

/** Poll `check` until it holds (a hang guard of `timeoutMs`, not an assertion on time). */
export async function until(check: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Live leases of `client`, read by opening and closing a probe lease. */
async function leases(store: PolicyStore, client: string): Promise<number> {
  const probe = `probe-${randomUUID()}`;
  const n = await store.sessionOpened(client, probe, Date.now());
  await store.sessionClosed(client, probe, Date.now());
  return n - 1;
}

export function storeSuite(name: string, factory: StoreFactory): void {
  const fresh = (): string => `198.51.100.${Math.floor(Math.random() * 250) + 1}-${randomUUID().slice(0, 8)}`;

  test(`${name}: leases count open sessions per client, idempotent per session id, released on close`, async (t) => {
    const s = await factory({ leaseTtlMs: 60_000 });
    t.after(() => s.close());
    const { store } = s;
    const [c1, c2] = [fresh(), fresh()];
    assert.equal(await store.sessionOpened(c1, 'a', Date.now()), 1);
    assert.equal(await store.sessionOpened(c1, 'b', Date.now()), 2);
    assert.equal(await store.sessionOpened(c1, 'b', Date.now()), 2, 'renewing b does not count it twice');
    assert.equal(await store.sessionOpened(c2, 'a', Date.now()), 1, 'another client, same session id');
    await store.sessionClosed(c1, 'a', Date.now());
    await store.sessionClosed(c1, 'a', Date.now());
    await store.sessionClosed(c1, 'never-opened', Date.now());
    assert.equal(await leases(store, c1), 1, 'closing twice or an unknown id changes nothing');
    await store.sessionClosed(c1, 'b', Date.now());
    assert.equal(await leases(store, c1), 0);
    assert.equal(await leases(store, c2), 1);
    await store.sessionClosed(c2, 'a', Date.now());
  });

  test(`${name}: a lease that is not renewed expires; a renewed one stays`, async (t) => {
    const ttl = 300;
    const s = await factory({ leaseTtlMs: ttl });
    t.after(() => s.close());
    const { store } = s;
    const c = fresh();
    assert.equal(await store.sessionOpened(c, 'kept', Date.now()), 1);
    assert.equal(await store.sessionOpened(c, 'crashed', Date.now()), 2);
    // 'kept' is renewed every third of the TTL, as SessionTracker does; 'crashed' never again.
    let renewals = 0;
    const renew = setInterval(() => {
      renewals++;
      void store.sessionOpened(c, 'kept', Date.now());
    }, ttl / 3);
    t.after(() => clearInterval(renew));
    await until(async () => (await leases(store, c)) === 1, 'the unrenewed lease to expire');
    await until(async () => renewals >= 6, 'two TTLs of renewals');
    assert.equal(await leases(store, c), 1, 'the renewed lease outlives several TTLs');
    clearInterval(renew);
    await until(async () => (await leases(store, c)) === 0, 'the last lease to expire once renewals stop');
  });

  test(`${name}: every finished message counts exactly once; other clients and windows are separate`, async (t) => {
    const s = await factory({ leaseTtlMs: 60_000 });
    t.after(() => s.close());
    const { store } = s;
    const [c, other] = [fresh(), fresh()];
    const N = 25;
    for (let i = 1; i <= N; i++) assert.equal(await store.addMessage(c, 60_000, Date.now()), i);
    assert.equal(await store.messageCount(c, 60_000, Date.now()), N, 'reading does not count');
    assert.equal(await store.messageCount(c, 60_000, Date.now()), N);
    assert.equal(await store.messageCount(c, 30_000, Date.now()), 0, 'another window length is another log');
    assert.equal(await store.messageCount(other, 60_000, Date.now()), 0);
    // Concurrent adds (one tick, pipelined on Redis) lose nothing and count nothing twice.
    const counts = await Promise.all(
      Array.from({ length: N }, () => store.addMessage(c, 60_000, Date.now())),
    );
    assert.deepEqual(
      [...counts].sort((a, b) => a - b),
      Array.from({ length: N }, (_, i) => N + i + 1),
    );
  });

  test(`${name}: a message counted under an id (at MAIL) is taken back by it; concurrent ones each get their own count`, async (t) => {
    const s = await factory({ leaseTtlMs: 60_000 });
    t.after(() => s.close());
    const { store } = s;
    assert.ok(store.removeMessage, 'the store can take a message back');
    const c = fresh();
    const t0 = Date.now();
    assert.equal(await store.addMessage(c, 60_000, t0, 'conn-1:1'), 1);
    // Eight senders at their MAIL at once with room for 4 more (limit 5): counts 2..9, one each, so
    // exactly 4 see fewer than 5 before them.
    const at = Date.now();
    const ids = Array.from({ length: 8 }, (_, i) => `conn-${i + 2}:1`);
    const counts = await Promise.all(ids.map((id) => store.addMessage(c, 60_000, at, id)));
    assert.deepEqual(
      [...counts].sort((a, b) => a - b),
      [2, 3, 4, 5, 6, 7, 8, 9],
    );
    assert.equal(counts.filter((n) => n - 1 < 5).length, 4);
    // The refused ones are taken back (all at once, as their sessions end): 5 remain.
    await Promise.all(
      ids.filter((_, i) => (counts[i] as number) > 5).map((id) => store.removeMessage?.(c, 60_000, id, at)),
    );
    assert.equal(await store.messageCount(c, 60_000, Date.now()), 5);
    // An id never counted (at a time without messages), or another window's log, changes nothing.
    await store.removeMessage(c, 60_000, 'conn-99:1', (await s.clock()) + 60_000);
    await store.removeMessage(c, 30_000, 'conn-1:1', t0);
    assert.equal(await store.messageCount(c, 60_000, Date.now()), 5);
    assert.equal(await store.removeMessage(c, 60_000, 'conn-1:1', t0), undefined);
    assert.equal(await store.messageCount(c, 60_000, Date.now()), 4);
  });

  test(`${name}: a session opening counts its lease and reads every window asked for, in one operation`, async (t) => {
    const s = await factory({ leaseTtlMs: 60_000 });
    t.after(() => s.close());
    const { store } = s;
    assert.ok(store.sessionOpenedWithCounts, 'the store has the combined operation');
    const [c, other] = [fresh(), fresh()];
    for (let i = 0; i < 3; i++) await store.addMessage(c, 60_000, Date.now());
    await store.addMessage(c, 30_000, Date.now());
    const a = await store.sessionOpenedWithCounts(c, 'a', [60_000, 30_000, 10_000], Date.now());
    assert.deepEqual({ ...a, messages: [...a.messages] }, { sessions: 1, messages: [3, 1, 0] });
    // Concurrently, between single operations (one batch on Redis): each gets its own answers, in order.
    const [b, added, o, again] = await Promise.all([
      store.sessionOpenedWithCounts(c, 'b', [30_000, 60_000], Date.now()),
      store.addMessage(c, 30_000, Date.now()),
      store.sessionOpenedWithCounts(other, 'a', [60_000], Date.now()),
      store.sessionOpenedWithCounts(c, 'b', [30_000], Date.now()),
    ]);
    assert.deepEqual([b.sessions, [...b.messages]], [2, [1, 3]]);
    assert.equal(added, 2);
    assert.deepEqual([o.sessions, [...o.messages]], [1, [0]]);
    assert.deepEqual([again.sessions, [...again.messages]], [2, [2]], 'renewing b does not count it twice');
    const none = await store.sessionOpenedWithCounts(c, 'b', [], Date.now());
    assert.deepEqual([none.sessions, [...none.messages]], [2, []], 'no window: the lease alone');
    assert.equal(await store.messageCount(c, 60_000, Date.now()), 3, 'reading the windows counts nothing');
    assert.equal(await leases(store, c), 2);
    for (const [client, id] of [
      [c, 'a'],
      [c, 'b'],
      [other, 'a'],
    ] as const) {
      await store.sessionClosed(client, id, Date.now());
    }
    assert.equal(await leases(store, c), 0);
  });

  test(`${name}: opening a session with a reservation counts one message in each window, answered with it, and it can be taken back`, async (t) => {
    const s = await factory({ leaseTtlMs: 60_000 });
    t.after(() => s.close());
    const { store } = s;
    assert.ok(store.sessionOpenedWithCounts && store.removeMessage, 'the store can reserve and take back');
    const c = fresh();
    const at = Date.now();
    await store.addMessage(c, 60_000, at);
    const [a, b] = await Promise.all([
      store.sessionOpenedWithCounts(c, 'a', [60_000, 30_000], at, 'a:1'),
      store.sessionOpenedWithCounts(c, 'b', [60_000, 30_000], at, 'b:1'),
    ]);
    assert.deepEqual([a.sessions, [...a.messages]], [1, [2, 1]]);
    assert.deepEqual([b.sessions, [...b.messages]], [2, [3, 2]], 'one after the other, each its own place');
    for (const w of [60_000, 30_000]) await store.removeMessage(c, w, 'b:1', at);
    assert.equal(await store.messageCount(c, 60_000, Date.now()), 2);
    assert.equal(await store.messageCount(c, 30_000, Date.now()), 1);
    for (const id of ['a', 'b']) await store.sessionClosed(c, id, Date.now());
    assert.equal(await leases(store, c), 0);
    assert.equal(await store.messageCount(c, 60_000, Date.now()), 2, 'a reservation kept stays counted');
  });

  test(`${name}: the window slides: messages leave it one window after they were counted, not at a boundary`, async (t) => {
    const s = await factory({ leaseTtlMs: 60_000 });
    t.after(() => s.close());
    const { store } = s;
    const c = fresh();
    const W = 600;
    const N = 5;
    const first = await s.clock();
    for (let i = 1; i <= N; i++) assert.equal(await store.addMessage(c, W, Date.now()), i);
    const last = await s.clock();
    // Until the first message is W old the count stays N; fixed windows (aligned on multiples of W)
    // would have dropped to 0 at the next boundary, less than W after the first message.
    let seen: number[] = [];
    await until(async () => {
      const count = await store.messageCount(c, W, Date.now());
      const after = await s.clock();
      seen.push(count);
      if (count < N) assert.ok(after >= first + W, `count ${count} < ${N} only once the window has passed`);
      return count === 0;
    }, 'the messages to leave the window');
    const zeroAt = await s.clock();
    assert.ok(zeroAt >= last, 'clock sanity');
    seen = seen.filter((n, i) => i === 0 || n !== seen[i - 1]);
    assert.equal(seen[0], N);
    assert.equal(seen.at(-1), 0);
    // After the window passed, a new message starts from 1: exactly N in any window, never 2N.
    assert.equal(await store.addMessage(c, W, Date.now()), 1);
  });
}

/** 'ok' when `p` resolves, else the MilterStoreError code it rejects with (anything else fails the test). */
export async function storeCallCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    assert.ok(err instanceof MilterStoreError, String(err));
    return err.code;
  }
}
