/**
 * The per-connection session: libmilter's state machine (protocol doc §7) and callback dispatch. Pure:
 * no sockets and no encoding; the server feeds decoded commands one at a time and writes what `handle`
 * returns. Synchronous callbacks get a synchronous answer (no Promise, no microtask, no allocation for a
 * plain `continue`).
 */
import type { Logger } from 'pino';
import type { Filter, NegotiateResult, NegotiationOffer } from '../filter.js';
import type { LogRateLimiter } from '../logging/rate-limit.js';
import type { DecisionStage, MilterObserver, ObservedDecision } from '../observer.js';
import type { OptnegCommand } from '../protocol/types.js';
import type {
  HandleResult,
  Session,
  SessionCommand,
  SessionIO,
  SessionOptions,
  TerminationReason,
} from './types.js';
import { MilterError, MilterFilterError, MilterProtocolError } from '../errors.js';
import { MILTER_MDS_64K, SMFIP_NR_BODY, SMFIP_SKIP } from '../protocol/constants.js';
import { PackedMacros } from '../protocol/packed-macros.js';
import { ConnectionContext, MessageEomContext } from './context.js';
import {
  CallbackRunner,
  chain,
  CONTINUE_RESOLVED,
  decisionResponse,
  decisionResult,
  RESULT,
} from './decision.js';
import type { Resolved, Settled } from './decision.js';
import { MacroStore } from './macros.js';
import { negotiate, normalizeOffer, type NegotiationOutcome } from './negotiate.js';
import {
  callStage,
  describeCommand,
  skippableStates,
  STAGES,
  State,
  STATE_NAMES,
  transitionAllowed,
  undefinedDecisions,
} from './stages.js';
import type { StageCommand, StageInfo } from './stages.js';
import { DEFAULTS } from '../defaults.js';
import { unreachable } from '../unreachable.js';

/**
 * Create the session of one milter connection.
 *
 * `handle` never throws for filter misbehaviour (a throw, a timeout or an illegal decision becomes
 * `options.failureDecision`, logged with a coded MilterFilterError); it throws MilterProtocolError for
 * protocol violations (a command before OPTNEG, a second OPTNEG, an empty BODY), after which the server
 * closes the socket and calls `terminate`.
 */
export function createSession(options: SessionOptions, io: SessionIO): Session {
  return new MilterSession(options, io);
}

const RESULT_NONE = RESULT.none;
const RESULT_QUIT = RESULT.quit;
const RESULT_FATAL = RESULT.fatal;
const RESULT_CONTINUE = RESULT.continue;

class MilterSession implements Session {
  private state: State = State.INIT;
  /** A mail transaction is open: `abort` is owed if it ends without EOM or a message-ending decision. */
  private inTxn = false;
  /** QUIT, refused negotiation or terminate happened: nothing more is handled. */
  private ended = false;
  /** `close` has not run yet for the current (QUIT_NC-delimited) SMTP session. */
  private closeOwed = true;
  private neg: NegotiationOutcome | undefined;
  /** The command being handled asynchronously, if any. */
  private inFlight: Promise<HandleResult> | undefined;
  private skippable = 0;
  private noReply = 0;
  private emulatedNoReply = 0;
  private readonly store = new MacroStore();
  private readonly ctx: ConnectionContext;
  private readonly filter: Filter<unknown>;
  private readonly log: Logger;
  private readonly runner: CallbackRunner;
  private readonly observer: MilterObserver | undefined;
  private readonly floor: number;
  private readonly logLimiter: LogRateLimiter | undefined;
  /**
   * The per-command trace line and the per-decision debug line, decided once per connection: a level check
   * per command (a symbol lookup through pino's child chain) was measurable. A level changed at run time
   * applies to connections opened after it.
   */
  private readonly traceCommands: boolean;
  private readonly debugDecisions: boolean;

  constructor(
    options: SessionOptions,
    private readonly io: SessionIO,
  ) {
    this.filter = options.filter;
    this.log = options.logger;
    this.ctx = new ConnectionContext(options.id, options.logger, this.store);
    this.runner = new CallbackRunner(
      this.ctx,
      options.observer,
      options.callbackTimeoutMs,
      options.failureDecision ?? DEFAULTS.failureDecision,
    );
    this.observer = options.observer;
    this.floor = options.maxDataSize ?? MILTER_MDS_64K;
    this.logLimiter = options.logLimiter;
    this.traceCommands = this.log.isLevelEnabled('trace');
    this.debugDecisions = this.log.isLevelEnabled('debug');
  }

