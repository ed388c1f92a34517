/**
 * One SMTP session as the policy sees it: the counters behind the DeliveryRecord, the cross-session store
 * bookkeeping, chain evaluation and the armed shutdown. Used by the filter wrapper; no protocol here.
 */
import type { Logger } from 'pino';
import type { BaseContext, ConnectionInfo, MaybePromise } from '../filter.js';
import type { EnforcedShutdown, ShutdownPolicy } from './chain.js';
import type {
  ClientInfo,
  ClientStats,
  DeliveryRecord,
  MessageOutcome,
  OutcomeClass,
  OutcomeKind,
  OutcomeStage,
  PolicyDecisionEvent,
  PolicyEvent,
  RecipientInfo,
  SessionCounters,
} from './types.js';
import { zeroCounters } from './types.js';
import { GuardedStore } from './guarded-store.js';
import { openSession, type PolicyStore } from './store.js';
import { MilterStoreError } from '../errors.js';
import { chain, isThenable } from '../session/decision.js';

const CLASS: Readonly<Record<OutcomeKind, OutcomeClass>> = {
  accepted: 'accepted',
  discarded: 'accepted',
  rejected: 'permanent-failure',
  tempfailed: 'temporary-failure',
  aborted: 'aborted',
};

/**
 * A logger obtained only when a line is written: `ctx.logger` builds a pino child per connection and per
 * transaction, and the store calls and chain evaluations of a healthy session never log.
 */
export type LazyLogger = () => Logger;

function lazyLogger(ctx: BaseContext<unknown>): LazyLogger {
  let logger: Logger | undefined;
  return () => (logger ??= ctx.logger);
}

/**
 * Lease renewal: one interval per renewal period for all the live sessions, instead of a timer per
 * session (each session's setInterval/clearInterval cost more than the policy's own work). Every live
 * session is still renewed at least every period (the first renewal may come earlier), and an empty set
 * stops its timer. The timer does not hold the process.
 */
class Renewals {
  readonly #live = new Set<() => void>();
  #timer: NodeJS.Timeout | undefined;

  constructor(readonly periodMs: number) {}

  add(renew: () => void): void {
    this.#live.add(renew);
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => {
      for (const r of this.#live) r();
    }, this.periodMs);
    this.#timer.unref();
  }

