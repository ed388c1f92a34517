/**
 * The message as the MTA delivers it after a milter's end-of-message modifications, with Postfix 3.7's
 * rules (src/cleanup/cleanup_milter.c, src/milter/milter8.c), byte for byte: the bytes a milter did not
 * change stay as they were in the file (lines end in CRLF, as over SMTP), except where Postfix itself
 * changes them (below).
 *
 * Header rules (Postfix):
 * - The obsolete `Name  : value` form (space before the colon) is delivered as `Name: value`: Postfix's
 *   MIME processor normalizes it when it receives the message (mime_state.c).
 * - The MTA's own Received: header is on top of the message but hidden from the milter. Insert indices
 *   count it (SMFIR_INSHEADER index i goes before the i-th header of the delivered message, so 0 lands
 *   above that Received: and 1 just below it); change/delete indices do not (they count the headers the
 *   milter saw). Here it is a placeholder that is dropped from the output: the caller has no such header.
 * - addheader appends after the last header; insheader past the end appends too.
 * - chgheader: index 0 is treated as 1; the index counts headers of that name (ASCII case-insensitive),
 *   headers added earlier included; an empty value deletes; changing a missing header appends it,
 *   deleting one does nothing.
 * - A header the milter wrote is `name:` + one space (none when SMFIP_HDR_LEADSPC was negotiated) +
 *   value; an LF in the value starts a new line, which gets a leading TAB unless it starts with one or a
 *   space (cleanup_out_header).
 * - SMFIR_REPLBODY chunks form the new body: split at LF, one CR before each LF dropped, a last line
 *   without LF kept; every line then ends in CRLF. Body chunks mixed with other requests after them are
 *   refused by Postfix (the message then gets milter_default_action): reported in `problems`.
 * Envelope: chgfrom replaces the sender; addrcpt appends a recipient, even one already there (Postfix
 * then relays to it twice: test/e2e/output-message.test.ts); delrcpt removes every recipient with that
 * address.
 *
 * Not modelled: header_checks on milter headers, Postfix's line length limits (smtp_line_length_limit
 * folds lines longer than 998 bytes on output, header_size_limit truncates), the headers Postfix adds
 * for local clients when missing (Message-Id:, Date:, From:, To:) and the Return-Path: it drops.
 */
import type { ModificationResponse } from '../protocol/types.js';
import { wireBytes } from '../protocol/wire-string.js';
import type { ParsedMessage } from './eml.js';

/** The MTA's own Received: header: hidden from the milter, counted by insert indices. */
const MTA_RECEIVED = Symbol('MTA Received: header');

/** A header of the message being edited: its name and its bytes (lines joined with CRLF). */
type Field = { name: string; bytes: Buffer } | typeof MTA_RECEIVED;

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const HT = 0x09;
const CRLF = Buffer.from('\r\n');
const TAB = Buffer.from('\t');

/** One recipient of the delivered envelope. */
export interface DeliveredRecipient {
  /** With angle brackets. */
  address: string;
  /** ESMTP parameters of SMFIR_ADDRCPT_PAR, as the milter sent them. */
  args?: string;
  /** True when the milter added it. */
  added: boolean;
}

/** The envelope after the milter's changes. */
export interface DeliveredEnvelope {
  /** With angle brackets. */
  sender: string;
  /** ESMTP parameters of SMFIR_CHGFROM (Postfix keeps only RET= and ENVID=). */
  senderArgs?: string;
  /** The sender before the milter changed it; absent when it did not. */
  originalSender?: string;
  recipients: DeliveredRecipient[];
  /** Recipients the milter deleted. */
  deleted: string[];
  /** SMFIR_QUARANTINE reason: Postfix puts the message on hold. */
  quarantine?: string;
}

/** Result of {@link deliveredMessage}. */
export interface DeliveredMessage {
  /** Header lines, empty line, body: every line ends in CRLF. */
  bytes: Buffer;
  envelope: DeliveredEnvelope;
  /** Requests Postfix refuses (it then applies milter_default_action to the message). */
  problems: string[];
}

