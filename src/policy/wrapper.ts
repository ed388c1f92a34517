/**
 * `withShutdownPolicy`: wrap a filter so that a ShutdownPolicy watches every SMTP session and ends it
 * safely, on Postfix and Sendmail alike.
 *
 * How a shutdown ends a session (protocol doc §9): always as `Decision.shutdown(text)`, i.e. TEMPFAIL with
 * a `421 4.7.0` reply, which both MTAs send to the client before hanging up — never the raw
 * SMFIR_SHUTDOWN, which Sendmail treats as a broken filter and Postfix < 3.11 turns into a silent discard
 * at content stages. A verdict reached after a message outcome cannot take back what the client was
 * told, so it is armed and fires at the next command that expects a reply (HELO, MAIL, RCPT, DATA,
 * unknown). A verdict reached at a recipient the filter rejected fires on that recipient's own reply
 * (nothing of that transaction was accepted); at a recipient the MTA rejected itself (SMFIP_RCPT_REJ) the
 * MTA ignores our reply, so it fires at the next command.
 *
 * What the wrapper changes in the user's negotiation, and why:
 * - HELO/MAIL/RCPT/DATA/unknown are always sent and always replied to (no NO bit, no NR bit), so an
 *   armed shutdown can be delivered. The user's callback is still only called where the user asked for
 *   the stage, and its decision is ignored where the user declared `noReply` (as libmilter would).
 * - CONNECT, EOM and ABORT are always sent (the record needs them); CONNECT gets NR when the user had no
 *   connect callback. Headers and body are sent when the policy tracks bytes, with NR when the user had
 *   no such callback.
 * - SMFIP_RCPT_REJ is requested, to count recipients the MTA rejected; those are passed to the user only
 *   when the user asked for `rejectedRecipients`.
 * - ACCEPT before EOM would make the MTA stop talking to the milter (for the message, or for the whole
 *   session at CONNECT/HELO) and blind the policy. It is sent as CONTINUE instead, and the user's
 *   callbacks are no longer called for that message (or session): the outcome is the same (the message
 *   is accepted) and the policy keeps counting. This is the only user decision the wrapper rewrites,
 *   besides replacing a filter-rejected recipient's reply by the 421 when the policy fires there.
 */
import type {
  BaseContext,
  CallbackResult,
  MaybePromise,
  Decision,
  DecisionKind,
  Filter,
  StageContext,
} from '../filter.js';
import { Decision as D } from '../filter.js';
import { wireByteLength } from '../protocol/wire-string.js';
import type { FailureDecision } from '../session/types.js';
import type { ShutdownPolicy } from './chain.js';
import { SessionTracker } from './tracker.js';
import {
  adjustNegotiation,
  staticWants,
  wrappedFilterShape,
  type StageWants,
  type WantStage,
} from './negotiation.js';
import type { OutcomeStage, PolicyFiredEvent } from './types.js';

/** Options of `withShutdownPolicy`. */
export interface WithShutdownPolicyOptions {
  /**
   * The session's failure decision (MilterServerOptions.failureDecision), used to count the outcome when
   * a user callback throws. Default 'tempfail'.
   */
  failureDecision?: FailureDecision;
}

interface ConnState {
  tracker: SessionTracker;
  wants: StageWants;
  /** The user ACCEPTed the connection: no more user callbacks but close. */
  userDoneConnection: boolean;
  /** The user ACCEPTed the current message: no more user callbacks for it. */
  userDoneMessage: boolean;
}

type FireStage = PolicyFiredEvent['stage'];

function kindOf(d: Decision | void | undefined): DecisionKind {
  return d === undefined ? 'continue' : typeof d === 'string' ? d : d.kind;
}

const OUTCOME = { reject: 'rejected', tempfail: 'tempfailed', discard: 'discarded' } as const;

/**
 * Return a new filter that runs `filter` under `policy`. The user's filter is not modified; its private
 * data (`ctx.priv`) is untouched (the policy keeps its own per-connection state, keyed by `ctx.id` and
 * dropped at close). One policy may wrap several filters.
 */
