/**
 * `pipeline(members)`: an ordered list of filters run as one `Filter` (the README's "Pipeline" section
 * has the semantics table; docs/pipeline.md the design).
 *
 * - Negotiation: each member negotiates against the MTA's offer as it would alone (its `negotiate`, else
 *   `defaultNegotiation`); the MTA is asked for the union, and a step is skipped or not replied to only
 *   where every member that receives it agrees. Each member then gets only what it asked for.
 * - Decisions: members in order; reject/tempfail/discard ends the stage for all (members inside the
 *   message get `abort`), accept retires only that member (for the message; at CONNECT/HELO for the
 *   connection), body skip reaches the MTA when every member still reading the body skipped.
 * - Content is streamed to members up to the first one that may change the message; the later ones get
 *   it replayed at end of message from a working copy (src/message's Transaction, body spilled to disk
 *   above a bound), so each sees the message as the earlier ones left it. The difference to what the MTA
 *   sent is emitted once, as the fewest actions (Transaction.applyTo). SMFIR_PROGRESS keeps the MTA
 *   waiting meanwhile.
 */
import os from 'node:os';
import type {
  BodyDecision,
  BodyResult,
  CallbackResult,
  Decision,
  DecisionKind,
  Envelope,
  Filter,
  MacroStage,
  MaybePromise,
  NegotiateResult,
  NegotiationOffer,
  SmtpReply,
  StageContext,
  BaseContext,
  EomContext,
} from '../filter.js';
import { DEFAULTS } from '../defaults.js';
import { MilterError, MilterProtocolError, type MilterErrorCode } from '../errors.js';
import { MessageTransaction } from '../message/transaction.js';
import {
  MACRO_STAGES,
  MILTER_CHUNK_SIZE,
  SMFIF_ADDHDRS,
  SMFIF_ADDRCPT,
  SMFIF_ADDRCPT_PAR,
  SMFIF_CHGBODY,
  SMFIF_CHGFROM,
  SMFIF_CHGHDRS,
  SMFIF_DELRCPT,
  SMFIP_HDR_LEADSPC,
  SMFIP_RCPT_REJ,
  SMFIP_SKIP,
  STAGE_BITS,
  type StageName,
} from '../protocol/constants.js';
import { BodyStore, BODY_MEMORY_LIMIT } from '../session/body-store.js';
import { chain, decisionKind, isThenable, outsideBody } from '../session/decision.js';
import { defaultNegotiation, negotiate, type NegotiationOutcome } from '../session/negotiate.js';
import type { FailureDecision } from '../session/types.js';
import { compileMemberCondition, type ConditionTest } from './condition.js';
import { MemberContext, type EomWork } from './member-context.js';
import type { MemberEvent, MemberStage, PipelineMember, PipelineOptions } from './types.js';

/** Actions that change what later members see (quarantine does not). */
const MODIFY_ACTIONS =
  SMFIF_ADDHDRS |
  SMFIF_CHGHDRS |
  SMFIF_CHGBODY |
  SMFIF_ADDRCPT |
  SMFIF_ADDRCPT_PAR |
  SMFIF_DELRCPT |
  SMFIF_CHGFROM;

/** Content stages: streamed to members up to the first that may change the message, replayed after. */
const CONTENT_STAGES: ReadonlySet<MemberStage> = new Set(['header', 'eoh', 'body']);

const STAGE_NAMES = Object.keys(STAGE_BITS) as StageName[];

type LiveStage = StageName;

/** A member's decision, normalised. */
interface Outcome {
  kind: DecisionKind;
  /** The decision as returned (carries its reply), or undefined for a bare kind. */
  decision: Decision | undefined;
  failed: boolean;
}

/** One member, as configured. */
interface Member {
  index: number;
  name: string;
  filter: Filter;
  dryRun: boolean;
  test: ConditionTest | undefined;
}

/** What one connection negotiated: each member's outcome (undefined: not negotiated) and the pipeline's. */
interface Negotiation {
  members: Array<NegotiationOutcome | undefined>;
  /** NR bits the pipeline asked for. */
  noReply: number;
  /** Protocol bits the pipeline asked for. */
  protocol: number;
}

/** One member on one SMTP session. */
class MemberRun {
  readonly ctx: MemberContext;
  /** Accepted at CONNECT/HELO, or excluded by a connection fact: nothing more this session. */
  retiredConnection = false;
  /** Accepted, decided, excluded or failed in this message. */
  retiredMessage = false;
  /** Got a command of the current message and owes no decision yet: an `abort` is due if it ends early. */
  inMessage = false;
  skippedBody = false;
  /** A `skipped` event was sent, for this connection or this message. */
  reportedSkip: 'connection' | 'message' | undefined = undefined;
  closed = false;

  constructor(
    readonly member: Member,
    public neg: NegotiationOutcome | undefined,
    onEvent: (e: MemberEvent) => void,
  ) {
    this.ctx = new MemberContext(member.name, neg?.options, neg?.requested ?? 0, member.dryRun, {
      action: (action, applied, reason) =>
        onEvent({
          type: 'action',
          member: member.name,
          connectionId: this.ctx.id,
          stage: 'eom',
          action,
          applied,
          ...(reason === undefined ? {} : { reason }),
        }),
    });
  }

