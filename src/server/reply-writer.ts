/**
 * The write side of one connection: replies go to the socket in one write per command, straight to the
 * handle when the connection reads into the shared buffer (direct-write.ts), else with `socket.write()`.
 * Backpressure: a write the kernel does not take at once makes the connection wait (`waitingDrain`) until
 * it is out, so a peer that does not read its replies stops being served instead of filling memory.
 */
import type net from 'node:net';
import type { MilterObserver } from '../observer.js';
import { connectionDebugStats } from './connection-stats.js';
import { writeDirect } from './direct-write.js';

export class ReplyWriter {
  /** A write is queued: the connection holds its next command until `onDrained`. */
  waitingDrain = false;
  /** Replies written straight to the handle (direct-write.ts) that libuv still holds. */
  private directQueued = 0;
  /** Awaiting `drained()` (a streamed body replacement). */
  private readonly drainWaiters: Array<() => void> = [];

  /**
   * @param direct write straight to the handle (the socket reads into the shared buffer)
   * @param onDrained called once the queued writes are out and `waitingDrain` is false again
   */
  constructor(
    private readonly socket: net.Socket,
    private readonly direct: boolean,
    private readonly observer: MilterObserver | undefined,
    private readonly onDrained: () => void,
  ) {}

  /** Write one buffer. False: the bytes are queued (backpressure); call `waitForDrain`. */
  write(buf: Buffer): boolean {
    this.observer?.bytesWritten?.(buf.length);
    if (this.direct) {
      const outcome = writeDirect(this.socket, buf, this.onDirectWritten);
      if (outcome === 'written') return true;
      if (outcome === 'queued') {
        this.directQueued++;
        connectionDebugStats.queuedDirectWrites++;
        return false;
      }
    }
    return this.socket.write(buf);
  }

  /** Resolves when the writes queued so far are out. */
  drained(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.drainWaiters.push(resolve);
      if (!this.waitingDrain) this.waitForDrain();
    });
  }

  /** A write was queued: hold further commands until it is out (`onDrain`). */
  waitForDrain(): void {
    this.waitingDrain = true;
    connectionDebugStats.drainWaits++;
    // Direct writes still queued end the wait themselves (onDirectWritten); the Writable's with 'drain'.
    if (this.directQueued === 0) this.socket.once('drain', this.onDrain);
  }

  private readonly onDrain = (): void => {
    this.waitingDrain = false;
    if (this.drainWaiters.length > 0) {
      for (const resolve of this.drainWaiters.splice(0)) resolve();
    }
    this.onDrained();
  };

  /** A direct write that libuv had queued is out (or failed: the socket goes, like a failed write()). */
  private readonly onDirectWritten = (err: Error | undefined): void => {
    this.directQueued--;
    if (err !== undefined) {
      if (!this.socket.destroyed) this.socket.destroy(err);
      return;
    }
    if (this.directQueued === 0 && this.waitingDrain) this.onDrain();
  };
}
