/**
 * Wire strings: the bytes of a NUL-terminated protocol string ↔ a JavaScript string, losslessly
 * (milter-protocol.md §1.4: strings are opaque bytes; MTAs and libmilter pass 8-bit values through).
 *
 * Valid UTF-8 decodes to ordinary text. Every byte that is not part of a strictly valid UTF-8 sequence
 * (a stray continuation byte, a truncated or overlong sequence, an encoded surrogate ED A0..ED BF, a code
 * point above U+10FFFF, F5..FF) becomes the lone low surrogate U+DC00 + byte (U+DC80..U+DCFF): Python's
 * "surrogateescape". Encoding reverses it: a lone U+DC80..U+DCFF (one not preceded by a high surrogate)
 * is written as that single byte, everything else as UTF-8 (a lone surrogate outside that range as
 * U+FFFD, like Buffer). So a value received from the MTA and written back unchanged is the same bytes.
 *
 * Fast paths: decoding is Buffer's UTF-8 decoder plus a scan for U+FFFD (which marks every replaced byte);
 * encoding is Buffer's UTF-8 encoder whenever the string has no lone surrogate (`isWellFormed`, O(1) for
 * one-byte strings). Only strings that need it take the byte-by-byte paths below. Pure.
 */

/** ES2024 (Node 20+); the project's lib setting is ES2023. */
interface WellFormed {
  isWellFormed(): boolean;
}

function wellFormed(s: string): boolean {
  return (s as unknown as WellFormed).isWellFormed();
}

/** First and last escape code unit: U+DC00 + 0x80 .. U+DC00 + 0xFF. */
const ESCAPE_MIN = 0xdc80;
const ESCAPE_MAX = 0xdcff;

/**
 * Decode `buf[start, end)` losslessly: valid UTF-8 as text, each other byte as U+DC00 + byte.
 * Never throws for any bytes.
 */
export function decodeWireString(buf: Buffer, start: number, end: number): string {
  const s = buf.toString('utf8', start, end);
  // Buffer writes U+FFFD for every invalid sequence; a genuine U+FFFD (EF BF BD) also lands here and is
  // kept as text by the careful decoder.
  return s.includes('\uFFFD') ? decodeEscaped(buf, start, end) : s;
}

function isContinuation(b: number | undefined): boolean {
  return b !== undefined && (b & 0xc0) === 0x80;
}

/**
 * Length of the well-formed UTF-8 sequence at `buf[i]` that ends before `end` (Unicode Table 3-7), or 0
 * when the byte at `i` does not start one.
 */
function sequenceLength(buf: Buffer, i: number, end: number): number {
  const b0 = buf[i] as number;
  if (b0 < 0x80) return 1;
  if (b0 < 0xc2) return 0; // continuation byte, or overlong C0/C1
  if (b0 < 0xe0) return i + 1 < end && isContinuation(buf[i + 1]) ? 2 : 0;
  if (b0 < 0xf0) {
    if (i + 2 >= end) return 0;
    const b1 = buf[i + 1] as number;
    // E0: no overlongs (A0..BF); ED: no surrogates (80..9F).
    const lo = b0 === 0xe0 ? 0xa0 : 0x80;
    const hi = b0 === 0xed ? 0x9f : 0xbf;
    return b1 >= lo && b1 <= hi && isContinuation(buf[i + 2]) ? 3 : 0;
  }
  if (b0 < 0xf5) {
    if (i + 3 >= end) return 0;
    const b1 = buf[i + 1] as number;
    // F0: no overlongs (90..BF); F4: nothing above U+10FFFF (80..8F).
    const lo = b0 === 0xf0 ? 0x90 : 0x80;
    const hi = b0 === 0xf4 ? 0x8f : 0xbf;
    return b1 >= lo && b1 <= hi && isContinuation(buf[i + 2]) && isContinuation(buf[i + 3]) ? 4 : 0;
  }
  return 0; // F5..FF
}

