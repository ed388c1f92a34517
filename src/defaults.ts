/**
 * The one table of defaults: the library (createMilterServer), the daemon's options and config file, and
 * the policy/pipeline/store layers read their default values here, so that a value has one home and the
 * docs can point at it. Durations are in milliseconds, sizes in bytes. This module imports nothing, so
 * that any layer can read it without an import cycle.
 */

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
  /**
   * The budget of one callback, the library's and the daemon's. 30 s is Postfix's milter_command_timeout,
   * the time it waits for the reply to every command before end of message (Sendmail's R: waits 10 s):
   * a longer budget there only lets the MTA give up first and apply its own failure action instead of
   * ours. At end of message Postfix waits milter_content_timeout (300 s) and Sendmail E: (5 min), but
   * the same budget applies: milterd sends no progress packets on its own (only a filter's
   * `ctx.progress()` does, which restarts the MTA's timer, not this budget), so an `eom` callback that
   * needs longer needs a larger budget.
   */
  callbackMs: 30_000,
  /** Decision sent when a callback throws, times out or returns something illegal. */
  failureDecision: 'tempfail',
  /** The largest body chunk offered (SMFIC_OPTNEG data size): libmilter's 64 KiB - 1 (MILTER_MDS_64K). */
  maxDataSize: 64 * 1024 - 1,
  /** Bytes read from one connection before yielding to the others. */
  readBudgetBytes: 256 * 1024,
  /** listen(2) backlog (Node's 511 overflows when hundreds of MTA processes connect at once). */
  backlog: 4096,
  sharedReadBuffer: true,
  /** close(): how long sessions may finish before their sockets are destroyed. */
  deadlineMs: 10_000,
  /** File descriptors kept free for the process's own use. */
  fdReserve: 32,
  /** Circuit breaker: consecutive failures that open it. */
  breakerFailures: 5,
  /** Circuit breaker: how long it stays open before one probe is let through. */
  breakerOpenMs: 30_000,
  /** messageFilter: body bytes kept in memory; the rest goes to an unlinked temporary file. */
  bodyMemoryLimit: 1024 * 1024,
  /** The MTA side (MilterClient, `milterd test`): how long one reply may take. */
  clientReplyMs: 10_000,
  /** Policy rules: the sliding window of max-messages-per-client without `window`. */
  policyWindowMs: 3_600_000,
  /** Policy rules: messages seen before max-failure-ratio counts, without `min-attempts`. */
  policyMinAttempts: 10,

  // The daemon (`milterd serve`, its config file). Where it differs from the library, why:
  /** Loopback only; containers pass `inet:8890@0.0.0.0`. */
  listen: 'inet:8890@127.0.0.1',
  /** MTAs send OPTNEG at once: a daemon on a shared port frees a silent peer's slot sooner. */
  daemonNegotiateMs: 10_000,
  /**
   * Longer than Postfix's smtpd_timeout (300 s), during which the MTA legitimately sends nothing, with a
   * margin; shorter than libmilter's 7210 s so that a silent peer does not hold a slot for two hours.
   */
  daemonIdleMs: 600_000,
  /** On SIGTERM: how long open sessions may run to QUIT (the library's close() deadline). */
  drainMs: 30_000,
  /** Log lines buffered while stdout is not read; beyond them lines are dropped and counted. */
  logBufferBytes: 1024 * 1024,
  /** Admin endpoint connections at once (a probe or a scraper needs one or two). */
  adminMaxConnections: 64,
  /**
   * Pipeline: interval of SMFIR_PROGRESS while members work at end of message (well inside Postfix's
   * 300 s milter_content_timeout and Sendmail's per-filter timeouts, so a slow chain is not cut off).
   */
  pipelineProgressMs: 10_000,
  /** Policy store: the deadline of one store call; past it the rule's `on-store-error` applies. */
  storeTimeoutMs: 50,
  /**
   * Policy store: life of a session lease not renewed (a live session renews it every third of this), so a
   * milterd killed with -9 stops counting against its clients within this time.
   */
  storeLeaseTtlMs: 60_000,
  /**
   * Policy store (Redis): the least time between two calls to Redis; the operations of every session that
   * arrive in between go together in the next call, and an idle instance sends at once. With one command
   * per operation each round trip cost a milterd on loopback 100-250 µs of CPU, more than the operations in
   * it, and each call still costs both ends more than its operations: at 10 ms a busy instance makes at most
   * 100 a second, which measured 3 % more messages a second than 5 ms (docs/benchmark.md). Only HELO (and a
   * session's second and later MAIL) waits for the store, and the MTA's own round trip to its client hides
   * most of the wait.
   */
  storeBatchIntervalMs: 10,
  /** Policy store: the longest `storeBatchIntervalMs` accepted (far below the call deadline). */
  storeBatchIntervalMaxMs: 20,
  /**
   * Policy store: how long its circuit breaker stays open before a probe. Shorter than an upstream
   * milter's: a probe costs at most one store deadline, and limits are off (or local) while it is open.
   */
  storeBreakerOpenMs: 5_000,
  /** Policy store: prefix of every key (Redis). */
  storePrefix: 'milterd:',
  /** Policy store: milterd instances sharing the limits (`on-store-error: local` divides limits by it). */
  storeInstances: 1,
  /** Upstream milter: connecting and its OPTNEG reply (Postfix waits 30 s for the whole negotiation). */
  upstreamConnectMs: 5_000,
  /** Upstream milter: each reply before end of message (well inside Postfix's 30 s command timeout). */
  upstreamCommandMs: 10_000,
  /** Upstream milter: end of message, restarted by each progress packet (Postfix: 300 s per content reply). */
  upstreamEomMs: 120_000,
  /** Upstream milter: what the MTA gets when the upstream fails (or its breaker is open). */
  upstreamOnFailure: 'tempfail',
} as const;
