/**
 * A whole message in one call, with the MTA's rules for what ends it (milter-protocol.md §7.1, §8.4):
 * a decision at CONNECT/HELO/MAIL/DATA/HEADER/EOH/BODY ends the message, a reject/tempfail at RCPT only
 * fails that recipient, SKIP at BODY jumps to EOM.
 */
import type { ConnectionInfo, MacroStage } from '../filter.js';
import type { MilterClient } from './client.js';
import type { ClientReply, EomResult } from './types.js';
import { MACRO_STAGES, SMFIC_BODY, SMFIC_HEADER, SMFIC_UNKNOWN } from '../protocol/constants.js';
import { wireBytes } from '../protocol/wire-string.js';

/** A recipient, bare or with ESMTP args. */
export type ScriptRecipient = string | { address: string; args?: string[] };

/**
 * Stages a script can send macros for: the SMFIM_* stages, and the packets Postfix also sends before
 * every HEADER, every BODY chunk and UNKNOWN (`D L`, `D B`, `D U`).
 */
export type ScriptMacroStage = MacroStage | 'header' | 'body' | 'unknown';

const MACRO_LETTERS: Record<ScriptMacroStage, string> = {
  ...(Object.fromEntries(Object.entries(MACRO_STAGES).map(([k, v]) => [k, v.letter])) as Record<
    MacroStage,
    string
  >),
  header: String.fromCharCode(SMFIC_HEADER),
  body: String.fromCharCode(SMFIC_BODY),
  unknown: String.fromCharCode(SMFIC_UNKNOWN),
};

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
  /** Send SMFIC_ABORT after the message, as Postfix does after every transaction. */
  abortAfter?: boolean;
}

/** The stages of one message as the client plays them, in order (the one list; `MessageStage` derives from it). */
export const MESSAGE_STAGES = [
  'connect',
  'helo',
  'unknown',
  'mail',
  'rcpt',
  'data',
  'header',
  'eoh',
  'body',
  'eom',
] as const;

/** Where a message ended: the stage whose reply decided it, or `eom` when it ran to the end. */
export type MessageStage = (typeof MESSAGE_STAGES)[number];

/** Every reply of one message, and where and how it ended. */
export interface MessageResult {
  connect?: ClientReply;
  helo?: ClientReply;
  /** One reply per SMFIC_UNKNOWN sent. */
  unknown?: ClientReply[];
  mail?: ClientReply;
  /** One reply per recipient tried, in script order. */
  rcpt: ClientReply[];
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

/** Decisions that end the message (or the session, at CONNECT/HELO). */
function isFinal(reply: ClientReply): boolean {
  switch (reply.kind) {
    case 'accept':
    case 'reject':
    case 'tempfail':
    case 'discard':
    case 'replyCode':
    case 'shutdown':
    case 'connFail':
      return true;
    default:
      return false;
  }
}

/**
 * The MTA refuses an unknown command itself; a reject/tempfail (or a 4xx/5xx reply other than 421) only
 * sets the refusal's text and the session goes on.
 */
function refusesUnknownOnly(reply: ClientReply): boolean {
  if (reply.kind === 'replyCode') return !reply.text.startsWith('421');
  return reply.kind === 'reject' || reply.kind === 'tempfail';
}

/** At RCPT these only fail the one recipient; the transaction goes on. */
function rejectsRecipientOnly(reply: ClientReply): boolean {
  return reply.kind === 'reject' || reply.kind === 'tempfail' || reply.kind === 'replyCode';
}

/** A result before any step ran: what playMessage and milterd/testing fill in as the message goes. */
export function emptyMessageResult(): MessageResult {
  return {
    rcpt: [],
    acceptedRecipients: [],
    headers: [],
    stoppedAt: 'eom',
    reply: { kind: 'continue' },
    aborted: false,
  };
}

/**
 * Play one message over `client` and collect every reply. Rejects only on connection-level failures
 * (timeout, EOF, protocol errors: the MilterClient's coded errors); filter decisions are results.
 */
export async function playMessage(client: MilterClient, script: MessageScript): Promise<MessageResult> {
  const result = emptyMessageResult();
  const macros = (stage: ScriptMacroStage): void => {
    const values = script.macros?.[stage];
    if (values !== undefined) client.macro(MACRO_LETTERS[stage], values);
  };
  const stop = (stage: MessageStage, reply: ClientReply): MessageResult => {
    result.stoppedAt = stage;
    result.reply = reply;
    return result;
  };

  if (script.connect !== undefined) {
    macros('connect');
    result.connect = await client.connect(script.connect);
    if (isFinal(result.connect)) return stop('connect', result.connect);
  }
  if (script.helo !== undefined) {
    macros('helo');
    result.helo = await client.helo(script.helo);
    if (isFinal(result.helo)) return stop('helo', result.helo);
  }
  for (const line of script.unknown ?? []) {
    macros('unknown');
    const reply = await client.unknown(line);
    (result.unknown ??= []).push(reply);
    if (isFinal(reply) && !refusesUnknownOnly(reply)) return stop('unknown', reply);
  }
  try {
    return await playTransaction(client, script, result, macros, stop);
  } finally {
    if (script.abortAfter === true && !client.closed) {
      client.abort();
      result.aborted = true;
    }
  }
}

async function playTransaction(
  client: MilterClient,
  script: MessageScript,
  result: MessageResult,
  macros: (stage: ScriptMacroStage) => void,
  stop: (stage: MessageStage, reply: ClientReply) => MessageResult,
): Promise<MessageResult> {
  macros('envfrom');
  result.mail = await client.mail(script.sender, script.senderArgs ?? []);
  if (isFinal(result.mail)) return stop('mail', result.mail);

  let lastRejection: ClientReply | undefined;
  for (const [index, recipient] of script.recipients.entries()) {
    const address = typeof recipient === 'string' ? recipient : recipient.address;
    const args = typeof recipient === 'string' ? [] : (recipient.args ?? []);
    if (script.recipientMacros === undefined) macros('envrcpt');
    else {
      const values = script.recipientMacros(address, index, result.acceptedRecipients.length);
      client.macro(MACRO_LETTERS.envrcpt, values);
    }
    const reply = await client.rcpt(address, args);
    result.rcpt.push(reply);
    if (rejectsRecipientOnly(reply)) lastRejection = reply;
    else if (isFinal(reply)) return stop('rcpt', reply);
    else result.acceptedRecipients.push(address);
  }
  // No valid recipient: the MTA refuses DATA itself and the message never reaches the filter.
  if (result.acceptedRecipients.length === 0) return stop('rcpt', lastRejection ?? { kind: 'reject' });

  macros('data');
  result.data = await client.data();
  if (isFinal(result.data)) return stop('data', result.data);
  for (const [name, value] of script.headers) {
    macros('header');
    const reply = await client.header(name, value);
    result.headers.push(reply);
    if (isFinal(reply)) return stop('header', reply);
  }
  macros('eoh');
  result.eoh = await client.eoh();
  if (isFinal(result.eoh)) return stop('eoh', result.eoh);
  const body = typeof script.body === 'string' ? wireBytes(script.body) : script.body;
  result.body = await client.body(body, script.macros?.body);
  if (isFinal(result.body)) return stop('body', result.body);
  macros('eom');
  result.eom = await client.eom();
  return stop('eom', result.eom.reply);
}
