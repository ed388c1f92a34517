/**
 * The public filter API: a filter is an object of async callbacks mirroring libmilter's `xxfi_*`, each
 * receiving a context whose capabilities follow the stage (modifications exist only on `EomContext`).
 *
 * Negotiation is derived from the filter automatically, as libmilter does: an absent callback is a
 * skipped protocol step (SMFIP_NO*), a callback listed in `noReply` gets SMFIP_NR_*; `negotiate` overrides.
 */
import type { Logger } from 'pino';
import type { MACRO_STAGES, STAGE_BITS } from './protocol/constants.js';
import type { AddressFamily, MacroLists } from './protocol/types.js';

/** Final word of a callback. `continue` is the default when a callback returns nothing. */
export type DecisionKind = 'continue' | 'accept' | 'reject' | 'tempfail' | 'discard' | 'skip';

/**
 * A custom SMTP reply, like `smfi_setreply`/`smfi_setmlreply`. `code` must be 4xx for tempfail and 5xx for
 * reject; `xcode` (`4.7.1`) must be of the same class; `text` is one line or up to 32 lines, no CR/LF
 * inside a line. `%` is escaped for you.
 */
export interface SmtpReply {
  code: number | string;
  xcode?: string;
  text?: string | readonly string[];
}

/** The decisions that may carry a custom SMTP reply. */
export type ReplyDecisionKind = 'reject' | 'tempfail';

/** The decisions every callback may return: all but `skip`, which only `body` may return. */
export type StageDecisionKind = Exclude<DecisionKind, 'skip'>;

/**
 * What a callback returns. A bare kind, or a kind as an object; only reject and tempfail carry a custom
 * reply (the type refuses `{ kind: 'accept', reply }`, which the MTA could not send), and `skip` is only
 * a {@link BodyDecision} (Sendmail wedges on SKIP anywhere else).
 */
export type Decision =
  | StageDecisionKind
  | { kind: ReplyDecisionKind; reply?: SmtpReply }
  | { kind: Exclude<StageDecisionKind, ReplyDecisionKind>; reply?: never };

/** What `body` may decide: a {@link Decision}, or `skip` (the rest of the body is not sent). */
export type BodyDecision = Decision | 'skip' | { kind: 'skip'; reply?: never };

/** Decision helpers, so filters read like English: `return Decision.reject({ code: 550, text: 'no' })`. */
export const Decision = {
  continue: 'continue' as const,
  accept: 'accept' as const,
  discard: 'discard' as const,
  /** Only from `body`: no more body chunks for this message (needs SMFIP_SKIP from the MTA). */
  skip: 'skip' as const,
  reject(reply?: SmtpReply): Decision {
    return reply ? { kind: 'reject', reply } : 'reject';
  },
  tempfail(reply?: SmtpReply): Decision {
    return reply ? { kind: 'tempfail', reply } : 'tempfail';
  },
  /**
   * End the SMTP session now with a 421 reply (TEMPFAIL + `421` reply code): the portable way that both
   * Postfix and Sendmail honour at every stage without losing an already accepted message. Defaults:
   * `text` "Closing connection", `xcode` "4.7.0" (the client sees `421 4.7.0 Closing connection`).
   */
  shutdown(text = 'Closing connection', xcode = '4.7.0'): Decision {
    return { kind: 'tempfail', reply: { code: 421, xcode, text } };
  },
};

/**
 * What a callback returns, or its promise resolves to: a decision, or nothing (= continue). An async
 * callback may be typed `Promise<CallbackResult>`.
 */
export type CallbackResult = Decision | void | undefined;

/** What `body` returns: a {@link BodyDecision}, or nothing (= continue). */
export type BodyResult = BodyDecision | void | undefined;

/** A value, or a promise of it: every callback may be async. */
export type MaybePromise<T> = T | Promise<T>;

/** Stages a filter can decline to reply to (SMFIP_NR_*). */
export type NoReplyStage = keyof typeof STAGE_BITS;

/** EOM actions a filter may ask for (SMFIF_*). */
export type ActionName =
  | 'addHeader' // SMFIF_ADDHDRS (add and insert)
  | 'changeHeader' // SMFIF_CHGHDRS (change and delete)
  | 'replaceBody' // SMFIF_CHGBODY
  | 'addRecipient' // SMFIF_ADDRCPT
  | 'addRecipientWithArgs' // SMFIF_ADDRCPT_PAR
  | 'deleteRecipient' // SMFIF_DELRCPT
  | 'quarantine' // SMFIF_QUARANTINE
  | 'changeFrom' // SMFIF_CHGFROM
  | 'setSymbolList'; // SMFIF_SETSYMLIST (asked for by itself when `macros` is set)