  get maxDataSize(): number {
    return this.neg?.options.maxDataSize ?? this.floor;
  }

  get idle(): boolean {
    return this.ended || this.state === State.INIT || this.state === State.Q_NC;
  }

  handle(cmd: SessionCommand): HandleResult | Promise<HandleResult> {
    const result = this.dispatch(cmd);
    // Remembered so terminate() can wait for it: callbacks never overlap, and abort/eom stay exclusive.
    // Never cleared: waiting on a settled promise costs one microtask, clearing it cost a promise per command.
    if (result instanceof Promise) this.inFlight = result;
    return result;
  }

  private dispatch(cmd: SessionCommand): HandleResult | Promise<HandleResult> {
    if (this.ended) return RESULT_NONE;
    if (this.traceCommands) this.ctx.logger.trace(describeCommand(cmd), 'command');
    switch (cmd.kind) {
      case 'macro':
        this.store.define(cmd.stage, cmd instanceof PackedMacros ? cmd : cmd.macros);
        return RESULT_NONE;
      case 'optneg':
        return this.onOptneg(cmd);
      case 'quit':
        this.ended = true;
        this.state = State.QUIT;
        return chain(this.finish(), () => this.closed(RESULT_QUIT));
      default:
        break;
    }
    if (this.state === State.INIT) {
      throw new MilterProtocolError('ERR_MILTER_NEGOTIATION', `${cmd.kind} before OPTNEG`);
    }
    switch (cmd.kind) {
      case 'quitNewConnection':
        return this.onQuitNewConnection();
      case 'abort':
        return this.onAbort();
      case 'eom': {
        const chunk = cmd.chunk;
        return this.admitThen(State.ENDM, () => this.onEom(chunk));
      }
      case 'body':
        // libmilter ends the session on an empty BODY; no MTA sends one.
        if (cmd.chunk.length === 0)
          throw new MilterProtocolError('ERR_MILTER_MALFORMED_PAYLOAD', 'empty BODY');
        return this.step(cmd);
      default:
        return this.step(cmd);
    }
  }

  terminate(reason: TerminationReason): Promise<void> {
    if (this.ended) return Promise.resolve();
    this.ended = true;
    if (this.log.isLevelEnabled('debug')) this.log.debug({ reason }, 'session terminated');
    const end = (): Promise<void> =>
      Promise.resolve(this.finish())
        .catch(() => undefined)
        .then(() => this.runner.dispose());
    // A callback still running (bounded by callbackTimeoutMs) finishes first, as in libmilter, which only
    // notices the EOF after the callback returned.
    const running = this.inFlight;
    return running ? running.then(end, end) : end();
  }

  // ---- state machine ----

  /**
   * libmilter's transition check (§7.2): allowed directly or by hopping skippable stages; otherwise abort
   * an open transaction, pretend HELO and check again; if still illegal the command is dropped silently.
   */
  private admit(target: State): boolean | Promise<boolean> {
    if (transitionAllowed(this.state, target, this.skippable)) return true;
    const wasInTxn = this.inTxn;
    const from = this.state;
    return chain(wasInTxn ? this.abortTransaction() : undefined, () => {
      if (transitionAllowed(State.HELO, target, this.skippable)) return true;
      if (wasInTxn) this.state = State.HELO;
      if (this.log.isLevelEnabled('debug')) {
        this.log.debug(
          { state: STATE_NAMES[from], target: STATE_NAMES[target] },
          'out-of-sequence command dropped',
        );
      }
      return false;
    });
  }

  private admitThen(
    target: State,
    go: () => HandleResult | Promise<HandleResult>,
  ): HandleResult | Promise<HandleResult> {
    const ok = this.admit(target);
    if (ok === true) return go();
    if (ok === false) return RESULT_NONE;
    return ok.then((yes) => (yes ? go() : RESULT_NONE));
  }

