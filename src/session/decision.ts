/**
 * Callback invocation and decision plumbing for the session: run a callback with a time budget without
 * leaving the synchronous fast path, turn whatever it returned into a checked decision, and map
 * decisions to preallocated responses.
 */
import type { Logger } from 'pino';
import type {
  BodyDecision,
  BodyResult,
  CallbackResult,
  DecisionKind,
  MaybePromise,
  SmtpReply,
} from '../filter.js';
import type { DecisionStage, MilterObserver, ObservedDecision } from '../observer.js';
import type { MilterResponse } from '../protocol/types.js';
import type { HandleResult } from './types.js';
import { MilterFilterError, MilterUsageError } from '../errors.js';
import { formatReply, type ReplyDecision } from './reply.js';

/** The kind of what a callback returned: a bare kind, a kind as an object, or nothing (= continue). */
export function decisionKind(d: BodyDecision | void | undefined): DecisionKind {
  return d === undefined ? 'continue' : typeof d === 'string' ? d : d.kind;
}

function isSkip(d: BodyResult): d is 'skip' | { kind: 'skip'; reply?: never } {
  return decisionKind(d) === 'skip';
}

function skipIsContinue(d: BodyResult): CallbackResult {
  return isSkip(d) ? undefined : d;
}

/**
 * A body decision answered at another stage: `skip` there is continue. SKIP is a body decision only
 * (Postfix takes it at any event, Sendmail wedges on it); where a BodyResult can reach another stage (a
 * pipeline's answer, an upstream milter's reply) it goes through here, silently, rather than reaching
 * the session as an illegal skip (sent as continue, with a warning). Synchronous for a value.
 */
export function outsideBody(result: MaybePromise<BodyResult>): MaybePromise<CallbackResult> {
  return chain(result, skipIsContinue);
}

/** Outcome of one callback: its value, or the coded error that replaces it. */
export type Settled = { ok: true; value: unknown } | { ok: false; error: MilterFilterError };

/** `v` is a promise-like (async callback). */
export function isThenable<T>(v: T | PromiseLike<T>): v is PromiseLike<T> {
  return (
    v !== null &&
    (typeof v === 'object' || typeof v === 'function') &&
    typeof (v as { then?: unknown }).then === 'function'
  );
}

/** Apply `f` to `v` now if it is a value, after it resolves if it is a promise: no microtask when sync. */
export function chain<T, U>(v: T | Promise<T>, f: (t: T) => U | Promise<U>): U | Promise<U> {
  return v instanceof Promise ? v.then(f) : f(v);
}

function failed(cause: unknown): MilterFilterError {
  if (
    (cause instanceof MilterUsageError || cause instanceof MilterFilterError) &&
    cause.code !== 'ERR_MILTER_CALLBACK_TIMEOUT'
  ) {
    // A coded error of the filter (say, an EOM action that was not negotiated) keeps its code as the cause.
    return new MilterFilterError('ERR_MILTER_CALLBACK_FAILED', `callback failed: ${cause.code}`, { cause });
  }
  return new MilterFilterError('ERR_MILTER_CALLBACK_FAILED', 'callback threw or rejected', { cause });
}

const SETTLED_UNDEFINED: Settled = Object.freeze({ ok: true as const, value: undefined });

/** The error of a callback that ran past its budget. */
function timeoutError(timeoutMs: number): MilterFilterError {
  return new MilterFilterError('ERR_MILTER_CALLBACK_TIMEOUT', `callback exceeded ${timeoutMs} ms`);
}

/**
 * One async callback raced against its budget. It settles once: with the callback's outcome, or with a
 * timeout error; whatever comes after that goes to `onLate`.
 */
class PendingCall {
  done = false;
  resolve!: (s: Settled) => void;
  readonly settled: Promise<Settled>;

  constructor(
    readonly tag: string,
    /** performance.now() when the callback was called. */
    readonly startedAt: number,
    private readonly onLate: (tag: string, late: Settled) => void,
    private readonly onSettled: (call: PendingCall) => void,
  ) {
    this.settled = new Promise<Settled>((resolve) => {
      this.resolve = resolve;
    });
  }