/** What the MTA received: the message and the envelope it accepted. */
export interface ReceivedMessage {
  message: Pick<ParsedMessage, 'headers' | 'rawHeaders' | 'body' | 'separator'>;
  /** With angle brackets. */
  sender: string;
  /** Recipients the MTA accepted, with angle brackets. */
  recipients: readonly string[];
}

const bare = (address: string): string => address.replace(/^<(.*)>$/, '$1');
const bracket = (address: string): string => `<${bare(address)}>`;
const sameName = (a: string, b: string): boolean =>
  a.length === b.length &&
  a.replace(/[A-Z]/g, (c) => c.toLowerCase()) === b.replace(/[A-Z]/g, (c) => c.toLowerCase());

/** Lines joined with CRLF, no final CRLF. */
function joinLines(lines: readonly Buffer[]): Buffer {
  const parts: Buffer[] = [];
  lines.forEach((line, i) => {
    if (i > 0) parts.push(CRLF);
    parts.push(line);
  });
  return Buffer.concat(parts);
}

/** A header a milter wrote, as Postfix stores it (cleanup_add_header + cleanup_out_header). */
export function milterHeaderBytes(name: string, value: string, leadingSpace: boolean): Buffer {
  const text = wireBytes(`${name}:${leadingSpace ? '' : ' '}${value}`);
  const lines: Buffer[] = [];
  let start = 0;
  for (;;) {
    const lf = text.indexOf(LF, start);
    const line = text.subarray(start, lf < 0 ? text.length : lf);
    const first = line[0];
    lines.push(lines.length === 0 || first === SP || first === HT ? line : Buffer.concat([TAB, line]));
    if (lf < 0) break;
    start = lf + 1;
  }
  return joinLines(lines);
}

/** A replaced body as Postfix writes it: milter8's SMFIR_REPLBODY line splitting, CRLF line ends. */
export function replacedBodyBytes(body: Buffer): Buffer {
  const parts: Buffer[] = [];
  let start = 0;
  while (start < body.length) {
    const lf = body.indexOf(LF, start);
    if (lf < 0) {
      parts.push(body.subarray(start), CRLF); // a last line without LF is kept
      break;
    }
    parts.push(body.subarray(start, lf > start && body[lf - 1] === CR ? lf - 1 : lf), CRLF);
    start = lf + 1;
  }
  return Buffer.concat(parts);
}

/** A header of the file as Postfix stores it: white space between name and colon removed (mime_state.c). */
function receivedHeaderBytes(raw: Buffer, nameLength: number): Buffer {
  let colon = nameLength;
  while (raw[colon] === SP || raw[colon] === HT) colon++;
  return colon === nameLength ? raw : Buffer.concat([raw.subarray(0, nameLength), raw.subarray(colon)]);
}

/** Index in `fields` of the `index`-th (1-based) visible header called `name`, or -1. */
function findNamed(fields: readonly Field[], name: string, index: number): number {
  let n = index;
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i] as Field;
    if (f !== MTA_RECEIVED && sameName(f.name, name) && --n === 0) return i;
  }
  return -1;
}

/**
 * Apply `mods` (the milter's EOM requests in wire order) to what the MTA received, as Postfix 3.7 would,
 * and return the delivered message and envelope. Pure; `leadingSpace` is whether SMFIP_HDR_LEADSPC was
 * negotiated.
 */
