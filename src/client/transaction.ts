/**
 * The one engine that plays an MTA conversation, with the MTA's rules for what ends what
 * (milter-protocol.md §7.1, §8.4): a decision at CONNECT/HELO/MAIL/DATA/HEADER/EOH/BODY ends the message,
 * a reject/tempfail at RCPT only fails that recipient (no accepted recipient: no DATA), SKIP at BODY jumps
 * to EOM, a `421` or SHUTDOWN ends the SMTP session. It drives any {@link MtaSide}: a {@link MilterClient}
 * over a socket (`playMessage`), or milterd/testing's in-process session (`testFilter`).
 */
import { FILTER_CALLBACKS, type ConnectionInfo } from '../filter.js';
import type { MilterClient } from './client.js';
import type { ClientReply, EomResult } from './types.js';
import type { MacroPacketStage } from '../protocol/constants.js';
import { wireBytes } from '../protocol/wire-string.js';
import { unreachable } from '../unreachable.js';

/** A recipient, bare or with ESMTP args. */
export type ScriptRecipient = string | { address: string; args?: string[] };

/**
 * Stages a script can send macros for: the SMFIM_* stages, and the packets Postfix also sends before
 * every HEADER, every BODY chunk and UNKNOWN (`D L`, `D B`, `D U`).
 */
export type ScriptMacroStage = MacroPacketStage;

/** One message as an MTA would play it. */
export interface MessageScript {
  /** Macros sent before each command of that stage (SMFIC_MACRO with the stage's command letter). */
  macros?: Partial<Record<ScriptMacroStage, Record<string, string>>>;
  /**
   * Macros before each RCPT instead of `macros.envrcpt`: they may differ per recipient ({rcpt_addr}) and
   * depend on how many were accepted before (Postfix's `i` once the queue file exists).
   */
  recipientMacros?: (address: string, index: number, acceptedBefore: number) => Record<string, string>;
  /** SMTP command lines the client sends before MAIL, each as SMFIC_UNKNOWN (first message only). */
  unknown?: string[];
  /** SMFIC_CONNECT (first message of a connection only). */
  connect?: ConnectionInfo;
  /** SMFIC_HELO, when given. */
  helo?: string;
  /** Sender with angle brackets (`<a@example.org>`, `<>`). */
  sender: string;
  senderArgs?: string[];
  recipients: ScriptRecipient[];
  /** In message order; values without the single leading space (unless HDR_LEADSPC is negotiated). */
  headers: Array<[name: string, value: string]>;
  /** Raw body with CRLF line ends; a string is sent as its wireBytes (UTF-8). 65535-byte packets. */
  body: Buffer | string;
  /**
   * `true`: send SMFIC_ABORT after the message, as Postfix does after every transaction. A stage: cut the
   * message short right after that stage with SMFIC_ABORT (an RSET, or the client gone), if it gets there.
   */
  abortAfter?: boolean | AbortPoint;
}

/** A transaction stage after which a message can be cut short with SMFIC_ABORT (RSET, client gone). */
export type AbortPoint = 'envfrom' | 'envrcpt' | 'data' | 'header' | 'eoh' | 'body';

/**
 * The stages of one message as the client plays them (the decision callbacks); `MessageStage` derives
 * from it.
 */
export const MESSAGE_STAGES = FILTER_CALLBACKS.filter(
  (c): c is Exclude<(typeof FILTER_CALLBACKS)[number], 'negotiate' | 'abort' | 'close'> =>
    c !== 'negotiate' && c !== 'abort' && c !== 'close',
);

/** Where a message ended: the stage whose reply decided it, or `eom` when it ran to the end. */
export type MessageStage = (typeof MESSAGE_STAGES)[number];

/** Every reply of one message, and where and how it ended. */
export interface MessageResult {
  connect?: ClientReply;
  helo?: ClientReply;
  /** One reply per SMFIC_UNKNOWN sent. */
  unknown?: ClientReply[];
  envfrom?: ClientReply;
  /** One reply per recipient tried, in script order. */
  envrcpt: ClientReply[];
  /** Recipients the filter did not reject. */
  acceptedRecipients: string[];
  data?: ClientReply;
  /** One reply per header sent. */
  headers: ClientReply[];
  eoh?: ClientReply;
  body?: ClientReply;
  eom?: EomResult;
  stoppedAt: MessageStage;
  /** The reply that decided the message (the EOM decision when it ran to the end). */
  reply: ClientReply;
  /** True when SMFIC_ABORT was sent afterwards. */
  aborted: boolean;
}