  readonly onValue = (value: unknown): void => {
    this.finish(value === undefined ? SETTLED_UNDEFINED : { ok: true, value });
  };

  readonly onError = (err: unknown): void => {
    this.finish({ ok: false, error: failed(err) });
  };

  finish(s: Settled): void {
    if (this.done) return this.onLate(this.tag, s);
    this.done = true;
    this.onSettled(this);
    this.resolve(s);
  }
}

const KINDS: ReadonlySet<string> = new Set(['continue', 'accept', 'reject', 'tempfail', 'discard', 'skip']);

/** A callback's return value once checked: a kind and, for reject/tempfail, an optional reply. */
export interface ParsedDecision {
  kind: DecisionKind;
  reply?: SmtpReply;
}

/**
 * Check a callback's return value. `undefined` is continue.
 * @throws MilterFilterError `ERR_MILTER_ILLEGAL_DECISION` for anything that is not a Decision.
 */
export function parseDecision(value: unknown): ParsedDecision {
  if (value === undefined) return CONTINUE_DECISION;
  if (typeof value === 'string') {
    if (KINDS.has(value)) return { kind: value as DecisionKind };
  } else if (value !== null && typeof value === 'object') {
    const { kind, reply } = value as { kind?: unknown; reply?: unknown };
    if (typeof kind === 'string' && KINDS.has(kind)) {
      if (reply === undefined) return { kind: kind as DecisionKind };
      if (reply !== null && typeof reply === 'object')
        return { kind: kind as DecisionKind, reply: reply as SmtpReply };
    }
  }
  throw new MilterFilterError('ERR_MILTER_ILLEGAL_DECISION', 'callback returned an illegal decision');
}
const CONTINUE_DECISION: ParsedDecision = Object.freeze({ kind: 'continue' });

function frozen(responses: MilterResponse[], end?: HandleResult['end']): HandleResult {
  for (const r of responses) Object.freeze(r);
  Object.freeze(responses);
  return Object.freeze(end === undefined ? { responses } : { responses, end });
}

/** Preallocated results: the hot path answers `continue` without allocating. */
export const RESULT = {
  none: frozen([]),
  quit: frozen([], 'quit'),
  fatal: frozen([], 'fatal'),
  continue: frozen([{ kind: 'continue' }]),
  accept: frozen([{ kind: 'accept' }]),
  reject: frozen([{ kind: 'reject' }]),
  tempfail: frozen([{ kind: 'tempfail' }]),
  discard: frozen([{ kind: 'discard' }]),
  skip: frozen([{ kind: 'skip' }]),
} as const;

/** Preallocated decision responses. */
export const DECISION_RESPONSE: Readonly<Record<DecisionKind, MilterResponse>> = {
  continue: RESULT.continue.responses[0] as MilterResponse,
  accept: RESULT.accept.responses[0] as MilterResponse,
  reject: RESULT.reject.responses[0] as MilterResponse,
  tempfail: RESULT.tempfail.responses[0] as MilterResponse,
  discard: RESULT.discard.responses[0] as MilterResponse,
  skip: RESULT.skip.responses[0] as MilterResponse,
};

/** The response of a decision: `y` with the reply text when there is one, else the plain byte. */
export function decisionResponse(kind: DecisionKind, replyText: string | undefined): MilterResponse {
  return replyText === undefined ? DECISION_RESPONSE[kind] : { kind: 'replyCode', text: replyText };
}

/** A single-decision result. */
export function decisionResult(kind: DecisionKind, replyText: string | undefined): HandleResult {
  return replyText === undefined ? RESULT[kind] : { responses: [{ kind: 'replyCode', text: replyText }] };
}

/** A checked decision, ready to send. */
export interface Resolved {
  kind: DecisionKind;
  /** `y` text, for reject/tempfail only. */
  reply: string | undefined;
  /** Set when the failure decision replaced the callback's result. */
  failure: MilterFilterError | undefined;
  /** Set when a stage rule changed the decision or dropped a stored reply (log it as a warning). */
  warning: string | undefined;
}