export function withShutdownPolicy<P>(
  filter: Filter<P>,
  policy: ShutdownPolicy,
  options: WithShutdownPolicyOptions = {},
): Filter<P> {
  const user = filter;
  const failure = options.failureDecision ?? 'tempfail';
  const states = new Map<string, ConnState>();
  // What the user's own negotiate callback asked for. Keyed by the context object first: negotiation
  // outlives QUIT_NC (the session keeps one context per milter connection), and a WeakMap needs no
  // cleanup. The id map is the fallback for a session layer that hands out other context objects; it
  // is emptied at CONNECT and close.
  const negotiatedByCtx = new WeakMap<object, StageWants>();
  const negotiated = new Map<string, StageWants>();

  const state = (ctx: StageContext<P>): ConnState => {
    let s = states.get(ctx.id);
    if (s === undefined) {
      // Normally created at connect; a late start (no CONNECT seen) still gets a record.
      s = newState(ctx);
      states.set(ctx.id, s);
    }
    return s;
  };
  const newState = (ctx: BaseContext<P>): ConnState => ({
    tracker: new SessionTracker(policy, ctx.id),
    wants: negotiatedByCtx.get(ctx) ?? negotiated.get(ctx.id) ?? staticWants(user),
    userDoneConnection: false,
    userDoneMessage: false,
  });

  /** Would the user's callback for `stage` be called now (libmilter semantics of the user's filter)? */
  const userFollows = (s: ConnState, stage: WantStage, inMessage: boolean): boolean =>
    s.wants[stage].call && !s.userDoneConnection && !(inMessage && s.userDoneMessage);

  /** Call the user's callback for `stage` if the user asked for it; undefined when not called or NR. */
  async function callUser(
    s: ConnState,
    ctx: StageContext<P>,
    stage: WantStage,
    inMessage: boolean,
    call: () => MaybePromise<CallbackResult>,
    onFailure?: () => Promise<void>,
  ): Promise<{ called: boolean; decision: Decision | undefined }> {
    const want = s.wants[stage];
    if (!userFollows(s, stage, inMessage)) return { called: false, decision: undefined };
    let decision: Decision | void | undefined;
    try {
      decision = await call();
    } catch (err) {
      // The session maps the throw to its failure decision; count what the client will be told. The
      // shutdown can only be armed here: the session, not us, writes this reply.
      if (failure === 'reject' || failure === 'tempfail') {
        if (onFailure) await onFailure();
        else if (inMessage && s.tracker.inTransaction) {
          await s.tracker.outcome(ctx, OUTCOME[failure], stage as OutcomeStage);
        }
      }
      throw err;
    }
    return { called: true, decision: want.reply ? (decision ?? undefined) : undefined };
  }

  function fire(s: ConnState, ctx: StageContext<P>, stage: FireStage): Decision {
    const armed = s.tracker.armed;
    if (armed === undefined) throw new Error('fire() without an armed shutdown');
    ctx.logger.info(
      { policy: { hook: armed.hook, reason: armed.reason, stage } },
      'shutdown policy fired: 421',
    );
    policy.emit('fired', { connectionId: ctx.id, hook: armed.hook, reason: armed.reason, stage }, ctx.logger);
    return D.shutdown(armed.text, '4.7.0');
  }

  /** User decision at a message stage (MAIL, DATA, header, EOH, body): count outcomes, hide ACCEPT. */
  async function messageDecision(
    s: ConnState,
    ctx: StageContext<P>,
    stage: OutcomeStage,
    d: Decision | undefined,
  ): Promise<Decision | undefined> {
    const kind = kindOf(d);
    if (kind === 'accept') {
      s.userDoneMessage = true;
      return D.continue;
    }
    if (kind === 'reject' || kind === 'tempfail' || kind === 'discard') {
      if (s.tracker.inTransaction) await s.tracker.outcome(ctx, OUTCOME[kind], stage);
    }
    return d;
  }

  const shape = wrappedFilterShape(user, policy.trackBytes);
  const wrapped: Filter<P> = {
    ...shape.fields,

    async connect(ctx, info) {
      // A CONNECT without close for the previous session would leave it counted in the store.
      await states.get(ctx.id)?.tracker.close(ctx.logger);
      const s = newState(ctx);
      negotiated.delete(ctx.id);
      states.set(ctx.id, s);
      await s.tracker.connect(ctx, info);
      const { decision } = await callUser(s, ctx, 'connect', false, () => user.connect?.(ctx, info));
      if (kindOf(decision) === 'accept') {
        s.userDoneConnection = true;
        return D.continue;
      }
      return decision;
    },

    async helo(ctx, hostname) {
      const s = state(ctx);
      s.tracker.helo = hostname;
      if (s.tracker.armed) return fire(s, ctx, 'helo');
      const { decision } = await callUser(s, ctx, 'helo', false, () => user.helo?.(ctx, hostname));
      if (kindOf(decision) === 'accept') {
        s.userDoneConnection = true;
        return D.continue;
      }
      return decision;
    },

    async envfrom(ctx, sender, args) {
      const s = state(ctx);
      const t = s.tracker;
      // A new MAIL while a transaction is still open: the MTA ended it without telling us (Sendmail
      // sends no ABORT to a filter it no longer considers "in message"); it is over without an outcome.
      if (t.inTransaction) await t.outcome(ctx, 'aborted', 'abort');
      await t.beforeTransaction(ctx);
      if (t.armed) return fire(s, ctx, 'envfrom');
      const auth = ctx.macro('{auth_authen}');
      if (auth !== undefined && auth !== '') t.authenticated = auth;
      t.inTransaction = true;
      s.userDoneMessage = false;
      const { decision } = await callUser(s, ctx, 'envfrom', true, () => user.envfrom?.(ctx, sender, args));
      return messageDecision(s, ctx, 'envfrom', decision);
    },

    async envrcpt(ctx, recipient, args) {
      const s = state(ctx);
      const t = s.tracker;
      if (ctx.macro('{rcpt_mailer}') === 'error') {
        // Rejected by the MTA itself: our reply is ignored, so an armed shutdown waits for the next command.
        await t.recipientRejected(ctx, { address: recipient, rejectedBy: 'mta' }, false);
        if (!s.wants.rejectedRecipients) return undefined;
        const call = (): MaybePromise<CallbackResult> => user.envrcpt?.(ctx, recipient, args);
        return (await callUser(s, ctx, 'envrcpt', true, call, async () => undefined)).decision;
      }
      if (t.armed) return fire(s, ctx, 'envrcpt');
      const rejected = { address: recipient, rejectedBy: 'filter' } as const;
      const { decision } = await callUser(
        s,
        ctx,
        'envrcpt',
        true,
        () => user.envrcpt?.(ctx, recipient, args),
        async () => void (await t.recipientRejected(ctx, rejected, false)),
      );
      const kind = kindOf(decision);
      if (kind === 'reject' || kind === 'tempfail') {
        const now = await t.recipientRejected(ctx, rejected, true);
        return now !== undefined ? fire(s, ctx, 'envrcpt') : decision;
      }
      t.recipientAccepted();
      if (kind === 'discard') t.discarded = true;
      if (kind === 'accept') {
        s.userDoneMessage = true;
        return D.continue;
      }
      return decision;
    },

    async data(ctx) {
      const s = state(ctx);
      if (s.tracker.armed) return fire(s, ctx, 'data');
      const { decision } = await callUser(s, ctx, 'data', true, () => user.data?.(ctx));
      return messageDecision(s, ctx, 'data', decision);
    },

    async unknown(ctx, line) {
      const s = state(ctx);
      if (s.tracker.armed) return fire(s, ctx, 'unknown');
      const { decision } = await callUser(s, ctx, 'unknown', false, () => user.unknown?.(ctx, line));
      return kindOf(decision) === 'accept' ? D.continue : decision;
    },

    async eom(ctx) {
      const s = state(ctx);
      const t = s.tracker;
      const { called, decision } = await callUser(s, ctx, 'eom', true, () => user.eom?.(ctx));
      const kind = kindOf(decision);
      if (t.inTransaction) {
        const outcome =
          kind === 'reject' || kind === 'tempfail' || kind === 'discard'
            ? OUTCOME[kind]
            : t.discarded
              ? 'discarded'
              : 'accepted';
        await t.outcome(ctx, outcome, 'eom');
      }
      s.userDoneMessage = false;
      return called ? decision : D.continue;
    },

    async abort(ctx) {
      const s = state(ctx);
      const t = s.tracker;
      // Postfix sends ABORT after every transaction, even a completed one: only an open transaction is
      // aborted, and the user hears of it only if it still follows that message (libmilter would not
      // call xxfi_abort after an ACCEPT either).
      const open = t.inTransaction;
      const userFollows = open && !s.userDoneMessage && !s.userDoneConnection;
      s.userDoneMessage = false;
      if (open) await t.outcome(ctx, 'aborted', 'abort');
      if (userFollows && s.wants.abort.call) await user.abort?.(ctx);
    },

    async close(ctx) {
      const s = states.get(ctx.id);
      states.delete(ctx.id);
      negotiated.delete(ctx.id);
      if (s !== undefined) await s.tracker.close(ctx.logger);
      await user.close?.(ctx);
    },
  };

  // Content callbacks run per header and per body chunk: when the user does not follow them they stay
  // synchronous (the session answers synchronous callbacks without a microtask).
  if (shape.header) {
    wrapped.header = (ctx, name, value) => {
      const s = state(ctx);
      if (policy.trackBytes) {
        s.tracker.counters.bytesReceived += wireByteLength(name) + wireByteLength(value) + 4;
      }
      if (!userFollows(s, 'header', true)) return undefined;
      return callUser(s, ctx, 'header', true, () => user.header?.(ctx, name, value)).then(({ decision }) =>
        messageDecision(s, ctx, 'header', decision),
      );
    };
  }
  if (shape.body) {
    wrapped.body = (ctx, chunk) => {
      const s = state(ctx);
      if (policy.trackBytes) s.tracker.counters.bytesReceived += chunk.length;
      if (!userFollows(s, 'body', true)) return undefined;
      return callUser(s, ctx, 'body', true, () => user.body?.(ctx, chunk)).then(({ decision }) =>
        messageDecision(s, ctx, 'body', decision),
      );
    };
  }
  if (user.eoh) {
    wrapped.eoh = (ctx) => {
      const s = state(ctx);
      if (!userFollows(s, 'eoh', true)) return undefined;
      return callUser(s, ctx, 'eoh', true, () => user.eoh?.(ctx)).then(({ decision }) =>
        messageDecision(s, ctx, 'eoh', decision),
      );
    };
  }
  if (user.negotiate) {
    const userNegotiate = user.negotiate.bind(user);
    wrapped.negotiate = async (ctx, offer) => {
      const result = await userNegotiate(ctx, offer);
      if (result === undefined || result === null) return result;
      const { wants, adjusted } = adjustNegotiation(user, result, offer, policy.trackBytes);
      negotiatedByCtx.set(ctx, wants);
      negotiated.set(ctx.id, wants);
      return adjusted;
    };
  }
  return wrapped;
}