  private step(cmd: StageCommand): HandleResult | Promise<HandleResult> {
    const info: StageInfo | undefined = (STAGES as Partial<Record<string, StageInfo>>)[cmd.kind];
    if (info === undefined)
      throw new MilterProtocolError('ERR_MILTER_UNKNOWN_COMMAND', `unknown command ${cmd.kind}`);
    const ok = this.admit(info.state);
    if (ok === true) return this.enter(info, cmd);
    if (ok === false) return RESULT_NONE;
    return ok.then((yes) => (yes ? this.enter(info, cmd) : RESULT_NONE));
  }

  /** Bookkeeping of an admitted command (macros per §6.2, connection, envelope), then its callback. */
  private enter(info: StageInfo, cmd: StageCommand): HandleResult | Promise<HandleResult> {
    const ctx = this.ctx;
    switch (cmd.kind) {
      case 'connect':
        this.store.clearAfter('C');
        ctx.bindClient({ hostname: cmd.hostname, family: cmd.family, port: cmd.port, address: cmd.address });
        ctx.helo = undefined;
        break;
      case 'helo':
        this.store.clearAfter('H');
        ctx.helo = cmd.hostname;
        break;
      case 'mail':
        // A new MAIL while a transaction is still open (no ABORT came) ends it first, like go-milter.
        if (this.inTxn) {
          const aborted = this.abortTransaction();
          if (aborted instanceof Promise) return aborted.then(() => this.enter(info, cmd));
        }
        this.store.clearAfter('M');
        ctx.beginTransaction(cmd.sender, cmd.args);
        this.inTxn = true;
        break;
      case 'rcpt':
        this.store.clearAfter('R');
        this.ensureTransaction();
        ctx.envelopeState?.recipients.push({ address: cmd.recipient, args: cmd.args });
        break;
      case 'unknown':
        break;
      case 'data':
      case 'header':
      case 'eoh':
      case 'body':
        this.ensureTransaction();
        break;
      default:
        // Every stage command is listed: a new one fails to compile here until its bookkeeping is decided.
        return unreachable(cmd, 'stage command');
    }
    this.state = info.state;
    return this.run(info, cmd);
  }

  /** Transaction commands reached without MAIL (SMFIP_NOMAIL) still open a transaction. */
  private ensureTransaction(): void {
    if (this.inTxn) return;
    this.inTxn = true;
    if (this.ctx.envelopeState === undefined) this.ctx.beginTransaction('', []);
  }

  /** The message ended without `abort` (EOM, or a message-ending decision). */
  private endTransaction(): void {
    this.inTxn = false;
    this.ctx.resetTransaction();
  }

  /** The message ended abnormally: call `abort` (the envelope is still visible to it), then reset. */
  private abortTransaction(): void | Promise<void> {
    this.inTxn = false;
    const r = this.filter.abort ? this.runner.side('abort', this.callAbort, this.ctx) : undefined;
    return chain(r, () => this.ctx.resetTransaction());
  }

  /** End of an SMTP session (QUIT, QUIT_NC, terminate, refused negotiation): abort, then close once. */
  private finish(): void | Promise<void> {
    return chain(this.inTxn ? this.abortTransaction() : undefined, () => {
      if (!this.closeOwed) return;
      this.closeOwed = false;
      return this.filter.close ? this.runner.side('close', this.callClose, this.ctx) : undefined;
    });
  }

  private onQuitNewConnection(): HandleResult | Promise<HandleResult> {
    return chain(this.finish(), () => {
      // New SMTP session on the same socket: everything but the negotiated options goes (§7.6).
      this.store.clear();
      this.ctx.resetConnection();
      this.inTxn = false;
      this.state = State.Q_NC;
      this.closeOwed = true;
      return RESULT_NONE;
    });
  }

  private onAbort(): HandleResult | Promise<HandleResult> {
    // After EOM or a message-ending decision the state is ENDM/HELO, which refuses ABORT: it is dropped
    // without calling `abort` (Postfix's ABORT after every message, and its duplicate ABORT).
    return this.admitThen(State.ABRT, () => {
      const r = this.inTxn ? this.abortTransaction() : undefined;
      this.state = State.ABRT;
      return chain(r, () => RESULT_NONE);
    });
  }

  // ---- negotiation ----

