/**
 * How the user's decisions and the policy's verdicts reach the MTA under the shutdown policy: the user's
 * callback runs where the user's own negotiation would have it run, its message outcomes (and failures)
 * are counted, an ACCEPT before EOM is hidden (sent as CONTINUE so the policy keeps seeing the session),
 * and an armed shutdown goes out as `421 4.7.0`.
 */
import type { BodyDecision, Decision, MaybePromise, StageContext } from '../filter.js';
import { chain, decisionKind, isThenable } from '../session/decision.js';
import { Decision as D } from '../filter.js';
import type { FailureDecision } from '../session/types.js';
import type { ShutdownPolicy } from './chain.js';
import type { PolicyConnection } from './connections.js';
import type { WantStage } from './negotiation.js';
import type { OutcomeStage, PolicyFiredEvent } from './types.js';

export type FireStage = PolicyFiredEvent['stage'];

/** A refusing decision as the message outcome it is. */
export const OUTCOME = { reject: 'rejected', tempfail: 'tempfailed', discard: 'discarded' } as const;

/** What a call of the user's callback gave: whether it ran, and its decision (undefined under NR). */
export interface UserCall<R extends BodyDecision = Decision> {
  called: boolean;
  decision: R | undefined;
}

const NOT_CALLED: UserCall<never> = Object.freeze({ called: false, decision: undefined });

export class Enforcement {
  constructor(
    private readonly policy: ShutdownPolicy,
    /** The session's failure decision: what the client is told when a user callback throws. */
    private readonly failure: FailureDecision,
  ) {}

  /**
   * Call the user's callback for `stage` if the user follows it now. A throw is counted as the outcome the
   * session's failure decision makes of it (`onFailure` instead, when given), then rethrown for the
   * session to answer.
   */
  // At once when the user's callback answers at once (no promise, no microtask): the stage handlers then
  // answer the session at once too. A throw or a rejection is always answered with a rejected promise.
  callUser<R extends BodyDecision = Decision>(
    c: PolicyConnection,
    ctx: StageContext<unknown>,
    stage: WantStage,
    inMessage: boolean,
    call: () => MaybePromise<R | void | undefined>,
    onFailure?: () => MaybePromise<unknown>,
  ): MaybePromise<UserCall<R>> {
    if (!c.follows(stage, inMessage)) return NOT_CALLED;
    let decision: MaybePromise<R | void | undefined>;
    try {
      decision = call();
    } catch (err) {
      return this.#failed(c, ctx, stage, inMessage, err, onFailure);
    }
    if (isThenable(decision)) {
      return Promise.resolve(decision).then(
        (d) => this.#called(c, stage, d),
        (err: unknown) => this.#failed(c, ctx, stage, inMessage, err, onFailure),
      );
    }
    return this.#called(c, stage, decision);
  }

  #called<R extends BodyDecision>(
    c: PolicyConnection,
    stage: WantStage,
    d: R | void | undefined,
  ): UserCall<R> {
    return { called: true, decision: c.wants[stage].reply ? (d ?? undefined) : undefined };
  }

  /**
   * The user's callback threw or rejected: the session maps that to its failure decision; count what the
   * client will be told, then rethrow. The shutdown can only be armed here: the session, not us, writes
   * this reply.
   */
  async #failed(
    c: PolicyConnection,
    ctx: StageContext<unknown>,
    stage: WantStage,
    inMessage: boolean,
    err: unknown,
    onFailure: (() => MaybePromise<unknown>) | undefined,
  ): Promise<never> {
    if (this.failure === 'reject' || this.failure === 'tempfail') {
      if (onFailure) await onFailure();
      else if (inMessage && c.tracker.inTransaction) {
        await c.tracker.outcome(ctx, OUTCOME[this.failure], stage as OutcomeStage);
      }
    }
    throw err;
  }

  /** Deliver the armed shutdown at `stage`: log it, tell the policy's listeners, answer 421. */
  fire(c: PolicyConnection, ctx: StageContext<unknown>, stage: FireStage): Decision {
    const armed = c.tracker.armed;
    if (armed === undefined) throw new Error('fire() without an armed shutdown');
    ctx.logger.info(
      { policy: { hook: armed.hook, reason: armed.reason, stage } },
      'shutdown policy fired: 421',
    );
    this.policy.emit(
      'fired',
      { connectionId: ctx.id, hook: armed.hook, reason: armed.reason, stage },
      ctx.logger,
    );
    return D.shutdown(armed.text, '4.7.0');
  }

  /** The user's decision at a message stage (MAIL, DATA, header, EOH, body): count outcomes, hide ACCEPT. */
  messageDecision<R extends BodyDecision = Decision>(
    c: PolicyConnection,
    ctx: StageContext<unknown>,
    stage: OutcomeStage,
    d: R | undefined,
  ): MaybePromise<R | Decision | undefined> {
    const kind = decisionKind(d);
    if (kind === 'accept') {
      c.userDoneMessage = true;
      return D.continue;
    }
    if ((kind === 'reject' || kind === 'tempfail' || kind === 'discard') && c.tracker.inTransaction) {
      return chain(c.tracker.outcome(ctx, OUTCOME[kind], stage), () => d);
    }
    return d;
  }

  /** The user's decision at CONNECT/HELO: an ACCEPT ends the user's part of the connection, hidden. */
  connectionDecision(c: PolicyConnection, d: Decision | undefined): Decision | undefined {
    if (decisionKind(d) !== 'accept') return d;
    c.userDoneConnection = true;
    return D.continue;
  }
}