export function deliveredMessage(
  received: ReceivedMessage,
  mods: readonly ModificationResponse[],
  leadingSpace: boolean,
): DeliveredMessage {
  const { message } = received;
  const fields: Field[] = [
    MTA_RECEIVED,
    ...message.headers.map(([name], i): Field => ({
      name,
      bytes: receivedHeaderBytes(message.rawHeaders[i] ?? Buffer.alloc(0), name.length),
    })),
  ];
  const envelope: DeliveredEnvelope = {
    sender: received.sender,
    recipients: received.recipients.map((address) => ({ address, added: false })),
    deleted: [],
  };
  const problems: string[] = [];
  let body: Buffer[] | undefined;
  let bodyDone = false;
  const field = (name: string, value: string): Field => ({
    name,
    bytes: milterHeaderBytes(name, value, leadingSpace),
  });

  for (const m of mods) {
    if (body !== undefined && m.kind !== 'replaceBody') bodyDone = true;
    switch (m.kind) {
      case 'addHeader':
        fields.push(field(m.name, m.value));
        break;
      case 'insertHeader':
        // Postfix: 1-based index + 1 among all headers, its Received: included; past the end appends.
        fields.splice(Math.min(m.index, fields.length), 0, field(m.name, m.value));
        break;
      case 'changeHeader': {
        if (m.name === '') {
          problems.push('change header with an empty name: Postfix refuses it');
          break;
        }
        const at = findNamed(fields, m.name, m.index === 0 ? 1 : m.index);
        if (m.value === '') {
          if (at >= 0) fields.splice(at, 1);
        } else if (at >= 0) fields[at] = field(m.name, m.value);
        else fields.push(field(m.name, m.value));
        break;
      }
      case 'addRecipient':
      case 'addRecipientWithArgs': {
        const address = bracket(m.recipient);
        const args = m.kind === 'addRecipientWithArgs' ? m.args : undefined;
        envelope.recipients.push(
          args === undefined ? { address, added: true } : { address, args, added: true },
        );
        break;
      }
      case 'deleteRecipient': {
        const target = bare(m.recipient);
        const kept = envelope.recipients.filter((r) => bare(r.address) !== target);
        if (kept.length !== envelope.recipients.length) envelope.deleted.push(bracket(m.recipient));
        envelope.recipients = kept;
        break;
      }
      case 'changeFrom':
        envelope.originalSender ??= envelope.sender;
        envelope.sender = bracket(m.sender);
        if (m.args !== undefined && m.args !== '') envelope.senderArgs = m.args;
        break;
      case 'quarantine':
        envelope.quarantine = m.reason;
        break;
      case 'replaceBody':
        if (bodyDone) {
          problems.push(
            'body replacement chunks after other requests that followed earlier chunks: Postfix refuses ' +
              '("body replacement requests can\'t currently be mixed with other requests")',
          );
          bodyDone = false;
        }
        (body ??= []).push(m.chunk);
        break;
    }
  }
  if (envelope.originalSender === envelope.sender) delete envelope.originalSender;

  const parts: Buffer[] = [];
  for (const f of fields) if (f !== MTA_RECEIVED) parts.push(f.bytes, CRLF);
  // Postfix writes the empty separator line before a replaced body even when the original had none.
  if (body !== undefined) parts.push(CRLF, replacedBodyBytes(Buffer.concat(body)));
  else if (message.separator) parts.push(CRLF, message.body);
  return { bytes: Buffer.concat(parts), envelope, problems };
}

/**
 * The envelope as a block of header fields to put above the message (`X-Milterd-Envelope-*`, changes
 * explained in comments), or an empty buffer when the milter changed nothing in the envelope.
 */
export function envelopeHeaderBlock(envelope: DeliveredEnvelope): Buffer {
  const changed =
    envelope.originalSender !== undefined ||
    envelope.deleted.length > 0 ||
    envelope.recipients.some((r) => r.added) ||
    envelope.senderArgs !== undefined;
  if (!changed) return Buffer.alloc(0);
  const lines: string[] = [];
  const from = [`X-Milterd-Envelope-From: ${envelope.sender}`];
  if (envelope.senderArgs !== undefined) from.push(envelope.senderArgs);
  if (envelope.originalSender !== undefined)
    from.push(`(changed by the milter, was ${envelope.originalSender})`);
  lines.push(from.join(' '));
  for (const r of envelope.recipients) {
    const parts = [`X-Milterd-Envelope-To: ${r.address}`];
    if (r.args !== undefined) parts.push(r.args);
    if (r.added) parts.push('(added by the milter)');
    lines.push(parts.join(' '));
  }
  for (const d of envelope.deleted) lines.push(`X-Milterd-Envelope-Deleted: ${d} (deleted by the milter)`);
  return wireBytes(lines.map((l) => `${l}\r\n`).join(''));
}
