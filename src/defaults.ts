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
  /** Policy store: the deadline of one store call; past it the rule's `on-store-error` applies. */
  storeTimeoutMs: 50,
  /**
   * Policy store: life of a session lease not renewed (a live session renews it every third of this), so a
   * milterd killed with -9 stops counting against its clients within this time.
   */
  storeLeaseTtlMs: 60_000,
  /**
   * Policy store: how long its circuit breaker stays open before a probe. Shorter than an upstream
   * milter's: a probe costs at most one store deadline, and limits are off (or local) while it is open.
   */
  storeBreakerOpenMs: 5_000,
  /** Policy store: prefix of every key (Redis). */
  storePrefix: 'milterd:',
  /** Policy store: milterd instances sharing the limits (`on-store-error: local` divides limits by it). */
  storeInstances: 1,
} as const;
