/**
 * The timeouts of one connection: negotiation (accept to OPTNEG), idle (between commands), frame (a frame
 * started and not finished) and the release of a quiet connection's frame accumulator. All are lazy: armed
 * once, never refreshed per command (a timer refresh is a list operation), and on expiry they re-arm
 * themselves for the time left since the connection's last activity, so they still fire on time.
 */
import { performance } from 'node:perf_hooks';
import type { FrameDecoder } from '../protocol/frame.js';

/**
 * Quiet time after which a connection gives its frame accumulator back (FrameDecoder.release): long
 * enough that a body streamed in chunks reuses one buffer, short enough that idle connections hold none.
 */
const RELEASE_AFTER_MS = 1000;

/** What the timers look at when they expire; the connection provides it. */
export interface TimedConnection {
  /** The connection is ending: a timer that fires does nothing. */
  readonly dead: boolean;
  /** A callback is running (the session's own budget covers it). */
  readonly inFlight: boolean;
  /** Bytes wait for us, not for the MTA: a command running, a reply not flushed, the turn yielded. */
  readonly busy: boolean;
  /** performance.now() of the last chunk read or command answered. */
  readonly lastActivity: number;
  readonly decoder: FrameDecoder;
  /** End the connection on a timeout. */
  timedOut(key: string, fields: Record<string, number>, msg: string): void;
}

/** Timeouts in ms; 0 = none. */
export interface ConnectionTimeouts {
  negotiateMs: number;
  frameMs: number;
  idleMs: number;
}

export class ConnectionTimers {
  private negotiateTimer: NodeJS.Timeout | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private frameTimer: NodeJS.Timeout | undefined;
  /** Armed while the decoder keeps an accumulator with nothing in it (RELEASE_AFTER_MS). */
  private releaseTimer: NodeJS.Timeout | undefined;
  /** The frame count when the current partial frame was first seen, and performance.now() then. */
  private partialSeq = -1;
  private partialSince = 0;

  constructor(
    private readonly conn: TimedConnection,
    private readonly timeouts: ConnectionTimeouts,
  ) {}

  /** At accept: the MTA has `negotiateMs` to send its first command. */
  startNegotiate(): void {
    if (this.timeouts.negotiateMs > 0) {
      this.negotiateTimer = setTimeout(this.onNegotiateTimeout, this.timeouts.negotiateMs);
      this.negotiateTimer.unref();
    }
  }

  /** A command arrived. */
  commandSeen(): void {
    if (this.negotiateTimer !== undefined) {
      clearTimeout(this.negotiateTimer);
      this.negotiateTimer = undefined;
    }
  }

  /**
   * A command was answered: armed once, at the first answer; activity only stamps `lastActivity`, and the
   * timer re-arms itself on expiry for the time left, so it fires `idleMs` after the last chunk or answer.
   */
  armIdle(): void {
    if (this.idleTimer !== undefined || this.timeouts.idleMs <= 0) return;
    this.startIdleTimer(this.timeouts.idleMs);
  }

  /**
   * A partial frame is held after `framesHandled` frames: make sure the frame timer runs, timed from when
   * this frame's first bytes were seen (a frame completed since then means a new partial frame, timed afresh).
   */
  watchPartialFrame(framesHandled: number): void {
    if (this.timeouts.frameMs <= 0) return;
    if (this.partialSeq !== framesHandled) {
      this.partialSeq = framesHandled;
      this.partialSince = performance.now();
    }
    if (this.frameTimer === undefined) this.startFrameTimer(this.timeouts.frameMs);
  }

  /** The decoder holds an empty accumulator: give it back once the connection was quiet long enough. */
  scheduleRelease(): void {
    if (this.releaseTimer === undefined) this.startReleaseTimer(RELEASE_AFTER_MS);
  }

  /** The connection is ending: no timer may fire. */
  stop(): void {
    if (this.negotiateTimer !== undefined) clearTimeout(this.negotiateTimer);
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    if (this.frameTimer !== undefined) clearTimeout(this.frameTimer);
    if (this.releaseTimer !== undefined) clearTimeout(this.releaseTimer);
    this.negotiateTimer = undefined;
    this.frameTimer = undefined;
    this.releaseTimer = undefined;
  }

  private startIdleTimer(ms: number): void {
    this.idleTimer = setTimeout(this.onIdleTimeout, ms);
    this.idleTimer.unref();
  }

  private startFrameTimer(ms: number): void {
    this.frameTimer = setTimeout(this.onFrameTimeout, ms);
    this.frameTimer.unref();
  }

  private startReleaseTimer(ms: number): void {
    this.releaseTimer = setTimeout(this.onReleaseTimer, ms);
    this.releaseTimer.unref();
  }

  private readonly onNegotiateTimeout = (): void => {
    this.negotiateTimer = undefined;
    if (this.conn.dead) return;
    this.conn.timedOut(
      'negotiate-timeout',
      { timeoutMs: this.timeouts.negotiateMs },
      'no option negotiation in time; closing',
    );
  };

  private readonly onIdleTimeout = (): void => {
    const conn = this.conn;
    if (conn.dead) return;
    const idleMs = this.timeouts.idleMs;
    // A callback still running is the session's business (callbackTimeoutMs); its completion stamps
    // `lastActivity`, so checking again one period later cannot expire early.
    if (conn.inFlight) {
      this.startIdleTimer(idleMs);
      return;
    }
    const left = conn.lastActivity + idleMs - performance.now();
    if (left > 0) {
      this.startIdleTimer(Math.ceil(left));
      return;
    }
    conn.timedOut('idle-timeout', { timeoutMs: idleMs }, 'MTA idle for too long; closing');
  };

  /** Lazy like the idle timer: re-armed for the time left while a (later) partial frame is held. */
  private readonly onFrameTimeout = (): void => {
    this.frameTimer = undefined;
    const conn = this.conn;
    if (conn.dead) return;
    const timeoutMs = this.timeouts.frameMs;
    // The bytes wait for us (a command running, a reply not flushed), not for the MTA.
    if (conn.busy) {
      this.startFrameTimer(timeoutMs);
      return;
    }
    if (conn.decoder.bufferedBytes === 0) return; // completed, nothing new started
    const left = this.partialSince + timeoutMs - performance.now();
    if (left > 0) {
      this.startFrameTimer(Math.ceil(left));
      return;
    }
    conn.timedOut(
      'frame-timeout',
      { timeoutMs, bufferedBytes: conn.decoder.bufferedBytes },
      'frame not completed in time; closing',
    );
  };

  /** Lazy like the idle timer: gives the accumulator back once the connection was quiet long enough. */
  private readonly onReleaseTimer = (): void => {
    this.releaseTimer = undefined;
    const conn = this.conn;
    if (conn.dead || conn.decoder.capacity === 0) return;
    const left = conn.lastActivity + RELEASE_AFTER_MS - performance.now();
    if (left > 0) this.startReleaseTimer(Math.ceil(left));
    else if (conn.busy || conn.decoder.bufferedBytes !== 0) {
      this.startReleaseTimer(RELEASE_AFTER_MS); // in use: the bytes in it wait for us or for the MTA
    } else conn.decoder.release();
  };
}
