/**
 * The shutdown policy's callbacks, one handler per stage: each updates the connection's tracker, delivers
 * an armed shutdown where the MTA reads a reply, and calls the user's callback where the user's own
 * negotiation would have it called (see wrapper.ts for the rules and why).
 */
import type {
  BodyResult,
  CallbackResult,
  ConnectionInfo,
  EomContext,
  Filter,
  MaybePromise,
  NegotiateContext,
  NegotiateResult,
  NegotiationOffer,
  StageContext,
  CloseContext,
} from '../filter.js';
import { Decision as D } from '../filter.js';
import { wireByteLength } from '../protocol/wire-string.js';
import type { ShutdownPolicy } from './chain.js';
import type { PolicyConnections } from './connections.js';
import { OUTCOME, type Enforcement } from './enforce.js';
import { decisionKind } from '../session/decision.js';
import { adjustNegotiation } from './negotiation.js';

export class PolicyStages<P> {
  constructor(
    private readonly user: Filter<P>,
    private readonly policy: ShutdownPolicy,
    private readonly connections: PolicyConnections<P>,
    private readonly e: Enforcement,
  ) {}

  /** The user's own negotiate, rewritten so the policy sees and can answer what it must. */
  async negotiate(ctx: NegotiateContext<P>, offer: NegotiationOffer): Promise<NegotiateResult> {
    const result = await this.user.negotiate?.(ctx, offer);
    // A user that refuses the MTA (returns nothing) refuses it for the wrapper too.
    if (result === undefined || result === null) return result as unknown as NegotiateResult;
    const { wants, adjusted } = adjustNegotiation(this.user, result, offer, this.policy.trackBytes);
    this.connections.negotiated(ctx, wants);
    return adjusted;
  }

  async connect(ctx: StageContext<P>, info: ConnectionInfo): Promise<CallbackResult> {
    const c = await this.connections.start(ctx);
    // The reply goes out without waiting for the store (see connectLater).
    c.tracker.connectLater(ctx, info);
    const { decision } = await this.e.callUser(c, ctx, 'connect', false, () =>
      this.user.connect?.(ctx, info),
    );
    return this.e.connectionDecision(c, decision);
  }

  async helo(ctx: StageContext<P>, hostname: string): Promise<CallbackResult> {
    const c = this.connections.get(ctx);
    if (c.tracker.pending) await c.tracker.pending;
    c.tracker.helo = hostname;
    if (c.tracker.armed) return this.e.fire(c, ctx, 'helo');
    const { decision } = await this.e.callUser(c, ctx, 'helo', false, () => this.user.helo?.(ctx, hostname));
    return this.e.connectionDecision(c, decision);
  }

  async envfrom(ctx: StageContext<P>, sender: string, args: readonly string[]): Promise<CallbackResult> {
    const c = this.connections.get(ctx);
    const t = c.tracker;
    // The last message's outcome may still be with the store: its verdict fires here.
    if (t.pending) await t.pending;
    // A new MAIL while a transaction is still open: the MTA ended it without telling us (Sendmail
    // sends no ABORT to a filter it no longer considers "in message"); it is over without an outcome.
    if (t.inTransaction) await t.outcome(ctx, 'aborted', 'abort');
    await t.beforeTransaction(ctx);
    if (t.armed) return this.e.fire(c, ctx, 'envfrom');
    const auth = ctx.macro('{auth_authen}');
    if (auth !== undefined && auth !== '') t.authenticated = auth;
    t.inTransaction = true;
    c.userDoneMessage = false;
    const call = (): MaybePromise<CallbackResult> => this.user.envfrom?.(ctx, sender, args);
    const { decision } = await this.e.callUser(c, ctx, 'envfrom', true, call);
    return this.e.messageDecision(c, ctx, 'envfrom', decision);
  }

  async envrcpt(ctx: StageContext<P>, recipient: string, args: readonly string[]): Promise<CallbackResult> {
    const c = this.connections.get(ctx);
    const t = c.tracker;
    const call = (): MaybePromise<CallbackResult> => this.user.envrcpt?.(ctx, recipient, args);
    if (ctx.macro('{rcpt_mailer}') === 'error') {
      // Rejected by the MTA itself: our reply is ignored, so an armed shutdown waits for the next command.
      await t.recipientRejected(ctx, { address: recipient, rejectedBy: 'mta' }, false);
      if (!c.wants.rejectedRecipients) return undefined;
      return (await this.e.callUser(c, ctx, 'envrcpt', true, call, async () => undefined)).decision;
    }
    if (t.armed) return this.e.fire(c, ctx, 'envrcpt');
    const rejected = { address: recipient, rejectedBy: 'filter' } as const;
    const countFailure = async (): Promise<void> => void (await t.recipientRejected(ctx, rejected, false));
    const { decision } = await this.e.callUser(c, ctx, 'envrcpt', true, call, countFailure);
    const kind = decisionKind(decision);
    if (kind === 'reject' || kind === 'tempfail') {
      // The policy may fire right on this recipient's reply: nothing of the transaction was accepted.
      const now = await t.recipientRejected(ctx, rejected, true);
      return now !== undefined ? this.e.fire(c, ctx, 'envrcpt') : decision;
    }
    t.recipientAccepted();
    if (kind === 'discard') t.discarded = true;
    if (kind === 'accept') {
      c.userDoneMessage = true;
      return D.continue;
    }
    return decision;
  }