/** Macro stages by name (SMFIM_*). */
export type MacroStage = keyof typeof MACRO_STAGES;

/** Who the SMTP client is, from SMFIC_CONNECT. */
export interface ConnectionInfo {
  hostname: string;
  family: AddressFamily;
  /** 0 when unknown or for Unix sockets. */
  port: number;
  /** IP text without any `IPv6:` tag (compressed or expanded as the MTA sent it); '' when unknown. */
  address: string;
}

/** The MTA's OPTNEG offer. */
export interface NegotiationOffer {
  version: number;
  actions: number;
  protocol: number;
}

/** What was agreed, as seen by callbacks. */
export interface NegotiatedOptions {
  version: number;
  /** SMFIF_* bits the filter may use at EOM. */
  actions: number;
  /** SMFIP_* bits sent to the MTA. */
  protocol: number;
  /** Largest payload either side may send. */
  maxDataSize: number;
  /** `actions` by name: what this filter may do at EOM (and whether macro lists were sent). */
  actionNames: readonly ActionName[];
}

/** Result of an explicit `negotiate` callback (libmilter's xxfi_negotiate with SMFIS_CONTINUE). */
export interface NegotiateResult {
  /** SMFIF_* bits requested; must be a subset of the offer. */
  actions: number;
  /** SMFIP_* bits requested (NO, NR, EXT); NR bits the MTA lacks are emulated. */
  protocol: number;
  /** Macro lists per stage (sent in the OPTNEG reply). */
  macros?: Partial<Record<MacroStage, readonly string[]>>;
}

/** Context available in every callback, from negotiation to close. */
export interface BaseContext<P> {
  /** Process-unique id of this milter connection (also in every log line). */
  readonly id: string;
  /** Per-connection child logger (`{ conn, peer }` bound; `{ txn }` inside a transaction). */
  readonly logger: Logger;
  /** What was negotiated; undefined before negotiation finished. */
  readonly negotiated: NegotiatedOptions | undefined;
  /** The SMTP client; undefined before SMFIC_CONNECT (or when the MTA skipped it). */
  readonly connection: ConnectionInfo | undefined;
  /**
   * Per-connection private data (`smfi_setpriv`). Undefined until your code sets it, and it may be
   * undefined in any callback — notably in `close`, which can arrive before `connect`.
   */
  priv: P | undefined;
  /**
   * Look up a macro with libmilter's visibility rules: `i` also finds `{i}` and vice versa; multi-character
   * names are matched with or without braces (`client_addr` finds `{client_addr}`).
   */
  macro(name: string): string | undefined;
  /** Every macro visible now, latest stage first shadowing earlier ones. */
  macros(): Record<string, string>;
}

/** Context of the stage callbacks (connect … unknown, abort). */
export interface StageContext<P, M = unknown> extends BaseContext<P> {
  /**
   * Per-message private data, next to the per-connection `priv`: undefined at the start of every message
   * and reset by milterd at each message boundary (a new MAIL, ABORT, and after EOM or a decision that
   * ends the message), so nothing of one message can leak into the next. Still set in `abort`.
   */
  messagePriv: M | undefined;
  /**
   * Store a custom reply for the next reject/tempfail of this callback (`smfi_setreply`/`setmlreply`).
   * Throws ERR_MILTER_INVALID_REPLY when the reply is malformed.
   */
  setReply(code: number | string, xcode?: string, ...lines: string[]): void;
  /**
   * Tell the MTA we are still working. Sent only while handling EOM (Sendmail treats progress anywhere
   * else as a fatal bogus reply); elsewhere it is ignored with a debug log.
   */
  progress(): void;
  /** HELO argument of the latest HELO/EHLO, if any. */
  readonly helo: string | undefined;
  /** The current transaction's envelope; undefined outside a transaction. */
  readonly envelope: Envelope | undefined;
}

/** Envelope of the current transaction as seen so far. */
export interface Envelope {
  sender: string;
  senderArgs: readonly string[];
  /** Recipients in RCPT order (each as received, with brackets). Includes recipients later rejected. */
  recipients: ReadonlyArray<{ address: string; args: readonly string[] }>;
}