  private onOptneg(cmd: OptnegCommand): HandleResult | Promise<HandleResult> {
    if (this.state !== State.INIT) throw new MilterProtocolError('ERR_MILTER_NEGOTIATION', 'second OPTNEG');
    this.store.clear();
    const offer: NegotiationOffer = { version: cmd.version, actions: cmd.actions, protocol: cmd.protocol };
    const cb = this.filter.negotiate;
    // Timed even without a callback: a refusal is observed either way.
    const t0 = this.runner.startTimer();
    if (!cb) return this.applyNegotiation(offer, undefined, t0);
    const call = (o: NegotiationOffer): unknown => cb.call(this.filter, this.ctx, o);
    const settled = this.runner.run(call, normalizeOffer(offer), 'negotiate');
    return chain(settled, (s) => {
      if (!s.ok) return this.refuse(s.error, t0);
      if (s.value === null || typeof s.value !== 'object') {
        return this.refuse('negotiate returned no result', t0);
      }
      return this.applyNegotiation(offer, s.value as NegotiateResult, t0);
    });
  }

  /** `override`: the negotiate callback's result (then a success is observed as its `continue`). */
  private applyNegotiation(
    offer: NegotiationOffer,
    override: NegotiateResult | undefined,
    t0: bigint | undefined,
  ): HandleResult | Promise<HandleResult> {
    let out: NegotiationOutcome;
    try {
      out = negotiate(this.filter, offer, this.floor, override);
    } catch (err) {
      return this.refuse(err, t0);
    }
    if (override !== undefined) this.runner.observe('negotiate', 'continue', t0);
    this.neg = out;
    this.ctx.negotiated = out.options;
    this.skippable = skippableStates(out.requested);
    this.noReply = out.noReply;
    this.emulatedNoReply = out.emulatedNoReply;
    this.state = State.OPTS;
    return { responses: [out.response] };
  }

  /**
   * Refuse the MTA: no reply, `close` runs (without `connect`), the server drops the socket. Observed as
   * decision `refused` (the MTA applies its own failure action), whatever the callback returned.
   */
  private refuse(cause: unknown, t0: bigint | undefined): HandleResult | Promise<HandleResult> {
    const own = cause instanceof MilterError && cause.code === 'ERR_MILTER_NEGOTIATION';
    const err = own
      ? cause
      : new MilterProtocolError(
          'ERR_MILTER_NEGOTIATION',
          typeof cause === 'string' ? `negotiation refused: ${cause}` : 'negotiation refused',
          { cause },
        );
    this.runner.observe('negotiate', 'refused', t0);
    if (this.logLimiter?.allow(err.code) !== false) {
      // What the offer lacked is the message; a stack adds nothing. A filter's throw keeps its stack.
      if (cause instanceof MilterFilterError) this.log.error({ err }, 'negotiation refused');
      else this.log.error({ code: err.code, reason: err.message }, 'negotiation refused');
    }
    this.observer?.error?.(err.code);
    this.ended = true;
    return chain(this.finish(), () => this.closed(RESULT_FATAL));
  }

  /** The last result of a session that ended itself (QUIT, refused negotiation): no timer outlives it. */
  private closed(result: HandleResult): HandleResult {
    this.runner.dispose();
    return result;
  }

  // ---- callbacks and decisions ----

  /** Count a stage's decision, and log it at debug. */
  private observe(stage: DecisionStage, decision: ObservedDecision, t0: bigint | undefined): void {
    this.runner.observe(stage, decision, t0);
    if (this.debugDecisions) this.ctx.logger.debug({ stage, decision }, 'decision');
  }

  /** Call the stage callback of `cmd` (bound once: no closure per command). */
  private readonly callStage = (cmd: StageCommand): unknown => callStage(this.filter, this.ctx, cmd);
  private readonly callAbort = (ctx: ConnectionContext): unknown => this.filter.abort?.(ctx);
  private readonly callClose = (ctx: ConnectionContext): unknown => this.filter.close?.(ctx);

  private noReplyResult(bit: number): HandleResult {
    // NR emulation (libmilter): the MTA did not offer the bit, so it still waits for an answer.
    return (this.emulatedNoReply & bit) !== 0 ? RESULT_CONTINUE : RESULT_NONE;
  }