  /** Its negotiation came through. */
  negotiated(out: NegotiationOutcome): void {
    this.neg = out;
    this.ctx.options = out.options;
    this.ctx.requested = out.requested;
  }

  /** Does this member take `stage` at all (negotiated, has the callback, did not ask to skip it)? */
  wants(stage: LiveStage | 'eom' | 'abort'): boolean {
    if (this.neg === undefined) return false;
    if (typeof this.member.filter[stage] !== 'function') return false;
    if (stage === 'eom' || stage === 'abort') return true;
    return (this.neg.requested & STAGE_BITS[stage].no) === 0;
  }

  noReply(stage: LiveStage): boolean {
    return ((this.neg?.noReply ?? 0) & STAGE_BITS[stage].nr) !== 0;
  }
}

/** The current message. */
class MessageState {
  /** Headers as the MTA sent them (to the pipeline). */
  readonly headers: Array<[string, string]> = [];
  /** Recipients refused by a member or by the MTA itself ({rcpt_mailer} error). */
  readonly refused = new Set<string>();
  /** Index of the first member that may change the message; later ones get the content replayed. */
  split: number | undefined = undefined;
  /** The body, kept when a replayed member reads it. */
  body: BodyStore | undefined = undefined;
}

/** One SMTP session of one milter connection (QUIT_NC starts another on the same negotiation). */
class ConnState {
  msg: MessageState | undefined = undefined;
  closed = false;
  registered = false;
  readonly runs: MemberRun[];

  constructor(
    readonly neg: Negotiation,
    members: readonly Member[],
    onEvent: (e: MemberEvent) => void,
  ) {
    this.runs = members.map((m, i) => new MemberRun(m, neg.members[i], onEvent));
  }
}

/** How a stage's callback is called on a member (the member's filter, its context). */
type Invoke = (f: Filter, c: MemberContext) => unknown;
const callData: Invoke = (f, c) => f.data?.(c);
const callEoh: Invoke = (f, c) => f.eoh?.(c);
const callAbort: Invoke = (f, c) => f.abort?.(c);
const callClose: Invoke = (f, c) => f.close?.(c);

/** A member's plain `continue` (nothing to carry). */
const CONTINUE: Outcome = Object.freeze({ kind: 'continue', decision: undefined, failed: false });
/** `after`: go on to the next member. */
const NEXT = Symbol('next');

/** One live stage in progress (see `runFrom`). */
interface LiveRun {
  st: ConnState;
  ctx: StageContext<unknown>;
  stage: LiveStage;
  invoke: Invoke;
  msg: MessageState | undefined;
  rcpt: string | undefined;
  connectionStage: boolean;
  /** The stage is no-reply toward the MTA. */
  noReply: boolean;
  takers: MemberRun[];
}

/** The body of messages whose body nobody after the first changing member reads: never written to. */
const NO_BODY = new BodyStore(0);

const EMPTY_NEGOTIATION: Negotiation = { members: [], noReply: 0, protocol: 0 };

/**
 * Run `members` in order as one filter. Each member is an ordinary `Filter` (in-process, or an upstream
 * milter behind `upstreamFilter`); the result is a `Filter` for `createMilterServer` or `milterd serve`.
 */
export function pipeline(members: readonly PipelineMember[], options: PipelineOptions = {}): Filter {
  const names = new Set<string>();
  const list: Member[] = members.map((m, index) => {
    if (names.has(m.name)) throw new TypeError(`pipeline: member name "${m.name}" used twice`);
    names.add(m.name);
    return {
      index,
      name: m.name,
      filter: m.filter,
      dryRun: m.dryRun === true,
      test: compileMemberCondition(m.when),
    };
  });
  return new Pipeline(list, options).filter();
}

class Pipeline {
  private readonly byOptions = new WeakMap<object, Negotiation>();
  private readonly failure: FailureDecision;
  private readonly memoryLimit: number;
  private readonly progressMs: number;
  /** Resolved once: os.tmpdir() reads the environment on every call. */
  private readonly tempDir: string;
  /** Someone listens to member events: time callbacks and build the events (else skip both). */
  private readonly timed: boolean;

  constructor(
    private readonly members: readonly Member[],
    private readonly options: PipelineOptions,
  ) {
    this.failure = options.failureDecision ?? 'tempfail';
    this.memoryLimit = options.bodyMemoryLimit ?? BODY_MEMORY_LIMIT;
    this.progressMs = options.progressIntervalMs ?? DEFAULTS.pipelineProgressMs;
    this.timed = options.onMemberEvent !== undefined;
    this.tempDir = options.tempDir ?? os.tmpdir();
  }

  readonly emit = (e: MemberEvent): void => {
    try {
      this.options.onMemberEvent?.(e);
    } catch {
      // An observer must not break mail flow.
    }
  };

