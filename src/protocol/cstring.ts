/**
 * NUL-terminated string helpers shared by the decoder and the encoder (milter-protocol.md §1.4).
 *
 * Decoding follows libmilter's argv rule: split on NUL, a trailing NUL ends the last string and an empty
 * string between two NULs is a real (empty) element, so `Name\0\0` is two strings, `Name` and `""`.
 * Strings are bytes, mapped losslessly to JavaScript strings by wire-string.ts (UTF-8 with invalid bytes
 * escaped). Pure: throws only MilterProtocolError (bad bytes) and MilterUsageError (a string the wire cannot carry).
 */
import { MilterProtocolError, MilterUsageError } from '../errors.js';
import { decodeWireString, wireByteLength, writeWireString } from './wire-string.js';

/** Thrown for a payload whose strings are not what the command requires. */
export function malformed(what: string): MilterProtocolError {
  return new MilterProtocolError('ERR_MILTER_MALFORMED_PAYLOAD', what);
}

/**
 * Split `buf[start, end)` into NUL-terminated wire strings (argv rule). The range must be empty or end
 * with a NUL; otherwise the last string is unterminated and `ERR_MILTER_MALFORMED_PAYLOAD` is thrown.
 * An empty range gives `[]`.
 */
export function splitCStrings(buf: Buffer, start: number, end: number, what: string): string[] {
  const out: string[] = [];
  let pos = start;
  // Bounded: every iteration consumes at least the NUL it found.
  while (pos < end) {
    const nul = buf.indexOf(0, pos);
    if (nul < 0 || nul >= end) throw malformed(`${what}: string not NUL-terminated`);
    out.push(decodeWireString(buf, pos, nul));
    pos = nul + 1;
  }
  return out;
}

/**
 * Read one NUL-terminated string starting at `start` (not past `end`). Returns the string and the offset
 * just after its NUL; throws `ERR_MILTER_MALFORMED_PAYLOAD` when no NUL is found before `end`.
 */
export function readCString(buf: Buffer, start: number, end: number, what: string): [string, number] {
  const nul = start < end ? buf.indexOf(0, start) : -1;
  if (nul < 0 || nul >= end) throw malformed(`${what}: string not NUL-terminated`);
  return [decodeWireString(buf, start, nul), nul + 1];
}

/**
 * Byte length of `s` on the wire including its NUL. Throws `ERR_MILTER_INVALID_ARGUMENT` when `s` itself
 * contains a NUL: it would silently split into two strings and desynchronise the peer's parser.
 */
export function cstringSize(s: string, what: string): number {
  if (s.includes('\0')) {
    throw new MilterUsageError('ERR_MILTER_INVALID_ARGUMENT', `${what} must not contain a NUL byte`);
  }
  return wireByteLength(s) + 1;
}

/** Write `s` plus its NUL at `offset`; returns the offset after the NUL. Size must come from cstringSize. */
export function writeCString(buf: Buffer, offset: number, s: string): number {
  const n = writeWireString(buf, offset, s);
  buf[offset + n] = 0;
  return offset + n + 1;
}
