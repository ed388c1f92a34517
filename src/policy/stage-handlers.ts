/**
 * The shutdown policy's callbacks, one handler per stage: each updates the connection's tracker, delivers
 * an armed shutdown where the MTA reads a reply, and calls the user's callback where the user's own
 * negotiation would have it called (see wrapper.ts for the rules and why).
 *
 * Each handler answers at once when nothing it needs is pending: no store answer outstanding, the rules
 * and the user's callback answering at once (the in-process store and the compiled rules always do). A
 * promise costs the session a microtask and the server more (docs/benchmark.md), on every command of
 * every message; a handler goes asynchronous only from the first thing it must wait for.
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
import type { PolicyConnection, PolicyConnections } from './connections.js';
import { OUTCOME, type Enforcement } from './enforce.js';
import { chain, decisionKind, isThenable } from '../session/decision.js';
import { adjustNegotiation } from './negotiation.js';

export class PolicyStages<P> {
  constructor(
    private readonly user: Filter<P>,
    private readonly policy: ShutdownPolicy,
    private readonly connections: PolicyConnections<P>,
    private readonly e: Enforcement,
  ) {}

  /** The user's own negotiate, rewritten so the policy sees and can answer what it must. */
  negotiate(ctx: NegotiateContext<P>, offer: NegotiationOffer): MaybePromise<NegotiateResult> {
    const adjust = (result: NegotiateResult | undefined): NegotiateResult => {
      // A user that refuses the MTA (returns nothing) refuses it for the wrapper too.
      if (result === undefined || result === null) return result as unknown as NegotiateResult;
      const { wants, adjusted } = adjustNegotiation(this.user, result, offer, this.policy.trackBytes);
      this.connections.negotiated(ctx, wants);
      return adjusted;
    };
    const result = this.user.negotiate?.(ctx, offer);
    return isThenable(result) ? Promise.resolve(result).then(adjust) : adjust(result);
  }

  connect(ctx: StageContext<P>, info: ConnectionInfo): MaybePromise<CallbackResult> {
    return chain(this.connections.start(ctx), (c) => {
      // The reply goes out without waiting for the store (see connectLater).
      c.tracker.connectLater(ctx, info);
      const call = this.e.callUser(c, ctx, 'connect', false, () => this.user.connect?.(ctx, info));
      return chain(call, ({ decision }) => this.e.connectionDecision(c, decision));
    });
  }

  helo(ctx: StageContext<P>, hostname: string): MaybePromise<CallbackResult> {
    const c = this.connections.get(ctx);
    return afterPending(c, () => {
      c.tracker.helo = hostname;
      if (c.tracker.armed) return this.e.fire(c, ctx, 'helo');
      const call = this.e.callUser(c, ctx, 'helo', false, () => this.user.helo?.(ctx, hostname));
      return chain(call, ({ decision }) => this.e.connectionDecision(c, decision));
    });
  }

  envfrom(ctx: StageContext<P>, sender: string, args: readonly string[]): MaybePromise<CallbackResult> {
    const c = this.connections.get(ctx);
    const t = c.tracker;
    // The last message's outcome may still be with the store: its verdict fires here.
    return afterPending(c, () => {
      // A new MAIL while a transaction is still open: the MTA ended it without telling us (Sendmail
      // sends no ABORT to a filter it no longer considers "in message"); it is over without an outcome.
      const ended = t.inTransaction ? t.outcome(ctx, 'aborted', 'abort') : undefined;
      return chain(
        chain(ended, () => t.beforeTransaction(ctx)),
        () => {
          if (t.armed) return this.e.fire(c, ctx, 'envfrom');
          const auth = ctx.macro('{auth_authen}');
          if (auth !== undefined && auth !== '') t.authenticated = auth;
          t.inTransaction = true;
          c.userDoneMessage = false;
          const call = this.e.callUser(c, ctx, 'envfrom', true, () => this.user.envfrom?.(ctx, sender, args));
          return chain(call, ({ decision }) => this.e.messageDecision(c, ctx, 'envfrom', decision));
        },
      );
    });
  }

  envrcpt(ctx: StageContext<P>, recipient: string, args: readonly string[]): MaybePromise<CallbackResult> {
    const c = this.connections.get(ctx);
    const t = c.tracker;
    const call = (): MaybePromise<CallbackResult> => this.user.envrcpt?.(ctx, recipient, args);
    if (ctx.macro('{rcpt_mailer}') === 'error') {
      // Rejected by the MTA itself: our reply is ignored, so an armed shutdown waits for the next command.
      const counted = t.recipientRejected(ctx, { address: recipient, rejectedBy: 'mta' }, false);
      return chain(counted, () => {
        if (!c.wants.rejectedRecipients) return undefined;
        return chain(this.e.callUser(c, ctx, 'envrcpt', true, call, noop), ({ decision }) => decision);
      });
    }
    if (t.armed) return this.e.fire(c, ctx, 'envrcpt');
    const rejected = { address: recipient, rejectedBy: 'filter' } as const;
    const countFailure = (): MaybePromise<unknown> => t.recipientRejected(ctx, rejected, false);
    return chain(this.e.callUser(c, ctx, 'envrcpt', true, call, countFailure), ({ decision }) => {
      const kind = decisionKind(decision);
      if (kind === 'reject' || kind === 'tempfail') {
        // The policy may fire right on this recipient's reply: nothing of the transaction was accepted.
        return chain(t.recipientRejected(ctx, rejected, true), (now) =>
          now !== undefined ? this.e.fire(c, ctx, 'envrcpt') : decision,
        );
      }
      t.recipientAccepted();
      if (kind === 'discard') t.discarded = true;
      if (kind === 'accept') {
        c.userDoneMessage = true;
        return D.continue;
      }
      return decision;
    });
  }

  data(ctx: StageContext<P>): MaybePromise<CallbackResult> {
    const c = this.connections.get(ctx);
    return afterPending(c, () => {
      if (c.tracker.armed) return this.e.fire(c, ctx, 'data');
      const call = this.e.callUser(c, ctx, 'data', true, () => this.user.data?.(ctx));
      return chain(call, ({ decision }) => this.e.messageDecision(c, ctx, 'data', decision));
    });
  }

  unknown(ctx: StageContext<P>, line: string): MaybePromise<CallbackResult> {
    const c = this.connections.get(ctx);
    return afterPending(c, () => {
      if (c.tracker.armed) return this.e.fire(c, ctx, 'unknown');
      const call = this.e.callUser(c, ctx, 'unknown', false, () => this.user.unknown?.(ctx, line));
      return chain(call, ({ decision }) => (decisionKind(decision) === 'accept' ? D.continue : decision));
    });
  }

  // Content callbacks run per header and per body chunk: when the user does not follow them they return
  // nothing at once, with no closure.

  header(ctx: StageContext<P>, name: string, value: string): MaybePromise<CallbackResult> {
    const c = this.connections.get(ctx);
    if (this.policy.trackBytes) {
      c.tracker.counters.bytesReceived += wireByteLength(name) + wireByteLength(value) + 4;
    }
    if (!c.follows('header', true)) return undefined;
    const call = this.e.callUser(c, ctx, 'header', true, () => this.user.header?.(ctx, name, value));
    return chain(call, ({ decision }) => this.e.messageDecision(c, ctx, 'header', decision));
  }

  eoh(ctx: StageContext<P>): MaybePromise<CallbackResult> {
    const c = this.connections.get(ctx);
    if (!c.follows('eoh', true)) return undefined;
    const call = this.e.callUser(c, ctx, 'eoh', true, () => this.user.eoh?.(ctx));
    return chain(call, ({ decision }) => this.e.messageDecision(c, ctx, 'eoh', decision));
  }

  body(ctx: StageContext<P>, chunk: Buffer): MaybePromise<BodyResult> {
    const c = this.connections.get(ctx);
    if (this.policy.trackBytes) c.tracker.counters.bytesReceived += chunk.length;
    if (!c.follows('body', true)) return undefined;
    const call = this.e.callUser(c, ctx, 'body', true, () => this.user.body?.(ctx, chunk));
    return chain(call, ({ decision }) => this.e.messageDecision(c, ctx, 'body', decision));
  }

  eom(ctx: EomContext<P>): MaybePromise<CallbackResult> {
    const c = this.connections.get(ctx);
    const t = c.tracker;
    return chain(
      this.e.callUser(c, ctx, 'eom', true, () => this.user.eom?.(ctx)),
      ({ called, decision }) => {
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
      },
    );
  }

  abort(ctx: StageContext<P>): MaybePromise<void> {
    const c = this.connections.get(ctx);
    const t = c.tracker;
    // Postfix sends ABORT after every transaction, even a completed one: only an open transaction is
    // aborted, and the user hears of it only if it still follows that message (libmilter would not
    // call xxfi_abort after an ACCEPT either). Only an open one waits for the store work before it (its
    // outcome comes after the last one's): the ABORT after a completed message has nothing to wait for,
    // and holding it held the session's next command until the message's store answer came.
    if (t.pending && t.inTransaction) return t.pending.then(() => this.#abort(c, ctx));
    return this.#abort(c, ctx);
  }

  #abort(c: PolicyConnection, ctx: StageContext<P>): MaybePromise<void> {
    const open = c.tracker.inTransaction;
    const userFollows = open && !c.userDoneMessage && !c.userDoneConnection;
    c.userDoneMessage = false;
    if (open) return this.#aborted(c, ctx, userFollows);
  }

  async #aborted(c: PolicyConnection, ctx: StageContext<P>, userFollows: boolean): Promise<void> {
    await c.tracker.outcome(ctx, 'aborted', 'abort');
    if (userFollows && c.wants.abort.call) await this.user.abort?.(ctx);
  }

  close(ctx: CloseContext<P>): MaybePromise<void> {
    return chain(this.connections.end(ctx), () => this.user.close?.(ctx));
  }
}

/** `f` once the connection's pending store work is done (a shutdown it arms fires here); at once if none. */
function afterPending<T>(c: PolicyConnection, f: () => MaybePromise<T>): MaybePromise<T> {
  const pending = c.tracker.pending;
  return pending === undefined ? f() : pending.then(f);
}

function noop(): void {}