/** Body replacement source: a Buffer, or any stream/iterable of Buffers (read fully, then sent in chunks). */
export type BodySource =
  Buffer | Uint8Array | AsyncIterable<Buffer | Uint8Array> | Iterable<Buffer | Uint8Array>;

/**
 * The EOM context: the only one with message modifications. Each call validates at once (throws
 * ERR_MILTER_ACTION_NOT_NEGOTIATED if its SMFIF_* flag was not negotiated, ERR_MILTER_INVALID_ARGUMENT on
 * bad input); modifications are sent in call order before the final decision, body replacement last.
 */
export interface EomContext<P, M = unknown> extends StageContext<P, M> {
  /** SMFIR_ADDHEADER (`smfi_addheader`, needs `addHeader`): append a header after the last one. */
  addHeader(name: string, value: string): void;
  /**
   * SMFIR_INSHEADER (`smfi_insheader`, needs `addHeader`): insert at a 0-based position in the MTA's
   * header list, which counts the MTA's own `Received:` header on top that the filter never saw (0 = above
   * it, 1 = above the first header the filter saw). Sendmail also counts the headers it generated itself.
   * `messageFilter` does this arithmetic for you.
   */
  insertHeader(index: number, name: string, value: string): void;
  /**
   * SMFIR_CHGHEADER (`smfi_chgheader`, needs `changeHeader`): change the `index`-th (1-based, names compared
   * case-insensitively) header called `name`; `null` or '' deletes it. libmilter documents that an index
   * past the last occurrence adds the header; to add one, prefer `addHeader`.
   */
  changeHeader(name: string, index: number, value: string | null): void;
  /** `changeHeader(name, index, null)`. */
  deleteHeader(name: string, index: number): void;
  /**
   * SMFIR_ADDRCPT (`smfi_addrcpt`, needs `addRecipient`), or with `args` (ESMTP parameters, e.g.
   * `NOTIFY=NEVER`) SMFIR_ADDRCPT_PAR (`smfi_addrcpt_par`, needs `addRecipientWithArgs`, protocol v6).
   * Give the address with angle brackets.
   */
  addRecipient(recipient: string, args?: string): void;
  /** SMFIR_DELRCPT (`smfi_delrcpt`, needs `deleteRecipient`): a recipient exactly as received in RCPT. */
  deleteRecipient(recipient: string): void;
  /** SMFIR_CHGFROM (`smfi_chgfrom`, needs `changeFrom`, v6): a new envelope sender, optional ESMTP args. */
  changeFrom(sender: string, args?: string): void;
  /**
   * SMFIR_QUARANTINE (`smfi_quarantine`, needs `quarantine`): hold the message. Postfix puts it on hold
   * (the reason is logged, not stored); Sendmail quarantines it with the reason.
   */
  quarantine(reason: string): void;
  /**
   * SMFIR_REPLBODY (`smfi_replacebody`, needs `replaceBody`): the new body (CRLF line ends), sent after the
   * other modifications; the last call wins. Await it when passing a stream.
   */
  replaceBody(body: BodySource): Promise<void>;
}

/** Context of `close`: the connection is going away; `priv` may well be undefined. */
export type CloseContext<P> = BaseContext<P>;

/** Context of `negotiate`. */
export type NegotiateContext<P> = BaseContext<P>;

/** Every callback a filter may define, in protocol order (libmilter's xxfi_* list). */
export const FILTER_CALLBACKS = [
  'negotiate',
  'connect',
  'helo',
  'envfrom',
  'envrcpt',
  'data',
  'unknown',
  'header',
  'eoh',
  'body',
  'eom',
  'abort',
  'close',
] as const;
export type FilterCallbackName = (typeof FILTER_CALLBACKS)[number];