  filter(): Filter {
    return {
      name: this.options.name ?? 'pipeline',
      negotiate: (ctx, offer) => this.negotiate(ctx, offer),
      connect: (ctx, info) => outsideBody(this.live(ctx, 'connect', (f, c) => f.connect?.(c, info))),
      helo: (ctx, name) => outsideBody(this.live(ctx, 'helo', (f, c) => f.helo?.(c, name))),
      envfrom: (ctx, sender, args) =>
        outsideBody(this.live(ctx, 'envfrom', (f, c) => f.envfrom?.(c, sender, args))),
      envrcpt: (ctx, rcpt, args) =>
        outsideBody(this.live(ctx, 'envrcpt', (f, c) => f.envrcpt?.(c, rcpt, args), rcpt)),
      data: (ctx) => outsideBody(this.live(ctx, 'data', callData)),
      unknown: (ctx, line) => outsideBody(this.live(ctx, 'unknown', (f, c) => f.unknown?.(c, line))),
      header: (ctx, name, value) => {
        this.message(ctx).headers.push([name, value]);
        return outsideBody(
          this.live(ctx, 'header', (f, c) => f.header?.(c, name, this.headerValue(ctx, c, value))),
        );
      },
      eoh: (ctx) => outsideBody(this.live(ctx, 'eoh', callEoh)),
      body: (ctx, chunk) => {
        const msg = this.message(ctx);
        this.split(ctx, msg);
        const stored = msg.body?.append(chunk);
        const go = (): MaybePromise<BodyResult> => this.live(ctx, 'body', (f, c) => f.body?.(c, chunk));
        return stored instanceof Promise ? stored.then(go) : go();
      },
      eom: (ctx) => this.eom(ctx),
      abort: (ctx) => this.abort(ctx),
      close: (ctx) => this.close(ctx),
    };
  }

  // ---- state ----

  /** This session's state (kept in the pipeline's own `ctx.priv`; members have theirs in MemberContext). */
  private state(ctx: BaseContext<unknown>): ConnState {
    const p = ctx.priv;
    if (p instanceof ConnState) {
      // The session sets ctx.negotiated after `negotiate` returned: remembered at the first use, for
      // the SMTP sessions after a QUIT_NC (which clears priv) on the same negotiation.
      if (!p.registered && ctx.negotiated !== undefined) {
        p.registered = true;
        this.byOptions.set(ctx.negotiated, p.neg);
      }
      return p;
    }
    // After QUIT_NC the session cleared priv: a new SMTP session on the same negotiation.
    const neg = (ctx.negotiated && this.byOptions.get(ctx.negotiated)) || EMPTY_NEGOTIATION;
    const st = new ConnState(neg, this.members, this.emit);
    st.registered = true;
    ctx.priv = st;
    return st;
  }

  private message(ctx: StageContext<unknown>): MessageState {
    const st = this.state(ctx);
    if (st.msg === undefined) {
      st.msg = new MessageState();
      for (const r of st.runs) {
        r.retiredMessage = false;
        r.inMessage = false;
        r.skippedBody = false;
        r.ctx.messagePriv = undefined;
        if (r.reportedSkip === 'message') r.reportedSkip = undefined;
      }
    }
    return st.msg;
  }

  private endMessage(st: ConnState): void {
    const msg = st.msg;
    st.msg = undefined;
    for (const r of st.runs) {
      r.inMessage = false;
      r.ctx.messagePriv = undefined;
    }
    void msg?.body?.dispose();
  }

  /** The value of a header for member `c`: without the leading space unless it asked for it. */
  private headerValue(ctx: StageContext<unknown>, c: StageContext<unknown>, value: string): string {
    const pipelineSpace = ((ctx.negotiated?.protocol ?? 0) & SMFIP_HDR_LEADSPC) !== 0;
    const memberSpace = ((c.negotiated?.protocol ?? 0) & SMFIP_HDR_LEADSPC) !== 0;
    return pipelineSpace && !memberSpace && value.startsWith(' ') ? value.slice(1) : value;
  }

  // ---- negotiation ----

