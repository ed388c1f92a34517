/**
 * The policy store on Redis (6.2 or later, Valkey included; no modules), shared by every milterd of a
 * fleet. Same algorithms as MemoryPolicyStore (store.ts): sessions are leases in a sorted set scored by
 * their expiry, message rates a sliding log in a sorted set scored by their time.
 *
 * - Each operation is atomic on the server, in a Lua script, with the time taken from the server (`TIME`),
 *   so instances with skewed clocks agree; the policy clock passed in (`now`) is ignored. The operations of
 *   one event-loop turn go in one script call (Batches).
 * - Keys: `PREFIX{CLIENT}:l` (leases) and `PREFIX{CLIENT}:m:WINDOW_MS` (message log). The hash tag
 *   `{CLIENT}` puts all of one client's keys in one Cluster slot, so every script touches one shard.
 *   With `hashAddresses` CLIENT is a SHA-256 of the client key (base64url, 128 bits) instead of it.
 * - Every script sets the expiry of what it writes: a lease set lives as long as its longest lease, a
 *   message log one window after its last message; nothing outlives its use, no cleanup job.
 *
 * Client library: ioredis (6.x). Chosen over node-redis (`redis`/@redis/client 5+/6), which is Redis Inc's
 * recommendation for new projects and has no dependencies, for these reasons:
 * - reconnects: with `enableOfflineQueue: false` a command issued while disconnected fails at once, the
 *   same way for a single server, Sentinel and Cluster, which is what a 50 ms deadline needs (node-redis's
 *   `disableOfflineQueue` exists too, but its Sentinel client only arrived in v5 and is young);
 * - Cluster and Sentinel: a decade of production use (BullMQ and most Node Redis users), MOVED/ASK and
 *   failover handled, TLS through `tls` options on every connection;
 * - scripts: `defineCommand` sends EVALSHA and falls back to EVAL on NOSCRIPT, per node, so a restarted or
 *   failed-over server just gets the script again;
 * - pipelining: explicit (`enableAutoPipelining`; milterd batches its own operations instead, see
 *   Batches); maintenance: under the redis organisation, 6.x targets Node >= 20 like milterd;
 * - size: five small dependencies (node-redis: none), loaded only when a Redis store is configured.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { ConnectionOptions } from 'node:tls';
import type { Cluster as ClusterClient, Redis as RedisClient, RedisOptions } from 'ioredis';
import { DEFAULTS } from '../defaults.js';
import type { PolicyStore, SessionOpening } from './store.js';
import { parseStoreUrl, type StoreLocation } from './store-url.js';

/**
 * The most expired entries of one message log a script call removes (a bounded share of the server's time:
 * about 0.2 ms); the rest go in the next calls. Counts never include them (ZCOUNT of the window).
 */
const PRUNE_MAX = 1000;

/**
 * Every operation of one batch (see Batches), in order, in ONE script: atomic, one server clock reading
 * (TIME) for all. KEYS: the batch's distinct keys. ARGV[1]: the operations, one line each,
 * `CODE KEY-INDEX X Y\n` (fields without white space, see `field`; X or Y may be empty):
 * - `o` lease open/renew (X member, Y TTL ms): the live leases.
 * - `c` lease release (X member): the live leases left.
 * - `l` the live leases (no fields): reads change nothing but expired leases (`milterd store`).
 * - `a` count a message (X window ms, Y unique member): the messages in the window, this one included.
 * - `r` take a message back (X window ms, Y its member): the messages in the window left (unchanged if it
 *   had left the window).
 * - `n` messages in the window (X window ms): reads create no key.
 * One argument instead of four per operation: the client library builds the command string argument by
 * argument, which was most of the garbage a batch made (docs/benchmark.md).
 * Lease scores are server milliseconds, message scores server microseconds (below 2^53: exact in a
 * double), formatted with %.0f because Lua's default number format keeps only 14 digits. A message at
 * time s counts while now - s < window. With one clock for the batch, each key is pruned and counted
 * once, at its first line: what the batch adds is never due within it, so later lines keep the count from
 * what ZADD and ZREM answer (three server commands a session instead of seven: the server's time is the
 * fleet's). A message log is counted with ZCOUNT and pruned at most PRUNE_MAX entries a call: removing
 * what expired while a busy client's log sat idle (150,000 entries: 41 ms of the server) would stall
 * every instance's calls past their deadline; so a message taken back (`r`) lowers the count only if it
 * had not expired. Each key gets its expiry once, after the last operation: a lease set lives as long as
 * its longest lease, a message log one window after its last message.
 */