/** The stage rules `resolveDecision` applies. */
export interface ResolveRules {
  /** SKIP is legal: the command is BODY (not data carried in EOM) and SMFIP_SKIP was negotiated. */
  skipAllowed: boolean;
  /**
   * Decisions not defined here, sent as continue with a warning: DISCARD at CONNECT/HELO (Postfix ignores
   * it); ACCEPT and DISCARD at UNKNOWN outside a transaction (Postfix 3.7 smtpd panics at the next MAIL,
   * Sendmail silently discards the next message).
   */
  undefinedHere: ReadonlySet<DecisionKind> | undefined;
  /** A reply stored by setReply, consumed by this decision. */
  stored: { text: string; decision: ReplyDecision } | undefined;
}

/** The resolution of a plain `continue`, shared. */
export const CONTINUE_RESOLVED: Resolved = Object.freeze({
  kind: 'continue',
  reply: undefined,
  failure: undefined,
  warning: undefined,
});

/**
 * Turn a settled callback into the decision to send: failures and illegal values become the failure
 * decision; SKIP where illegal and decisions undefined at the stage become continue (with a warning); a stored reply
 * of the decision's class becomes the `y` text, one of the other class is dropped (with a warning).
 * `failureKind` replaces a failed or illegal result.
 */
export function resolveDecision(s: Settled, rules: ResolveRules, failureKind: DecisionKind): Resolved {
  if (s.ok && s.value === undefined && rules.stored === undefined) return CONTINUE_RESOLVED;
  const fail = (failure: MilterFilterError): Resolved => ({
    kind: failureKind,
    reply: undefined,
    failure,
    warning: undefined,
  });
  if (!s.ok) return fail(s.error);
  let kind: DecisionKind;
  let reply: string | undefined;
  try {
    const parsed = parseDecision(s.value);
    kind = parsed.kind;
    if (parsed.reply !== undefined) {
      if (kind !== 'reject' && kind !== 'tempfail') {
        throw new MilterFilterError(
          'ERR_MILTER_INVALID_REPLY',
          `a custom reply needs reject or tempfail, not ${kind}`,
        );
      }
      reply = formatReply(parsed.reply, kind);
    }
  } catch (err) {
    return fail(
      err instanceof MilterFilterError
        ? err
        : new MilterFilterError('ERR_MILTER_INVALID_REPLY', 'invalid reply', { cause: err }),
    );
  }
  let warning: string | undefined;
  if (kind === 'skip' && !rules.skipAllowed) {
    warning = 'skip is only valid from body with SMFIP_SKIP negotiated; continue sent';
    kind = 'continue';
  } else if (rules.undefinedHere?.has(kind) === true) {
    // libmilter would send it anyway; the MTAs then misbehave (see ResolveRules.undefinedHere).
    warning = `${kind} is not defined at this stage; continue sent`;
    kind = 'continue';
  }
  const stored = rules.stored;
  if (reply === undefined && stored !== undefined && (kind === 'reject' || kind === 'tempfail')) {
    if (stored.decision === kind) reply = stored.text;
    else warning = `stored ${stored.decision} reply does not match ${kind}; plain ${kind} sent`;
  }
  return { kind, reply, failure: undefined, warning };
}

/**
 * Runs callbacks for one session with its time budget, logger and observer: the failure/warning logging
 * and the timing live here so the state machine stays readable.
 */
export class CallbackRunner {
  constructor(
    /** Where logs go: the connection context, whose logger carries `client` and `txn` once known. */
    private readonly logSource: { readonly logger: Logger },
    private readonly observer: MilterObserver | undefined,
    private readonly timeoutMs: number,
    private readonly failureKind: DecisionKind,
  ) {}

  /** The async callback being watched for its budget (see `watch`). */
  private current: PendingCall | undefined;
  private timer: NodeJS.Timeout | undefined;

  private get log(): Logger {
    return this.logSource.logger;
  }

