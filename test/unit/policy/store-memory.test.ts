/**
 * The shared store suite (store-suite.ts) against MemoryPolicyStore, on the real clock; plus what only the
 * in-process store has: the explicit policy clock, the cap on logs, lazy sweeping.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryPolicyStore, openSession, type PolicyStore } from '../../../src/policy/store.js';
import { storeSuite } from './store-suite.js';

storeSuite('MemoryPolicyStore', async ({ leaseTtlMs }) => {
  const store = new MemoryPolicyStore({ leaseTtlMs, sweepIntervalMs: 0 });
  return { store, clock: () => Promise.resolve(Date.now()), close: () => Promise.resolve() };
});

test('MemoryPolicyStore: sliding log on the policy clock, exact at the edge; a clock stepping back keeps it sorted', () => {
  const s = new MemoryPolicyStore({ sweepIntervalMs: 0 });
  const W = 1000;
  assert.equal(s.addMessage('a', W, 0), 1);
  assert.equal(s.addMessage('a', W, 500), 2);
  assert.equal(s.addMessage('a', W, 999), 3);
  assert.equal(s.messageCount('a', W, 999), 3);
  assert.equal(s.messageCount('a', W, 1000), 2, 'the message at 0 left at exactly 0 + W');
  assert.equal(s.messageCount('a', W, 1499), 2);
  assert.equal(s.messageCount('a', W, 1500), 1);
  assert.equal(s.addMessage('a', W, 1600), 2);
  assert.equal(s.addMessage('a', W, 1550), 3, 'a clock that stepped back still counts (kept in order)');
  assert.equal(s.messageCount('a', W, 1999), 2, '999 left at 1999');
  assert.equal(s.messageCount('a', W, 2550), 1, '1550 left before 1600');
  assert.equal(s.messageCount('a', W, 2600), 0);
  assert.deepEqual(s.size, { clients: 0, windows: 0 }, 'empty logs are dropped');
});

test('MemoryPolicyStore: a long log slides exactly while its front is dropped in steps, a step back included', () => {
  const s = new MemoryPolicyStore({ sweepIntervalMs: 0 });
  const W = 30_000;
  // One message per ms for three windows: the log holds 30 000 and drops its front as time passes.
  for (let now = 0; now < 90_000; now++) {
    assert.equal(s.addMessage('busy', W, now), Math.min(now + 1, W), `message at ${now}`);
  }
  // Messages at 60 000..89 999 are in the window at 89 999; one from a clock behind (at 75 000.5) joins them.
  assert.equal(s.addMessage('busy', W, 75_000.5), W + 1, 'a clock behind still counts');
  assert.equal(s.messageCount('busy', W, 105_000), 15_000, 'at 105 000: 75 001..89 999, and 75 000.5');
  assert.equal(s.messageCount('busy', W, 105_000.75), 14_999, '75 000.5 left, 75 001 not yet');
  assert.equal(s.messageCount('busy', W, 119_998), 1);
  assert.equal(s.messageCount('busy', W, 119_999), 0, 'the last left one window after it came');
  assert.deepEqual(s.size, { clients: 0, windows: 0 });
});

test('MemoryPolicyStore: leases on the policy clock; without a TTL they never expire', () => {
  const s = new MemoryPolicyStore({ leaseTtlMs: 100 });
  assert.equal(s.sessionOpened('c', 'a', 0), 1);
  assert.equal(s.sessionOpened('c', 'b', 50), 2);
  assert.equal(s.sessionCount('c', 99), 2);
  assert.equal(s.sessionCount('c', 100), 1, 'a expired at 0 + TTL');
  assert.equal(s.sessionOpened('c', 'b', 140), 1, 'renewing b');
  assert.equal(s.sessionCount('c', 239), 1);
  assert.equal(s.sessionCount('c', 240), 0);
  assert.deepEqual(s.size, { clients: 0, windows: 0 });
  const forever = new MemoryPolicyStore();
  assert.equal(forever.leaseTtlMs, undefined);
  forever.sessionOpened('c', 'a', 0);
  assert.equal(forever.sessionCount('c', Number.MAX_SAFE_INTEGER), 1);
});

test('MemoryPolicyStore: renewing the earliest lease, then others expiring, and a clock stepping back: exact counts', () => {
  const s = new MemoryPolicyStore({ leaseTtlMs: 100 });
  assert.equal(s.sessionOpened('c', 'a', 0), 1, 'a until 100');
  assert.equal(s.sessionOpened('c', 'b', 10), 2, 'b until 110');
  assert.equal(s.sessionOpened('c', 'a', 50), 2, 'a renewed until 150: the earliest expiry moved later');
  assert.equal(s.sessionCount('c', 105), 2, 'nothing expired at 100: a was renewed');
  assert.equal(s.sessionOpened('c', 'd', 108), 3, 'd until 208');
  assert.equal(s.sessionCount('c', 110), 2, 'b expired at 110');
  assert.equal(s.sessionCount('c', 60), 2, 'a clock stepping back brings nothing back');
  assert.equal(s.sessionCount('c', 150), 1, 'a expired at 150');
  s.sessionClosed('c', 'd', 151);
  assert.equal(s.sessionCount('c', 151), 0);
  assert.deepEqual(s.size, { clients: 0, windows: 0 });
  assert.equal(s.sessionOpened('c', 'e', 300), 1, 'a forgotten client starts afresh');
  assert.equal(s.sessionCount('c', 399), 1);
  assert.equal(s.sessionCount('c', 400), 0);
});

test('MemoryPolicyStore: message logs are capped (least recently used dropped) and swept lazily', () => {
  const s = new MemoryPolicyStore({ maxWindows: 3, sweepIntervalMs: 1000 });
  for (const c of ['a', 'b', 'c', 'd', 'e']) s.addMessage(c, 60_000, 1);
  assert.equal(s.size.windows, 3);
  assert.equal(s.messageCount('a', 60_000, 2), 0, 'oldest dropped');
  assert.equal(s.messageCount('e', 60_000, 2), 1);
  s.addMessage('x', 10, 5);
  assert.equal(s.size.windows, 3);
  s.messageCount('e', 60_000, 61_000);
  assert.equal(s.size.windows, 0, 'the sweep dropped every expired log');
});

test('openSession: a store without the combined operation gets the separate calls, synchronously when they answer so', async () => {
  const inner = new MemoryPolicyStore();
  inner.addMessage('c', 60_000, 0);
  const sync: PolicyStore = {
    sessionOpened: (c, s, n) => inner.sessionOpened(c, s, n),
    sessionClosed: (c, s, n) => inner.sessionClosed(c, s, n),
    addMessage: (c, w, n) => inner.addMessage(c, w, n),
    messageCount: (c, w, n) => inner.messageCount(c, w, n),
  };
  assert.deepEqual(openSession(sync, 'c', 'a', [60_000, 10], 5), { sessions: 1, messages: [1, 0] });
  const async: PolicyStore = {
    ...sync,
    messageCount: (c, w, n) => Promise.resolve(inner.messageCount(c, w, n)),
  };
  const pending = openSession(async, 'c', 'b', [60_000], 5);
  assert.ok(pending instanceof Promise);
  assert.deepEqual(await pending, { sessions: 2, messages: [1] });
  const failing: PolicyStore = { ...sync, messageCount: () => Promise.reject(new Error('down')) };
  await assert.rejects(Promise.resolve(openSession(failing, 'c', 'c', [60_000], 5)), /down/);
});
