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
import type {
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

const EMPTY_NEGOTIATION: Negotiation = { members: [], noReply: 0, protocol: 0 };

function kindOf(r: unknown): DecisionKind {
  if (r === undefined || r === null) return 'continue';
  if (typeof r === 'string') return r as DecisionKind;
  return (r as { kind: DecisionKind }).kind;
}

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

  constructor(
    private readonly members: readonly Member[],
    private readonly options: PipelineOptions,
  ) {
    this.failure = options.failureDecision ?? 'tempfail';
    this.memoryLimit = options.bodyMemoryLimit ?? BODY_MEMORY_LIMIT;
    this.progressMs = options.progressIntervalMs ?? DEFAULTS.pipelineProgressMs;
  }

  readonly emit = (e: MemberEvent): void => {
    try {
      this.options.onMemberEvent?.(e);
    } catch {
      // An observer must not break mail flow.
    }
  };

  filter(): Filter {
    const call =
      (stage: LiveStage, invoke: (f: Filter, ctx: StageContext<unknown>) => MaybePromise<CallbackResult>) =>
      (ctx: StageContext<unknown>): Promise<CallbackResult> =>
        this.live(ctx, stage, invoke);
    return {
      name: this.options.name ?? 'pipeline',
      negotiate: (ctx, offer) => this.negotiate(ctx, offer),
      connect: (ctx, info) => call('connect', (f, c) => f.connect?.(c, info))(ctx),
      helo: (ctx, name) => call('helo', (f, c) => f.helo?.(c, name))(ctx),
      envfrom: (ctx, sender, args) => call('envfrom', (f, c) => f.envfrom?.(c, sender, args))(ctx),
      envrcpt: (ctx, rcpt, args) => this.live(ctx, 'envrcpt', (f, c) => f.envrcpt?.(c, rcpt, args), rcpt),
      data: call('data', (f, c) => f.data?.(c)),
      unknown: (ctx, line) => call('unknown', (f, c) => f.unknown?.(c, line))(ctx),
      header: (ctx, name, value) => {
        this.message(ctx).headers.push([name, value]);
        return this.live(ctx, 'header', (f, c) => f.header?.(c, name, this.headerValue(ctx, c, value)));
      },
      eoh: call('eoh', (f, c) => f.eoh?.(c)),
      body: async (ctx, chunk) => {
        const msg = this.message(ctx);
        this.split(ctx, msg);
        if (msg.body !== undefined) await msg.body.append(chunk);
        return this.live(ctx, 'body', (f, c) => f.body?.(c, chunk));
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

  private async negotiate(ctx: BaseContext<unknown>, offer: NegotiationOffer): Promise<NegotiateResult> {
    const outcomes: Array<NegotiationOutcome | undefined> = [];
    const neg: Negotiation = { members: outcomes, noReply: 0, protocol: 0 };
    const st = new ConnState(neg, this.members, this.emit);
    ctx.priv = st; // so that `close` finds every member even if negotiation fails below
    for (const [i, m] of this.members.entries()) {
      const run = st.runs[i] as MemberRun;
      run.ctx.outer = ctx as StageContext<unknown>;
      const t0 = performance.now();
      let out: NegotiationOutcome;
      try {
        const request = m.filter.negotiate
          ? await m.filter.negotiate(run.ctx, offer)
          : defaultNegotiation(m.filter, offer);
        if (request === null || typeof request !== 'object') throw new Error('negotiate returned no result');
        out = negotiate(m.filter, offer, undefined, request);
      } catch (err) {
        this.failed(run, 'negotiate', err, t0, 'tempfail');
        throw new MilterProtocolError(
          'ERR_MILTER_NEGOTIATION',
          `pipeline member ${m.name}: negotiation failed`,
          {
            cause: err,
          },
        );
      }
      outcomes.push(out);
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

  /** Call one member callback; a throw becomes the failure decision. */
  private async call(
    run: MemberRun,
    stage: MemberStage,
    outer: StageContext<unknown>,
    invoke: () => MaybePromise<unknown>,
    noReply = false,
  ): Promise<Outcome> {
    run.ctx.outer = outer;
    run.ctx.stored = undefined;
    const t0 = performance.now();
    let value: unknown;
    try {
      value = await invoke();
    } catch (err) {
      return this.failed(run, stage, err, t0, run.member.dryRun ? 'continue' : this.failure);
    }
    const kind = kindOf(value);
    const applied = !run.member.dryRun && !noReply;
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
    if (!applied) return { kind: 'continue', decision: undefined, failed: false };
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

  /** Members to call at a live stage, in order (conditions judged, `abort`s owed collected). */
  private async takers(
    st: ConnState,
    ctx: StageContext<unknown>,
    stage: LiveStage,
    msg: MessageState | undefined,
    rcpt: string | undefined,
  ): Promise<MemberRun[]> {
    const out: MemberRun[] = [];
    const rcptRejected = rcpt !== undefined && ctx.macro('rcpt_mailer') === 'error';
    for (const r of st.runs) {
      if (r.retiredConnection || (msg !== undefined && r.retiredMessage)) continue;
      if (r.neg === undefined) continue;
      if (this.excluded(r, ctx, stage, msg)) {
        if (r.inMessage) await this.abortMember(r, ctx);
        continue;
      }
      if (!r.wants(stage)) continue;
      if (rcptRejected && (r.neg.requested & SMFIP_RCPT_REJ) === 0) continue;
      if (CONTENT_STAGES.has(stage) && msg?.split !== undefined && r.member.index > msg.split) continue;
      if (stage === 'body' && r.skippedBody) continue;
      out.push(r);
    }
    return out;
  }

  private async abortMember(r: MemberRun, outer: StageContext<unknown>): Promise<void> {
    r.inMessage = false;
    if (!r.wants('abort')) return;
    await this.call(r, 'abort', outer, () => r.member.filter.abort?.(r.ctx));
  }

  /** Every member still inside the message gets the `abort` the MTA would send, but `except`. */
  private async abortOthers(
    st: ConnState,
    outer: StageContext<unknown>,
    except: MemberRun | undefined,
  ): Promise<void> {
    for (const r of st.runs) if (r !== except && r.inMessage) await this.abortMember(r, outer);
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
    if (replayedReadsBody) msg.body = new BodyStore(this.memoryLimit, this.options.tempDir);
  }

  /** One live stage: members in order, the first message-ending decision wins. */
  private async live(
    ctx: StageContext<unknown>,
    stage: LiveStage,
    invoke: (f: Filter, c: StageContext<unknown>) => MaybePromise<CallbackResult>,
    rcpt?: string,
  ): Promise<CallbackResult> {
    const st = this.state(ctx);
    const inTxn = ctx.envelope !== undefined && stage !== 'connect' && stage !== 'helo';
    if (stage === 'envfrom' && st.msg !== undefined) this.endMessage(st);
    const msg = inTxn ? this.message(ctx) : undefined;
    if (msg !== undefined && CONTENT_STAGES.has(stage)) this.split(ctx, msg);
    const connectionStage = stage === 'connect' || stage === 'helo';
    const pipelineNoReply = (st.neg.noReply & STAGE_BITS[stage].nr) !== 0;
    if (rcpt !== undefined && msg !== undefined && ctx.macro('rcpt_mailer') === 'error')
      msg.refused.add(rcpt);
    for (const r of await this.takers(st, ctx, stage, msg, rcpt)) {
      const nr = r.noReply(stage);
      if (msg !== undefined) r.inMessage = true;
      const o = await this.call(r, stage, ctx, () => invoke(r.member.filter, r.ctx), nr || pipelineNoReply);
      switch (o.kind) {
        case 'continue':
          break;
        case 'skip':
          if (stage === 'body') r.skippedBody = true;
          break;
        case 'accept':
          if (connectionStage) r.retiredConnection = true;
          else if (msg !== undefined) {
            r.retiredMessage = true;
            r.inMessage = false;
          }
          break;
        case 'discard':
          // Undefined at CONNECT/HELO and outside a transaction (see session/stages.ts): continue.
          if (connectionStage || msg === undefined) break;
          return this.endStage(st, ctx, r, o, stage, true);
        case 'reject':
        case 'tempfail': {
          const endsMessage = msg !== undefined && stage !== 'envrcpt' && stage !== 'unknown';
          if (rcpt !== undefined && msg !== undefined) msg.refused.add(rcpt);
          return this.endStage(st, ctx, r, o, stage, endsMessage);
        }
      }
      if (o.failed && (o.kind === 'continue' || o.kind === 'accept')) {
        // A member whose failure is passed over sits out the rest of the message (or session).
        if (msg !== undefined) {
          r.retiredMessage = true;
          r.inMessage = false;
        } else r.retiredConnection = true;
      }
    }
    if (pipelineNoReply) return undefined;
    if (stage === 'body' && msg !== undefined && this.bodyDone(st, msg, ctx)) return 'skip';
    if (this.allRetired(st, connectionStage)) {
      if (msg !== undefined) this.endMessage(st);
      return 'accept';
    }
    return undefined;
  }

  /** A decision that ends the stage for all: later members are not asked, members in the message get abort. */
  private async endStage(
    st: ConnState,
    ctx: StageContext<unknown>,
    decider: MemberRun,
    o: Outcome,
    stage: MemberStage,
    endsMessage: boolean,
  ): Promise<CallbackResult> {
    const answer = this.answer(decider, o);
    if (endsMessage) {
      decider.inMessage = false;
      await this.abortOthers(st, ctx, decider);
      this.endMessage(st);
    }
    void stage;
    return answer;
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
  private allRetired(st: ConnState, connectionStage: boolean): boolean {
    if (st.runs.length === 0) return false;
    return st.runs.every(
      (r) => r.neg === undefined || r.retiredConnection || (!connectionStage && r.retiredMessage),
    );
  }

  // ---- end of message ----

  private async eom(ctx: EomContext<unknown>): Promise<CallbackResult> {
    const st = this.state(ctx);
    const msg = this.message(ctx);
    this.split(ctx, msg);
    const env = ctx.envelope;
    const body = msg.body ?? new BodyStore(0, this.options.tempDir);
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
      tempDir: this.options.tempDir,
    };
    const timer = setInterval(() => ctx.progress(), this.progressMs);
    timer.unref();
    let applied = false;
    try {
      for (const r of st.runs) {
        if (r.retiredConnection || r.retiredMessage || r.neg === undefined) continue;
        if (this.excluded(r, ctx, 'eom', msg)) {
          if (r.inMessage) await this.abortMember(r, ctx);
          continue;
        }
        r.inMessage = true;
        if (msg.split !== undefined && r.member.index > msg.split) {
          const replayed = await this.replay(r, ctx, work, msg);
          if (replayed !== undefined) return await this.endStage(st, ctx, r, replayed, 'eom', true);
          if (r.retiredMessage) continue;
        }
        if (!r.wants('eom')) {
          r.inMessage = false;
          continue;
        }
        const o = await this.runEom(r, ctx, work);
        r.inMessage = false;
        if (o.kind === 'reject' || o.kind === 'tempfail' || o.kind === 'discard') {
          return await this.endStage(st, ctx, r, o, 'eom', true);
        }
      }
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
      if (!applied && st.msg === msg) await this.abortOthers(st, ctx, undefined);
      this.endMessage(st);
      await body.dispose();
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
      o = await this.call(r, 'eom', ctx, async () => {
        const v = await r.member.filter.eom?.(mc);
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
      await this.call(r, 'close', ctx as StageContext<unknown>, () => r.member.filter.close?.(r.ctx));
    }
  }
}

/** SMFIM_* number → macro stage name (OPTNEG macro lists are keyed by number). */
const MACRO_STAGE_BY_NUMBER: ReadonlyMap<number, MacroStage> = new Map(
  (Object.entries(MACRO_STAGES) as Array<[MacroStage, { number: number }]>).map(([s, v]) => [v.number, s]),
);