/**
 * The MTA end of one milter conversation, one method per stage: send the command (with the macros queued
 * for it), read the reply as the MTA reads it (`skipped`: negotiated away; `noreply`: SMFIP_NR_*).
 * {@link MilterClient} is one.
 */
export interface MtaSide {
  readonly closed: boolean;
  macro(stage: MacroPacketStage, macros: Record<string, string>): void | Promise<void>;
  connect(info: ConnectionInfo): Promise<ClientReply>;
  helo(hostname: string): Promise<ClientReply>;
  unknown(line: string): Promise<ClientReply>;
  envfrom(sender: string, args: string[]): Promise<ClientReply>;
  envrcpt(recipient: string, args: string[]): Promise<ClientReply>;
  data(): Promise<ClientReply>;
  header(name: string, value: string): Promise<ClientReply>;
  eoh(): Promise<ClientReply>;
  /** The whole body in 65535-byte packets, up to the first reply other than continue; that reply. */
  body(chunk: Buffer, macros?: Record<string, string>): Promise<ClientReply>;
  eom(): Promise<EomResult>;
  abort(): void | Promise<void>;
}

/** Decisions that end the message (or the session, at CONNECT/HELO). */
export function isFinal(reply: ClientReply): boolean {
  switch (reply.kind) {
    case 'accept':
    case 'reject':
    case 'tempfail':
    case 'discard':
    case 'replyCode':
    case 'shutdown':
    case 'connFail':
      return true;
    case 'continue':
    case 'skip':
    case 'noreply':
    case 'skipped':
      return false;
    default:
      return unreachable(reply, 'reply');
  }
}

/** A reply after which the MTA ends the SMTP session (`421`, or SMFIR_SHUTDOWN). */
export function isShutdown(reply: ClientReply): boolean {
  return reply.kind === 'shutdown' || (reply.kind === 'replyCode' && reply.text.startsWith('421'));
}

/**
 * The MTA refuses an unknown command itself; a reject/tempfail (or a 4xx/5xx reply other than 421) only
 * sets the refusal's text and the session goes on.
 */
function refusesUnknownOnly(reply: ClientReply): boolean {
  if (reply.kind === 'replyCode') return !reply.text.startsWith('421');
  return reply.kind === 'reject' || reply.kind === 'tempfail';
}

/** At RCPT these only fail the one recipient (a 421 ends the session instead); the transaction goes on. */
function rejectsRecipientOnly(reply: ClientReply): boolean {
  if (reply.kind === 'replyCode') return !reply.text.startsWith('421');
  return reply.kind === 'reject' || reply.kind === 'tempfail';
}

/** A result before any step ran: what playMessage and milterd/testing fill in as the message goes. */
export function emptyMessageResult(): MessageResult {
  return {
    envrcpt: [],
    acceptedRecipients: [],
    headers: [],
    stoppedAt: 'eom',
    reply: { kind: 'continue' },
    aborted: false,
  };
}

function stop(result: MessageResult, stage: MessageStage, reply: ClientReply): MessageResult {
  result.stoppedAt = stage;
  result.reply = reply;
  return result;
}

async function sendMacros(mta: MtaSide, script: Pick<MessageScript, 'macros'>, stage: ScriptMacroStage) {
  const values = script.macros?.[stage];
  if (values !== undefined) await mta.macro(stage, values);
}

/**
 * CONNECT, HELO and the unknown commands of `script` (each only when given), into `result`. Returns the
 * result when a reply ended the connection's use of the filter, else undefined.
 */
export async function playGreeting(
  mta: MtaSide,
  script: Pick<MessageScript, 'macros' | 'connect' | 'helo' | 'unknown'>,
  result: MessageResult,
): Promise<MessageResult | undefined> {
  if (script.connect !== undefined) {
    await sendMacros(mta, script, 'connect');
    result.connect = await mta.connect(script.connect);
    if (isFinal(result.connect)) return stop(result, 'connect', result.connect);
  }
  if (script.helo !== undefined) {
    await sendMacros(mta, script, 'helo');
    result.helo = await mta.helo(script.helo);
    if (isFinal(result.helo)) return stop(result, 'helo', result.helo);
  }
  for (const line of script.unknown ?? []) {
    await sendMacros(mta, script, 'unknown');
    const reply = await mta.unknown(line);
    (result.unknown ??= []).push(reply);
    if (isFinal(reply) && !refusesUnknownOnly(reply)) return stop(result, 'unknown', reply);
  }
  return undefined;
}

