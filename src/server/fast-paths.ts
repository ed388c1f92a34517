/**
 * Which of the I/O fast paths built on Node internals (shared-read.ts, direct-write.ts) this process uses,
 * said once at debug. Each fast path feature-tests its internals the first time it is used and falls back
 * to the public path on its own; this only makes the outcome visible.
 */
import type { Logger } from 'pino';
import { directWritesUnavailable } from './direct-write.js';

/** Availability is process-wide, so the first listener with shared reads enabled reports it. */
let reported = false;

/**
 * Log, once per process and only when debug is on, whether replies are written straight to the handle
 * and whether the listener accepts straight into shared-read sockets (`acceptShared`, absent for a
 * net.Server the caller created). Called by MilterServer.listen() with shared reads enabled.
 */
export function reportFastPathsOnce(logger: Logger, acceptShared: boolean | undefined): void {
  if (reported || !logger.isLevelEnabled('debug')) return;
  reported = true;
  const off = directWritesUnavailable();
  logger.debug(
    {
      directWrites: off === undefined,
      ...(off === undefined ? {} : { directWritesOff: off }),
      ...(acceptShared === undefined ? {} : { sharedReadAccept: acceptShared }),
    },
    off === undefined
      ? 'I/O fast paths in use'
      : 'direct writes unavailable: replies go through socket.write()',
  );
}
