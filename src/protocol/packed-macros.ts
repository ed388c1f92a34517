/**
 * One SMFIC_MACRO packet kept packed until somebody looks a macro up (milter-protocol.md §3.2).
 *
 * An MTA sends a macro packet before nearly every command, Postfix with a dozen pairs at CONNECT, and most
 * filters read few of them or none. Decoding every name and value into strings on arrival was a quarter of
 * all the bytes the server allocated per message (benchmark allocation profile); a packet is now validated
 * and copied into one string, and split into pairs the first time a lookup reaches it. Pure: throws only
 * MilterProtocolError.
 */
import { malformed } from './cstring.js';
import { decodeWireString } from './wire-string.js';

export type MacroPairs = ReadonlyArray<readonly [name: string, value: string]>;

/** Any byte outside ASCII: the latin1 copy is then not the wire string and each string is re-decoded. */
const NON_ASCII = /[\x80-\xff]/;

export class PackedMacros {
  /** Same discriminant as MacroCommand, so the session takes either. */
  readonly kind = 'macro';
  private decoded: MacroPairs | undefined;

  private constructor(
    /** The command letter these macros belong to ('C', 'H', 'M', ...). */
    readonly stage: string,
    /** `name\0value\0…` as latin1 (one byte per char): an exact copy of the wire bytes. */
    private readonly text: string,
  ) {}

  /**
   * Validate and copy a macro payload (stage letter, then name/value strings), which may be a view of
   * memory reused after this call. Throws `ERR_MILTER_MALFORMED_PAYLOAD` for what decodeCommand refuses: an
   * empty payload, an unterminated last string, an odd number of strings.
   */
  static fromPayload(payload: Buffer): PackedMacros {
    if (payload.length === 0) throw malformed('macro: payload required');
    const text = payload.toString('latin1', 1);
    let strings = 0;
    // Bounded: every iteration moves past the NUL it found.
    for (let nul = text.indexOf('\0'); nul >= 0; nul = text.indexOf('\0', nul + 1)) strings++;
    if (text.length > 0 && text.charCodeAt(text.length - 1) !== 0) {
      throw malformed('macro: string not NUL-terminated');
    }
    if (strings % 2 !== 0) throw malformed('macro: odd number of name/value strings');
    return new PackedMacros(String.fromCharCode(payload[0] as number), text);
  }

  /** True when the packet has no pairs (libmilter then leaves the stage's slot as it was). */
  get empty(): boolean {
    return this.text.length === 0;
  }

  /** The name/value pairs in wire order, decoded on the first call (wire-string.ts: lossless). */
  pairs(): MacroPairs {
    if (this.decoded !== undefined) return this.decoded;
    const parts = this.text.split('\0');
    parts.pop(); // the empty string after the last NUL
    if (NON_ASCII.test(this.text)) {
      for (let i = 0; i < parts.length; i++) {
        const bytes = Buffer.from(parts[i] as string, 'latin1');
        parts[i] = decodeWireString(bytes, 0, bytes.length);
      }
    }
    const pairs: Array<[string, string]> = [];
    for (let i = 0; i < parts.length; i += 2) pairs.push([parts[i] as string, parts[i + 1] as string]);
    this.decoded = pairs;
    return pairs;
  }
}