  /**
   * Every member negotiates against the offer, all at once (upstream milters connect in parallel); the
   * first failure, in member order, refuses the MTA (after which every member is closed).
   */
  private async negotiate(ctx: BaseContext<unknown>, offer: NegotiationOffer): Promise<NegotiateResult> {
    const outcomes: Array<NegotiationOutcome | undefined> = [];
    const neg: Negotiation = { members: outcomes, noReply: 0, protocol: 0 };
    const st = new ConnState(neg, this.members, this.emit);
    ctx.priv = st; // so that `close` finds every member even if negotiation fails below
    const results = await Promise.all(
      this.members.map(async (m, i): Promise<{ out: NegotiationOutcome } | { failure: unknown }> => {
        const run = st.runs[i] as MemberRun;
        run.ctx.outer = ctx as StageContext<unknown>;
        const t0 = performance.now();
        try {
          const request = m.filter.negotiate
            ? await m.filter.negotiate(run.ctx, offer)
            : defaultNegotiation(m.filter, offer);
          if (request === null || typeof request !== 'object')
            throw new Error('negotiate returned no result');
          const out = negotiate(m.filter, offer, undefined, request);
          run.negotiated(out);
          this.emit({
            type: 'decision',
            member: m.name,
            connectionId: ctx.id,
            stage: 'negotiate',
            decision: 'continue',
            durationMs: performance.now() - t0,
            dryRun: m.dryRun,
            applied: true,
          });
          return { out };
        } catch (err) {
          this.failed(run, 'negotiate', err, t0, 'tempfail');
          return { failure: err };
        }
      }),
    );
    for (const [i, r] of results.entries()) {
      if ('failure' in r) {
        const name = (this.members[i] as Member).name;
        throw new MilterProtocolError(
          'ERR_MILTER_NEGOTIATION',
          `pipeline member ${name}: negotiation failed`,
          {
            cause: r.failure,
          },
        );
      }
      outcomes.push(r.out);
    }
    const result = this.union(outcomes as NegotiationOutcome[], offer);
    neg.noReply = result.protocol & STAGE_NAMES.reduce((a, s) => a | STAGE_BITS[s].nr, 0);
    neg.protocol = result.protocol;
    return result;
  }

  /** What the pipeline asks the MTA for: the union of what the members need, within the offer. */
  private union(outs: readonly NegotiationOutcome[], offer: NegotiationOffer): NegotiateResult {
    let actions = 0;
    let protocol = 0;
    for (const o of outs) actions |= o.response.actions;
    const receives = (o: NegotiationOutcome, s: StageName, i: number): boolean =>
      (o.requested & STAGE_BITS[s].no) === 0 && typeof (this.members[i] as Member).filter[s] === 'function';
    for (const s of STAGE_NAMES) {
      const { no, nr } = STAGE_BITS[s];
      const takers = outs.filter((o, i) => receives(o, s, i));
      let skip = takers.length === 0;
      // Header changes address the MTA's list, recipient deletions its recipients: keep them coming.
      if (s === 'header' && (actions & (SMFIF_ADDHDRS | SMFIF_CHGHDRS)) !== 0) skip = false;
      if (s === 'envrcpt' && (actions & SMFIF_DELRCPT) !== 0) skip = false;
      if (skip) protocol |= no & offer.protocol;
      if (takers.every((o) => (o.requested & nr) !== 0)) protocol |= nr;
    }
    // Headers wanted means EOH too: a message without any header goes DATA → EOM, and a session that asked
    // for headers but not EOH drops that EOM as out of sequence (libmilter's state table does the same).
    if ((protocol & STAGE_BITS.header.no) === 0) protocol &= ~STAGE_BITS.eoh.no;
    for (const bit of [SMFIP_SKIP, SMFIP_HDR_LEADSPC, SMFIP_RCPT_REJ]) {
      if (outs.some((o) => (o.requested & bit) !== 0)) protocol |= bit & offer.protocol;
    }
    if (outs.some((o, i) => receives(o, 'body', i))) protocol |= SMFIP_SKIP & offer.protocol;
    const macros: Partial<Record<MacroStage, string[]>> = {};
    let anyMacros = false;
    for (const o of outs) {
      for (const [n, list] of Object.entries(o.response.macroLists ?? {})) {
        const stage = MACRO_STAGE_BY_NUMBER.get(Number(n));
        if (stage === undefined || list === undefined) continue;
        const into = (macros[stage] ??= []);
        for (const name of list.split(' ')) if (name !== '' && !into.includes(name)) into.push(name);
        anyMacros = true;
      }
    }
    return anyMacros ? { actions, protocol, macros } : { actions, protocol };
  }

  // ---- members ----

  /** Record a member's failure; returns the decision the pipeline takes instead. */
  private failed(
    run: MemberRun,
    stage: MemberStage,
    err: unknown,
    t0: number,
    decision: FailureDecision,
  ): Outcome {
    const code: MilterErrorCode = err instanceof MilterError ? err.code : 'ERR_MILTER_CALLBACK_FAILED';
    const timeout = code === 'ERR_MILTER_CALLBACK_TIMEOUT' || code === 'ERR_MILTER_TIMEOUT';
    this.emit({
      type: 'error',
      member: run.member.name,
      connectionId: run.ctx.outer.id,
      stage,
      code,
      timeout,
      durationMs: performance.now() - t0,
      decision,
      error: err,
    });
    run.ctx.outer.logger.warn({ member: run.member.name, stage, code, err }, 'pipeline member failed');
    return { kind: decision, decision: undefined, failed: true };
  }