  delete(renew: () => void): void {
    this.#live.delete(renew);
    if (this.#live.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }
}

const renewalsByPeriod = new Map<number, Renewals>();

function renewalsOf(periodMs: number): Renewals {
  let r = renewalsByPeriod.get(periodMs);
  if (r === undefined) renewalsByPeriod.set(periodMs, (r = new Renewals(periodMs)));
  return r;
}

const NO_STORE_ERRORS = Object.freeze({ sessions: false, messages: false });

/** The store can take a message back: messages are counted at MAIL (SessionTracker.beforeTransaction). */
function removes(store: PolicyStore): store is PolicyStore & Required<Pick<PolicyStore, 'removeMessage'>> {
  return store instanceof GuardedStore ? store.removes : store.removeMessage !== undefined;
}

const COUNTER: Readonly<Record<OutcomeKind, keyof SessionCounters>> = {
  accepted: 'messagesAccepted',
  discarded: 'messagesDiscarded',
  rejected: 'messagesRejected',
  tempfailed: 'messagesTempfailed',
  aborted: 'messagesAborted',
};

/** Where SharedClientStats reads this instance's own counts. */
interface StatsSource {
  readonly store: GuardedStore;
  readonly key: string;
  readonly now: number;
  readonly windows: readonly number[];
  /**
   * 1 while the open transaction's message is counted but has no outcome yet (from its MAIL on): the rules
   * see the messages before it, in the local counts too; else 0.
   */
  readonly reserved: 0 | 1;
}

/** A message counted at its MAIL, until its transaction's outcome (see beforeTransaction). */
interface Reservation {
  readonly id: string;
  readonly at: number;
}

/**
 * ClientStats of a session on a shared store, whose `local` counts are computed only when read. A class
 * with the getter on its prototype: an object literal with a getter, frozen, cost every evaluation a
 * dictionary-mode object and a closure (about 3 KB of garbage per message, measured).
 */
class SharedClientStats implements ClientStats {
  #local: ClientStats['local'];
  readonly #source: StatsSource;

  constructor(
    readonly concurrentSessions: number,
    readonly messagesInWindow: Readonly<Record<number, number>>,
    readonly storeErrors: NonNullable<ClientStats['storeErrors']>,
    source: StatsSource,
  ) {
    this.#source = source;
    Object.freeze(this);
  }

  get local(): NonNullable<ClientStats['local']> {
    if (this.#local !== undefined) return this.#local;
    const { store, key, now, windows, reserved } = this.#source;
    const counts: Record<number, number> = {};
    for (const w of windows) counts[w] = Math.max(0, store.local.messageCount(key, w, now) - reserved);
    return (this.#local = Object.freeze({
      concurrentSessions: store.local.sessionCount(key, now),
      messagesInWindow: Object.freeze(counts),
      instances: store.instances,
    }));
  }

  /** As a plain object (logs, JSON): `local` is on the prototype, which JSON.stringify does not read. */
  toJSON(): ClientStats {
    const { concurrentSessions, messagesInWindow, storeErrors, local } = this;
    return { concurrentSessions, messagesInWindow, storeErrors, local };
  }
}

/** Per-connection policy state. One per SMFIC_CONNECT (a new one after SMFIC_QUIT_NC). */
export class SessionTracker {
  readonly counters: SessionCounters = zeroCounters();
  readonly startedAt: number;
  client: ClientInfo | undefined;
  helo: string | undefined;
  authenticated: string | undefined;
  lastOutcome: MessageOutcome | undefined;
  /** A MAIL transaction is open and has no outcome yet. */
  inTransaction = false;
  /** A recipient was answered DISCARD: the whole message is discarded by the MTA. */
  discarded = false;
  /** The shutdown to deliver at the next command that expects a reply. Stays armed once set. */
  armed: EnforcedShutdown | undefined;
  #concurrent = 0;
  readonly #windows: Record<number, number> = {};
  #storeKey: string | undefined;
  #sessionsFailed = false;
  #messagesFailed = false;
  #renewal: { renewals: Renewals; renew: () => void } | undefined;
  /**
   * A message counted ahead of its outcome: the open transaction's, or the session's first, counted at
   * CONNECT before any MAIL (then also `#held`). See connect and beforeTransaction.
   */
  #reserved: Reservation | undefined;
  /** The reservation made at CONNECT for the first transaction, until a MAIL takes it. */
  #held: Reservation | undefined;
  #transactions = 0;

  constructor(
    readonly policy: ShutdownPolicy,
    readonly connectionId: string,
  ) {
    this.startedAt = policy.now();
  }

  /**
   * Store and chain work that the reply at hand does not wait for: it runs on while the MTA reads the reply
   * and sends its next command, and the next command that can deliver a shutdown awaits it first. Set by
   * `connectLater` and `outcomeLater`.
   */
  pending: Promise<unknown> | undefined;

  /**
   * SMFIC_CONNECT, without holding its reply: a verdict reached at CONNECT fires at the next command
   * (HELO, MAIL...) anyway, so the CONNECT reply need not wait for the store's round trip, which then
   * overlaps the MTA's own (on a fleet, the HELO usually finds the answer already in).
   */
  connectLater(ctx: BaseContext<unknown>, info: ConnectionInfo): void {
    this.#later(ctx, (macros) => this.connect(ctx, info, macros));
  }

  /**
   * `outcome` without holding the reply at hand: the EOM reply does not depend on what the chain says after
   * the message (a verdict then fires at the next command). The store call is still issued before the
   * reply is written: on this instance a session that starts after the reply is counted after it (one
   * connection to the store, in order); on another instance it may race the call in flight, as any
   * concurrent sender does.
   */
  outcomeLater(ctx: BaseContext<unknown>, kind: OutcomeKind, stage: OutcomeStage): void {
    this.#later(ctx, (macros) => this.outcome(ctx, kind, stage, macros));
  }

