/**
 * Cross-session state of the shutdown policy: open sessions and message counts per client. A client is
 * the key `ShutdownPolicy.clientKey` makes of its address: the address, or its network (IPv6: /64).
 * The engine talks to it through `PolicyStore`, whose methods may be async so that a shared store
 * (Redis, a database) can implement it later; `MemoryPolicyStore` keeps everything in this process.
 */

/**
 * Where the policy keeps per-client state that outlives one session. Every method may return a promise.
 * A store that fails (throws or rejects) never cuts mail: the engine logs the error and carries on with
 * a count of 0.
 */
export interface PolicyStore {
  /**
   * A session of `client` started. Returns how many sessions of that client are open now, this one
   * included. Must be idempotent for one `sessionId`.
   */
  sessionOpened(client: string, sessionId: string): number | Promise<number>;
  /** The session ended. Idempotent; unknown ids are ignored. */
  sessionClosed(client: string, sessionId: string): void | Promise<void>;
  /** Count one finished message of `client` in the window of `windowMs` that contains `now`; returns the new count. */
  addMessage(client: string, windowMs: number, now: number): number | Promise<number>;
  /** Messages of `client` in the window of `windowMs` that contains `now`, without counting one. */
  messageCount(client: string, windowMs: number, now: number): number | Promise<number>;
}

/** Options of the in-memory store. */
export interface MemoryPolicyStoreOptions {
  /**
   * Most window counters kept at once (client × window length); beyond it the least recently started
   * window is dropped (its client then starts again from 0). Default 100 000.
   */
  maxWindows?: number;
  /** How often (policy clock, ms) expired windows are swept, on the next call. Default 60 000. */
  sweepIntervalMs?: number;
}

interface WindowCounter {
  start: number;
  count: number;
}

/**
 * The default store: one process, no timers. Memory stays bounded: session sets are deleted when their
 * last session closes, window counters expire with their window (swept lazily on later calls) and are
 * capped by `maxWindows`.
 *
 * Windows are fixed and aligned on multiples of their length on the policy clock (a `1h` window runs
 * from one full hour to the next), so a client can send up to twice the limit across a boundary.
 */
export class MemoryPolicyStore implements PolicyStore {
  readonly #sessions = new Map<string, Set<string>>();
  // Insertion order = order in which windows started: the first entries are the oldest.
  readonly #windows = new Map<string, WindowCounter>();
  readonly #maxWindows: number;
  readonly #sweepIntervalMs: number;
  #lastSweep = Number.NEGATIVE_INFINITY;

  constructor(options: MemoryPolicyStoreOptions = {}) {
    this.#maxWindows = Math.max(1, options.maxWindows ?? 100_000);
    this.#sweepIntervalMs = Math.max(0, options.sweepIntervalMs ?? 60_000);
  }

  sessionOpened(client: string, sessionId: string): number {
    let set = this.#sessions.get(client);
    if (set === undefined) {
      set = new Set();
      this.#sessions.set(client, set);
    }
    set.add(sessionId);
    return set.size;
  }

  sessionClosed(client: string, sessionId: string): void {
    const set = this.#sessions.get(client);
    if (set === undefined) return;
    set.delete(sessionId);
    if (set.size === 0) this.#sessions.delete(client);
  }

  addMessage(client: string, windowMs: number, now: number): number {
    this.#sweep(now);
    const key = `${windowMs}|${client}`;
    const start = windowStart(windowMs, now);
    const current = this.#windows.get(key);
    if (current !== undefined && current.start === start) return ++current.count;
    // A new window: re-insert so that the Map order stays "oldest window first".
    this.#windows.delete(key);
    this.#windows.set(key, { start, count: 1 });
    while (this.#windows.size > this.#maxWindows) {
      const oldest = this.#windows.keys().next();
      if (oldest.done === true) break;
      this.#windows.delete(oldest.value);
    }
    return 1;
  }

  messageCount(client: string, windowMs: number, now: number): number {
    this.#sweep(now);
    const current = this.#windows.get(`${windowMs}|${client}`);
    return current !== undefined && current.start === windowStart(windowMs, now) ? current.count : 0;
  }

  /** Sizes, for tests and the admin endpoint: client addresses with open sessions, live window counters. */
  get size(): { clients: number; windows: number } {
    return { clients: this.#sessions.size, windows: this.#windows.size };
  }

  #sweep(now: number): void {
    if (now - this.#lastSweep < this.#sweepIntervalMs) return;
    this.#lastSweep = now;
    for (const [key, counter] of this.#windows) {
      const windowMs = Number(key.slice(0, key.indexOf('|')));
      if (now >= counter.start + windowMs) this.#windows.delete(key);
    }
  }
}

function windowStart(windowMs: number, now: number): number {
  return windowMs > 0 ? Math.floor(now / windowMs) * windowMs : now;
}
