/**
 * Cross-session state of the shutdown policy: open sessions and message counts per client. A client is
 * the key `ShutdownPolicy.clientKey` makes of its address: the address, or its network (IPv6: /64).
 * The engine talks to it through `PolicyStore`, whose methods may be async: `MemoryPolicyStore` keeps
 * everything in this process, `RedisPolicyStore` (redis-store.ts) shares it between the milterd
 * instances of a fleet. Both implement the same two algorithms, and one test suite runs against both:
 *
 * - **Sessions are leases.** Opening a session adds (or renews) a lease named by the session id that
 *   expires `leaseTtlMs` after its last renewal; the count is the live leases. A live session renews its
 *   lease every third of the TTL (SessionTracker), so the sessions of a milterd killed with -9 stop
 *   counting within one TTL, with no cleanup job. Closing a session releases its lease at once.
 * - **Message rates are a sliding log**: the time of every message is kept for one window, and
 *   the count is the number of messages in the last `windowMs` (a message at time t counts while
 *   now - t < windowMs). A message is added at its MAIL, which reads the count with it in one atomic step
 *   (so concurrent senders cannot all take the last free place), and removed if its transaction aborts.
 *   Why not GCRA (KumoMTA's choice): GCRA answers "may the next event go?" for a rate with a burst, and
 *   lets a client that bursts N then keep N/window through, up to 2N-1 in one window; the policy's rule is
 *   a count ("messages of this client in the window reach N", shown in `clientStats.messagesInWindow`),
 *   and the sliding log gives exactly that count, never more than N accepted in any window and no doubling
 *   across a boundary as fixed windows had. Its cost is one entry per message in the window; the rule's
 *   421 bounds that to about N per client. A sliding-window *counter* (two buckets, weighted)
 *   would be smaller but approximate, and the shared tests assert exactness.
 */

/**
 * Where the policy keeps per-client state that outlives one session. Every method may return a promise.
 * A store that fails (throws or rejects) never cuts mail by default: the rule's `on-store-error`
 * decides (allow, tempfail, or the in-process count).
 */
export interface PolicyStore {
  /**
   * How long a lease lives without renewal (ms). A live session renews its lease (calls `sessionOpened`
   * again) every third of it. Undefined: leases never expire, nothing is renewed.
   */
  readonly leaseTtlMs?: number | undefined;
  /**
   * A session of `client` started (or renews its lease). Returns how many sessions of that client are
   * open (live leases) now, this one included. Idempotent for one `sessionId`. `now` is the policy clock
   * (a shared store uses its own server clock instead).
   */
  sessionOpened(client: string, sessionId: string, now?: number): number | Promise<number>;
  /**
   * A session started: `sessionOpened`, and `messageCount` of each of `windowsMs`, as ONE operation (what
   * CONNECT needs; on Redis one line more in the same batch and one answer for both). With `reserve`,
   * `addMessage` under that id instead of `messageCount`: the session's first message is counted with its
   * lease (the counts then include it), and taken back with `removeMessage` if the session sends none.
   * Optional: for a store without it the engine makes the separate calls (see {@link openSession}).
   */
  sessionOpenedWithCounts?(
    client: string,
    sessionId: string,
    windowsMs: readonly number[],
    now?: number,
    reserve?: string,
  ): SessionOpening | Promise<SessionOpening>;
  /** The session ended: release its lease. Idempotent; unknown ids are ignored. */
  sessionClosed(client: string, sessionId: string, now?: number): void | Promise<void>;
  /**
   * Count one message of `client`; returns the messages of the last `windowMs`, this one included. The
   * engine counts a message at its MAIL (a reservation: concurrent senders each get their own count, so
   * no more than the limit pass), under a `messageId` unique in this process, and takes it back with
   * `removeMessage` if the transaction is aborted. Without `messageId` the message cannot be taken back.
   */
  addMessage(client: string, windowMs: number, now: number, messageId?: string): number | Promise<number>;
  /**
   * Take back a message counted with `messageId` (its transaction was aborted or refused): one message of
   * that id, or of that time `addedAt` (the `now` it was added with) in a store that keeps times only.
   * Nothing if it left the window or is unknown. Optional: with a store without it the engine counts a
   * message after it finished instead, and senders running at the same moment can pass the limit by the
   * messages in flight.
   */
  removeMessage?(client: string, windowMs: number, messageId: string, addedAt: number): void | Promise<void>;
  /** Messages of `client` in the last `windowMs`, without counting one. */
  messageCount(client: string, windowMs: number, now: number): number | Promise<number>;
  /** Release connections (a shared store). Called once, when the daemon stops. */
  close?(): void | Promise<void>;
  /**
   * How many more event-loop turns, at most, the answers that have already arrived take to be handed to
   * their callers (the Redis store hands a batch's answers out in slices, one per turn); 0 when none are
   * left. A deadline check waits that many turns (no more: answers arriving meanwhile do not extend it),
   * so that a call already answered is not timed out. Optional.
   */
  readonly delivering?: number;
}

