/**
 * The shutdown policy's record of each milter connection: its {@link SessionTracker} (the policy's view of
 * the SMTP session) and what the user's filter follows (where libmilter would call the user's callbacks).
 */
import type { BaseContext, Filter, MaybePromise } from '../filter.js';
import { chain } from '../session/decision.js';
import type { ShutdownPolicy } from './chain.js';
import { staticWants, type StageWants, type WantStage } from './negotiation.js';
import { SessionTracker } from './tracker.js';

/** One SMTP session under the policy. */
export class PolicyConnection {
  readonly tracker: SessionTracker;
  /** The user ACCEPTed the connection: no more user callbacks but close. */
  userDoneConnection = false;
  /** The user ACCEPTed the current message: no more user callbacks for it. */
  userDoneMessage = false;

  constructor(
    policy: ShutdownPolicy,
    id: string,
    readonly wants: StageWants,
  ) {
    this.tracker = new SessionTracker(policy, id);
  }

  /** Would the user's callback for `stage` be called now (libmilter semantics of the user's filter)? */
  follows(stage: WantStage, inMessage: boolean): boolean {
    return this.wants[stage].call && !this.userDoneConnection && !(inMessage && this.userDoneMessage);
  }
}

/** The policy's connections, by `ctx.id`, and what each one's user filter negotiated. */
export class PolicyConnections<P> {
  readonly #byId = new Map<string, PolicyConnection>();
  // What the user's own negotiate callback asked for. Keyed by the context object first: negotiation
  // outlives QUIT_NC (the session keeps one context per milter connection), and a WeakMap needs no
  // cleanup. The id map is the fallback for a session layer that hands out other context objects; it
  // is emptied at CONNECT and close.
  readonly #negotiatedByCtx = new WeakMap<object, StageWants>();
  readonly #negotiated = new Map<string, StageWants>();
  #staticWants: StageWants | undefined;

  constructor(
    private readonly policy: ShutdownPolicy,
    private readonly user: Filter<P>,
  ) {}

  /** The connection of `ctx`; a late start (no CONNECT seen) still gets a record. */
  get(ctx: BaseContext<unknown>): PolicyConnection {
    let c = this.#byId.get(ctx.id);
    if (c === undefined) {
      c = this.#create(ctx);
      this.#byId.set(ctx.id, c);
    }
    return c;
  }

  /** SMFIC_CONNECT: a fresh record (closing one left by a session that never got its close). */
  start(ctx: BaseContext<unknown>): MaybePromise<PolicyConnection> {
    // A CONNECT without close for the previous session would leave it counted in the store.
    const closed = this.#byId.get(ctx.id)?.tracker.close(() => ctx.logger);
    return chain(closed, () => {
      const c = this.#create(ctx);
      this.#negotiated.delete(ctx.id);
      this.#byId.set(ctx.id, c);
      return c;
    });
  }

  /** close: forget the connection and leave the store. */
  end(ctx: BaseContext<unknown>): MaybePromise<void> {
    const c = this.#byId.get(ctx.id);
    this.#byId.delete(ctx.id);
    this.#negotiated.delete(ctx.id);
    return c?.tracker.close(() => ctx.logger);
  }

  /** The user's negotiate callback asked for `wants` on this connection. */
  negotiated(ctx: BaseContext<unknown>, wants: StageWants): void {
    this.#negotiatedByCtx.set(ctx, wants);
    this.#negotiated.set(ctx.id, wants);
  }

  #create(ctx: BaseContext<unknown>): PolicyConnection {
    const wants =
      this.#negotiatedByCtx.get(ctx) ??
      this.#negotiated.get(ctx.id) ??
      (this.#staticWants ??= staticWants(this.user));
    return new PolicyConnection(this.policy, ctx.id, wants);
  }
}