  /** Late results after a timeout are ignored, but said so. */
  private readonly onLate = (stage: string, late: Settled): void => {
    const err = late.ok ? undefined : late.error;
    this.log.warn({ stage, err, code: 'ERR_MILTER_CALLBACK_TIMEOUT' }, 'late callback result ignored');
  };

  /**
   * Run `fn(arg)`. A synchronous return or throw settles synchronously. A promise is raced against the
   * session's budget (0 = no limit); after a timeout the late value or error is logged, otherwise ignored.
   * Taking `fn` and `arg` apart spares a closure per command on the hot path.
   */
  run<A>(fn: (arg: A) => unknown, arg: A, tag: string): Settled | Promise<Settled> {
    let r: unknown;
    try {
      r = fn(arg);
    } catch (err) {
      return { ok: false, error: failed(err) };
    }
    if (r === undefined) return SETTLED_UNDEFINED;
    if (!isThenable(r)) return { ok: true, value: r };
    const call = new PendingCall(tag, performance.now(), this.onLate, this.onSettled);
    r.then(call.onValue, call.onError);
    if (this.timeoutMs > 0) this.watch(call);
    return call.settled;
  }

  /**
   * Callbacks of one session run one at a time, so one timer per session watches them, armed once and
   * re-armed on expiry for the time the running callback has left, like the connection's idle timer: a
   * timer per async callback (insert and remove in Node's timer lists) was a fifth of the async path's CPU.
   * Ref'd only while a callback runs, so it never keeps a finished process alive.
   */
  private watch(call: PendingCall): void {
    if (this.current !== undefined) {
      // Not expected (the session never overlaps callbacks); a second one is timed on its own.
      const timer = setTimeout(
        () => call.finish({ ok: false, error: timeoutError(this.timeoutMs) }),
        this.timeoutMs,
      );
      void call.settled.then(() => clearTimeout(timer));
      return;
    }
    this.current = call;
    if (this.timer === undefined) this.timer = setTimeout(this.onTimer, this.timeoutMs);
    else this.timer.ref();
  }

  private readonly onSettled = (call: PendingCall): void => {
    if (this.current !== call) return;
    this.current = undefined;
    this.timer?.unref();
  };

  private readonly onTimer = (): void => {
    const call = this.current;
    if (call === undefined) {
      this.timer = undefined;
      return;
    }
    const left = call.startedAt + this.timeoutMs - performance.now();
    if (left > 0) {
      this.timer = setTimeout(this.onTimer, Math.ceil(left));
      return;
    }
    this.timer = undefined;
    call.finish({ ok: false, error: timeoutError(this.timeoutMs) });
  };

  /** The session ended: no timer may outlive it. A callback still running keeps its promise. */
  dispose(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Run `abort`/`close`: result ignored, errors and timeouts logged, never propagated. */
  side<A>(name: 'abort' | 'close', fn: (arg: A) => unknown, arg: A): void | Promise<void> {
    return chain(this.run(fn, arg, name), (s) => {
      if (s.ok) return;
      this.log.error({ err: s.error, callback: name }, `${name} callback failed`);
      this.observer?.error?.(s.error.code);
    });
  }

  /** Check a result (see resolveDecision); log a failure with its code (and tell the observer) or a warning. */
  check(stage: DecisionStage, s: Settled, rules: ResolveRules, quiet = false): Resolved {
    const d = resolveDecision(s, rules, this.failureKind);
    if (d.failure !== undefined) {
      this.log.error(
        { err: d.failure, stage, decision: d.kind },
        'filter callback failed; failure decision sent',
      );
      this.observer?.error?.(d.failure.code);
    } else if (d.warning !== undefined && !quiet) {
      this.log.warn({ stage, decision: d.kind }, d.warning);
    }
    return d;
  }

  /** Start timing a callback, only when an observer wants decisions. */
  startTimer(): bigint | undefined {
    return this.observer?.decision ? process.hrtime.bigint() : undefined;
  }

  observe(stage: DecisionStage, kind: ObservedDecision, t0: bigint | undefined): void {
    if (t0 !== undefined) this.observer?.decision?.(stage, kind, Number(process.hrtime.bigint() - t0) / 1e9);
  }
}