/** What `sessionOpenedWithCounts` returns. */
export interface SessionOpening {
  /** Open sessions (live leases) of the client, this one included. */
  readonly sessions: number;
  /** Messages in each window asked for, in that order. */
  readonly messages: readonly number[];
}

/**
 * `store.sessionOpenedWithCounts`, or for a store without it the separate calls (at once when they all
 * answer synchronously, else together: a failure of one fails the opening).
 */
export function openSession(
  store: PolicyStore,
  client: string,
  sessionId: string,
  windowsMs: readonly number[],
  now: number,
  reserve?: string,
): SessionOpening | Promise<SessionOpening> {
  if (store.sessionOpenedWithCounts !== undefined) {
    return store.sessionOpenedWithCounts(client, sessionId, windowsMs, now, reserve);
  }
  const sessions = store.sessionOpened(client, sessionId, now);
  const messages = windowsMs.map((w) =>
    reserve === undefined ? store.messageCount(client, w, now) : store.addMessage(client, w, now, reserve),
  );
  if (typeof sessions === 'number' && messages.every((m) => typeof m === 'number')) {
    return { sessions, messages: messages as number[] };
  }
  return Promise.all([sessions, ...messages]).then(([s, ...m]) => ({ sessions: s as number, messages: m }));
}

/** Options of the in-memory store. */
export interface MemoryPolicyStoreOptions {
  /**
   * Most message logs kept at once (client × window length); beyond it the least recently used log is
   * dropped (its client then starts again from 0). Default 100 000.
   */
  maxWindows?: number;
  /** How often (policy clock, ms) expired entries are swept, on the next call. Default 60 000. */
  sweepIntervalMs?: number;
  /**
   * Lease life (ms, policy clock). Default: leases do not expire (the sessions of one process always
   * close); the shared store tests set it to check the same expiry as Redis.
   */
  leaseTtlMs?: number;
}

/**
 * The default store: one process, no timers. Memory stays bounded: lease sets are deleted when their
 * last lease closes or expires, message logs lose their entries as they leave the window (swept lazily on
 * later calls), and the number of logs is capped by `maxWindows`.
 */
export class MemoryPolicyStore implements PolicyStore {
  readonly leaseTtlMs: number | undefined;
  // client -> session id -> expiry (policy clock; Infinity without a TTL)
  readonly #leases = new Map<string, Map<string, number>>();
  // client -> no lease of it expires before this (may be early after a renewal: then the next call walks
  // the leases and sets it again). Spares walking every lease of a busy client on every call.
  readonly #earliest = new Map<string, number>();
  // `${windowMs}|${client}` -> message times, ascending. Map order = least recently used first.
  readonly #logs = new Map<string, MessageLog>();
  readonly #maxWindows: number;
  readonly #sweepIntervalMs: number;
  #lastSweep = Number.NEGATIVE_INFINITY;

  constructor(options: MemoryPolicyStoreOptions = {}) {
    this.#maxWindows = Math.max(1, options.maxWindows ?? 100_000);
    this.#sweepIntervalMs = Math.max(0, options.sweepIntervalMs ?? 60_000);
    const ttl = options.leaseTtlMs;
    this.leaseTtlMs = ttl !== undefined && ttl > 0 && Number.isFinite(ttl) ? ttl : undefined;
  }

