/**
 * The one table of defaults: the library (createMilterServer), the daemon's options and config file, and
 * the policy/pipeline/store layers read their default values here, so that a value has one home and the
 * docs can point at it. Durations are in milliseconds, sizes in bytes.
 */
import { MILTER_MDS_64K } from './protocol/constants.js';
import { DEFAULT_BACKLOG } from './server/listen.js';

export const DEFAULTS = {
  /** Open MTA connections per server. */
  maxConnections: 1000,
  /** Open connections per MTA peer address; 0 = no limit. */
  maxConnectionsPerPeer: 0,
  /** From accept to the end of SMFIC_OPTNEG. */
  negotiateMs: 30_000,
  /** From the first byte of a frame to its last. */
  frameMs: 10_000,
  /** Between commands (libmilter's default read timeout: 7210 s). */
  idleMs: 7_210_000,
  /** The budget of one callback. */
  callbackMs: 300_000,
  /** The largest body chunk offered (SMFIC_OPTNEG data size). */
  maxDataSize: MILTER_MDS_64K,
  /** Bytes read from one connection before yielding to the others. */
  readBudgetBytes: 256 * 1024,
  backlog: DEFAULT_BACKLOG,
  sharedReadBuffer: true,
  /** close(): how long sessions may finish before their sockets are destroyed. */
  deadlineMs: 10_000,
  /** File descriptors kept free for the process's own use. */
  fdReserve: 32,
  /** Circuit breaker: consecutive failures that open it. */
  breakerFailures: 5,
  /** Circuit breaker: how long it stays open before one probe is let through. */
  breakerOpenMs: 30_000,
  /**
   * Pipeline: interval of SMFIR_PROGRESS while members work at end of message (well inside Postfix's
   * 300 s milter_content_timeout and Sendmail's per-filter timeouts, so a slow chain is not cut off).
   */
  pipelineProgressMs: 10_000,
  /** Upstream milter: connecting and its OPTNEG reply (Postfix waits 30 s for the whole negotiation). */
  upstreamConnectMs: 5_000,
  /** Upstream milter: each reply before end of message (well inside Postfix's 30 s command timeout). */
  upstreamCommandMs: 10_000,
  /** Upstream milter: end of message, restarted by each progress packet (Postfix: 300 s per content reply). */
  upstreamEomMs: 120_000,
  /** Upstream milter: what the MTA gets when the upstream fails (or its breaker is open). */
  upstreamOnFailure: 'tempfail',
} as const;