  /**
   * Call one member callback; a throw becomes the failure decision. Synchronous when the callback is
   * (no promise, no microtask): a pipeline of synchronous members stays on the session's fast path.
   */
  private callNow(
    run: MemberRun,
    stage: MemberStage,
    outer: StageContext<unknown>,
    invoke: Invoke,
    noReply = false,
  ): Outcome | Promise<Outcome> {
    run.ctx.outer = outer;
    run.ctx.stored = undefined;
    const t0 = this.timed ? performance.now() : 0;
    const fail = run.member.dryRun ? 'continue' : this.failure;
    let value: unknown;
    try {
      value = invoke(run.member.filter, run.ctx);
    } catch (err) {
      return this.failed(run, stage, err, t0, fail);
    }
    if (isThenable(value)) {
      return Promise.resolve(value).then(
        (v) => this.settle(run, stage, outer, v, noReply, t0),
        (err: unknown) => this.failed(run, stage, err, t0, fail),
      );
    }
    return this.settle(run, stage, outer, value, noReply, t0);
  }

  /** `callNow`, always as a promise (end of message, abort, close). */
  private async call(
    run: MemberRun,
    stage: MemberStage,
    outer: StageContext<unknown>,
    invoke: Invoke,
    noReply = false,
  ): Promise<Outcome> {
    return this.callNow(run, stage, outer, invoke, noReply);
  }

  private settle(
    run: MemberRun,
    stage: MemberStage,
    outer: StageContext<unknown>,
    value: unknown,
    noReply: boolean,
    t0: number,
  ): Outcome {
    // A JavaScript member may return null: continue, as the session reads it.
    const kind = decisionKind((value ?? undefined) as BodyDecision | undefined);
    const applied = !run.member.dryRun && !noReply;
    if (this.timed) {
      this.emit({
        type: 'decision',
        member: run.member.name,
        connectionId: outer.id,
        stage,
        decision: noReply ? 'noreply' : kind,
        durationMs: performance.now() - t0,
        dryRun: run.member.dryRun,
        applied,
      });
    }
    if (!applied || (kind === 'continue' && value === undefined)) return CONTINUE;
    return {
      kind,
      decision: typeof value === 'object' && value !== null ? (value as Decision) : undefined,
      failed: false,
    };
  }

  /** The decision to return to the session for a member's outcome (its reply, or its stored reply). */
  private answer(run: MemberRun, o: Outcome): Decision {
    const stored = run.ctx.stored;
    if (o.decision !== undefined) return o.decision;
    if (stored !== undefined && (o.kind === 'reject' || o.kind === 'tempfail')) {
      const reply: SmtpReply = {
        code: stored.code,
        ...(stored.xcode === undefined ? {} : { xcode: stored.xcode }),
        ...(stored.lines.length === 0
          ? {}
          : { text: stored.lines.length === 1 ? stored.lines[0] : stored.lines }),
      };
      return { kind: o.kind, reply };
    }
    return o.kind as Decision;
  }

  /**
   * Is `run` judged out by its condition now? Reports it once, and owes it an `abort` if it was already
   * inside the message. Undefined facts (not known yet) keep it in.
   */
  private excluded(
    run: MemberRun,
    ctx: StageContext<unknown>,
    stage: MemberStage,
    msg: MessageState | undefined,
  ): boolean {
    const test = run.member.test;
    if (test === undefined) return false;
    const env = ctx.envelope;
    const afterRcpt = stage === 'data' || CONTENT_STAGES.has(stage) || stage === 'eom';
    const verdict = test({
      connection: ctx.connection,
      macro: (n) => ctx.macro(n),
      helo: ctx.helo,
      heloKnown: ctx.helo !== undefined || env !== undefined,
      sender: env?.sender,
      recipients:
        afterRcpt && env !== undefined
          ? env.recipients.map((r) => r.address).filter((a) => !(msg?.refused.has(a) ?? false))
          : undefined,
    });
    if (verdict !== false) return false;
    const inTxn = msg !== undefined;
    if (run.reportedSkip === undefined) {
      run.reportedSkip = inTxn ? 'message' : 'connection';
      this.emit({
        type: 'skipped',
        member: run.member.name,
        connectionId: ctx.id,
        stage,
        scope: inTxn ? 'message' : 'connection',
      });
    }
    if (inTxn) run.retiredMessage = true;
    return true;
  }

  /**
   * Members to call at a live stage, in order. Conditions are judged here; members judged out while inside
   * the message are put in `owed` (they get `abort`).
   */
  private takers(
    st: ConnState,
    ctx: StageContext<unknown>,
    stage: LiveStage,
    msg: MessageState | undefined,
    rcpt: string | undefined,
    owed: MemberRun[],
  ): MemberRun[] {
    const out: MemberRun[] = [];
    const rcptRejected = rcpt !== undefined && ctx.macro('rcpt_mailer') === 'error';
    const replayed = CONTENT_STAGES.has(stage)
      ? (msg?.split ?? Number.POSITIVE_INFINITY)
      : Number.POSITIVE_INFINITY;
    for (const r of st.runs) {
      if (r.retiredConnection || (msg !== undefined && r.retiredMessage)) continue;
      if (r.neg === undefined) continue;
      if (this.excluded(r, ctx, stage, msg)) {
        if (r.inMessage) {
          r.inMessage = false;
          owed.push(r);
        }
        continue;
      }
      if (!r.wants(stage)) continue;
      if (rcptRejected && (r.neg.requested & SMFIP_RCPT_REJ) === 0) continue;
      if (r.member.index > replayed) continue;
      if (stage === 'body' && r.skippedBody) continue;
      out.push(r);
    }
    return out;
  }

