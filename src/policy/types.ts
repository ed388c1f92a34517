/**
 * Types shared by the shutdown policy engine: the per-session record hooks look at (the "delivery
 * construct"), what a hook returns, and the events the engine emits for logs and metrics.
 */
import type { AddressFamily } from '../protocol/types.js';
import type { MilterError } from '../errors.js';

/** What happened to one message (one MAIL transaction). */
export type OutcomeKind = 'accepted' | 'rejected' | 'tempfailed' | 'discarded' | 'aborted';

/**
 * The class of an outcome as the SMTP client saw it: `accepted` (2xx: accepted or discarded),
 * `permanent-failure` (5xx), `temporary-failure` (4xx), `aborted` (the transaction ended without a
 * decision of this filter: RSET, the MTA or another milter refused it, the client went away).
 */
export type OutcomeClass = 'accepted' | 'permanent-failure' | 'temporary-failure' | 'aborted';

/** The callback stage an outcome was decided at. */
export type OutcomeStage = 'envfrom' | 'envrcpt' | 'data' | 'header' | 'eoh' | 'body' | 'eom' | 'abort';

/** The outcome of the latest message attempt. */
export interface MessageOutcome {
  readonly kind: OutcomeKind;
  readonly class: OutcomeClass;
  readonly stage: OutcomeStage;
}

/**
 * Why the chain is being consulted: CONNECT; `message` after every outcome, and at each MAIL when a rule
 * counts messages per client (the message is counted there); a rejected recipient.
 */
export type PolicyEvent = 'connect' | 'message' | 'recipient';

/** Per-session counters. All start at 0 at SMFIC_CONNECT. */
export interface SessionCounters {
  /** Messages this filter let through at EOM (continue/accept). */
  messagesAccepted: number;
  /** Messages rejected (5xx) by this filter at MAIL, DATA, header, EOH, body or EOM. */
  messagesRejected: number;
  /** Messages tempfailed (4xx) by this filter at MAIL, DATA, header, EOH, body or EOM. */
  messagesTempfailed: number;
  /** Messages discarded (the client was told 250, nothing is delivered). */
  messagesDiscarded: number;
  /** Transactions that ended with SMFIC_ABORT (or a new MAIL) before any decision. */
  messagesAborted: number;
  /** Recipients answered with continue/accept/discard. */
  recipientsAccepted: number;
  /** Recipients rejected or tempfailed, by this filter or by the MTA itself (SMFIP_RCPT_REJ). */
  recipientsRejected: number;
  /**
   * Header and body bytes the MTA sent to the milter (`name: value\r\n` per header, body chunks as is).
   * Only counted when the policy tracks bytes; a filter returning SKIP from `body` stops the count.
   */
  bytesReceived: number;
}

/** Counters of a session that has done nothing yet. */
export function zeroCounters(): SessionCounters {
  return {
    messagesAccepted: 0,
    messagesRejected: 0,
    messagesTempfailed: 0,
    messagesDiscarded: 0,
    messagesAborted: 0,
    recipientsAccepted: 0,
    recipientsRejected: 0,
    bytesReceived: 0,
  };
}

/**
 * Limits shared by all sessions of one client, read from the PolicyStore. A client is its address or its
 * network at the policy's `clientPrefix` (IPv6: /64 by default).
 */
export interface ClientStats {
  /** Sessions of this client open when this session started, this one included. 0 if unknown. */
  readonly concurrentSessions: number;
  /**
   * Messages of this client in the last window, keyed by window length (ms): counted from their MAIL
   * (other sessions' messages in flight included), aborted ones taken back. At a MAIL, the messages
   * before this one.
   */
  readonly messagesInWindow: Readonly<Record<number, number>>;
  /**
   * The shared store failed (error, deadline or open circuit breaker) for the latest session count
   * (`sessions`) or message counts (`messages`): those counts are 0 and each rule's `on-store-error` decides.
   */
  readonly storeErrors?: { readonly sessions: boolean; readonly messages: boolean };
  /**
   * This instance's own counts, for `on-store-error: local` (which divides each limit by `instances`).
   * Present when the store is a shared one (a GuardedStore).
   */
  readonly local?: {
    readonly concurrentSessions: number;
    readonly messagesInWindow: Readonly<Record<number, number>>;
    readonly instances: number;
  };
}

/** The SMTP client as SMFIC_CONNECT described it. */
export interface ClientInfo {
  readonly address: string;
  readonly hostname: string;
  readonly port: number;
  readonly family: AddressFamily;
}