const BATCH = `
local t = redis.call('TIME')
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local usText = string.format('%.0f', us)
local msText = string.format('%.0f', ms)
local counts, expiries, leaseSets, logs, out = {}, {}, {}, {}, {}
local i = 0
for op, ki, x, y in string.gmatch(ARGV[1], '(%a) (%d+) (%S*) (%S*)\\n') do
  i = i + 1
  local k = KEYS[tonumber(ki)]
  local n = counts[k]
  if op == 'o' or op == 'c' or op == 'l' then
    if not n then
      redis.call('ZREMRANGEBYSCORE', k, '-inf', msText)
      n = redis.call('ZCARD', k)
    end
    if op == 'o' then
      local e = expiries[y]
      if not e then
        e = string.format('%.0f', ms + tonumber(y))
        expiries[y] = e
      end
      n = n + redis.call('ZADD', k, e, x)
      leaseSets[k] = true
    elseif op == 'c' then
      n = n - redis.call('ZREM', k, x)
    end
  else
    local cutoff = us - tonumber(x) * 1000
    if not n then
      n = redis.call('ZCOUNT', k, '(' .. string.format('%.0f', cutoff), '+inf')
      local expired = redis.call('ZCARD', k) - n
      if expired > 0 then redis.call('ZREMRANGEBYRANK', k, 0, math.min(expired, ${PRUNE_MAX}) - 1) end
    end
    if op == 'a' then
      n = n + redis.call('ZADD', k, usText, y)
      logs[k] = x
    elseif op == 'r' then
      local s = redis.call('ZSCORE', k, y)
      if s then
        redis.call('ZREM', k, y)
        if tonumber(s) > cutoff then n = n - 1 end
      end
    end
  end
  counts[k] = n
  out[i] = n
end
for k in pairs(leaseSets) do
  local last = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', k, last[2]) end
end
for k, w in pairs(logs) do redis.call('PEXPIRE', k, w) end
return out
`;

/**
 * A batch field from a caller's string (a session id): white space (the script's separators) and `%` become
 * `%HEX;`, so two different ids never make one field. Ids without them (milterd's own) are kept as they are.
 */
function field(s: string): string {
  return /[%\s]/.test(s) ? s.replace(/[%\s]/g, (c) => `%${(c.codePointAt(0) as number).toString(16)};`) : s;
}

/** Operation codes of the batch script. */
type OpCode = 'o' | 'c' | 'l' | 'a' | 'r' | 'n';

/** Most operations in one script call: bounds one script's run time on the server. */
const BATCH_MAX = 256;

/**
 * Who waits for which answers of a batch: one line's number, or (`many`) the numbers of `lines` lines.
 * `resumes`: 1 when the answer resumes a session's work (a chain evaluation, maybe a reply), 0 when it
 * resumes nothing (a lease release, a message taken back: nobody waits for them); only the former count
 * toward ANSWER_SLICE.
 */
type Waiter = { readonly resumes: 0 | 1; readonly reject: (err: unknown) => void } & (
  | { readonly many: false; readonly resolve: (n: number) => void }
  | { readonly many: true; readonly lines: number; readonly resolve: (ns: number[]) => void }
);

/** One operation of a batch: its key, code and fields (see BATCH). */
type Line = readonly [key: string, op: OpCode, x: string, y: string];

interface Batch {
  /** Distinct keys, in order, each with its 1-based index (the script's KEYS). */
  keys: Map<string, number>;
  /** The operations' lines (see BATCH). */
  ops: string;
  /** How many lines `ops` has (the script answers one number per line). */
  lines: number;
  /** In the order of their lines. */
  waiters: Waiter[];
  /** It may go: it goes as soon as its group has no call in flight. */
  due: boolean;
}

/** A batch answer being handed out over several turns: at most how many turns it still takes. */
interface Delivery {
  turns: number;
}

type BatchCommand = (numKeys: number, ...keysThenOps: string[]) => Promise<unknown>;

