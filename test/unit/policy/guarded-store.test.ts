/**
 * GuardedStore's deadlines when calls settle in any order: a settled call leaves the queue as soon as the
 * calls before it have settled, and a call still unanswered fails at its own deadline, whether the queue
 * emptied before it came or calls behind it were answered first. And a deadline measures the store, not
 * this process: a stall of the event loop, or answers still being handed out, time nothing out.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
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

/** `store` saying it still hands answers out for `turns()` more turns (PolicyStore.delivering). */
function withDelivering(store: PolicyStore, turns: () => number): PolicyStore {
  return {
    ...store,
    get delivering() {
      return turns();
    },
  };
}

/** A store whose addMessage throws (a dropped connection) unless `healthy()`; then it answers 3. */
function droppingStore(healthy: () => boolean = () => false): PolicyStore {
  return {
    sessionOpened: () => 1,
    sessionClosed: () => undefined,
    addMessage: () => {
      if (!healthy()) throw new Error('connection lost');
      return 3;
    },
    messageCount: () => 0,
  };
}

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

/** Hold the event loop (a GC pause, a long callback, a stalled host) for `ms`. */
function stall(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

/** An echo server on loopback in a worker thread: it answers while this thread's event loop stands still. */
const ECHO_SERVER = `
const net = require('node:net');
const { parentPort } = require('node:worker_threads');
const server = net.createServer((s) => s.setNoDelay(true).pipe(s));
server.listen(0, '127.0.0.1', () => parentPort.postMessage(server.address().port));
`;

/**
 * A store answering over a loopback socket, as a network store does: each call writes a byte, the peer
 * echoes it, and the call resolves when the echo is read (in the poll phase of the event loop).
 */
async function socketStore(): Promise<{ store: PolicyStore; close(): Promise<void> }> {
  const worker = new Worker(ECHO_SERVER, { eval: true });
  const port = (await once(worker, 'message'))[0] as number;
  const socket = net.connect(port, '127.0.0.1').setNoDelay(true);
  await new Promise((resolve) => socket.once('connect', resolve));
  const waiting: Array<(n: number) => void> = [];
  socket.on('data', (d: Buffer) => {
    for (const byte of d) waiting.shift()?.(byte);
  });
  const call = (): Promise<number> =>
    new Promise<number>((resolve) => {
      waiting.push(resolve);
      socket.write(Buffer.of(7));
    });
  return {
    store: { sessionOpened: call, sessionClosed: () => undefined, addMessage: call, messageCount: call },
    close: async () => {
      socket.destroy();
      await worker.terminate();
    },
  };
}

test('GuardedStore: an answer that came while the event loop stood still past the deadline is taken, not timed out', async (t) => {
  const { store, close } = await socketStore();
  t.after(close);
  const g = new GuardedStore(store, { timeoutMs: TIMEOUT, breaker: { failures: 1 } });
  const calls = [g.addMessage('c', 60_000, 0), g.messageCount('c', 60_000, 0)];
  // The bytes are written now; the echo arrives during the stall and waits, unread, on the socket while the
  // deadline timer is already due. (A stall in the check phase: the next loop iteration runs the timers
  // before it polls the socket. 5 ms past the deadline: less than a stall's grace, so the poll must come
  // first.)
  setImmediate(() => stall(TIMEOUT + 5));
  assert.deepEqual(await Promise.all(calls), [7, 7]);
  assert.equal(g.breakerState, 'closed');
});

test('GuardedStore: a call not even sent when the process stalled gets the stalled time again, once', async (t) => {
  const { store, close } = await socketStore();
  t.after(close);
  // The call goes out 5 ms after it is made (as a batch waits for its interval); the process stalls before.
  const later: PolicyStore = {
    ...store,
    addMessage: () =>
      new Promise<number>((resolve) => setTimeout(() => resolve(store.addMessage('c', 1, 0)), 5)),
  };
  const g = new GuardedStore(later, { timeoutMs: TIMEOUT, breaker: { failures: 1 } });
  const call = g.addMessage('c', 60_000, 0);
  setTimeout(() => stall(TIMEOUT * 2), 1);
  assert.equal(await call, 7);
  assert.equal(g.breakerState, 'closed');
});

test('GuardedStore: a store that never answers still fails at most one timeout after a stall, however the process stalls', async () => {
  const hand = handStore();
  const g = new GuardedStore(hand.store, { timeoutMs: TIMEOUT, breaker: { failures: 100 } });
  const call = code(g.addMessage('c', 60_000, 0));
  // Every turn a stall longer than the grace threshold, for as long as the call is unsettled.
  let settled = false;
  void call.then(() => (settled = true));
  let stalls = 0;
  const busy = (): void => {
    if (settled) return;
    stall(15);
    stalls++;
    setTimeout(busy, 0);
  };
  setTimeout(busy, 0);
  assert.equal(await call, 'ERR_MILTER_STORE_TIMEOUT');
  // Counted in stalls of at least 15 ms each, not in time (a slower machine only needs fewer): the
  // deadline (40 ms) and one grace (at most 40 ms more) take at most 3 + 3 of them, with a turn of slack
  // on each side.
  assert.ok(stalls <= 8, `failed after ${stalls} stalls of 15 ms`);
});

test('GuardedStore: answers the store has but still hands out over several turns (delivering) are not timed out meanwhile', async () => {
  const hand = handStore();
  let left = 0;
  const store = withDelivering(hand.store, () => left);
  const g = new GuardedStore(store, { timeoutMs: TIMEOUT, breaker: { failures: 100 } });
  const calls = Array.from({ length: 40 }, () => g.addMessage('c', 60_000, 0));
  // Just before the deadline all the answers are in, handed out one per event-loop turn, each turn
  // busy for 2 ms (shorter than the stall threshold): the handing out ends well past the deadline.
  setTimeout(() => {
    const next = (i: number): void => {
      stall(2);
      hand.answer(i, i);
      left = calls.length - 1 - i;
      if (left > 0) setImmediate(next, i + 1);
    };
    next(0);
  }, TIMEOUT - 5);
  assert.deepEqual(
    await Promise.all(calls),
    calls.map((_, i) => i),
  );
});

test('GuardedStore: a store that never stops handing answers out still fails an unanswered call, a few turns after its deadline', async () => {
  const hand = handStore();
  // Always 5 more turns: answers keep arriving, but the check waits only for those there when it began.
  let asked = 0;
  const store = withDelivering(hand.store, () => {
    asked++;
    return 5;
  });
  const g = new GuardedStore(store, { timeoutMs: TIMEOUT, breaker: { failures: 100 } });
  assert.equal(await code(g.addMessage('c', 60_000, 0)), 'ERR_MILTER_STORE_TIMEOUT');
  // Each deadline check asks when it begins (5 turns), then once per turn it waits: 6 times, and no more
  // waiting. Checks: one, or up to three on a loaded machine (a timer that fires a little before the
  // deadline, then one stall's grace).
  assert.ok(asked % 6 === 0 && asked >= 6 && asked <= 18, `asked ${asked} times`);
});

test('GuardedStore: the calls of one round trip that times out count once toward the breaker; failures a timeout apart each count', async () => {
  const hand = handStore();
  const failedCalls: string[] = [];
  const g = new GuardedStore(hand.store, {
    timeoutMs: TIMEOUT,
    breaker: { failures: 3 },
    onCall: (e) => void (e.code !== undefined && failedCalls.push(e.code)),
  });
  // Twenty calls made together (one batch on Redis), none answered: they fail together, once for the breaker.
  const batch = Array.from({ length: 20 }, () => code(g.addMessage('c', 60_000, 0)));
  assert.deepEqual(new Set(await Promise.all(batch)), new Set(['ERR_MILTER_STORE_TIMEOUT']));
  assert.equal(failedCalls.length, 20, 'metrics still count every call');
  assert.equal(g.breakerState, 'closed');
  // Each later call fails a whole timeout after it was made, so after the last counted failure: the third
  // counted failure opens the breaker.
  for (const expected of ['closed', 'open'] as const) {
    assert.equal(await code(g.addMessage('c', 60_000, 0)), 'ERR_MILTER_STORE_TIMEOUT');
    assert.equal(g.breakerState, expected);
  }
  assert.equal(await code(g.addMessage('c', 60_000, 0)), 'ERR_MILTER_STORE_UNAVAILABLE');
});

test('GuardedStore: a store failing at once, call after call, counts once per timeout toward the breaker', async () => {
  const g = new GuardedStore(droppingStore(), { timeoutMs: 60_000, breaker: { failures: 2 } });
  // Far within one timeout of each other: one failure for the breaker.
  for (let i = 0; i < 10; i++)
    assert.equal(await code(g.addMessage('c', 60_000, 0)), 'ERR_MILTER_STORE_FAILED');
  assert.equal(g.breakerState, 'closed');
});

test('GuardedStore: a failed probe opens the breaker again, even within a timeout of the failure that opened it', async () => {
  let clock = 0;
  let healthy = false;
  const g = new GuardedStore(
    droppingStore(() => healthy),
    {
      timeoutMs: TIMEOUT,
      breaker: { failures: 1, openMs: 100, now: () => clock },
    },
  );
  // A failure opens the breaker; its open time passes (on the breaker's clock); the probe fails at once.
  assert.equal(await code(g.addMessage('c', 60_000, 0)), 'ERR_MILTER_STORE_FAILED');
  assert.equal(g.breakerState, 'open');
  clock += 100;
  const probe = g.addMessage('c', 60_000, 0);
  assert.equal(g.breakerState, 'open', 'the failed probe opened it again (not left half-open, probing)');
  assert.equal(await code(probe), 'ERR_MILTER_STORE_FAILED');
  // And the next probe, once the store is back, closes it.
  healthy = true;
  clock += 100;
  assert.equal(await g.addMessage('c', 60_000, 0), 3);
  assert.equal(g.breakerState, 'closed');
});