  /** `abort` for each of `runs`, in order; synchronous when none has an `abort` callback. */
  private abortAll(runs: readonly MemberRun[], outer: StageContext<unknown>): void | Promise<void> {
    const due = runs.filter((r) => {
      r.inMessage = false;
      return r.wants('abort');
    });
    if (due.length === 0) return;
    return (async () => {
      for (const r of due) await this.call(r, 'abort', outer, callAbort);
    })();
  }

  /** Every member still inside the message gets the `abort` the MTA would send, but `except`. */
  private abortOthers(
    st: ConnState,
    outer: StageContext<unknown>,
    except: MemberRun | undefined,
  ): void | Promise<void> {
    return this.abortAll(
      st.runs.filter((r) => r !== except && r.inMessage),
      outer,
    );
  }

  /** Decide where content stops streaming: before the first member after one that may change the message. */
  private split(ctx: StageContext<unknown>, msg: MessageState): void {
    if (msg.split !== undefined) return;
    const st = this.state(ctx);
    msg.split = Number.POSITIVE_INFINITY;
    for (const r of st.runs) {
      if (r.retiredConnection || r.retiredMessage || r.neg === undefined || r.member.dryRun) continue;
      if ((r.neg.options.actions & MODIFY_ACTIONS) !== 0) {
        msg.split = r.member.index;
        break;
      }
    }
    const split = msg.split;
    const replayedReadsBody = st.runs.some(
      (r) => r.member.index > split && !r.retiredConnection && !r.retiredMessage && r.wants('body'),
    );
    if (replayedReadsBody) msg.body = new BodyStore(this.memoryLimit, this.tempDir);
  }

  /** One live stage: members in order, the first message-ending decision wins. */
  private live(
    ctx: StageContext<unknown>,
    stage: LiveStage,
    invoke: Invoke,
    rcpt?: string,
  ): MaybePromise<BodyResult> {
    const st = this.state(ctx);
    const inTxn = ctx.envelope !== undefined && stage !== 'connect' && stage !== 'helo';
    if (stage === 'envfrom' && st.msg !== undefined) this.endMessage(st);
    const msg = inTxn ? this.message(ctx) : undefined;
    if (msg !== undefined && CONTENT_STAGES.has(stage)) this.split(ctx, msg);
    if (rcpt !== undefined && msg !== undefined && ctx.macro('rcpt_mailer') === 'error') {
      msg.refused.add(rcpt);
    }
    const owed: MemberRun[] = [];
    const run: LiveRun = {
      st,
      ctx,
      stage,
      invoke,
      msg,
      rcpt,
      connectionStage: stage === 'connect' || stage === 'helo',
      noReply: (st.neg.noReply & STAGE_BITS[stage].nr) !== 0,
      takers: this.takers(st, ctx, stage, msg, rcpt, owed),
    };
    if (owed.length === 0) return this.runFrom(run, 0);
    return chain(this.abortAll(owed, ctx), () => this.runFrom(run, 0));
  }

  /** The members of a live stage from the `i`-th on; goes async only at the first member that does. */
  private runFrom(s: LiveRun, i: number): MaybePromise<BodyResult> {
    for (; i < s.takers.length; i++) {
      const r = s.takers[i] as MemberRun;
      if (s.msg !== undefined) r.inMessage = true;
      const o = this.callNow(r, s.stage, s.ctx, s.invoke, s.noReply || r.noReply(s.stage));
      if (o instanceof Promise) {
        const next = i + 1;
        return o.then((x) => {
          const d = this.after(s, r, x);
          return d === NEXT ? this.runFrom(s, next) : d;
        });
      }
      const d = this.after(s, r, o);
      if (d !== NEXT) return d;
    }
    if (s.noReply) return undefined;
    if (s.stage === 'body' && s.msg !== undefined && this.bodyDone(s.st, s.msg, s.ctx)) return 'skip';
    if (this.allRetired(s.st, s.connectionStage, s.msg !== undefined)) {
      if (s.msg !== undefined) this.endMessage(s.st);
      return 'accept';
    }
    return undefined;
  }

