/**
 * Read- and write-side counters shared by every connection of the process. Diagnostics only (tests use
 * them to prove that backpressure and fairness engage); plain increments, so cheap enough to keep on.
 * @internal
 */
export const connectionDebugStats = {
  /** Times a connection stopped reading because its pending chunks passed the budget. */
  pauses: 0,
  /** Largest number of pending (not yet decoded) bytes any connection held. */
  maxPendingBytes: 0,
  /** Times a connection waited for 'drain' before dispatching its next command. */
  drainWaits: 0,
  /** Times a connection stopped after TURN_COMMANDS commands to let other sockets run. */
  turnYields: 0,
  /** Connections that read into the shared buffer (the rest used ordinary stream reads). */
  sharedReads: 0,
  /** Direct writes (direct-write.ts) the kernel could not take at once: libuv queued them. */
  queuedDirectWrites: 0,
};

/** Reset {@link connectionDebugStats} (tests). @internal */
export function resetConnectionDebugStats(): void {
  connectionDebugStats.pauses = 0;
  connectionDebugStats.maxPendingBytes = 0;
  connectionDebugStats.drainWaits = 0;
  connectionDebugStats.turnYields = 0;
  connectionDebugStats.sharedReads = 0;
  connectionDebugStats.queuedDirectWrites = 0;
}