  async data(ctx: StageContext<P>): Promise<CallbackResult> {
    const c = this.connections.get(ctx);
    if (c.tracker.pending) await c.tracker.pending;
    if (c.tracker.armed) return this.e.fire(c, ctx, 'data');
    const { decision } = await this.e.callUser(c, ctx, 'data', true, () => this.user.data?.(ctx));
    return this.e.messageDecision(c, ctx, 'data', decision);
  }

  async unknown(ctx: StageContext<P>, line: string): Promise<CallbackResult> {
    const c = this.connections.get(ctx);
    if (c.tracker.pending) await c.tracker.pending;
    if (c.tracker.armed) return this.e.fire(c, ctx, 'unknown');
    const { decision } = await this.e.callUser(c, ctx, 'unknown', false, () =>
      this.user.unknown?.(ctx, line),
    );
    return decisionKind(decision) === 'accept' ? D.continue : decision;
  }

  // Content callbacks run per header and per body chunk: when the user does not follow them they stay
  // synchronous (the session answers synchronous callbacks without a microtask).

  header(ctx: StageContext<P>, name: string, value: string): MaybePromise<CallbackResult> {
    const c = this.connections.get(ctx);
    if (this.policy.trackBytes) {
      c.tracker.counters.bytesReceived += wireByteLength(name) + wireByteLength(value) + 4;
    }
    if (!c.follows('header', true)) return undefined;
    return this.e
      .callUser(c, ctx, 'header', true, () => this.user.header?.(ctx, name, value))
      .then(({ decision }) => this.e.messageDecision(c, ctx, 'header', decision));
  }

  eoh(ctx: StageContext<P>): MaybePromise<CallbackResult> {
    const c = this.connections.get(ctx);
    if (!c.follows('eoh', true)) return undefined;
    return this.e
      .callUser(c, ctx, 'eoh', true, () => this.user.eoh?.(ctx))
      .then(({ decision }) => this.e.messageDecision(c, ctx, 'eoh', decision));
  }

  body(ctx: StageContext<P>, chunk: Buffer): MaybePromise<BodyResult> {
    const c = this.connections.get(ctx);
    if (this.policy.trackBytes) c.tracker.counters.bytesReceived += chunk.length;
    if (!c.follows('body', true)) return undefined;
    return this.e
      .callUser(c, ctx, 'body', true, () => this.user.body?.(ctx, chunk))
      .then(({ decision }) => this.e.messageDecision(c, ctx, 'body', decision));
  }

  async eom(ctx: EomContext<P>): Promise<CallbackResult> {
    const c = this.connections.get(ctx);
    const t = c.tracker;
    const { called, decision } = await this.e.callUser(c, ctx, 'eom', true, () => this.user.eom?.(ctx));
    const kind = decisionKind(decision);
    if (t.inTransaction) {
      const outcome =
        kind === 'reject' || kind === 'tempfail' || kind === 'discard'
          ? OUTCOME[kind]
          : t.discarded
            ? 'discarded'
            : 'accepted';
      // The reply goes out without waiting for the store (see outcomeLater).
      t.outcomeLater(ctx, outcome, 'eom');
    }
    c.userDoneMessage = false;
    return called ? decision : D.continue;
  }

  async abort(ctx: StageContext<P>): Promise<void> {
    const c = this.connections.get(ctx);
    const t = c.tracker;
    // Postfix sends ABORT after every transaction, even a completed one: only an open transaction is
    // aborted, and the user hears of it only if it still follows that message (libmilter would not
    // call xxfi_abort after an ACCEPT either). Only an open one waits for the store work before it (its
    // outcome comes after the last one's): the ABORT after a completed message has nothing to wait for,
    // and holding it held the session's next command until the message's store answer came.
    if (t.pending && t.inTransaction) await t.pending;
    const open = t.inTransaction;
    const userFollows = open && !c.userDoneMessage && !c.userDoneConnection;
    c.userDoneMessage = false;
    if (open) await t.outcome(ctx, 'aborted', 'abort');
    if (userFollows && c.wants.abort.call) await this.user.abort?.(ctx);
  }

  async close(ctx: CloseContext<P>): Promise<void> {
    await this.connections.end(ctx);
    await this.user.close?.(ctx);
  }
}
