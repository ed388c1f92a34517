/**
 * A shared store behind a deadline and a circuit breaker, with an in-process shadow. Redis being slow or
 * down must never hold or cut mail: every call either answers within `timeoutMs` or fails with a coded
 * error (ERR_MILTER_STORE_TIMEOUT, _FAILED, or _UNAVAILABLE while the breaker is open, without calling the
 * store at all), and the rule's `on-store-error` decides what that means. The shadow is a
 * MemoryPolicyStore kept in step with every call, so that `on-store-error: local` has this instance's own
 * counts to fall back on.
 */
import { CircuitBreaker, type BreakerState, type CircuitBreakerOptions } from '../breaker.js';
import { DEFAULTS } from '../defaults.js';
import { MilterStoreError, type MilterErrorCode } from '../errors.js';
import { isThenable } from '../session/decision.js';
import { MemoryPolicyStore, openSession, type PolicyStore, type SessionOpening } from './store.js';

/**
 * Store operations, as metrics label them. `session-open` is a lease opened or renewed; at CONNECT it
 * carries the client's message counts too (one call, `sessionOpenedWithCounts`).
 */
export type StoreOp = 'session-open' | 'session-close' | 'message-add' | 'message-remove' | 'message-count';

/** One finished store call, for metrics. */
export interface StoreCallEvent {
  op: StoreOp;
  seconds: number;
  /** The error code when the call failed (a call refused by the open breaker takes no time). */
  code?: MilterErrorCode;
}

export interface GuardedStoreOptions {
  /** Deadline of one call (ms). Default DEFAULTS.storeTimeoutMs (50). */
  timeoutMs?: number;
  /** The breaker, or options for a new one (defaults: DEFAULTS.breakerFailures, DEFAULTS.storeBreakerOpenMs). */
  breaker?: CircuitBreaker | CircuitBreakerOptions;
  /** milterd instances sharing the store: `on-store-error: local` divides limits by it. Default 1. */
  instances?: number;
  /** Every call, with its duration and error code. Must not throw. */
  onCall?: (event: StoreCallEvent) => void;
}

interface Deadline {
  /** performance.now() time at which the call fails unless settled. */
  readonly at: number;
  readonly settled: boolean;
  /** It was given a stall's grace (Deadlines): once only. */
  graced: boolean;
  expire(): void;
}

type Report = (op: StoreOp, started: number, code?: MilterErrorCode) => void;

/** One call in flight: its deadline entry, and how it settles (once: the answer, a failure or the deadline). */
class GuardedCall<T> implements Deadline {
  readonly started = performance.now();
  readonly at: number;
  graced = false;
  // Dropped when settled: a settled call stays in the deadline queue while a call before it is unanswered
  // (up to the timeout), and must not keep its promise and its value alive meanwhile (with thousands of
  // calls a second they were a measurable share of what each scavenge copied, and so of its pause).
  #resolve: ((value: T) => void) | undefined;
  #reject: ((err: unknown) => void) | undefined;

  constructor(
    /** The store's report of an ended call (deadline queue, breaker, metrics). */
    readonly report: Report,
    readonly timeoutMs: number,
    readonly op: StoreOp,
    resolve: (value: T) => void,
    reject: (err: unknown) => void,
  ) {
    this.at = this.started + timeoutMs;
    this.#resolve = resolve;
    this.#reject = reject;
  }

  get settled(): boolean {
    return this.#resolve === undefined;
  }

  expire(): void {
    this.fail(
      new MilterStoreError(
        'ERR_MILTER_STORE_TIMEOUT',
        `policy store did not answer within ${this.timeoutMs} ms`,
      ),
    );
  }

  // Arrow properties: handed to `then` as they are.
  readonly ok = (value: T): void => {
    const resolve = this.#resolve;
    if (resolve === undefined) return;
    this.#resolve = this.#reject = undefined;
    this.report(this.op, this.started);
    resolve(value);
  };

  readonly fail = (err: unknown): void => {
    const reject = this.#reject;
    if (reject === undefined) return;
    this.#resolve = this.#reject = undefined;
    const error =
      err instanceof MilterStoreError
        ? err
        : new MilterStoreError(
            'ERR_MILTER_STORE_FAILED',
            `policy store failed: ${(err as Error)?.message ?? String(err)}`,
            { cause: err },
          );
    this.report(this.op, this.started, error.code);
    reject(error);
  };
}

/**
 * A deadline timer firing later than this (ms) means the process stood still: longer than a busy
 * event-loop turn (a few ms under load, docs/benchmark.md), far shorter than the default timeout.
 */
const STALL_MS = 10;