/** `negotiate`: the MTA's offer in, the options to ask for out (see {@link NegotiateResult}). */
export type NegotiateCallback<P = unknown> = (
  ctx: NegotiateContext<P>,
  offer: NegotiationOffer,
) => MaybePromise<NegotiateResult>;
/** `connect` (SMFIC_CONNECT): who the SMTP client is. */
export type ConnectCallback<P = unknown, M = unknown> = (
  ctx: StageContext<P, M>,
  info: ConnectionInfo,
) => MaybePromise<CallbackResult>;
/** `helo` (SMFIC_HELO): the HELO/EHLO argument as sent. */
export type HeloCallback<P = unknown, M = unknown> = (
  ctx: StageContext<P, M>,
  hostname: string,
) => MaybePromise<CallbackResult>;
/** `envfrom` (SMFIC_MAIL): the sender with its angle brackets (`<>` for bounces) and its ESMTP args. */
export type EnvfromCallback<P = unknown, M = unknown> = (
  ctx: StageContext<P, M>,
  sender: string,
  args: readonly string[],
) => MaybePromise<CallbackResult>;
/** `envrcpt` (SMFIC_RCPT): one recipient with its angle brackets and its ESMTP args. */
export type EnvrcptCallback<P = unknown, M = unknown> = (
  ctx: StageContext<P, M>,
  recipient: string,
  args: readonly string[],
) => MaybePromise<CallbackResult>;
/** `data` (SMFIC_DATA): the client sent DATA. */
export type DataCallback<P = unknown, M = unknown> = (
  ctx: StageContext<P, M>,
) => MaybePromise<CallbackResult>;
/** `unknown` (SMFIC_UNKNOWN): an SMTP command the MTA did not know, as sent. */
export type UnknownCallback<P = unknown, M = unknown> = (
  ctx: StageContext<P, M>,
  line: string,
) => MaybePromise<CallbackResult>;
/**
 * `header` (SMFIC_HEADER): one header. The value is unfolded as the MTA sends it (continuation lines keep
 * their CRLF and whitespace); its leading space is removed unless `headerLeadingSpace` was negotiated.
 */
export type HeaderCallback<P = unknown, M = unknown> = (
  ctx: StageContext<P, M>,
  name: string,
  value: string,
) => MaybePromise<CallbackResult>;
/** `eoh` (SMFIC_EOH): all headers were sent. */
export type EohCallback<P = unknown, M = unknown> = (ctx: StageContext<P, M>) => MaybePromise<CallbackResult>;
/** `body` (SMFIC_BODY): one body chunk (CRLF line ends), valid only during the call. May return `skip`. */
export type BodyCallback<P = unknown, M = unknown> = (
  ctx: StageContext<P, M>,
  chunk: Buffer,
) => MaybePromise<BodyResult>;
/** `eom` (SMFIC_BODYEOB): end of message, the only place for modifications. */
export type EomCallback<P = unknown, M = unknown> = (ctx: EomContext<P, M>) => MaybePromise<CallbackResult>;
/** `abort` (SMFIC_ABORT): the current message was aborted; its return value is ignored. */
export type AbortCallback<P = unknown, M = unknown> = (ctx: StageContext<P, M>) => MaybePromise<void>;
/** `close`: the connection (or its QUIT_NC session) ends; may come before `connect`. */
export type CloseCallback<P = unknown> = (ctx: CloseContext<P>) => MaybePromise<void>;

/**
 * A milter. Every callback is optional; absent ones are negotiated away (the MTA skips that step). The
 * callbacks are declared as methods (so a `Filter<MyPriv>` is a `Filter`); each has a named function type
 * above (`EnvrcptCallback`…) for functions written on their own.
 * `P` is the type of the per-connection `ctx.priv`, `M` of the per-message `ctx.messagePriv`.
 * Callbacks for one connection are called one at a time, in protocol order.
 */
