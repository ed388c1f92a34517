/**
 * What one connection logs and counts when it ends abnormally. Lines a peer can cause at will (timeouts,
 * protocol errors) are rate-limited per key; every one is counted for the observer.
 */
import type { Logger } from 'pino';
import { isMilterError, MilterProtocolError } from '../errors.js';
import type { LogRateLimiter } from '../logging/rate-limit.js';
import type { MilterObserver } from '../observer.js';
import type { TerminationReason } from '../session/types.js';

/** A connection ended on a timeout: a rate-limited warning, counted as ERR_MILTER_TIMEOUT. */
export function logTimeout(
  logger: Logger,
  limiter: LogRateLimiter,
  observer: MilterObserver | undefined,
  key: string,
  fields: Record<string, number>,
  msg: string,
): void {
  if (limiter.allow(key)) logger.warn(fields, msg);
  observer?.error?.('ERR_MILTER_TIMEOUT');
}

/**
 * A connection ends on `err`: a protocol error (the peer's fault: code and message only, rate-limited) or
 * an internal bug (with its stack). Returns the session's termination reason.
 */
export function logFailure(
  logger: Logger,
  limiter: LogRateLimiter,
  observer: MilterObserver | undefined,
  err: unknown,
): TerminationReason {
  if (err instanceof MilterProtocolError) {
    // A stack made a 5-byte bad frame cost 1 KB of log.
    if (limiter.allow(err.code)) {
      logger.error(
        { code: err.code, reason: err.message },
        'protocol error; closing the connection without a reply',
      );
    }
    observer?.error?.(err.code);
    return 'protocol';
  }
  const code = isMilterError(err) ? err.code : undefined;
  logger.error({ err, code }, 'internal error; closing the connection');
  if (code !== undefined) observer?.error?.(code);
  return 'error';
}