/**
 * The sessions' operations, sent as one script call per group (standalone and Sentinel: one group;
 * Cluster: one per client, whose keys share a slot), at most one call per `intervalMs` and one in flight
 * per group: what arrives in between goes together in the next call. An idle group sends at the end of the
 * event-loop turn (no wait); a busy one makes at most 1000 / intervalMs round trips a second, whatever its
 * number of sessions. Why: with one command per operation each round trip cost milterd 100-250 µs of CPU
 * on loopback (system calls, wake-ups, the client library), far more than the operations it carried; in
 * batches a fake Redis answering from a timer costs milterd as much as the real one (docs/benchmark.md).
 */
class Batches {
  // group -> the batch being filled; group -> its calls in flight (1, or 2 beside a full batch); group ->
  // when its last call went
  readonly #filling = new Map<string, Batch>();
  readonly #inFlight = new Map<string, number>();
  // Every call in flight, for `drain`.
  readonly #calls = new Set<Promise<unknown>>();
  readonly #lastSent = new Map<string, number>();
  /** The batch answers that arrived and are still being handed out (see #answer). */
  readonly #deliveries = new Set<Delivery>();

  constructor(
    readonly send: BatchCommand,
    /** The group of a key: '' when every key may share one script (not a Cluster). */
    readonly groupOf: (key: string) => string,
    readonly intervalMs: number,
  ) {}

  /** One operation: its number. */
  run(key: string, op: OpCode, x: string, y: string): Promise<number> {
    const group = this.groupOf(key);
    const b = this.#batchOf(group);
    this.#add(b, key, op, x, y);
    const resumes = op === 'c' || op === 'r' ? 0 : 1;
    const result = new Promise<number>((resolve, reject) =>
      b.waiters.push({ many: false, resumes, resolve, reject }),
    );
    this.#sendIfFull(group, b);
    return result;
  }

  /** Operations on keys of one group (one client), answered together: their numbers, in order. */
  runAll(lines: readonly Line[]): Promise<number[]> {
    const first = lines[0];
    if (first === undefined) return Promise.resolve([]);
    const group = this.groupOf(first[0]);
    const b = this.#batchOf(group);
    for (const [key, op, x, y] of lines) this.#add(b, key, op, x, y);
    const result = new Promise<number[]>((resolve, reject) =>
      b.waiters.push({ many: true, lines: lines.length, resumes: 1, resolve, reject }),
    );
    this.#sendIfFull(group, b);
    return result;
  }

