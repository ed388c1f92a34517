/**
 * A whole message in one call, with the MTA's rules for what ends it (milter-protocol.md §7.1, §8.4):
 * a decision at CONNECT/HELO/MAIL/DATA/HEADER/EOH/BODY ends the message, a reject/tempfail at RCPT only
 * fails that recipient, SKIP at BODY jumps to EOM.
 */
import type { ConnectionInfo, MacroStage } from '../filter.js';
import type { MilterClient } from './client.js';
import type { ClientReply, EomResult } from './types.js';
import { MACRO_STAGES } from '../protocol/constants.js';
import { wireBytes } from '../protocol/wire-string.js';

/** A recipient, bare or with ESMTP args. */
export type ScriptRecipient = string | { address: string; args?: string[] };

/** One message as an MTA would play it. */
export interface MessageScript {
  /** Macros sent before each command of that stage (SMFIC_MACRO with the stage's command letter). */
  macros?: Partial<Record<MacroStage, Record<string, string>>>;
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
  const macros = (stage: MacroStage): void => {
    const values = script.macros?.[stage];
    if (values !== undefined) client.macro(MACRO_STAGES[stage].letter, values);
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
  macros: (stage: MacroStage) => void,
  stop: (stage: MessageStage, reply: ClientReply) => MessageResult,
): Promise<MessageResult> {
  macros('envfrom');
  result.mail = await client.mail(script.sender, script.senderArgs ?? []);
  if (isFinal(result.mail)) return stop('mail', result.mail);

  let lastRejection: ClientReply | undefined;
  for (const recipient of script.recipients) {
    const address = typeof recipient === 'string' ? recipient : recipient.address;
    const args = typeof recipient === 'string' ? [] : (recipient.args ?? []);
    macros('envrcpt');
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
    const reply = await client.header(name, value);
    result.headers.push(reply);
    if (isFinal(reply)) return stop('header', reply);
  }
  macros('eoh');
  result.eoh = await client.eoh();
  if (isFinal(result.eoh)) return stop('eoh', result.eoh);
  const body = typeof script.body === 'string' ? wireBytes(script.body) : script.body;
  result.body = await client.body(body);
  if (isFinal(result.body)) return stop('body', result.body);
  macros('eom');
  result.eom = await client.eom();
  return stop('eom', result.eom.reply);
}
