/**
 * GuardedStore's deadlines when calls settle in any order: a settled call leaves the queue as soon as the
 * calls before it have settled, and a call still unanswered fails at its own deadline, whether the queue
 * emptied before it came or calls behind it were answered first.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GuardedStore } from '../../../src/policy/guarded-store.js';
import type { PolicyStore } from '../../../src/policy/store.js';
import { storeCallCode as code } from './store-suite.js';

/** A store whose calls answer when the test says: `answer(i, n)` settles the i-th call made. */
function handStore(): { store: PolicyStore; answer(i: number, n: number): void; calls(): number } {
  const pending: Array<(n: number) => void> = [];
  const call = (): Promise<number> => new Promise<number>((resolve) => pending.push(resolve));
  return {
    store: {
      sessionOpened: call,
      sessionClosed: () => undefined,
      addMessage: call,
      messageCount: call,
    },
    answer: (i, n) => pending[i]?.(n),
    calls: () => pending.length,
  };
}

const TIMEOUT = 40;

test('GuardedStore: calls answered out of order resolve; the unanswered ones before and after them fail at their deadline', async () => {
  const hand = handStore();
  const g = new GuardedStore(hand.store, { timeoutMs: TIMEOUT, breaker: { failures: 100 } });
  const first = g.addMessage('c', 60_000, 0);
  const second = g.addMessage('c', 60_000, 0);
  const third = g.addMessage('c', 60_000, 0);
  hand.answer(1, 2); // the middle one: the head is still unanswered
  assert.equal(await second, 2);
  assert.equal(await code(first), 'ERR_MILTER_STORE_TIMEOUT');
  assert.equal(await code(third), 'ERR_MILTER_STORE_TIMEOUT');
  assert.equal(hand.calls(), 3);
});

test('GuardedStore: after every call was answered (the queue emptied at once), a new unanswered call still fails at its deadline', async () => {
  const hand = handStore();
  const g = new GuardedStore(hand.store, { timeoutMs: TIMEOUT, breaker: { failures: 100 } });
  // Many answered calls: each leaves the queue when answered, long before the deadline timer fires.
  for (let i = 0; i < 50; i++) {
    const p = g.messageCount('c', 60_000, 0);
    hand.answer(i, i);
    assert.equal(await p, i);
  }
  // The timer armed for the first call has not fired yet: this call must still get a deadline of its own.
  const late = g.messageCount('c', 60_000, 0);
  assert.equal(await code(late), 'ERR_MILTER_STORE_TIMEOUT');
  // And once more after that timer has fired with nothing queued.
  await new Promise((resolve) => setTimeout(resolve, TIMEOUT * 2));
  const later = g.sessionOpened('c', 's', 0);
  assert.equal(await code(later), 'ERR_MILTER_STORE_TIMEOUT');
});

test('GuardedStore: more than a thousand answered calls behind an unanswered head: the head fails at its deadline, the rest keep their answers', async () => {
  const hand = handStore();
  const g = new GuardedStore(hand.store, { timeoutMs: TIMEOUT, breaker: { failures: 100 } });
  const head = g.addMessage('c', 60_000, 0);
  const rest = Array.from({ length: 1500 }, () => g.addMessage('c', 60_000, 0));
  for (let i = 1; i <= rest.length; i++) hand.answer(i, i);
  assert.deepEqual(
    await Promise.all(rest),
    rest.map((_, i) => i + 1),
  );
  assert.equal(await code(head), 'ERR_MILTER_STORE_TIMEOUT');
  // The queue is usable afterwards: an answered call and an unanswered one.
  const ok = g.addMessage('c', 60_000, 0);
  hand.answer(1501, 7);
  assert.equal(await ok, 7);
  assert.equal(await code(g.addMessage('c', 60_000, 0)), 'ERR_MILTER_STORE_TIMEOUT');
});
