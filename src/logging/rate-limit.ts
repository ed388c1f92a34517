/**
 * A per-key log rate limit, for lines a peer can cause at will (protocol errors, accept failures): a bad
 * frame costs the peer 5 bytes, so without a limit the log grows as fast as anyone can connect.
 *
 * Each key (an error code, say) may log `lines` lines per window of `windowMs`. Further lines in that
 * window are suppressed and counted; when the window ends, one summary line says how many were.
 * One limiter is shared process-wide by everything that logs the same kind of line.
 */
import type { Logger } from 'pino';

/** Options of {@link LogRateLimiter}. */
export interface LogRateLimitOptions {
  /** Where the "suppressed K similar lines" summaries go. */
  logger: Logger;
  /** Lines per key and window. Default {@link LOG_RATE_LIMIT}.lines. */
  lines?: number;
  /** Window length in milliseconds. Default {@link LOG_RATE_LIMIT}.windowMs. */
  windowMs?: number;
  /** Clock (tests). Default `performance.now`. */
  now?: () => number;
}

/** Defaults: 10 lines per key and second. */
export const LOG_RATE_LIMIT = { lines: 10, windowMs: 1000 } as const;

interface KeyState {
  windowStart: number;
  logged: number;
  suppressed: number;
  timer: NodeJS.Timeout | undefined;
}

/** Fixed-window line budget per key, with a summary of what was suppressed. */
export class LogRateLimiter {
  private readonly logger: Logger;
  private readonly lines: number;
  private readonly windowMs: number;
  private readonly now: () => number;
  private readonly keys = new Map<string, KeyState>();
  /** Lines suppressed since the limiter was created (all keys). */
  suppressedTotal = 0;

  constructor(options: LogRateLimitOptions) {
    this.logger = options.logger;
    this.lines = options.lines ?? LOG_RATE_LIMIT.lines;
    this.windowMs = options.windowMs ?? LOG_RATE_LIMIT.windowMs;
    this.now = options.now ?? (() => performance.now());
  }

  /**
   * True when a line under `key` may be logged now (the caller then logs it); false when it is
   * suppressed (counted, and reported in a summary line once the window ends). Keys should come from a
   * small fixed set (error codes), never from peer input.
   */
  allow(key: string): boolean {
    const now = this.now();
    let s = this.keys.get(key);
    if (s === undefined) {
      s = { windowStart: now, logged: 0, suppressed: 0, timer: undefined };
      this.keys.set(key, s);
    } else if (now - s.windowStart >= this.windowMs) {
      this.summarize(key, s);
      s.windowStart = now;
      s.logged = 0;
    }
    if (s.logged < this.lines) {
      s.logged++;
      return true;
    }
    s.suppressed++;
    this.suppressedTotal++;
    if (s.timer === undefined) {
      const state = s;
      // unref: a pending summary must not keep a finished process alive.
      state.timer = setTimeout(
        () => this.summarize(key, state),
        Math.max(0, s.windowStart + this.windowMs - now),
      );
      state.timer.unref();
    }
    return false;
  }

  /** Log and reset the suppressed count of `key`, if any. */
  private summarize(key: string, s: KeyState): void {
    if (s.timer !== undefined) clearTimeout(s.timer);
    s.timer = undefined;
    if (s.suppressed === 0) return;
    const suppressed = s.suppressed;
    s.suppressed = 0;
    this.logger.warn({ key, suppressed, windowMs: this.windowMs }, `suppressed ${suppressed} similar lines`);
  }

  /** Write the pending summaries now and stop their timers (at shutdown). */
  flush(): void {
    for (const [key, s] of this.keys) this.summarize(key, s);
  }
}