/** A recipient that triggered a `recipient` evaluation. */
export interface RecipientInfo {
  readonly address: string;
  /** `filter`: the wrapped filter refused it; `mta`: the MTA did (SMFIP_RCPT_REJ, `{rcpt_mailer}` = error). */
  readonly rejectedBy: 'filter' | 'mta';
}

/**
 * The "delivery construct": a read-only snapshot of one SMTP session handed to every hook. A new snapshot
 * is built for each evaluation, so hooks may keep it but changing it changes nothing.
 */
export interface DeliveryRecord {
  /** Milter connection id (also in every log line of the connection). */
  readonly connectionId: string;
  /** What triggered this evaluation. */
  readonly event: PolicyEvent;
  readonly client: ClientInfo | undefined;
  /** Latest HELO/EHLO argument. */
  readonly helo: string | undefined;
  /** SASL login (`{auth_authen}`), undefined when the client did not authenticate. */
  readonly authenticated: string | undefined;
  /** Every macro visible at the time of the evaluation. */
  readonly macros: Readonly<Record<string, string>>;
  /** When the session started (the policy clock, ms). */
  readonly startedAt: number;
  /** Session age at this evaluation (ms, from the policy clock). */
  readonly ageMs: number;
  readonly counters: Readonly<SessionCounters>;
  /** Message attempts that reached a decision: accepted + discarded + rejected + tempfailed. */
  readonly attempts: number;
  /** Failed message attempts: rejected + tempfailed. */
  readonly failures: number;
  readonly lastOutcome: MessageOutcome | undefined;
  /** Set for `recipient` events. */
  readonly recipient: RecipientInfo | undefined;
  readonly clientStats: ClientStats;
}

/** A hook's request to end the session. */
export interface ShutdownVerdict {
  shutdown: true;
  /** Names the reason in logs and metrics (e.g. `max-messages`); defaults to the hook name. */
  reason?: string;
  /** Text of the `421 4.7.0` reply; defaults to the hook's or the policy's text. No CR/LF. */
  text?: string;
}

/**
 * What a hook may return: a verdict; `true` (a verdict whose reason is the hook name); or false, null,
 * undefined for "no shutdown". Anything else counts as "no shutdown" too.
 */
export type HookResult = ShutdownVerdict | boolean | null | undefined | void;

/**
 * A should-shutdown hook (Momentum's `smtp_should_session_shutdown`): called after every message outcome,
 * every rejected recipient and at connect. It must not mutate anything it did not create; it may be async.
 */
export type ShouldShutdownHook = (record: DeliveryRecord) => HookResult | Promise<HookResult>;

/** Per-hook options. */
export interface HookOptions {
  /** Time budget of this hook (ms); default: the policy's `hookTimeoutMs`. 0 = none. */
  timeoutMs?: number;
  /** Log what this hook would decide, never arm a shutdown. */
  dryRun?: boolean;
  /** Default reply text for this hook's verdicts. */
  text?: string;
}

/** One decision of the chain, as logged and emitted to `on('decision')` listeners. */
export interface PolicyDecisionEvent {
  readonly connectionId: string;
  /** Name of the hook or rule that asked for the shutdown. */
  readonly hook: string;
  readonly reason: string;
  /** `enforce`: the shutdown is armed; `dry-run`: only logged. */
  readonly mode: 'enforce' | 'dry-run';
  readonly event: PolicyEvent;
  /** Where an enforced shutdown takes effect: on the current recipient's reply, or the next command. */
  readonly firesAt: 'this-reply' | 'next-command';
  readonly text: string;
  readonly clientAddress: string | undefined;
  readonly ageMs: number;
  readonly counters: Readonly<SessionCounters>;
}

/** An armed shutdown was delivered to the MTA as `421 4.7.0` (TEMPFAIL). */
export interface PolicyFiredEvent {
  readonly connectionId: string;
  readonly hook: string;
  readonly reason: string;
  /** Callback stage whose reply carried the 421. */
  readonly stage: 'helo' | 'envfrom' | 'envrcpt' | 'data' | 'unknown';
}

/** A hook threw, rejected or ran out of time; it counted as "no shutdown". */
export interface PolicyHookErrorEvent {
  readonly connectionId: string;
  readonly hook: string;
  /** ERR_MILTER_HOOK_FAILED or ERR_MILTER_HOOK_TIMEOUT. */
  readonly error: MilterError;
}

/** Listener signatures by event name. */
export interface PolicyEventMap {
  decision: PolicyDecisionEvent;
  fired: PolicyFiredEvent;
  hookError: PolicyHookErrorEvent;
}