  /** What a member's outcome means for the stage: go on (NEXT), or the pipeline's answer. */
  private after(s: LiveRun, r: MemberRun, o: Outcome): MaybePromise<BodyResult> | typeof NEXT {
    const msg = s.msg;
    switch (o.kind) {
      case 'continue':
        break;
      case 'skip':
        if (s.stage === 'body') r.skippedBody = true;
        break;
      case 'accept':
        if (s.connectionStage) r.retiredConnection = true;
        else if (msg !== undefined) {
          r.retiredMessage = true;
          r.inMessage = false;
        }
        break;
      case 'discard':
        // Undefined at CONNECT/HELO and outside a transaction (see session/stages.ts): continue.
        if (s.connectionStage || msg === undefined) break;
        if (s.stage === 'envrcpt') {
          // The whole message is discarded, but the MTA goes on with it: every member sits it out.
          r.inMessage = false;
          return chain(this.abortOthers(s.st, s.ctx, r), () => {
            for (const x of s.st.runs) x.retiredMessage = true;
            return this.answer(r, o);
          });
        }
        return this.endStage(s.st, s.ctx, r, o, true);
      case 'reject':
      case 'tempfail': {
        const endsMessage = msg !== undefined && s.stage !== 'envrcpt' && s.stage !== 'unknown';
        if (s.rcpt !== undefined && msg !== undefined) msg.refused.add(s.rcpt);
        return this.endStage(s.st, s.ctx, r, o, endsMessage);
      }
    }
    if (o.failed) {
      // A member whose failure is passed over sits out the rest of the message (or session).
      if (msg !== undefined) {
        r.retiredMessage = true;
        r.inMessage = false;
      } else r.retiredConnection = true;
    }
    return NEXT;
  }

  /** A decision that ends the stage for all: later members are not asked, members in the message get abort. */
  private endStage(
    st: ConnState,
    ctx: StageContext<unknown>,
    decider: MemberRun,
    o: Outcome,
    endsMessage: boolean,
  ): MaybePromise<BodyResult> {
    const answer = this.answer(decider, o);
    if (!endsMessage) return answer;
    decider.inMessage = false;
    return chain(this.abortOthers(st, ctx, decider), () => {
      this.endMessage(st);
      return answer;
    });
  }

  /** Every member still reading the body skipped it, and no replayed member needs the rest. */
  private bodyDone(st: ConnState, msg: MessageState, ctx: StageContext<unknown>): boolean {
    if (((ctx.negotiated?.protocol ?? 0) & SMFIP_SKIP) === 0 || msg.body !== undefined) return false;
    return st.runs.every(
      (r) =>
        r.retiredConnection || r.retiredMessage || !r.wants('body') || r.skippedBody || r.neg === undefined,
    );
  }

  /** Every member is done with this message (or session): the MTA can stop asking. */
  private allRetired(st: ConnState, connectionStage: boolean, inMessage: boolean): boolean {
    if (st.runs.length === 0) return false;
    const messageToo = inMessage && !connectionStage;
    return st.runs.every(
      (r) => r.neg === undefined || r.retiredConnection || (messageToo && r.retiredMessage),
    );
  }

  // ---- end of message ----

  private async eom(ctx: EomContext<unknown>): Promise<CallbackResult> {
    const st = this.state(ctx);
    const msg = this.message(ctx);
    this.split(ctx, msg);
    const env = ctx.envelope;
    // No replayed member reads the body: the transaction gets an empty one (nobody reads it).
    const body = msg.body ?? NO_BODY;
    const trx = new MessageTransaction({
      connection: ctx.connection,
      helo: ctx.helo,
      macro: (n) => ctx.macro(n),
      sender: env?.sender ?? '',
      senderArgs: env?.senderArgs ?? [],
      recipients: (env?.recipients ?? []).map((r) => r.address).filter((a) => !msg.refused.has(a)),
      headers: msg.headers,
      body,
    });
    const argsOf = new Map((env?.recipients ?? []).map((r) => [r.address, r.args]));
    const work: EomWork = {
      trx,
      replacement: undefined,
      envelope: (): Envelope => ({
        sender: trx.sender,
        senderArgs: trx.senderArgs,
        recipients: [...trx.recipients].map((address) => ({ address, args: argsOf.get(address) ?? [] })),
      }),
      leadingSpace: ((ctx.negotiated?.protocol ?? 0) & SMFIP_HDR_LEADSPC) !== 0,
      memoryLimit: this.memoryLimit,
      tempDir: this.tempDir,
    };
    const timer = setInterval(() => ctx.progress(), this.progressMs);
    timer.unref();
    let applied = false;
    try {
      for (const r of st.runs) {
        // The session gave up on this EOM (its callback budget) and went on: ask no further member.
        if (st.msg !== msg) return undefined;
        if (r.retiredConnection || r.retiredMessage || r.neg === undefined) continue;
        if (this.excluded(r, ctx, 'eom', msg)) {
          if (r.inMessage) await this.abortAll([r], ctx);
          continue;
        }
        r.inMessage = true;
        if (msg.split !== undefined && r.member.index > msg.split) {
          const replayed = await this.replay(r, ctx, work, msg);
          if (replayed !== undefined) return await outsideBody(this.endStage(st, ctx, r, replayed, true));
          if (r.retiredMessage) continue;
        }
        if (!r.wants('eom')) {
          r.inMessage = false;
          continue;
        }
        const o = await this.runEom(r, ctx, work);
        r.inMessage = false;
        if (o.kind === 'reject' || o.kind === 'tempfail' || o.kind === 'discard') {
          return await outsideBody(this.endStage(st, ctx, r, o, true));
        }
      }
      if (st.msg !== msg) return undefined;
      if (work.replacement !== undefined) {
        const replacement = work.replacement;
        trx.replaceBody(replacement.read());
      }
      await trx.applyTo(ctx);
      applied = true;
      return undefined;
    } finally {
      clearInterval(timer);
      await work.replacement?.dispose();
      // A late finish (the session's callback budget ran out, the MTA went on) must not end the next message.
      if (st.msg === msg) {
        if (!applied) await this.abortOthers(st, ctx, undefined);
        this.endMessage(st);
      }
      if (body !== NO_BODY) await body.dispose();
    }
  }