/**
 * The deadlines of the calls in flight, with one timer: every call gets the same timeout, so they expire in
 * the order they started (a queue, no timer per call: the store is called three times per session). A
 * settled call leaves the queue once every call before it has settled too.
 *
 * A deadline measures the store, not this process. When the timer fires, the calls are expired only
 * after the event loop's next poll phase has read what waits on the sockets, and after the answers the
 * store has but is still handing out (`delivering`): timers run before the poll phase, so after a long
 * callback every call in flight would time out although its answer had come in time. And when that check
 * runs more than STALL_MS after it was due, this process stood still (a GC pause, a long callback, a
 * stalled host) and the store had no chance to be heard: the calls due get that time again (once, at
 * most one timeout). Without both, a stall of the milter alone timed out a healthy store's calls and
 * opened the breaker.
 */
class Deadlines {
  readonly #queue: (Deadline | undefined)[] = [];
  #head = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(
    /** The longest grace after a stall (the calls' timeout). */
    readonly timeoutMs: number,
    /** Turns the store still takes to hand out the answers that have arrived (PolicyStore.delivering). */
    readonly delivering: () => number,
  ) {}

  add(d: Deadline): void {
    this.#queue.push(d);
    if (this.#timer === undefined) this.#arm(d.at - performance.now());
  }

  #arm(ms: number): void {
    const due = performance.now() + Math.max(0, ms);
    // The check phase: after the poll phase has read the sockets.
    this.#timer = setTimeout(() => setImmediate(() => this.#expire(due, -1)), Math.max(0, ms));
  }

  /**
   * A call settled: let go of the settled calls at the head. Calls mostly settle in the order they started
   * (batches are answered in order), so the queue holds about the calls in flight; waiting for the timer
   * kept every call a whole timeout, long enough to survive a scavenge and be copied by it.
   */
  settled(): void {
    const q = this.#queue;
    while (this.#head < q.length && (q[this.#head] as Deadline).settled) q[this.#head++] = undefined;
    this.#compact();
  }

  /** Forget the slots before the head: all of them once the queue is empty, else now and then. */
  #compact(): void {
    const q = this.#queue;
    if (this.#head === q.length) {
      q.length = 0;
      this.#head = 0;
    } else if (this.#head > 1024) {
      q.splice(0, this.#head);
      this.#head = 0;
    }
  }

  /**
   * `due`: when the timer was due; `turns`: how many more turns to wait for answers being handed out (-1:
   * ask the store). The answers already here when the timer fired are waited for, not those arriving
   * after: a store answering without pause (a Cluster with one shard dead) must not keep the dead shard's
   * calls from failing.
   */
  #expire(due: number, turns: number): void {
    const left = turns < 0 ? this.delivering() : Math.min(turns, this.delivering());
    if (left > 0) {
      setImmediate(() => this.#expire(due, left - 1));
      return;
    }
    this.#timer = undefined;
    const q = this.#queue;
    const now = performance.now();
    // Measured here, not when the timer fired: a stall after that counts too.
    const late = now - due;
    // One grace per call: a process that never stops stalling (every turn longer than STALL_MS) still
    // fails a dead store's calls, at most one timeout late.
    if (late > STALL_MS) {
      let graced = false;
      for (let i = this.#head; i < q.length; i++) {
        const d = q[i] as Deadline;
        if (d.at > now) break;
        if (d.settled || d.graced) continue;
        d.graced = graced = true;
      }
      if (graced) {
        this.#arm(Math.min(late, this.timeoutMs));
        return;
      }
    }
    while (this.#head < q.length) {
      const d = q[this.#head] as Deadline;
      if (!d.settled && d.at > now) break;
      q[this.#head++] = undefined;
      if (!d.settled) d.expire();
    }
    this.#compact();
    if (this.#head < q.length) this.#arm((q[this.#head] as Deadline).at - now);
  }
}

export class GuardedStore implements PolicyStore {
  readonly timeoutMs: number;
  readonly instances: number;
  readonly breaker: CircuitBreaker;
  /** This instance's own counts, for `on-store-error: local`. */
  readonly local: MemoryPolicyStore;
  readonly #onCall: ((event: StoreCallEvent) => void) | undefined;
  readonly #deadlines: Deadlines;

  constructor(
    readonly inner: PolicyStore,
    options: GuardedStoreOptions = {},
  ) {
    this.timeoutMs = Math.max(1, options.timeoutMs ?? DEFAULTS.storeTimeoutMs);
    this.instances = Math.max(1, Math.floor(options.instances ?? DEFAULTS.storeInstances));
    this.breaker =
      options.breaker instanceof CircuitBreaker
        ? options.breaker
        : new CircuitBreaker({ openMs: DEFAULTS.storeBreakerOpenMs, ...options.breaker });
    this.#onCall = options.onCall;
    this.#deadlines = new Deadlines(this.timeoutMs, () => inner.delivering ?? 0);
    this.local = new MemoryPolicyStore(
      inner.leaseTtlMs === undefined ? {} : { leaseTtlMs: inner.leaseTtlMs },
    );
  }

  get leaseTtlMs(): number | undefined {
    return this.inner.leaseTtlMs;
  }

  get breakerState(): BreakerState {
    return this.breaker.state;
  }

  sessionOpened(client: string, sessionId: string, now: number = Date.now()): Promise<number> {
    this.local.sessionOpened(client, sessionId, now);
    return this.#call('session-open', () => this.inner.sessionOpened(client, sessionId, now));
  }

  /**
   * The lease and the counts as ONE guarded call: one deadline, one breaker outcome, one `session-open`
   * metric. If it fails, the session count and the message counts have all failed.
   */
  sessionOpenedWithCounts(
    client: string,
    sessionId: string,
    windowsMs: readonly number[],
    now: number = Date.now(),
    reserve?: string,
  ): Promise<SessionOpening> {
    // The shadow's counts are read only after a failure (SharedClientStats): it records, it does not count.
    this.local.sessionOpened(client, sessionId, now);
    if (reserve !== undefined) for (const w of windowsMs) this.local.addMessage(client, w, now, reserve);
    return this.#call('session-open', () =>
      openSession(this.inner, client, sessionId, windowsMs, now, reserve),
    );
  }

  sessionClosed(client: string, sessionId: string, now: number = Date.now()): Promise<void> {
    this.local.sessionClosed(client, sessionId, now);
    return this.#call('session-close', () => this.inner.sessionClosed(client, sessionId, now));
  }

  addMessage(client: string, windowMs: number, now: number, messageId?: string): Promise<number> {
    this.local.addMessage(client, windowMs, now);
    return this.#call('message-add', () => this.inner.addMessage(client, windowMs, now, messageId));
  }

  /** Whether the shared store can take a message back (see SessionTracker: reservations at MAIL). */
  get removes(): boolean {
    return this.inner.removeMessage !== undefined;
  }

  removeMessage(client: string, windowMs: number, messageId: string, addedAt: number): Promise<void> {
    this.local.removeMessage(client, windowMs, messageId, addedAt);
    const inner = this.inner;
    return this.#call('message-remove', () => inner.removeMessage?.(client, windowMs, messageId, addedAt));
  }

  messageCount(client: string, windowMs: number, now: number): Promise<number> {
    return this.#call('message-count', () => this.inner.messageCount(client, windowMs, now));
  }

  async close(): Promise<void> {
    await this.inner.close?.();
  }

  /**
   * One guarded call: settled by whichever comes first, the answer or the deadline, with one promise (the
   * call runs for every store operation of every session: no `Promise.race`, no async wrapper, its state
   * in one object). A late answer or failure settles nothing: the call goes on in the client, of no use
   * any more.
   */
  #call<T>(op: StoreOp, fn: () => T | PromiseLike<T>): Promise<T> {
    if (!this.breaker.allow()) {
      this.#onCall?.({ op, seconds: 0, code: 'ERR_MILTER_STORE_UNAVAILABLE' });
      return Promise.reject(
        new MilterStoreError(
          'ERR_MILTER_STORE_UNAVAILABLE',
          'policy store unavailable (circuit breaker open)',
        ),
      );
    }
    return new Promise<T>((resolve, reject) => {
      const call = new GuardedCall(this.#report, this.timeoutMs, op, resolve, reject);
      this.#deadlines.add(call);
      let result: T | PromiseLike<T>;
      try {
        result = fn();
      } catch (err) {
        call.fail(err);
        return;
      }
      if (isThenable(result)) result.then(call.ok, call.fail);
      else call.ok(result);
    });
  }

  /** When a failure was last told to the closed breaker (see #report); -Infinity after a success. */
  #lastCounted = -Infinity;

  /**
   * A call ended (GuardedCall): the deadline queue, the breaker and the metrics hear of it. While the
   * breaker is closed, the failures within one timeout of the last one it was told of are not told again:
   * they share their cause (one batch that timed out, one connection that dropped, one deadline check), and
   * counting each let a single slow round trip carrying five calls open the breaker, leaving the limits
   * unapplied (or, with `on-store-error: tempfail`, deferring mail) for the whole open time. So the breaker
   * opens once the store has failed that many times, each at least a timeout after the last one counted,
   * without an answer between (by default 5 failures over at least 200 ms). Open or half-open, every
   * failure counts (a failed probe must open it again). Metrics count every call.
   */
  readonly #report: Report = (op, started, code) => {
    this.#deadlines.settled();
    const now = performance.now();
    if (code === undefined) {
      this.#lastCounted = -Infinity;
      this.breaker.success();
    } else if (this.breaker.state !== 'closed') this.breaker.failure();
    else if (now - this.#lastCounted >= this.timeoutMs) {
      this.#lastCounted = now;
      this.breaker.failure();
    }
    const seconds = (now - started) / 1000;
    this.#onCall?.(code === undefined ? { op, seconds } : { op, seconds, code });
  };
}