export interface Filter<P = unknown, M = unknown> {
  /** Used in logs. */
  name?: string;
  /** EOM actions to request. Default: every action the MTA offers, when `eom` is defined; none otherwise. */
  actions?: readonly ActionName[];
  /** Macros to request per stage (sent in the OPTNEG reply when the MTA offers SMFIF_SETSYMLIST). */
  macros?: Partial<Record<MacroStage, readonly string[]>>;
  /** Callbacks that never decide anything: negotiated as SMFIP_NR_* (no reply travels). */
  noReply?: readonly NoReplyStage[];
  /** Ask for header values with their leading space (SMFIP_HDR_LEADSPC), if offered. */
  headerLeadingSpace?: boolean;
  /** Ask the MTA to send recipients it rejected itself too (SMFIP_RCPT_REJ), if offered. */
  rejectedRecipients?: boolean;
  /** Override negotiation. Throw (or return undefined) to refuse the MTA; the connection then closes. */
  negotiate?(ctx: NegotiateContext<P>, offer: NegotiationOffer): MaybePromise<NegotiateResult>;
  /**
   * SMFIC_CONNECT (`xxfi_connect`): an SMTP client connected. `info.address` is the IP text without an
   * `IPv6:` tag; `info.hostname` is the MTA's name for it (`unknown` in Postfix, `[1.2.3.4]` in Sendmail
   * when the reverse lookup failed). Decisions: continue, accept (no more callbacks for this connection),
   * reject/tempfail (the MTA refuses the session), shutdown. `discard` is not defined here (sent as continue).
   */
  connect?(ctx: StageContext<P, M>, info: ConnectionInfo): MaybePromise<CallbackResult>;
  /**
   * SMFIC_HELO (`xxfi_helo`): the HELO/EHLO argument as the client sent it. Postfix calls it once per
   * HELO/EHLO (again after STARTTLS); Sendmail too. `discard` is not defined here.
   */
  helo?(ctx: StageContext<P, M>, hostname: string): MaybePromise<CallbackResult>;
  /**
   * SMFIC_MAIL (`xxfi_envfrom`): a new message. `sender` keeps its angle brackets (`<>` for a bounce);
   * `args` are the ESMTP parameters as sent (`SIZE=1234`, `BODY=8BITMIME`). A reject/tempfail refuses the
   * MAIL command; discard drops the whole message later, silently; accept skips the rest of this message.
   */
  envfrom?(ctx: StageContext<P, M>, sender: string, args: readonly string[]): MaybePromise<CallbackResult>;
  /**
   * SMFIC_RCPT (`xxfi_envrcpt`): one recipient, with its angle brackets and ESMTP parameters. A
   * reject/tempfail refuses this recipient only (the message goes on with the others). With
   * `rejectedRecipients`, Postfix also sends recipients it rejected itself (macro `{rcpt_mailer}` is
   * `error`); Sendmail 8.17 does not.
   */
  envrcpt?(ctx: StageContext<P, M>, recipient: string, args: readonly string[]): MaybePromise<CallbackResult>;
  /** SMFIC_DATA (`xxfi_data`, protocol v4+): the client sent DATA; the content follows. */
  data?(ctx: StageContext<P, M>): MaybePromise<CallbackResult>;
  /**
   * SMFIC_UNKNOWN (`xxfi_unknown`, v3+): an SMTP command the MTA did not recognise, as sent. A reject or
   * tempfail only changes that command's error reply. accept/discard outside a transaction are not
   * defined (Postfix 3.7 panics at the next MAIL) and are sent as continue.
   */
  unknown?(ctx: StageContext<P, M>, line: string): MaybePromise<CallbackResult>;
  /**
   * SMFIC_HEADER (`xxfi_header`): one header field, in message order. The value is as the MTA stores it:
   * folded lines keep their CRLF and leading whitespace; its single leading space after the colon is
   * removed unless `headerLeadingSpace` was negotiated (Postfix then sends it as received). The MTA's own
   * `Received:` header is not sent (nor, by Sendmail, the Date:/Message-Id: it generated). With milters
   * configured Postfix cuts a header at about 60,000 bytes; Sendmail refuses headers over 32 KiB itself.
   */
  header?(ctx: StageContext<P, M>, name: string, value: string): MaybePromise<CallbackResult>;
  /** SMFIC_EOH (`xxfi_eoh`): the last header was sent. */
  eoh?(ctx: StageContext<P, M>): MaybePromise<CallbackResult>;
  /**
   * SMFIC_BODY (`xxfi_body`): one body chunk (at most 64 KiB, or the negotiated MDS), with CRLF line ends,
   * valid only during the call: copy it to keep it. `skip` (SMFIP_SKIP negotiated) stops further body
   * chunks; the message still ends with `eom`.
   */
  body?(ctx: StageContext<P, M>, chunk: Buffer): MaybePromise<BodyResult>;
  /**
   * SMFIC_BODYEOB (`xxfi_eom`): end of message, the only place for modifications (`ctx.addHeader`…). They
   * are sent in call order, the body replacement last, then the decision; a failed `eom` sends none.
   */
  eom?(ctx: EomContext<P, M>): MaybePromise<CallbackResult>;
  /**
   * SMFIC_ABORT (`xxfi_abort`): the current message was aborted (RSET, a refused command, a dropped
   * client). Not called after a message ended normally: Postfix sends ABORT after every message, milterd
   * drops those. `ctx.messagePriv` is still set here. Its return value is ignored.
   */
  abort?(ctx: StageContext<P, M>): MaybePromise<void>;
  /**
   * The connection ends (`xxfi_close`): exactly once per milter connection, and once more per SMFIC_QUIT_NC
   * session. It may come before `connect` (the MTA negotiated and quit): `ctx.priv` may be undefined.
   */
  close?(ctx: CloseContext<P>): MaybePromise<void>;
}

/** Re-exported for filters that build OPTNEG macro lists by number. */
export type { MacroLists };