  #batchOf(group: string): Batch {
    let batch = this.#filling.get(group);
    if (batch === undefined) {
      batch = { keys: new Map(), ops: '', lines: 0, waiters: [], due: false };
      this.#filling.set(group, batch);
      this.#schedule(group, batch);
    }
    return batch;
  }

  #add(b: Batch, key: string, op: OpCode, x: string, y: string): void {
    let index = b.keys.get(key);
    if (index === undefined) b.keys.set(key, (index = b.keys.size + 1));
    b.ops += `${op} ${index} ${x} ${y}\n`;
    b.lines++;
  }

  #sendIfFull(group: string, b: Batch): void {
    if (b.lines < BATCH_MAX) return;
    // Full: out now, even beside a call in flight.
    this.#filling.delete(group);
    this.#send(group, b);
  }

  /** Send every batch now, and resolve once no call is in flight (answered or failed): before closing. */
  async drain(): Promise<void> {
    for (const [group, batch] of this.#filling) {
      this.#filling.delete(group);
      this.#send(group, batch);
    }
    while (this.#calls.size > 0) await Promise.allSettled([...this.#calls]);
  }

  /** A new batch may go at the end of this turn, or once `intervalMs` has passed since the last call. */
  #schedule(group: string, batch: Batch): void {
    const wait = (this.#lastSent.get(group) ?? -Infinity) + this.intervalMs - performance.now();
    // setImmediate: after the I/O callbacks of this turn, so that every session's operation of the
    // turn joins.
    if (wait <= 0) setImmediate(() => this.#due(group, batch));
    else setTimeout(() => this.#due(group, batch), wait);
  }

  #due(group: string, batch: Batch): void {
    batch.due = true;
    if (this.#filling.get(group) !== batch || this.#inFlight.has(group)) return;
    this.#filling.delete(group);
    this.#send(group, batch);
  }

  #send(group: string, batch: Batch): void {
    const { keys, ops, lines, waiters } = batch;
    this.#inFlight.set(group, (this.#inFlight.get(group) ?? 0) + 1);
    this.#lastSent.set(group, performance.now());
    const done = (): void => {
      const left = (this.#inFlight.get(group) ?? 1) - 1;
      if (left > 0) {
        this.#inFlight.set(group, left);
        return;
      }
      this.#inFlight.delete(group);
      const next = this.#filling.get(group);
      if (next === undefined) {
        // A Cluster has a group per client: bound what is remembered of them.
        if (this.#lastSent.size > KEY_CACHE) this.#lastSent.clear();
        return;
      }
      if (!next.due) return;
      this.#filling.delete(group);
      this.#send(group, next);
    };
    const failed = (err: unknown): void => {
      for (const w of waiters) w.reject(err);
      done();
    };
    let call: Promise<unknown>;
    try {
      call = this.send(keys.size, ...keys.keys(), ops);
    } catch (err) {
      // A client that throws instead of rejecting must not leave the group "in flight" for ever.
      failed(err);
      return;
    }
    const settled = call.then((out) => {
      // One integer per operation, or the batch failed (a proxy or server that is not Redis).
      if (!Array.isArray(out) || out.length !== lines || !out.every(Number.isInteger)) {
        failed(new Error(`unexpected reply to the batch script: ${JSON.stringify(out)?.slice(0, 80)}`));
        return;
      }
      done();
      this.#answer(waiters, out as number[], 0, 0);
    }, failed);
    this.#calls.add(settled);
    const forget = (): void => void this.#calls.delete(settled);
    settled.then(forget, forget);
  }

  /** Hand a batch's answers to their waiters, ANSWER_SLICE sessions per event-loop turn. */
  #answer(
    waiters: readonly Waiter[],
    out: readonly number[],
    from: number,
    line: number,
    delivery?: Delivery,
  ): void {
    let resumed = 0;
    let i = from;
    for (; i < waiters.length && resumed < ANSWER_SLICE; i++) {
      const w = waiters[i] as Waiter;
      resumed += w.resumes;
      if (w.many) {
        w.resolve(out.slice(line, line + w.lines));
        line += w.lines;
      } else {
        w.resolve(out[line++] as number);
      }
    }
    if (i < waiters.length) {
      // At most one slice per ANSWER_SLICE waiters left, and one for releases after the last of them.
      const d = delivery ?? { turns: 0 };
      d.turns = Math.ceil((waiters.length - i) / ANSWER_SLICE) + 1;
      this.#deliveries.add(d);
      setImmediate(() => this.#answer(waiters, out, i, line, d));
    } else if (delivery !== undefined) {
      this.#deliveries.delete(delivery);
    }
  }

  /** The most event-loop turns the answers already here still take to be handed out (0: none left). */
  deliveryTurns(): number {
    let turns = 0;
    for (const d of this.#deliveries) turns = Math.max(turns, d.turns);
    return turns;
  }
}

/**
 * Sessions resumed by one batch answer per event-loop turn. Each answer resumes a session (its chain, its
 * next reply): resuming a whole batch at once held every other connection's I/O for the time of all of
 * them, which showed as end-of-message latency; between slices the loop reads and answers the others.
 * Answers that resume nothing (lease releases, which no session waits for) do not count: a turn costs
 * throughput, and they cost none.
 */
const ANSWER_SLICE = 16;

function nothing(): void {}

function opening([sessions, ...messages]: number[]): SessionOpening {
  return { sessions: sessions as number, messages };
}

/** Most clients whose keys the store remembers. */
const KEY_CACHE = 4096;

/** A client's keys (see RedisPolicyStore): its hash-tagged base, its lease set, its last message log. */
interface ClientKeys {
  readonly base: string;
  readonly lease: string;
  windowMs: number;
  message: string;
}

export interface RedisPolicyStoreOptions {
  /** A store URL (store-url.ts) or its parsed form. */
  url: string | StoreLocation;
  /** Prefix of every key. Default DEFAULTS.storePrefix (`milterd:`). No `{` or `}`. */
  prefix?: string;
  /** Life of a lease not renewed (ms). Default DEFAULTS.storeLeaseTtlMs (60 s). */
  leaseTtlMs?: number;
  /**
   * The least time between two calls to Redis (ms, per group): operations arriving in between go together
   * in the next call; an idle instance sends at once. Default DEFAULTS.storeBatchIntervalMs.
   */
  batchIntervalMs?: number;
  /** Keys hold a SHA-256 of the client key instead of the client key. Default false. */
  hashAddresses?: boolean;
  /** TCP connect timeout (ms). Default 1000. */
  connectTimeoutMs?: number;
  /**
   * TLS material (PEM) for the TLS schemes (`rediss://`, `rediss+sentinel://`, `rediss+cluster://`), used
   * on every connection: the server, the Sentinels and the master, every Cluster node. `ca`: the CAs to
   * trust instead of Node's defaults (without it: Node's bundled CAs plus NODE_EXTRA_CA_CERTS); `cert` and
   * `key`: a client certificate (Redis `tls-auth-clients yes`), both or neither. Refused with a non-TLS URL.
   */
  tls?: RedisStoreTls;
  /** Extra ioredis options, merged over ours. */
  redisOptions?: RedisOptions;
}

/** See {@link RedisPolicyStoreOptions.tls}. */
export interface RedisStoreTls {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
}

/** The Redis-backed store. Build it with {@link createRedisPolicyStore} (which loads ioredis lazily). */
export class RedisPolicyStore implements PolicyStore {
  readonly leaseTtlMs: number;
  readonly prefix: string;
  readonly hashAddresses: boolean;
  readonly #client: RedisClient | ClusterClient;
  readonly #batches: Batches;
  // Lease and message-log members must be unique across the fleet, and connection ids are only unique in
  // one process: every member starts with a random id of this instance.
  readonly #instance = randomBytes(9).toString('base64url');
  #seq = 0;
  // client -> its keys: every call of a session built them again (a SHA-256 each with
  // hashAddresses). Bounded; emptied when full (a pure function of the client: nothing goes stale).
  readonly #keyCache = new Map<string, ClientKeys>();
  // The lease TTL as the script reads it.
  readonly #ttlField: string;

  constructor(client: RedisClient | ClusterClient, options: Omit<RedisPolicyStoreOptions, 'url'> = {}) {
    this.prefix = options.prefix ?? DEFAULTS.storePrefix;
    if (/[{}]/.test(this.prefix)) throw new Error('the store prefix must not contain { or }');
    const ttl = options.leaseTtlMs ?? DEFAULTS.storeLeaseTtlMs;
    if (!(ttl > 0) || !Number.isFinite(ttl)) throw new Error('leaseTtlMs must be a positive number');
    this.leaseTtlMs = Math.ceil(ttl);
    this.#ttlField = String(this.leaseTtlMs);
    this.hashAddresses = options.hashAddresses ?? false;
    this.#client = client;
    client.defineCommand('milterdBatch', { lua: BATCH });
    const send = (client as unknown as { milterdBatch: BatchCommand }).milterdBatch.bind(client);
    // A Cluster runs a script on one shard: one batch per client, whose keys share the hash tag (a slot):
    // the key up to its `}` (the prefix has no braces).
    const interval = options.batchIntervalMs ?? DEFAULTS.storeBatchIntervalMs;
    if (!(interval >= 0) || !Number.isFinite(interval)) throw new Error('batchIntervalMs must be 0 or more');
    this.#batches = new Batches(
      send,
      'isCluster' in client && client.isCluster ? (key) => key.slice(0, key.indexOf('}') + 1) : () => '',
      interval,
    );
  }

  get delivering(): number {
    return this.#batches.deliveryTurns();
  }

  /** The underlying ioredis client (Redis or Cluster). */
  get client(): RedisClient | ClusterClient {
    return this.#client;
  }

  /** The hash-tagged part of a client's keys: `PREFIX{CLIENT}`. */
  keyBase(client: string): string {
    return this.#keys(client).base;
  }

  leaseKey(client: string): string {
    return this.#keys(client).lease;
  }

  messageKey(client: string, windowMs: number): string {
    const keys = this.#keys(client);
    if (keys.windowMs === windowMs) return keys.message;
    const key = `${keys.base}:m:${windowMs}`;
    // One window is the usual rule set: remember the last one.
    keys.windowMs = windowMs;
    keys.message = key;
    return key;
  }

  #keys(client: string): ClientKeys {
    let keys = this.#keyCache.get(client);
    if (keys !== undefined) return keys;
    const tag = this.hashAddresses
      ? createHash('sha256').update(client).digest('base64url').slice(0, 22)
      : client;
    const base = `${this.prefix}{${tag}}`;
    keys = { base, lease: `${base}:l`, windowMs: Number.NaN, message: '' };
    if (this.#keyCache.size >= KEY_CACHE) this.#keyCache.clear();
    this.#keyCache.set(client, keys);
    return keys;
  }

  // `_now` (the policy clock) is ignored: the script reads the server's TIME.
  sessionOpened(client: string, sessionId: string, _now?: number): Promise<number> {
    return this.#batches.run(this.leaseKey(client), 'o', this.#member(sessionId), this.#ttlField);
  }

  /**
   * The lease and the counts of `windowsMs` (with `reserve`, a message added in each): lines of one batch,
   * answered together (one settle).
   */
  sessionOpenedWithCounts(
    client: string,
    sessionId: string,
    windowsMs: readonly number[],
    _now?: number,
    reserve?: string,
  ): Promise<SessionOpening> {
    const lines: Line[] = [[this.leaseKey(client), 'o', this.#member(sessionId), this.#ttlField]];
    const op: OpCode = reserve === undefined ? 'n' : 'a';
    const member = reserve === undefined ? '' : this.#messageMember(reserve);
    for (const w of windowsMs) lines.push([this.messageKey(client, w), op, String(Math.ceil(w)), member]);
    return this.#batches.runAll(lines).then(opening);
  }

  sessionClosed(client: string, sessionId: string, _now?: number): Promise<void> {
    return this.#batches.run(this.leaseKey(client), 'c', this.#member(sessionId), '').then(nothing);
  }

  addMessage(client: string, windowMs: number, _now?: number, messageId?: string): Promise<number> {
    const member =
      messageId === undefined
        ? `${this.#instance}:${(this.#seq = (this.#seq + 1) % Number.MAX_SAFE_INTEGER)}`
        : this.#messageMember(messageId);
    return this.#batches.run(this.messageKey(client, windowMs), 'a', String(Math.ceil(windowMs)), member);
  }

  /** Take back the message added with `messageId`. */
  removeMessage(client: string, windowMs: number, messageId: string, _addedAt?: number): Promise<void> {
    const member = this.#messageMember(messageId);
    return this.#batches
      .run(this.messageKey(client, windowMs), 'r', String(Math.ceil(windowMs)), member)
      .then(nothing);
  }

  messageCount(client: string, windowMs: number, _now?: number): Promise<number> {
    return this.#batches.run(this.messageKey(client, windowMs), 'n', String(Math.ceil(windowMs)), '');
  }

  /** The client's live sessions (leases not expired), without opening one. */
  sessionCount(client: string): Promise<number> {
    return this.#batches.run(this.leaseKey(client), 'l', '', '');
  }

  /**
   * Forget a client: delete its lease set and its message logs of `windowsMs` (keys of one Cluster slot).
   * Its sessions and messages then count from zero on every instance. Resolves with how many keys existed.
   */
  forget(client: string, windowsMs: readonly number[]): Promise<number> {
    return this.#client.del(this.leaseKey(client), ...windowsMs.map((w) => this.messageKey(client, w)));
  }

  // Lease members must be unique across the fleet; connection ids are unique only in one process.
  #member(sessionId: string): string {
    return `${this.#instance}:${field(sessionId)}`;
  }

  // A caller's message id: `r:` keeps it apart from the members numbered here (`INSTANCE:SEQ`).
  #messageMember(messageId: string): string {
    return `${this.#instance}:r:${field(messageId)}`;
  }

  /** Resolves once the connection (or the Cluster's slot map) is ready; rejects after `timeoutMs`. */
  ready(timeoutMs = 5000): Promise<void> {
    const c = this.#client;
    if (c.status === 'ready') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        c.off('ready', onReady);
        reject(new Error(`policy store not ready within ${timeoutMs} ms (status ${c.status})`));
      }, timeoutMs);
      const onReady = (): void => {
        clearTimeout(timer);
        resolve();
      };
      c.once('ready', onReady);
    });
  }

  /**
   * Send what waits (the lease releases of the sessions that just ended: they are not waited for), then QUIT;
   * or drop the connection if the server does not answer within a second (paused, gone).
   */
  async close(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const gaveUp = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, 1000);
    });
    try {
      await Promise.race([this.#batches.drain().then(() => this.#client.quit()), gaveUp]);
    } catch {
      // Not connected: nothing to say goodbye to.
    } finally {
      clearTimeout(timer);
      this.#client.disconnect();
    }
  }
}

