/**
 * Splitting an RFC 5322 message file into what an MTA sends a milter, byte for byte: header fields the way
 * Postfix passes them (continuation lines joined with a bare LF, their leading white space kept, the value
 * everything after the colon) and the body with CRLF line ends. Works on the bytes; header names and
 * values become wire strings (protocol/wire-string.ts), so 8-bit bytes reach the milter unchanged.
 */
import { decodeWireString } from '../protocol/wire-string.js';

/** A message as the milter sees it. */
export interface ParsedMessage {
  /**
   * `[name, value]` in file order. The value is exactly the text after the colon (with its leading space,
   * which the MTA removes unless SMFIP_HDR_LEADSPC is negotiated: see {@link headerValueToSend}).
   */
  headers: Array<[name: string, value: string]>;
  /**
   * Each header field's bytes as an MTA delivers it, in file order: its lines exactly as in the file (the
   * name, any space before the colon, the value), joined with CRLF, without the final CRLF.
   */
  rawHeaders: Buffer[];
  /** Body with CRLF line ends. */
  body: Buffer;
  /**
   * False when the file ends inside the header block (no empty line, no body): an MTA then delivers the
   * header lines alone, without an empty separator line.
   */
  separator: boolean;
}

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const HT = 0x09;
const COLON = 0x3a;
const CRLF = Buffer.from('\r\n');

/** End of the line starting at `pos` whose LF is at `lf` (-1: none, the data's end): a CR before the LF excluded. */
function lineEnd(data: Buffer, pos: number, lf: number): number {
  if (lf < 0) return data.length;
  return lf > pos && data[lf - 1] === CR ? lf - 1 : lf;
}

/**
 * Length of the field name of a header line, as Postfix's is_header(): printable ASCII other than the
 * colon, optionally followed by spaces or tabs (RFC 822's obsolete syntax), then the colon. Returns the
 * name length and the offset of the colon, or undefined when the line is not a header field.
 */
function fieldName(data: Buffer, start: number, end: number): [number, number] | undefined {
  let i = start;
  while (i < end) {
    const c = data[i] as number;
    if (c <= SP || c >= 0x7f || c === COLON) break;
    i++;
  }
  const nameEnd = i;
  if (nameEnd === start) return undefined;
  while (i < end && (data[i] === SP || data[i] === HT)) i++;
  return i < end && data[i] === COLON ? [nameEnd - start, i] : undefined;
}

/**
 * Parse message bytes. Lines may end in LF or CRLF. A header line that is not a field ends the header
 * block (the rest is body), as does the first empty line. Throws an Error for a file that has no header
 * at all.
 */
export function parseEml(data: Buffer): ParsedMessage {
  const headers: Array<[string, string]> = [];
  const rawHeaders: Buffer[][] = [];
  let pos = 0;
  let separator = false;
  // Bounded: every iteration consumes one line.
  while (pos < data.length) {
    const lf = data.indexOf(LF, pos);
    const next = lf < 0 ? data.length : lf + 1;
    const end = lineEnd(data, pos, lf);
    if (end === pos) {
      pos = next; // the empty line is not part of the body
      separator = true;
      break;
    }
    const first = data[pos] as number;
    const last = headers[headers.length - 1];
    if ((first === SP || first === HT) && last !== undefined) {
      // An LF is never part of a multi-byte sequence: decoding line by line = decoding the joined bytes.
      last[1] += '\n' + decodeWireString(data, pos, end);
      rawHeaders[rawHeaders.length - 1]?.push(data.subarray(pos, end));
      pos = next;
      continue;
    }
    const field = fieldName(data, pos, end);
    if (field === undefined) break;
    const [nameLength, colon] = field;
    headers.push([data.toString('latin1', pos, pos + nameLength), decodeWireString(data, colon + 1, end)]);
    rawHeaders.push([data.subarray(pos, end)]);
    pos = next;
  }
  if (headers.length === 0) throw new Error('no header fields found: is this an RFC 5322 message (.eml)?');
  const body = crlfLines(data, pos);
  return {
    headers,
    rawHeaders: rawHeaders.map((lines) => joinCrlf(lines)),
    body,
    // A line that is not a header field also ends the block: the MTA inserts the empty line before it.
    separator: separator || body.length > 0,
  };
}

/** Lines joined with CRLF (no final one). */
function joinCrlf(lines: readonly Buffer[]): Buffer {
  const parts: Buffer[] = [];
  lines.forEach((line, i) => parts.push(...(i === 0 ? [line] : [CRLF, line])));
  return Buffer.concat(parts);
}

/** `data[start..]` with every line ended by CRLF (the file's final newline ends the last line). */
function crlfLines(data: Buffer, start: number): Buffer {
  const parts: Buffer[] = [];
  let pos = start;
  while (pos < data.length) {
    const lf = data.indexOf(LF, pos);
    const end = lineEnd(data, pos, lf);
    parts.push(data.subarray(pos, end), CRLF);
    pos = lf < 0 ? data.length : lf + 1;
  }
  return Buffer.concat(parts);
}

/**
 * The value an MTA sends for a header read by {@link parseEml}: as in the file with SMFIP_HDR_LEADSPC,
 * otherwise without one leading space (not a tab), as Postfix and Sendmail do (milter-protocol.md §3.8).
 */
export function headerValueToSend(value: string, leadingSpace: boolean): string {
  return !leadingSpace && value.startsWith(' ') ? value.slice(1) : value;
}