  private run(info: StageInfo, cmd: StageCommand): HandleResult | Promise<HandleResult> {
    const nr = (this.noReply & info.noReplyBit) !== 0;
    if (typeof this.filter[info.stage] !== 'function') {
      return nr ? this.noReplyResult(info.noReplyBit) : RESULT_CONTINUE;
    }
    const t0 = this.runner.startTimer();
    const settled = this.runner.run(this.callStage, cmd, info.stage);
    if (settled instanceof Promise) return settled.then((s) => this.conclude(info, s, nr, t0));
    return this.conclude(info, settled, nr, t0);
  }

  private conclude(info: StageInfo, s: Settled, nr: boolean, t0: bigint | undefined): HandleResult {
    const d = this.resolve(info, s, false);
    this.observe(info.stage, nr ? 'noreply' : d.kind, t0);
    if (nr) {
      if (d.failure === undefined && d.kind !== 'continue') {
        this.log.warn({ stage: info.stage, decision: d.kind }, 'decision at a no-reply stage ignored');
      }
      return this.noReplyResult(info.noReplyBit);
    }
    // libmilter resets to HELO after a message-ending decision; RCPT/UNKNOWN rejections keep the state.
    if (d.kind === 'accept' || (d.kind !== 'continue' && d.kind !== 'skip' && !info.keepsStateOnReject)) {
      this.state = State.HELO;
      if (this.inTxn) this.endTransaction();
    }
    return decisionResult(d.kind, d.reply);
  }

  /** Check a callback's result against the stage rules (logging failures and warnings). */
  private resolve(info: StageInfo, s: Settled, atEom: boolean): Resolved {
    const stored = this.ctx.storedReply;
    // Hot path: a plain `continue` (undefined) with no stored reply needs no rule checks.
    if (stored === undefined && s.ok && s.value === undefined) return CONTINUE_RESOLVED;
    this.ctx.storedReply = undefined;
    const skip = info.stage === 'body' && !atEom && ((this.neg?.options.protocol ?? 0) & SMFIP_SKIP) !== 0;
    // Data carried in E: a SKIP from `body` there silently means "go on to eom".
    const quiet = atEom && info.stage === 'body';
    return this.runner.check(
      info.stage,
      s,
      { skipAllowed: skip, undefinedHere: undefinedDecisions(info, this.inTxn), stored },
      quiet,
    );
  }

  /** EOM (§7.11): data carried in E goes to `body` first; then `eom`; modifications, body, one decision. */
  private onEom(chunk: Buffer): HandleResult | Promise<HandleResult> {
    this.ensureTransaction();
    this.state = State.ENDM;
    if (chunk.length === 0 || !this.filter.body) return this.runEom();
    const t0 = this.runner.startTimer();
    const cmd: StageCommand = { kind: 'body', chunk };
    const settled = this.runner.run(this.callStage, cmd, 'body');
    return chain(settled, (s) => {
      const nr = (this.noReply & SMFIP_NR_BODY) !== 0;
      const d = this.resolve(STAGES.body, s, true);
      this.observe('body', nr ? 'noreply' : d.kind, t0);
      if (nr || d.kind === 'continue') return this.runEom();
      // Unlike libmilter, which answers twice here, exactly one decision is written.
      this.endTransaction();
      return decisionResult(d.kind, d.reply);
    });
  }

  private runEom(): HandleResult | Promise<HandleResult> {
    const cb = this.filter.eom;
    if (!cb) {
      this.endTransaction();
      return RESULT_CONTINUE;
    }
    const mctx = new MessageEomContext(this.ctx, this.io);
    const t0 = this.runner.startTimer();
    const call = (m: MessageEomContext): unknown => m.settle(cb.call(this.filter, m));
    const settled = this.runner.run(call, mctx, 'eom');
    return chain(settled, (s) => {
      mctx.open = false;
      const d = this.resolve(STAGES.eom, s, true);
      this.observe('eom', d.kind, t0);
      this.endTransaction();
      // A failed (thrown, timed-out, illegal) EOM sends no modification: half an edit is worse than none.
      if (d.failure === undefined) return mctx.result(decisionResponse(d.kind, d.reply));
      mctx.discard();
      return decisionResult(d.kind, d.reply);
    });
  }
}