/**
 * Connect to the Redis a URL names and build the store. Never waits for the connection: a Redis that is
 * down at start must not stop mail (calls fail fast until it is back; see GuardedStore). `onError`
 * receives connection errors (ioredis emits them on every failed reconnect; rate-limit them).
 */
export async function createRedisPolicyStore(
  options: RedisPolicyStoreOptions & { onError?: (err: Error) => void },
): Promise<RedisPolicyStore> {
  const location = typeof options.url === 'string' ? parseStoreUrl(options.url) : options.url;
  if (location.kind !== 'redis') throw new Error('createRedisPolicyStore needs a Redis URL');
  const tls = storeTlsOptions(location.tls, options.tls);
  const { Redis, Cluster } = await import('ioredis');
  const common: RedisOptions = {
    // Fail fast while disconnected: the deadline is tens of ms, a queue would only hold mail.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    enableAutoPipelining: false,
    connectTimeout: options.connectTimeoutMs ?? 1000,
    // Reconnect with a short backoff, forever: the store comes back by itself.
    retryStrategy: (times: number) => Math.min(50 * times, 1000),
    ...(location.username === undefined ? {} : { username: location.username }),
    ...(location.password === undefined ? {} : { password: location.password }),
    ...(tls === undefined ? {} : { tls }),
    ...options.redisOptions,
  };
  let client: RedisClient | ClusterClient;
  switch (location.mode) {
    case 'standalone':
      client = new Redis({
        ...common,
        db: location.db,
        ...(location.path !== undefined
          ? { path: location.path }
          : { host: location.node?.host, port: location.node?.port }),
      });
      break;
    case 'sentinel':
      client = new Redis({
        ...common,
        db: location.db,
        sentinels: location.sentinels,
        name: location.masterName,
        ...(location.sentinelPassword === undefined ? {} : { sentinelPassword: location.sentinelPassword }),
        // The master's connection takes `tls` (in common), the Sentinels' `sentinelTLS`.
        ...(tls === undefined ? {} : { enableTLSForSentinelMode: true, sentinelTLS: tls }),
        sentinelRetryStrategy: (times: number) => Math.min(100 * times, 1000),
      });
      break;
    case 'cluster':
      client = new Cluster(location.nodes, {
        enableOfflineQueue: false,
        enableAutoPipelining: false,
        clusterRetryStrategy: (times: number) => Math.min(50 * times, 1000),
        slotsRefreshTimeout: 1000,
        redisOptions: { ...common },
      });
      break;
  }
  if (options.onError !== undefined) client.on('error', options.onError);
  else client.on('error', () => undefined);
  return new RedisPolicyStore(client, options);
}

/** The Node TLS options of a store connection: undefined without TLS; the default CAs without `ca`. */
function storeTlsOptions(urlTls: boolean, given: RedisStoreTls | undefined): ConnectionOptions | undefined {
  if (!urlTls) {
    if (given !== undefined && Object.values(given).some((v) => v !== undefined))
      throw new Error(
        'TLS options need a TLS store URL (rediss://, rediss+sentinel:// or rediss+cluster://)',
      );
    return undefined;
  }
  const { ca, cert, key } = given ?? {};
  if ((cert === undefined) !== (key === undefined))
    throw new Error('a TLS client certificate needs both its certificate and its key');
  return {
    ...(ca === undefined ? {} : { ca }),
    ...(cert === undefined ? {} : { cert }),
    ...(key === undefined ? {} : { key }),
  };
}
