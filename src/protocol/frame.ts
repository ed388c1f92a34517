/**
 * Stream framing: arbitrary socket chunks in, complete `{ command, payload }` frames out
 * (milter-protocol.md §1.2). Pure: no I/O, throws only MilterProtocolError.
 */
import { MilterProtocolError } from '../errors.js';
import { MILTER_LEN_BYTES, MILTER_MDS_64K } from './constants.js';
import type { Frame } from './types.js';

const EMPTY = Buffer.alloc(0);
/**
 * Smallest accumulator, and the largest one kept once drained: one 64 KiB body chunk (what both MTAs
 * send per BODY packet) fits, so a body streamed in chunks that span reads reuses one buffer.
 */
const MIN_CAPACITY = 64 * 1024 + 8;

/**
 * Cuts a milter byte stream into frames.
 *
 * Buffering follows pg-protocol's `mergeBuffer`: when nothing is pending the pushed chunk is used as is
 * (zero copy, frames are views into it); only a partial frame makes the decoder copy into one owned,
 * growable accumulator, which is compacted in place instead of concatenated per chunk. A borrowed chunk
 * is never written to, because callers may push views of a buffer they still use. Once the length of the
 * frame being assembled is known (and accepted), the accumulator is sized for the whole frame at once:
 * each byte is copied once. An accumulator larger than MIN_CAPACITY is dropped as soon as every byte in it
 * has been returned as a frame (a payload view keeps that memory alive while it is used); one of
 * MIN_CAPACITY is kept for the next frame (allocating one per body chunk doubled the CPU per byte), until
 * `release()`: a caller that sees the stream go quiet gives it back.
 *
 * Errors (thrown from `next()`, and again on every later call: the stream is unusable afterwards):
 * `ERR_MILTER_FRAME_EMPTY` for a length field of 0, `ERR_MILTER_FRAME_TOO_LARGE` as soon as a length
 * field announces a payload above `maxDataSize`, before any of that payload is buffered.
 */
export class FrameDecoder {
  /** Largest accepted payload (`len - 1`); may be raised after MDS negotiation. */
  maxDataSize: number;
  private buf: Buffer = EMPTY;
  private start = 0;
  private end = 0;
  /** True when `buf` is our own accumulator (writable), false when it is a borrowed pushed chunk. */
  private owned = false;
  /** The owned accumulator, kept between borrow phases up to MIN_CAPACITY (see the class comment). */
  private acc: Buffer = EMPTY;

  /** @param maxDataSize payload limit (`len - 1`), default MILTER_MDS_64K (65535). */
  constructor(maxDataSize: number = MILTER_MDS_64K) {
    this.maxDataSize = maxDataSize;
  }

  /** Bytes held and not yet returned as frames. */
  get bufferedBytes(): number {
    return this.end - this.start;
  }

  /** Bytes of memory the decoder holds of its own (its accumulator), used or not. */
  get capacity(): number {
    return this.acc.length;
  }

  /**
   * Append socket bytes: the first `length` bytes of `chunk` (default: all of them, a read into a larger
   * buffer passes its byte count). Invalidates every payload view returned by earlier `next()` calls. The chunk is
   * not modified, but it may be referenced until its frames have been read: do not write to it before
   * then, or call `retain()` first.
   */
  push(chunk: Buffer, length: number = chunk.length): void {
    if (length === 0) return;
    const pending = this.end - this.start;
    if (pending === 0) {
      this.buf = chunk;
      this.start = 0;
      this.end = length;
      this.owned = false;
      return;
    }
    if (!this.owned || this.buf.length - this.end < length) this.moveToAccumulator(pending, pending + length);
    chunk.copy(this.buf, this.end, 0, length);
    this.end += length;
  }

  /**
   * The next complete frame, or undefined when more bytes are needed. `payload` is a view into the
   * decoder's memory, valid until the next `push()`; copy it (`Buffer.from`) to keep it longer.
   */
  next(): Frame | undefined {
    const avail = this.end - this.start;
    if (avail < MILTER_LEN_BYTES) return undefined;
    const len = this.buf.readUInt32BE(this.start);
    if (len === 0) {
      throw new MilterProtocolError('ERR_MILTER_FRAME_EMPTY', 'frame length 0 (no command byte)');
    }
    if (len - 1 > this.maxDataSize) {
      throw new MilterProtocolError(
        'ERR_MILTER_FRAME_TOO_LARGE',
        `frame payload of ${len - 1} bytes exceeds the limit of ${this.maxDataSize}`,
      );
    }
    const frameEnd = this.start + MILTER_LEN_BYTES + len;
    if (frameEnd > this.end) return undefined;
    const command = this.buf[this.start + MILTER_LEN_BYTES] as number;
    const payload = this.buf.subarray(this.start + MILTER_LEN_BYTES + 1, frameEnd);
    if (frameEnd === this.end) {
      // Fully drained: forget the chunk, and an accumulator a large frame grew. `owned` stays: it tells
      // the caller where the frame just returned lives.
      this.start = 0;
      this.end = 0;
      this.buf = EMPTY;
      if (this.acc.length > MIN_CAPACITY) this.acc = EMPTY;
    } else {
      this.start = frameEnd;
    }
    return { command, payload };
  }

  /**
   * Stop borrowing: copy the bytes still held from a pushed chunk into the decoder's own memory, so the
   * caller may overwrite that chunk (a shared read buffer). Payload views returned earlier stay views of
   * the chunk. No-op when nothing is borrowed.
   */
  retain(): void {
    if (this.owned) return;
    const pending = this.end - this.start;
    if (pending === 0) {
      this.buf = EMPTY;
      this.start = 0;
      this.end = 0;
      return;
    }
    this.moveToAccumulator(pending, pending);
  }

  /**
   * Give the accumulator back when nothing is held (no-op otherwise): for a stream gone quiet. Payload
   * views returned earlier stay valid.
   */
  release(): void {
    if (this.end === this.start) this.acc = EMPTY;
  }

  /** True while frames come from a borrowed chunk rather than the decoder's own memory. */
  get borrowing(): boolean {
    return !this.owned;
  }

  /**
   * Move the `pending` unread bytes to the front of the owned accumulator (copy handles overlap), first
   * growing it to hold `needed` bytes and the whole frame being assembled (when its length is known and
   * accepted): at least MIN_CAPACITY, exactly that frame when it covers `needed`, else doubling (bytes of
   * several frames pushed without `next()`).
   */
  private moveToAccumulator(pending: number, needed: number): void {
    const frame = this.announcedFrameSize(pending);
    if (this.acc.length < Math.max(needed, frame)) {
      this.acc = Buffer.allocUnsafe(
        Math.max(MIN_CAPACITY, frame >= needed ? frame : Math.max(needed, this.acc.length * 2)),
      );
    }
    this.buf.copy(this.acc, 0, this.start, this.end);
    this.adopt(this.acc, pending);
  }

  /**
   * Wire size (length field included) of the frame starting at `start` when its length field is there
   * and accepted; 0 otherwise (`next()` reports a bad length: nothing is allocated for it).
   */
  private announcedFrameSize(pending: number): number {
    if (pending < MILTER_LEN_BYTES) return 0;
    const len = this.buf.readUInt32BE(this.start);
    return len === 0 || len - 1 > this.maxDataSize ? 0 : MILTER_LEN_BYTES + len;
  }

  private adopt(buf: Buffer, pending: number): void {
    this.buf = buf;
    this.owned = true;
    this.start = 0;
    this.end = pending;
  }
}
