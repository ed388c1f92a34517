/**
 * One SMTP session as the policy sees it: the counters behind the DeliveryRecord, the cross-session store
 * bookkeeping, chain evaluation and the armed shutdown. Used by the filter wrapper; no protocol here.
 */
import type { Logger } from 'pino';
import type { BaseContext, ConnectionInfo } from '../filter.js';
import type { EnforcedShutdown, ShutdownPolicy } from './chain.js';
import type {
  ClientInfo,
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

const CLASS: Readonly<Record<OutcomeKind, OutcomeClass>> = {
  accepted: 'accepted',
  discarded: 'accepted',
  rejected: 'permanent-failure',
  tempfailed: 'temporary-failure',
  aborted: 'aborted',
};

const COUNTER: Readonly<Record<OutcomeKind, keyof SessionCounters>> = {
  accepted: 'messagesAccepted',
  discarded: 'messagesDiscarded',
  rejected: 'messagesRejected',
  tempfailed: 'messagesTempfailed',
  aborted: 'messagesAborted',
};

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

  constructor(
    readonly policy: ShutdownPolicy,
    readonly connectionId: string,
  ) {
    this.startedAt = policy.now();
  }

  /** SMFIC_CONNECT: record the client, join the store, consult the chain (cross-session limits). */
  async connect(ctx: BaseContext<unknown>, info: ConnectionInfo): Promise<void> {
    this.client = { address: info.address, hostname: info.hostname, port: info.port, family: info.family };
    // Grouped by network (clientPrefix), so that rotating addresses within a /64 does not escape a limit.
    const key = this.policy.clientKey(info.address);
    if (key !== undefined) {
      const store = this.policy.store;
      const now = this.policy.now();
      await this.#store(ctx.logger, async () => {
        this.#storeKey = key;
        this.#concurrent = await store.sessionOpened(key, this.connectionId);
        for (const w of this.policy.clientWindows) this.#windows[w] = await store.messageCount(key, w, now);
      });
    }
    await this.evaluate(ctx, 'connect');
  }

  /** The transaction ended with `kind` at `stage`: count it, tell the store, consult the chain. */
  async outcome(ctx: BaseContext<unknown>, kind: OutcomeKind, stage: OutcomeStage): Promise<void> {
    this.inTransaction = false;
    this.discarded = false;
    this.counters[COUNTER[kind]] += 1;
    this.lastOutcome = { kind, class: CLASS[kind], stage };
    const key = this.#storeKey;
    if (kind !== 'aborted' && key !== undefined) {
      const store = this.policy.store;
      const now = this.policy.now();
      await this.#store(ctx.logger, async () => {
        for (const w of this.policy.clientWindows) this.#windows[w] = await store.addMessage(key, w, now);
      });
    }
    await this.evaluate(ctx, 'message');
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
  async recipientRejected(
    ctx: BaseContext<unknown>,
    recipient: RecipientInfo,
    ourReply: boolean,
  ): Promise<EnforcedShutdown | undefined> {
    this.counters.recipientsRejected += 1;
    const firesAt = ourReply ? 'this-reply' : 'next-command';
    const verdict = await this.evaluate(ctx, 'recipient', recipient, firesAt);
    return ourReply ? verdict : undefined;
  }

  /** Consult the chain (unless already armed) and arm an enforced verdict. */
  async evaluate(
    ctx: BaseContext<unknown>,
    event: PolicyEvent,
    recipient?: RecipientInfo,
    firesAt: PolicyDecisionEvent['firesAt'] = 'next-command',
  ): Promise<EnforcedShutdown | undefined> {
    // Once armed the session is ending; more verdicts would only repeat the same log line.
    if (this.armed !== undefined) return undefined;
    const verdict = await this.policy.evaluate(this.snapshot(ctx, event, recipient), {
      logger: ctx.logger,
      firesAt,
    });
    if (verdict !== undefined) this.armed = verdict;
    return verdict;
  }

  /** A frozen DeliveryRecord of the session now. */
  snapshot(ctx: BaseContext<unknown>, event: PolicyEvent, recipient?: RecipientInfo): DeliveryRecord {
    const c = this.counters;
    const attempts = c.messagesAccepted + c.messagesDiscarded + c.messagesRejected + c.messagesTempfailed;
    let macros: Record<string, string>;
    try {
      macros = ctx.macros();
    } catch {
      macros = {};
    }
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
      clientStats: Object.freeze({
        concurrentSessions: this.#concurrent,
        messagesInWindow: Object.freeze({ ...this.#windows }),
      }),
    });
  }

  /** The session ended: leave the store. Idempotent, never throws. */
  async close(logger: Logger): Promise<void> {
    const key = this.#storeKey;
    this.#storeKey = undefined;
    if (key === undefined) return;
    const store = this.policy.store;
    await this.#store(logger, () => store.sessionClosed(key, this.connectionId));
  }

  // A failing store must never cut mail: log it and go on with what we have.
  async #store(logger: Logger, fn: () => unknown): Promise<void> {
    try {
      await fn();
    } catch (err) {
      logger.warn({ err }, 'shutdown policy store failed; cross-session limits not applied');
    }
  }
}