  #later(ctx: BaseContext<unknown>, work: (macros: Record<string, string>) => MaybePromise<unknown>): void {
    // The chain reads the macros of this command, which the session replaces as the next one comes.
    const macros = this.#macros(ctx);
    const before = this.pending;
    let started: Promise<unknown>;
    if (before !== undefined) started = before.then(() => work(macros));
    else {
      // Work done at once (an in-process store, rules that answer at once) leaves nothing pending: the
      // next command is then answered without waiting for a promise.
      let done: unknown;
      try {
        done = work(macros);
      } catch (err) {
        done = Promise.reject(err);
      }
      if (!(done instanceof Promise)) return;
      started = done;
    }
    const p: Promise<unknown> = started.finally(() => {
      if (this.pending === p) this.pending = undefined;
    });
    this.pending = p;
  }

  /** SMFIC_CONNECT: record the client, open its lease in the store, consult the chain (cross-session limits). */
  connect(
    ctx: BaseContext<unknown>,
    info: ConnectionInfo,
    macros?: Record<string, string>,
  ): MaybePromise<EnforcedShutdown | undefined> {
    this.client = { address: info.address, hostname: info.hostname, port: info.port, family: info.family };
    // Grouped by network (clientPrefix), so that rotating addresses within a /64 does not escape a limit.
    const key = this.policy.clientKey(info.address);
    const logger = lazyLogger(ctx);
    const evaluate = (): MaybePromise<EnforcedShutdown | undefined> =>
      this.#evaluate(logger, ctx, 'connect', undefined, 'next-command', macros);
    if (key === undefined) return evaluate();
    const store = this.policy.store;
    const now = this.policy.now();
    this.#storeKey = key;
    const windows = this.policy.clientWindows;
    // The first message is counted now, with the lease (see #hold).
    const held = windows.length > 0 && removes(store) ? this.#hold(now) : undefined;
    // One store call: the lease and the counts (on Redis, one answer for both).
    const opened = this.#store(
      logger,
      () => openSession(store, key, this.connectionId, windows, now, held?.id),
      (o) => {
        this.#concurrent = o.sessions;
        this.#sessionsFailed = false;
        this.#countsRead(windows, o.messages);
        // The rules compare the messages before this session's with their limit.
        if (held !== undefined) for (const w of windows) this.#windows[w]! -= 1;
      },
      () => {
        this.#concurrent = 0;
        this.#sessionsFailed = true;
        if (windows.length > 0) this.#countsFailed(windows);
        // Counted or not, unknown: taken back; the first MAIL then counts its message itself.
        this.#release(logger, key);
      },
    );
    return chain(opened, () => {
      this.#startRenewal(logger, key);
      return chain(evaluate(), (verdict) => {
        this.#releaseIfArmed(logger, key, held);
        return verdict;
      });
    });
  }

  /**
   * Count the session's first message at CONNECT, in the call that opens its lease, instead of at its MAIL:
   * one store call a session fewer (most sessions carry one message: Postfix opens a milter connection per
   * SMTP session), and a MAIL that needs no store answer. Exact all the same: the place is taken in one
   * atomic step with reading the count, so no more than the limit pass; a session that sends no message
   * gives its place back (an aborted transaction, a verdict, the session's end). The price: while a session
   * has not sent its first MAIL, its client has one place fewer for its other sessions.
   */
  #hold(now: number): Reservation {
    return (this.#held = this.#reserve(now));
  }

  /** Count a message ahead of its outcome under a new id of this session (see #reserved). */
  #reserve(now: number): Reservation {
    return (this.#reserved = { id: `${this.connectionId}:${++this.#transactions}`, at: now });
  }

  /** The transaction ended with `kind` at `stage`: count it, tell the store, consult the chain. */
  outcome(
    ctx: BaseContext<unknown>,
    kind: OutcomeKind,
    stage: OutcomeStage,
    macros?: Record<string, string>,
  ): MaybePromise<EnforcedShutdown | undefined> {
    this.inTransaction = false;
    this.discarded = false;
    this.counters[COUNTER[kind]] += 1;
    this.lastOutcome = { kind, class: CLASS[kind], stage };
    const key = this.#storeKey;
    const logger = lazyLogger(ctx);
    let counted: MaybePromise<boolean | undefined>;
    if (key !== undefined && this.#reserved !== undefined) {
      // Counted at MAIL: an aborted message is taken back, any other stays (the counts then include it).
      if (kind === 'aborted') this.#release(logger, key);
      else {
        this.#reserved = undefined;
        if (!this.#messagesFailed) for (const w of this.policy.clientWindows) this.#windows[w]! += 1;
      }
    } else if (kind !== 'aborted' && key !== undefined) {
      const store = this.policy.store;
      const now = this.policy.now();
      counted = this.#countMessages(logger, key, (w) => store.addMessage(key, w, now));
    }
    return chain(counted, () => this.#evaluate(logger, ctx, 'message', undefined, 'next-command', macros));
  }

  /**
   * MAIL: count this transaction's message now, in one atomic step with reading the client's count
   * (a reservation), and consult the chain with the messages before it: of all the sessions of a client
   * at their MAIL at once, on any instance of a fleet, only as many as the limit has room for pass; the
   * others get their 421 here and their message is taken back, as is an aborted transaction's. The
   * session's first message was counted at CONNECT already (see #hold): its MAIL makes no store call. With a
   * store that cannot take a message back, the first transaction uses the counts read at CONNECT, a later
   * one reads them again, and the message is counted when it has finished (senders running at the same
   * moment can then pass the limit by the messages in flight).
   */
  beforeTransaction(ctx: BaseContext<unknown>): MaybePromise<unknown> {
    const key = this.#storeKey;
    if (key === undefined) return undefined;
    const held = this.#held;
    this.#held = undefined;
    const logger = lazyLogger(ctx);
    if (this.armed !== undefined) {
      this.#releaseIfArmed(logger, key, held);
      return undefined;
    }
    const windows = this.policy.clientWindows;
    if (windows.length === 0) return undefined;
    const store = this.policy.store;
    const now = this.policy.now();
    // Counted at CONNECT: no store call; the rules see the counts read then.
    if (held !== undefined && this.#reserved === held) return this.#evaluateReserved(logger, ctx, key, held);
    if (removes(store)) {
      const reserved = this.#reserve(now);
      return chain(
        this.#countMessages(logger, key, (w) => store.addMessage(key, w, now, reserved.id)),
        (counted) => {
          // The rules compare the messages before this one with their limit.
          if (counted === true) for (const w of windows) this.#windows[w]! -= 1;
          return this.#evaluateReserved(logger, ctx, key, reserved);
        },
      );
    }
    if (this.lastOutcome === undefined) return undefined;
    return chain(
      this.#countMessages(logger, key, (w) => store.messageCount(key, w, now)),
      () => this.#evaluate(logger, ctx, 'message'),
    );
  }

  /** The chain at MAIL, with `reserved` counted: a verdict gives its place back. */
  #evaluateReserved(
    logger: LazyLogger,
    ctx: BaseContext<unknown>,
    key: string,
    reserved: Reservation,
  ): MaybePromise<unknown> {
    return chain(this.#evaluate(logger, ctx, 'message'), () => this.#releaseIfArmed(logger, key, reserved));
  }

  /** The session is ending (a verdict is armed): `reserved`, if still counted ahead, goes back at once. */
  #releaseIfArmed(logger: LazyLogger, key: string, reserved: Reservation | undefined): void {
    if (this.armed !== undefined && reserved !== undefined && this.#reserved === reserved) {
      this.#release(logger, key);
    }
  }

  /**
   * Take back the message counted ahead (at MAIL or CONNECT), if any: it was not sent. Not waited for
   * (nothing depends on it).
   */
  #release(logger: LazyLogger, key: string): void {
    const reserved = this.#reserved;
    if (reserved === undefined) return;
    this.#reserved = undefined;
    const store = this.policy.store;
    for (const w of this.policy.clientWindows) {
      void this.#store(logger, () => store.removeMessage?.(key, w, reserved.id, reserved.at));
    }
  }

  /**
   * Read (or add to) every tracked window; a failure zeroes them all and marks the counts as failed.
   * Undefined when no rule counts messages; see #store for the rest.
   */
  // One promise per store call at most, no async closures: this runs for every store call of every
  // session, and each layer costs a promise and a microtask turn.
  #countMessages(
    logger: LazyLogger,
    key: string,
    count: (windowMs: number) => number | Promise<number>,
  ): boolean | Promise<boolean> | undefined {
    const windows = this.policy.clientWindows;
    if (windows.length === 0) return undefined;
    const failed = (): void => this.#countsFailed(windows);
    if (windows.length === 1) {
      // The usual case (one `window` in the rules): no arrays.
      const w = windows[0] as number;
      return this.#store(
        logger,
        () => count(w),
        (n) => {
          this.#windows[w] = n;
          this.#messagesFailed = false;
        },
        failed,
      );
    }
    return this.#store(
      logger,
      () => Promise.all(windows.map(count)),
      (counts) => this.#countsRead(windows, counts),
      failed,
    );
  }

  /** The store's counts of `windows`, in their order. */
  #countsRead(windows: readonly number[], counts: readonly number[]): void {
    for (let i = 0; i < windows.length; i++) this.#windows[windows[i] as number] = counts[i] ?? 0;
    this.#messagesFailed = false;
  }

  /** The message counts could not be had: zero, and marked failed for the rules' `on-store-error`. */
  #countsFailed(windows: readonly number[]): void {
    this.#messagesFailed = true;
    for (const w of windows) this.#windows[w] = 0;
  }

  /**
   * A store whose leases expire is told every third of their life that this session is still open, so
   * that a crashed milterd's sessions stop counting on their own (see Renewals).
   */
  #startRenewal(logger: LazyLogger, key: string): void {
    const ttl = this.policy.store.leaseTtlMs;
    if (ttl === undefined || this.#renewal !== undefined) return;
    const renew = (): void => {
      if (this.#storeKey !== key) return;
      const store = this.policy.store;
      void this.#store(logger, () => store.sessionOpened(key, this.connectionId, this.policy.now()));
    };
    const renewals = renewalsOf(Math.max(10, Math.floor(ttl / 3)));
    renewals.add(renew);
    this.#renewal = { renewals, renew };
  }

  /** A recipient was accepted (continue/accept/discard). */
  recipientAccepted(): void {
    this.counters.recipientsAccepted += 1;
  }

  /**
   * A recipient was rejected. With `ourReply` (the wrapper writes this recipient's reply and the MTA uses
   * it) an enforced verdict is returned to be that reply; otherwise (rejected by the MTA itself, whose
   * reply wins, or by a throwing callback, answered by the session) the shutdown is only armed.
   */
  recipientRejected(
    ctx: BaseContext<unknown>,
    recipient: RecipientInfo,
    ourReply: boolean,
  ): MaybePromise<EnforcedShutdown | undefined> {
    this.counters.recipientsRejected += 1;
    if (!ourReply) return chain(this.evaluate(ctx, 'recipient', recipient, 'next-command'), () => undefined);
    return this.evaluate(ctx, 'recipient', recipient, 'this-reply');
  }

  /** Consult the chain (unless already armed) and arm an enforced verdict. */
  evaluate(
    ctx: BaseContext<unknown>,
    event: PolicyEvent,
    recipient?: RecipientInfo,
    firesAt: PolicyDecisionEvent['firesAt'] = 'next-command',
  ): MaybePromise<EnforcedShutdown | undefined> {
    return this.#evaluate(lazyLogger(ctx), ctx, event, recipient, firesAt);
  }

  #evaluate(
    logger: LazyLogger,
    ctx: BaseContext<unknown>,
    event: PolicyEvent,
    recipient?: RecipientInfo,
    firesAt: PolicyDecisionEvent['firesAt'] = 'next-command',
    macros?: Record<string, string>,
  ): MaybePromise<EnforcedShutdown | undefined> {
    // Once armed the session is ending; more verdicts would only repeat the same log line.
    if (this.armed !== undefined) return undefined;
    const record = this.snapshot(ctx, event, recipient, macros);
    return chain(this.policy.evaluateNow(record, { logger, firesAt }), this.#arm);
  }

  readonly #arm = (verdict: EnforcedShutdown | undefined): EnforcedShutdown | undefined => {
    if (verdict !== undefined) this.armed = verdict;
    return verdict;
  };

  /** A frozen DeliveryRecord of the session now. */
  snapshot(
    ctx: BaseContext<unknown>,
    event: PolicyEvent,
    recipient?: RecipientInfo,
    macros: Record<string, string> = this.#macros(ctx),
  ): DeliveryRecord {
    const c = this.counters;
    const attempts = c.messagesAccepted + c.messagesDiscarded + c.messagesRejected + c.messagesTempfailed;
    return Object.freeze({
      connectionId: this.connectionId,
      event,
      client: this.client,
      helo: this.helo,
      authenticated: this.authenticated,
      macros: Object.freeze(macros),
      startedAt: this.startedAt,
      ageMs: Math.max(0, this.policy.now() - this.startedAt),
      counters: Object.freeze({ ...c }),
      attempts,
      failures: c.messagesRejected + c.messagesTempfailed,
      lastOutcome: this.lastOutcome,
      recipient,
      clientStats: this.#clientStats(),
    });
  }

  #macros(ctx: BaseContext<unknown>): Record<string, string> {
    try {
      return ctx.macros();
    } catch {
      return {};
    }
  }

  /**
   * The cross-session counts, and what `on-store-error` needs: which counts failed, and (read lazily:
   * only `on-store-error: local` after a failure, or a hook that asks, reads it) this instance's own counts.
   */
  #clientStats(): ClientStats {
    const concurrentSessions = this.#concurrent;
    const messagesInWindow = Object.freeze({ ...this.#windows });
    const store = this.policy.store;
    const key = this.#storeKey;
    if (!(store instanceof GuardedStore) || key === undefined) {
      return Object.freeze({ concurrentSessions, messagesInWindow });
    }
    const failed = this.#sessionsFailed || this.#messagesFailed;
    const storeErrors = failed
      ? Object.freeze({ sessions: this.#sessionsFailed, messages: this.#messagesFailed })
      : NO_STORE_ERRORS;
    return new SharedClientStats(concurrentSessions, messagesInWindow, storeErrors, {
      store,
      key,
      now: this.policy.now(),
      windows: this.policy.clientWindows,
      reserved: this.#reserved === undefined ? 0 : 1,
    });
  }

  /**
   * The session ended: release its lease. Idempotent, never throws. The release is issued, not waited for:
   * nothing depends on its answer (a failure is still logged), and the session's end (the user's close
   * callback) need not wait for a store round trip. A shared store sends what it holds when it closes.
   */
  close(logger: Logger | LazyLogger): MaybePromise<void> {
    if (this.#renewal !== undefined) this.#renewal.renewals.delete(this.#renewal.renew);
    this.#renewal = undefined;
    // The last outcome's verdict and log line come before the session's end.
    if (this.pending) return this.pending.then(() => this.#leave(logger));
    this.#leave(logger);
  }

  #leave(logger: Logger | LazyLogger): void {
    const key = this.#storeKey;
    this.#storeKey = undefined;
    if (key === undefined) return;
    const store = this.policy.store;
    const lazy = typeof logger === 'function' ? logger : () => logger;
    // A transaction still open (the MTA went away in it): its message was not sent.
    this.#release(lazy, key);
    void this.#store(lazy, () => store.sessionClosed(key, this.connectionId, this.policy.now()));
  }

  /**
   * One store call; `onValue` receives its answer, `onFailure` runs if it fails. A failing store must never
   * cut mail: the rules' `on-store-error` decides. Returns whether it answered: at once (a boolean) when
   * the store answered synchronously (the memory store), else as one promise. Failures are logged at
   * warn under the policy's log rate limit (per error code: a dead store fails every session's call at
   * once), except while the circuit breaker is open (then every call fails at once: the breaker's own
   * state change was the line worth reading, and metrics count the rest).
   */
  #store<T>(
    logger: LazyLogger,
    fn: () => T | PromiseLike<T>,
    onValue?: (value: T) => void,
    onFailure?: () => void,
  ): boolean | Promise<boolean> {
    const failed = (err: unknown): boolean => {
      const code = err instanceof MilterStoreError ? err.code : 'ERR_MILTER_STORE_FAILED';
      const line = 'shutdown policy store failed; rules apply their on-store-error';
      if (code === 'ERR_MILTER_STORE_UNAVAILABLE') logger().debug({ err }, line);
      else if (this.policy.logLimiter.allow(`policy store ${code}`)) logger().warn({ err }, line);
      onFailure?.();
      return false;
    };
    let result: T | PromiseLike<T>;
    try {
      result = fn();
    } catch (err) {
      return failed(err);
    }
    if (!isThenable(result)) {
      onValue?.(result);
      return true;
    }
    return Promise.resolve(result).then((value) => {
      onValue?.(value);
      return true;
    }, failed);
  }
}