function decodeEscaped(buf: Buffer, start: number, end: number): string {
  let out = '';
  let run = start;
  let i = start;
  // Bounded: every iteration moves i forward by at least one byte.
  while (i < end) {
    const n = sequenceLength(buf, i, end);
    if (n > 0) {
      i += n;
      continue;
    }
    if (run < i) out += buf.toString('utf8', run, i);
    out += String.fromCharCode(0xdc00 + (buf[i] as number));
    run = ++i;
  }
  return run < end ? out + buf.toString('utf8', run, end) : out;
}

/** Bytes `s` takes on the wire (without a terminating NUL). */
export function wireByteLength(s: string): number {
  return wellFormed(s) ? Buffer.byteLength(s, 'utf8') : escapedByteLength(s);
}

/**
 * Write `s` at `offset`; returns the number of bytes written. `buf` must have room for
 * {@link wireByteLength}(s) bytes there.
 */
export function writeWireString(buf: Buffer, offset: number, s: string): number {
  if (s.length === 0) return 0;
  return wellFormed(s) ? buf.write(s, offset, 'utf8') : writeEscaped(buf, offset, s);
}

function isLowSurrogate(c: number): boolean {
  return c >= 0xdc00 && c <= 0xdfff;
}

// The two functions below walk the string the same way, so the size always matches the bytes written.

function escapedByteLength(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && isLowSurrogate(s.charCodeAt(i + 1))) {
      n += 4;
      i++;
    } else if (c >= ESCAPE_MIN && c <= ESCAPE_MAX) n += 1;
    else n += 3; // BMP character, or a lone surrogate written as U+FFFD
  }
  return n;
}

function writeEscaped(buf: Buffer, offset: number, s: string): number {
  let o = offset;
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      buf[o++] = c;
    } else if (c < 0x800) {
      buf[o++] = 0xc0 | (c >> 6);
      buf[o++] = 0x80 | (c & 0x3f);
    } else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && isLowSurrogate(s.charCodeAt(i + 1))) {
      const cp = 0x10000 + ((c - 0xd800) << 10) + (s.charCodeAt(++i) - 0xdc00);
      buf[o++] = 0xf0 | (cp >> 18);
      buf[o++] = 0x80 | ((cp >> 12) & 0x3f);
      buf[o++] = 0x80 | ((cp >> 6) & 0x3f);
      buf[o++] = 0x80 | (cp & 0x3f);
    } else if (c >= ESCAPE_MIN && c <= ESCAPE_MAX) {
      buf[o++] = c - 0xdc00;
    } else {
      if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
      buf[o++] = 0xe0 | (c >> 12);
      buf[o++] = 0x80 | ((c >> 6) & 0x3f);
      buf[o++] = 0x80 | (c & 0x3f);
    }
  }
  return o - offset;
}

/**
 * The bytes a string stands for on the milter wire: the raw bytes of a value a filter received (a header
 * value, a macro, an envelope address), or of any string it is about to send.
 *
 * @example
 * // `Subject: caf\xe9` (latin1) arrives as 'caf\udce9'
 * wireBytes(value).toString('latin1'); // 'café'
 */
export function wireBytes(s: string): Buffer {
  if (wellFormed(s)) return Buffer.from(s, 'utf8');
  const buf = Buffer.allocUnsafe(escapedByteLength(s));
  writeEscaped(buf, 0, s);
  return buf;
}

/**
 * The string that stands for `bytes` on the milter wire: what a filter passes to an action to send those
 * exact bytes. Valid UTF-8 gives ordinary text; other bytes become U+DC80..U+DCFF.
 *
 * @example
 * ctx.changeHeader('Subject', 1, fromWireBytes(Buffer.from('[SPAM] caf\xe9', 'latin1')));
 */
export function fromWireBytes(bytes: Uint8Array): string {
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return decodeWireString(buf, 0, buf.length);
}
