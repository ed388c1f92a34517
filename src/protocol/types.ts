/**
 * Typed wire messages. `MilterCommand` is what the MTA sends (decoded from one frame's payload);
 * `MilterResponse` is what the filter sends. Field names follow the libmilter documentation.
 *
 * Strings are decoded as UTF-8. Buffers (`body.chunk`, `eom.chunk`, `replaceBody.chunk`) may be views
 * into the frame decoder's accumulator: they are valid only during the call that received them; copy
 * (`Buffer.from(view)`) before keeping one.
 */

/** Address family of the SMTP client in SMFIC_CONNECT. */
export type AddressFamily = 'unknown' | 'unix' | 'inet' | 'inet6';

/** Macro stage letters the MTA may put in a SMFIC_MACRO packet ('L', 'B', 'U' are Postfix extras). */
export type MacroCommandLetter = 'C' | 'H' | 'M' | 'R' | 'T' | 'L' | 'N' | 'B' | 'E' | 'U' | (string & {});

export interface OptnegCommand {
  kind: 'optneg';
  version: number;
  actions: number;
  protocol: number;
}
export interface MacroCommand {
  kind: 'macro';
  /** The command letter these macros belong to ('C', 'H', 'M', ...). */
  stage: MacroCommandLetter;
  /** name/value pairs in wire order; names as sent (`i`, `{daemon_name}`). */
  macros: Array<[name: string, value: string]>;
}
export interface ConnectCommand {
  kind: 'connect';
  hostname: string;
  family: AddressFamily;
  /** 0 when unknown, for Unix sockets and for family 'unknown'. */
  port: number;
  /** Address text as sent, with any `IPv6:` tag removed; '' for family 'unknown'. */
  address: string;
}
export interface HeloCommand {
  kind: 'helo';
  hostname: string;
}
export interface MailCommand {
  kind: 'mail';
  /** Sender with angle brackets as given (`<a@example.org>`, `<>`). */
  sender: string;
  /** ESMTP parameters, one per element (`SIZE=1024`). */
  args: string[];
}
export interface RcptCommand {
  kind: 'rcpt';
  recipient: string;
  args: string[];
}
export interface DataCommand {
  kind: 'data';
}
export interface HeaderCommand {
  kind: 'header';
  name: string;
  /** May be empty. Folded lines are joined with a bare LF. */
  value: string;
}
export interface EohCommand {
  kind: 'eoh';
}
export interface BodyCommand {
  kind: 'body';
  /** View valid only during the call; never empty on a legal stream. */
  chunk: Buffer;
}
export interface EomCommand {
  kind: 'eom';
  /** Usually empty; libmilter treats data here as the last body chunk. View valid only during the call. */
  chunk: Buffer;
}
export interface AbortCommand {
  kind: 'abort';
}
export interface QuitCommand {
  kind: 'quit';
}
export interface QuitNewConnectionCommand {
  kind: 'quitNewConnection';
}
export interface UnknownCommand {
  kind: 'unknown';
  /** The SMTP command line as received (Postfix: verb only; Sendmail: whole line). */
  line: string;
}

/** Every command the MTA can send. */
export type MilterCommand =
  | OptnegCommand
  | MacroCommand
  | ConnectCommand
  | HeloCommand
  | MailCommand
  | RcptCommand
  | DataCommand
  | HeaderCommand
  | EohCommand
  | BodyCommand
  | EomCommand
  | AbortCommand
  | QuitCommand
  | QuitNewConnectionCommand
  | UnknownCommand;

export type MilterCommandKind = MilterCommand['kind'];

/** Macro lists requested in the OPTNEG reply, keyed by SMFIM_* stage number (0..6): space-separated names. */
export type MacroLists = Partial<Record<0 | 1 | 2 | 3 | 4 | 5 | 6, string>>;

export interface OptnegResponse {
  kind: 'optneg';
  version: number;
  actions: number;
  protocol: number;
  macroLists?: MacroLists;
}
/** Responses without payload. */
export interface SimpleResponse {
  kind:
    'accept' | 'continue' | 'reject' | 'tempfail' | 'discard' | 'skip' | 'shutdown' | 'progress' | 'connFail';
}
export interface ReplyCodeResponse {
  kind: 'replyCode';
  /** Complete SMTP reply, lines joined with CRLF, no trailing CRLF (`550 5.7.1 Blocked`). */
  text: string;
}
export interface AddHeaderResponse {
  kind: 'addHeader';
  name: string;
  value: string;
}
export interface InsertHeaderResponse {
  kind: 'insertHeader';
  /** 0-based position in the whole header list (0 = top). */
  index: number;
  name: string;
  value: string;
}
export interface ChangeHeaderResponse {
  kind: 'changeHeader';
  /** 1-based among headers with this name (0 is treated as 1 by the MTAs). */
  index: number;
  name: string;
  /** '' deletes the header. */
  value: string;
}
export interface AddRecipientResponse {
  kind: 'addRecipient';
  recipient: string;
}
export interface AddRecipientWithArgsResponse {
  kind: 'addRecipientWithArgs';
  recipient: string;
  /** One string of space-separated ESMTP parameters; omitted from the wire when undefined. */
  args?: string;
}
export interface DeleteRecipientResponse {
  kind: 'deleteRecipient';
  recipient: string;
}
export interface ReplaceBodyResponse {
  kind: 'replaceBody';
  /** At most MILTER_CHUNK_SIZE bytes; may be empty. */
  chunk: Buffer;
}
export interface ChangeFromResponse {
  kind: 'changeFrom';
  sender: string;
  args?: string;
}
export interface QuarantineResponse {
  kind: 'quarantine';
  reason: string;
}

/** EOM modification packets. */
export type ModificationResponse =
  | AddHeaderResponse
  | InsertHeaderResponse
  | ChangeHeaderResponse
  | AddRecipientResponse
  | AddRecipientWithArgsResponse
  | DeleteRecipientResponse
  | ReplaceBodyResponse
  | ChangeFromResponse
  | QuarantineResponse;

/** Every response the filter can send. */
export type MilterResponse = OptnegResponse | SimpleResponse | ReplyCodeResponse | ModificationResponse;
export type MilterResponseKind = MilterResponse['kind'];

/** One complete frame as cut by the frame decoder. `payload` is a view valid until the next push(). */
export interface Frame {
  command: number;
  payload: Buffer;
}
