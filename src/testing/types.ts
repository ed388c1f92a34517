/** Public types of {@link testFilter}: the scripted MTA conversation and the transcript it yields. */
import type { Logger } from 'pino';
import type { ClientReply, MessageResult, MessageStage, ScriptRecipient } from '../client/index.js';
import type { AbortPoint } from '../client/transaction.js';
import type {
  ConnectionInfo,
  DecisionKind,
  FilterCallbackName,
  MacroStage,
  NegotiationOffer,
} from '../filter.js';
import type { MilterCommand, MilterResponse, OptnegResponse } from '../protocol/types.js';
import type { FailureDecision } from '../session/types.js';

/** Macro values per stage, sent as SMFIC_MACRO right before that stage's command. */
export type ScriptMacros = Partial<Record<MacroStage, Record<string, string>>>;

export type { AbortPoint };

/** One message of a {@link TestScript}, played the way Postfix and Sendmail play it. */
export interface TestMessage {
  /** Per-stage macros for this message; merged over the script's, this message's values win. */
  macros?: ScriptMacros;
  /** Sender with angle brackets (`<a@example.org>`, `<>`). */
  sender: string;
  senderArgs?: string[];
  /** Recipients with angle brackets, bare or with ESMTP args. */
  recipients: ScriptRecipient[];
  /** In message order; values without their leading space (unless the filter negotiated HDR_LEADSPC). */
  headers?: Array<[name: string, value: string]>;
  /** Raw body with CRLF line ends (a string is sent as its wireBytes: UTF-8); packets ≤ 65535 bytes. */
  body?: Buffer | string;
  /** Send SMFIC_ABORT right after this stage instead of finishing the message (an RSET). */
  abortAfter?: AbortPoint;
}

/** Session settings for {@link testFilter}; defaults: silent logger, no callback timeout, tempfail. */
export interface TestSessionOptions {
  /** Connection id seen as `ctx.id`; default `test-1`. */
  id?: string;
  /** Logger given to the session (and to callbacks as `ctx.logger`); default silent. */
  logger?: Logger;
  /** Callback time budget in ms; default 0 (none). */
  callbackTimeoutMs?: number;
  /** Decision sent when a callback throws or times out; default `tempfail`. */
  failureDecision?: FailureDecision;
  /** Largest payload the session accepts unless MDS is negotiated; default 64 KiB - 1. */
  maxDataSize?: number;
}

/**
 * A scripted MTA conversation: one milter connection from OPTNEG to QUIT (or EOF).
 *
 * The scripted MTA follows the MTAs' rules: steps the filter negotiated away (SMFIP_NO*) are not sent;
 * steps it negotiated as no-reply (SMFIP_NR_*) are sent without waiting; a decision at CONNECT or HELO
 * ends the MTA's use of the filter for the connection; a decision at MAIL, DATA, a header, EOH or BODY
 * ends the message; a reject/tempfail at RCPT fails only that recipient (no accepted recipient: no DATA);
 * SKIP at BODY jumps to EOM; a `421` reply ends the SMTP session (no further messages).
 */
export interface TestScript {
  /** The MTA's OPTNEG offer; each field defaults to Postfix 3.x's: version 6, 0x1FF, 0x1FFFFF. */
  offer?: Partial<NegotiationOffer>;
  /** Macros sent before each stage's command, for the connection and for every message. */
  macros?: ScriptMacros;
  /**
   * SMFIC_CONNECT. Default: `{ hostname: 'client.example', family: 'inet', port: 40000, address:
   * '192.0.2.1' }`. `null` sends no CONNECT at all (the MTA quits right after OPTNEG, so `close` runs
   * before any `connect`).
   */
  connect?: ConnectionInfo | null;
  /** HELO/EHLO argument; default `client.example`; `null` sends none. Skipped when `connect` is null. */
  helo?: string | null;
  /** SMTP commands the MTA did not know, sent as SMFIC_UNKNOWN after HELO. */
  unknown?: string[];
  messages?: TestMessage[];
  /** Send SMFIC_ABORT after every message, as Postfix does; default false (Sendmail). */
  abortAfterMessage?: boolean;
  /** How the connection ends: SMFIC_QUIT (default) or the socket vanishing (`terminate('eof')`). */
  end?: 'quit' | 'eof';
  session?: TestSessionOptions;
}

/** One command the scripted MTA sent, and everything the session wrote in answer, in wire order. */
export interface TranscriptStep {
  command: MilterCommand;
  /** Out-of-band packets (progress) first, then the command's own responses. Empty for no-reply steps. */
  responses: MilterResponse[];
}

/** Callbacks a filter may define. */
export type CallbackName = FilterCallbackName;

/** One filter callback invocation, logged when it starts. */
export interface CallbackRecord<P> {
  callback: CallbackName;
  /** The arguments after the context (Buffers copied, so they stay valid). */
  args: unknown[];
  /** `ctx.priv` when the callback started (undefined in a `close` that came before `connect`). */
  priv: P | undefined;
  /** What it returned (awaited), once it returned. */
  result?: unknown;
  /** What it threw (or its promise rejected with), if it failed. */
  error?: unknown;
}

/** A decision as the MTA reads it: a `y` reply counts as reject (5xx) or tempfail (4xx). */
export type Verdict = DecisionKind | 'shutdown' | 'connFail' | 'noreply' | 'skipped';

/** Stages at which the MTA reads a decision. */
export type DecisionPoint = MessageStage;

/** The decision taken at one step, in conversation order. */
export interface StageDecision {
  stage: DecisionPoint;
  /** Index in `messages` for transaction stages; undefined for connect, helo and unknown. */
  message?: number;
  reply: ClientReply;
  verdict: Verdict;
  /** The SMTP code of a `y` reply (`421` means the MTA ends the session). */
  code?: number;
}

/** What {@link testFilter} returns. */
export interface Transcript<P> {
  /** The OPTNEG reply; undefined when the session refused the offer. */
  negotiated: OptnegResponse | undefined;
  connect?: ClientReply;
  helo?: ClientReply;
  unknown: ClientReply[];
  /** One entry per message the MTA started, with the same shape as `playMessage` results. */
  messages: MessageResult[];
  /** Every decision the MTA read (or the step was not sent / not replied to), in order. */
  decisions: StageDecision[];
  /** Every command and its responses, in order (macros, aborts and quit included). */
  steps: TranscriptStep[];
  /** Every callback the session made, in order. */
  callbacks: Array<CallbackRecord<P>>;
  /** How the conversation ended: QUIT, EOF, or the session refused negotiation. */
  end: 'quit' | 'eof' | 'refused';
}