/**
 * MAIL…EOM of `script` into `result`. With `abortAfter` a stage, SMFIC_ABORT cuts the message right after
 * it (`aborted`, and the result stops at that stage with its reply); `abortAfter: true` is the caller's.
 */
export async function playTransaction(
  mta: MtaSide,
  script: MessageScript,
  result: MessageResult,
): Promise<MessageResult> {
  const cutAfter = async (point: AbortPoint, reply: ClientReply): Promise<MessageResult | undefined> => {
    if (script.abortAfter !== point) return undefined;
    await mta.abort();
    result.aborted = true;
    return stop(result, point, reply);
  };

  await sendMacros(mta, script, 'envfrom');
  const envfrom = await mta.envfrom(script.sender, script.senderArgs ?? []);
  result.envfrom = envfrom;
  if (isFinal(envfrom)) return stop(result, 'envfrom', envfrom);
  let cut = await cutAfter('envfrom', envfrom);
  if (cut) return cut;

  let lastRejection: ClientReply | undefined;
  let lastReply = envfrom;
  for (const [index, recipient] of script.recipients.entries()) {
    const address = typeof recipient === 'string' ? recipient : recipient.address;
    const args = typeof recipient === 'string' ? [] : (recipient.args ?? []);
    if (script.recipientMacros === undefined) await sendMacros(mta, script, 'envrcpt');
    else await mta.macro('envrcpt', script.recipientMacros(address, index, result.acceptedRecipients.length));
    const reply = await mta.envrcpt(address, args);
    result.envrcpt.push(reply);
    lastReply = reply;
    if (rejectsRecipientOnly(reply)) lastRejection = reply;
    else if (isFinal(reply)) return stop(result, 'envrcpt', reply);
    else result.acceptedRecipients.push(address);
  }
  // No valid recipient: the MTA refuses DATA itself and the message never reaches the filter.
  if (result.acceptedRecipients.length === 0)
    return stop(result, 'envrcpt', lastRejection ?? { kind: 'reject' });
  cut = await cutAfter('envrcpt', lastReply);
  if (cut) return cut;

  await sendMacros(mta, script, 'data');
  const data = await mta.data();
  result.data = data;
  if (isFinal(data)) return stop(result, 'data', data);
  cut = await cutAfter('data', data);
  if (cut) return cut;

  for (const [name, value] of script.headers) {
    await sendMacros(mta, script, 'header');
    const reply = await mta.header(name, value);
    result.headers.push(reply);
    if (isFinal(reply)) return stop(result, 'header', reply);
  }
  cut = await cutAfter('header', result.headers.at(-1) ?? data);
  if (cut) return cut;

  await sendMacros(mta, script, 'eoh');
  const eoh = await mta.eoh();
  result.eoh = eoh;
  if (isFinal(eoh)) return stop(result, 'eoh', eoh);
  cut = await cutAfter('eoh', eoh);
  if (cut) return cut;

  const body = typeof script.body === 'string' ? wireBytes(script.body) : script.body;
  result.body = await mta.body(body, script.macros?.body);
  if (isFinal(result.body)) return stop(result, 'body', result.body);
  cut = await cutAfter('body', result.body);
  if (cut) return cut;

  await sendMacros(mta, script, 'eom');
  result.eom = await mta.eom();
  return stop(result, 'eom', result.eom.reply);
}

/**
 * Play one message over `client` and collect every reply. Rejects only on connection-level failures
 * (timeout, EOF, protocol errors: the MilterClient's coded errors); filter decisions are results.
 */
export async function playMessage(client: MilterClient, script: MessageScript): Promise<MessageResult> {
  const result = emptyMessageResult();
  const ended = await playGreeting(client, script, result);
  if (ended !== undefined) return ended;
  try {
    return await playTransaction(client, script, result);
  } finally {
    if (script.abortAfter === true && !client.closed) {
      client.abort();
      result.aborted = true;
    }
  }
}