  /** One member's `eom` against the working copy; its changes are applied only if it succeeded. */
  private async runEom(r: MemberRun, ctx: StageContext<unknown>, work: EomWork): Promise<Outcome> {
    const mc = r.ctx;
    mc.work = work;
    mc.staged = [];
    mc.stagedBody = undefined;
    mc.pending = [];
    let o: Outcome;
    try {
      o = await this.call(r, 'eom', ctx, async (f) => {
        const v = await f.eom?.(mc);
        await Promise.all(mc.pending);
        return v;
      });
    } finally {
      mc.work = undefined;
    }
    // Read back after the callback: TypeScript cannot see that it set these.
    const body = mc.stagedBody as BodyStore | undefined;
    const staged = mc.staged;
    mc.stagedBody = undefined;
    mc.staged = [];
    if (o.failed || (o.kind !== 'continue' && o.kind !== 'accept')) {
      await body?.dispose();
      return o;
    }
    for (const change of staged) change(work.trx);
    if (body !== undefined) {
      await work.replacement?.dispose();
      work.replacement = body;
    }
    return o;
  }

  /**
   * A member after the first that may change the message: its headers, EOH and body, from the working
   * copy. Returns a message-ending outcome, or undefined (go on to its `eom` unless it retired).
   */
  private async replay(
    r: MemberRun,
    ctx: StageContext<unknown>,
    work: EomWork,
    msg: MessageState,
  ): Promise<Outcome | undefined> {
    const ends = (o: Outcome): boolean =>
      o.kind === 'reject' || o.kind === 'tempfail' || o.kind === 'discard';
    const step = async (
      stage: 'header' | 'eoh' | 'body',
      invoke: () => MaybePromise<unknown>,
    ): Promise<Outcome | 'stop' | undefined> => {
      const o = await this.call(r, stage, ctx, invoke, r.noReply(stage));
      if (ends(o)) return o;
      if (o.kind === 'accept' || (o.failed && o.kind === 'continue')) {
        r.retiredMessage = true;
        r.inMessage = false;
        return 'stop';
      }
      if (o.kind === 'skip' && stage === 'body') return 'stop';
      return undefined;
    };
    const f = r.member.filter;
    if (r.wants('header')) {
      const space = work.leadingSpace && ((r.neg?.requested ?? 0) & SMFIP_HDR_LEADSPC) === 0;
      for (const h of [...work.trx.headers]) {
        const value = space && h.value.startsWith(' ') ? h.value.slice(1) : h.value;
        const s = await step('header', () => f.header?.(r.ctx, h.name, value));
        if (s === 'stop') return undefined;
        if (s !== undefined) return s;
      }
    }
    if (r.wants('eoh')) {
      const s = await step('eoh', () => f.eoh?.(r.ctx));
      if (s === 'stop') return undefined;
      if (s !== undefined) return s;
    }
    if (r.wants('body')) {
      const source = work.replacement ?? msg.body;
      if (source !== undefined) {
        for await (const piece of source.read()) {
          for (let off = 0; off < piece.length; off += MILTER_CHUNK_SIZE) {
            const chunk = piece.subarray(off, off + MILTER_CHUNK_SIZE);
            const s = await step('body', () => f.body?.(r.ctx, chunk));
            if (s === 'stop') return undefined;
            if (s !== undefined) return s;
          }
        }
      }
    }
    return undefined;
  }

  // ---- abort and close ----

  private async abort(ctx: StageContext<unknown>): Promise<void> {
    const st = this.state(ctx);
    await this.abortOthers(st, ctx, undefined);
    this.endMessage(st);
  }

  private async close(ctx: BaseContext<unknown>): Promise<void> {
    const st = this.state(ctx);
    if (st.closed) return;
    st.closed = true;
    this.endMessage(st);
    for (const r of st.runs) {
      if (r.closed) continue;
      r.closed = true;
      if (typeof r.member.filter.close !== 'function') continue;
      await this.call(r, 'close', ctx as StageContext<unknown>, callClose);
    }
  }
}

/** SMFIM_* number → macro stage name (OPTNEG macro lists are keyed by number). */
const MACRO_STAGE_BY_NUMBER: ReadonlyMap<number, MacroStage> = new Map(
  (Object.entries(MACRO_STAGES) as Array<[MacroStage, { number: number }]>).map(([s, v]) => [v.number, s]),
);
