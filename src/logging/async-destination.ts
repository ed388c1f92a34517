/**
 * A pino destination that never makes the caller wait: lines go into a bounded in-memory buffer and are
 * written to a file descriptor in the background (fs.write, one write at a time). When the reader of the
 * descriptor stalls (a stuck log shipper, a full pipe) the buffer fills and further lines are dropped and
 * counted, instead of blocking the event loop the milter sessions and /healthz run on.
 *
 * Why not pino.destination({ sync: false }) (sonic-boom): it registers a process-exit hook that calls
 * flushSync(), which on a stalled pipe blocks forever (a blocking write(2), or an EAGAIN retry loop around
 * a synchronous sleep); an unhandled write error is thrown as an 'error' event; and flush() does not wait
 * for the write in progress. Here every wait is asynchronous and bounded by the caller.
 *
 * The descriptor should be non-blocking when it is a pipe or a socket (Node puts stdout in that mode once
 * `process.stdout` is used): a write the kernel cannot take then fails with EAGAIN and is retried on a
 * timer. On a blocking descriptor it parks one libuv threadpool thread until the reader catches up, which
 * the event loop does not notice, but process.exit() would then wait for that thread.
 */
import fs from 'node:fs';
import type { DestinationStream } from 'pino';
import { DEFAULTS } from '../defaults.js';

/** Defaults of {@link AsyncLogDestination}. */
export const ASYNC_LOG_DEFAULTS = {
  /** Bytes buffered (the write in progress included) before lines are dropped: 1 MiB. */
  maxBufferBytes: DEFAULTS.logBufferBytes,
  /** Largest single write(2); 16 KiB keeps each write below what log shippers read at once (Docker). */
  maxWriteBytes: 16 * 1024,
  /** First retry after EAGAIN; doubles up to `retryMaxMs`. */
  retryMinMs: 5,
  retryMaxMs: 100,
  /** Longest wait of pino's `logger.flush(cb)` before it calls back anyway. */
  flushTimeoutMs: 10_000,
} as const;

/** The fs.write this module uses (injectable for tests). */
export type WriteFn = (
  fd: number,
  buffer: Buffer,
  callback: (err: NodeJS.ErrnoException | null, written: number) => void,
) => void;

/** Options of {@link AsyncLogDestination}. */
export interface AsyncLogDestinationOptions {
  fd: number;
  /** See {@link ASYNC_LOG_DEFAULTS}.maxBufferBytes. */
  maxBufferBytes?: number;
  /** Turns one pino line into the text written (the pretty formatter); default: unchanged. */
  format?: (line: string) => string;
  /** Called (synchronously, cheap) with the number of lines just dropped. */
  onDrop?: (lines: number) => void;
  /**
   * Called once the buffer is at most half full again after lines were dropped, with how many were
   * dropped since the last call: the place to log that the log has a gap.
   */
  onRecovered?: (dropped: number) => void;
  /** Default fs.write. */
  write?: WriteFn;
}

const EMPTY = Buffer.alloc(0);

/** See the module comment. `write()` never throws and never blocks. */
export class AsyncLogDestination implements DestinationStream {
  private readonly fd: number;
  private readonly maxBufferBytes: number;
  private readonly format: ((line: string) => string) | undefined;
  private readonly onDrop: ((lines: number) => void) | undefined;
  private readonly onRecovered: ((dropped: number) => void) | undefined;
  private readonly fsWrite: WriteFn;
  /** Lines waiting for the next write, oldest first from `head`, and their sizes in bytes. */
  private queue: string[] = [];
  private sizes: number[] = [];
  private head = 0;
  private queuedBytes = 0;
  /** The bytes of the write in progress (what is left of them), and how many lines they hold. */
  private current: Buffer = EMPTY;
  private currentLines = 0;
  private writing = false;
  private retryMs = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  /** The reader is gone (EPIPE): everything from now on is dropped. */
  private broken = false;
  private droppedSinceRecovery = 0;
  private idleWaiters: Array<() => void> = [];
  /** Lines dropped since creation. */
  dropped = 0;

  constructor(options: AsyncLogDestinationOptions) {
    this.fd = options.fd;
    this.maxBufferBytes = options.maxBufferBytes ?? ASYNC_LOG_DEFAULTS.maxBufferBytes;
    this.format = options.format;
    this.onDrop = options.onDrop;
    this.onRecovered = options.onRecovered;
    this.fsWrite = options.write ?? fs.write;
  }