  sessionOpened(client: string, sessionId: string, now: number = Date.now()): number {
    let leases = this.#leases.get(client);
    if (leases === undefined) {
      leases = new Map();
      this.#leases.set(client, leases);
    }
    this.#pruneLeases(client, leases, now);
    const expires = this.leaseTtlMs === undefined ? Infinity : now + this.leaseTtlMs;
    leases.set(sessionId, expires);
    if (!(expires >= (this.#earliest.get(client) ?? Infinity))) this.#earliest.set(client, expires);
    return leases.size;
  }

  sessionOpenedWithCounts(
    client: string,
    sessionId: string,
    windowsMs: readonly number[],
    now: number = Date.now(),
    reserve?: string,
  ): SessionOpening {
    const sessions = this.sessionOpened(client, sessionId, now);
    const messages = windowsMs.map((w) =>
      reserve === undefined ? this.messageCount(client, w, now) : this.addMessage(client, w, now, reserve),
    );
    return { sessions, messages };
  }

  sessionClosed(client: string, sessionId: string, now: number = Date.now()): void {
    const leases = this.#leases.get(client);
    if (leases === undefined) return;
    leases.delete(sessionId);
    this.#pruneLeases(client, leases, now);
    if (leases.size === 0) this.#forget(client);
  }

  /** Live leases of `client` at `now`, without opening one (the local fallback's count). */
  sessionCount(client: string, now: number = Date.now()): number {
    const leases = this.#leases.get(client);
    if (leases === undefined) return 0;
    this.#pruneLeases(client, leases, now);
    if (leases.size === 0) this.#forget(client);
    return leases.size;
  }

  // The log keeps times, not ids: `removeMessage` takes back one message of the time it was added at.
  addMessage(client: string, windowMs: number, now: number, _messageId?: string): number {
    this.#sweep(now);
    const key = `${windowMs}|${client}`;
    const log = this.#logs.get(key) ?? new MessageLog();
    // Re-insert: the Map order stays "least recently used first".
    this.#logs.delete(key);
    this.#logs.set(key, log);
    log.prune(now - windowMs);
    log.add(now);
    while (this.#logs.size > this.#maxWindows) {
      const oldest = this.#logs.keys().next();
      if (oldest.done === true) break;
      this.#logs.delete(oldest.value);
    }
    return log.size;
  }

  /** One message of time `addedAt` goes (the memory log keeps times, not ids: the same count). */
  removeMessage(client: string, windowMs: number, _messageId: string, addedAt: number): void {
    const key = `${windowMs}|${client}`;
    const log = this.#logs.get(key);
    if (log === undefined) return;
    log.remove(addedAt);
    if (log.size === 0) this.#logs.delete(key);
  }

  messageCount(client: string, windowMs: number, now: number): number {
    this.#sweep(now);
    const key = `${windowMs}|${client}`;
    const log = this.#logs.get(key);
    if (log === undefined) return 0;
    log.prune(now - windowMs);
    if (log.size === 0) this.#logs.delete(key);
    return log.size;
  }

  /** Sizes, for tests and the admin endpoint: clients with live leases, message logs not yet emptied. */
  get size(): { clients: number; windows: number } {
    return { clients: this.#leases.size, windows: this.#logs.size };
  }

  #sweep(now: number): void {
    if (now - this.#lastSweep < this.#sweepIntervalMs) return;
    this.#lastSweep = now;
    for (const [key, log] of this.#logs) {
      log.prune(now - Number(key.slice(0, key.indexOf('|'))));
      if (log.size === 0) this.#logs.delete(key);
    }
    for (const [client, leases] of this.#leases) {
      this.#pruneLeases(client, leases, now);
      if (leases.size === 0) this.#forget(client);
    }
  }

  /** Drop the expired leases of `client`, if any can have expired. */
  #pruneLeases(client: string, leases: Map<string, number>, now: number): void {
    const earliest = this.#earliest.get(client);
    if (earliest !== undefined && earliest > now) return;
    let next = Infinity;
    for (const [id, expires] of leases) {
      if (expires <= now) leases.delete(id);
      else if (expires < next) next = expires;
    }
    this.#earliest.set(client, next);
  }

  #forget(client: string): void {
    this.#leases.delete(client);
    this.#earliest.delete(client);
  }
}

/**
 * One client's message times in one window, ascending. Pruning moves a head index instead of splicing the
 * front of the array: a splice copied the whole log on every message (26 µs per message with 180 000
 * messages in the window, measured); the dead front is dropped once it is half of the array.
 */
class MessageLog {
  #times: number[] = [];
  #head = 0;

  get size(): number {
    return this.#times.length - this.#head;
  }

  /** Drop the messages at or before `edge` (now - window). */
  prune(edge: number): void {
    const t = this.#times;
    let h = this.#head;
    while (h < t.length && (t[h] as number) <= edge) h++;
    if (h === t.length) {
      this.#times = [];
      this.#head = 0;
    } else if (h > 64 && h * 2 > t.length) {
      this.#times = t.slice(h);
      this.#head = 0;
    } else {
      this.#head = h;
    }
  }

  add(now: number): void {
    const t = this.#times;
    // The policy clock may step back: keep the log sorted (the usual case is an append).
    let i = t.length;
    while (i > this.#head && (t[i - 1] as number) > now) i--;
    if (i === t.length) t.push(now);
    else t.splice(i, 0, now);
  }

  /** Drop one message of time `at`, if the log has one (a recent one: searched from the end). */
  remove(at: number): void {
    const t = this.#times;
    let i = t.length - 1;
    while (i >= this.#head && (t[i] as number) > at) i--;
    if (i < this.#head || t[i] !== at) return;
    if (i === t.length - 1) t.pop();
    else t.splice(i, 1);
  }
}