  /** Bytes buffered now, the write in progress included. */
  get bufferedBytes(): number {
    return this.queuedBytes + this.current.length;
  }

  /** Called by pino with one complete line (newline included). */
  write(line: string): void {
    const text = this.format === undefined ? line : this.format(line);
    const bytes = Buffer.byteLength(text);
    if (this.broken || this.queuedBytes + this.current.length + bytes > this.maxBufferBytes) {
      this.drop(1);
      return;
    }
    this.queue.push(text);
    this.sizes.push(bytes);
    this.queuedBytes += bytes;
    if (!this.writing) this.next();
  }

  /**
   * Resolves true once everything buffered so far is written, or false after `timeoutMs` (the reader is
   * stalled; the lines stay buffered). Never rejects; for the exit path.
   */
  drain(timeoutMs: number): Promise<boolean> {
    if (!this.writing) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== done);
        resolve(false);
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.idleWaiters.push(done);
    });
  }

  /** pino's `logger.flush(cb)`: calls back once written (or after `flushTimeoutMs`), never with an error. */
  flush(cb?: (err?: Error) => void): void {
    void this.drain(ASYNC_LOG_DEFAULTS.flushTimeoutMs).then(() => cb?.());
  }

  private drop(lines: number): void {
    this.dropped += lines;
    this.droppedSinceRecovery += lines;
    this.onDrop?.(lines);
  }

  /** Start the next write from the queue, or go idle. */
  private next(): void {
    if (this.current.length === 0) {
      if (this.head === this.queue.length) {
        this.idle();
        return;
      }
      // Take whole lines up to maxWriteBytes (at least one line, however long).
      const start = this.head;
      let end = start;
      let bytes = 0;
      while (end < this.queue.length) {
        const b = this.sizes[end] as number;
        if (end > start && bytes + b > ASYNC_LOG_DEFAULTS.maxWriteBytes) break;
        bytes += b;
        end++;
      }
      const text = end === start + 1 ? (this.queue[start] as string) : this.queue.slice(start, end).join('');
      this.current = Buffer.from(text);
      this.currentLines = end - start;
      this.queuedBytes -= bytes;
      if (end === this.queue.length) this.clearQueue();
      else if (end >= 1024 && end * 2 >= this.queue.length) {
        // Drop the written prefix so the arrays stay bounded while the queue never quite empties.
        this.queue = this.queue.slice(end);
        this.sizes = this.sizes.slice(end);
        this.head = 0;
      } else this.head = end;
    }
    this.writing = true;
    this.fsWrite(this.fd, this.current, this.afterWrite);
  }

  private readonly afterWrite = (err: NodeJS.ErrnoException | null, written: number): void => {
    if (err !== null) {
      if (err.code === 'EAGAIN' || err.code === 'EWOULDBLOCK' || err.code === 'EINTR') {
        // Non-blocking pipe full: try again shortly, backing off while the reader stays stalled.
        this.retryMs = Math.min(
          ASYNC_LOG_DEFAULTS.retryMaxMs,
          this.retryMs === 0 ? ASYNC_LOG_DEFAULTS.retryMinMs : this.retryMs * 2,
        );
        this.retryTimer = setTimeout(this.retry, this.retryMs);
        this.retryTimer.unref();
        return;
      }
      // EPIPE: nobody will ever read; anything else (EBADF, EIO…): this chunk is lost, later ones may pass.
      if (err.code === 'EPIPE') this.broken = true;
      this.drop(this.currentLines + (this.broken ? this.queue.length - this.head : 0));
      if (this.broken) this.clearQueue();
      this.current = EMPTY;
      this.currentLines = 0;
      this.next();
      return;
    }
    this.retryMs = 0;
    if (written >= this.current.length) {
      this.current = EMPTY;
      this.currentLines = 0;
    } else {
      this.current = this.current.subarray(written);
    }
    // Room again after a gap: say so (onRecovered usually logs, which lands behind what is queued).
    if (this.droppedSinceRecovery > 0 && !this.broken && this.bufferedBytes <= this.maxBufferBytes / 2) {
      const dropped = this.droppedSinceRecovery;
      this.droppedSinceRecovery = 0;
      this.onRecovered?.(dropped);
    }
    this.next();
  };

  private clearQueue(): void {
    this.queue = [];
    this.sizes = [];
    this.head = 0;
    this.queuedBytes = 0;
  }

  private readonly retry = (): void => {
    this.retryTimer = undefined;
    this.fsWrite(this.fd, this.current, this.afterWrite);
  };

  private idle(): void {
    this.writing = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }
}
