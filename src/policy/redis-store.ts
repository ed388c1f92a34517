/**
 * The policy store on Redis (6.2 or later, Valkey included; no modules), shared by every milterd of a
 * fleet. Same algorithms as MemoryPolicyStore (store.ts): sessions are leases in a sorted set scored by
 * their expiry, message rates a sliding log in a sorted set scored by their time.
 *
 * - Each operation is ONE Lua script (atomic on the server), with the time taken from the server
 *   (`TIME`), so instances with skewed clocks agree; the policy clock passed in (`now`) is ignored.
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
 * - pipelining: explicit (`enableAutoPipelining`, on here: the calls of many sessions in one tick share
 *   one write); maintenance: under the redis organisation, 6.x targets Node >= 20 like milterd;
 * - size: five small dependencies (node-redis: none), loaded only when a Redis store is configured.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { ConnectionOptions } from 'node:tls';
import type { Cluster as ClusterClient, Redis as RedisClient, RedisOptions } from 'ioredis';
import { DEFAULTS } from '../defaults.js';
import type { PolicyStore } from './store.js';
import { parseStoreUrl, type StoreLocation } from './store-url.js';

/** Lease open/renew. KEYS[1] lease set; ARGV session id, TTL ms. Returns the live leases. */
const LEASE_OPEN = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', tonumber(last[2])))
return redis.call('ZCARD', KEYS[1])
`;

/** Lease release. KEYS[1] lease set; ARGV session id. Returns the live leases left. */
const LEASE_CLOSE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
return redis.call('ZCARD', KEYS[1])
`;

/**
 * Count a message. KEYS[1] message log; ARGV window ms, unique member. Scores are server microseconds
 * (below 2^53: exact in a double), formatted with %.0f because Lua's default number format keeps only
 * 14 digits. A message at time s counts while now - s < window.
 */
const MESSAGE_ADD = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - tonumber(ARGV[1]) * 1000))
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return redis.call('ZCARD', KEYS[1])
`;

/** Messages in the window. KEYS[1] message log; ARGV window ms. */
const MESSAGE_COUNT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - tonumber(ARGV[1]) * 1000))
return redis.call('ZCARD', KEYS[1])
`;

const SCRIPTS = {
  milterdLeaseOpen: LEASE_OPEN,
  milterdLeaseClose: LEASE_CLOSE,
  milterdMessageAdd: MESSAGE_ADD,
  milterdMessageCount: MESSAGE_COUNT,
} as const;

type ScriptName = keyof typeof SCRIPTS;

/** Most clients whose key base the store remembers. */
const KEY_CACHE = 4096;
type Scripted = Record<ScriptName, (key: string, ...args: Array<string | number>) => Promise<number>>;

export interface RedisPolicyStoreOptions {
  /** A store URL (store-url.ts) or its parsed form. */
  url: string | StoreLocation;
  /** Prefix of every key. Default DEFAULTS.storePrefix (`milterd:`). No `{` or `}`. */
  prefix?: string;
  /** Life of a lease not renewed (ms). Default DEFAULTS.storeLeaseTtlMs (60 s). */
  leaseTtlMs?: number;
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
  readonly #scripts: Scripted;
  // Lease and message-log members must be unique across the fleet, and connection ids are only unique in
  // one process: every member starts with a random id of this instance.
  readonly #instance = randomBytes(9).toString('base64url');
  #seq = 0;
  // client -> `PREFIX{CLIENT}`: four calls per session each built it again (a SHA-256 each with
  // hashAddresses). Bounded; emptied when full (a pure function of the client: nothing goes stale).
  readonly #keyBases = new Map<string, string>();

  constructor(client: RedisClient | ClusterClient, options: Omit<RedisPolicyStoreOptions, 'url'> = {}) {
    this.prefix = options.prefix ?? DEFAULTS.storePrefix;
    if (/[{}]/.test(this.prefix)) throw new Error('the store prefix must not contain { or }');
    const ttl = options.leaseTtlMs ?? DEFAULTS.storeLeaseTtlMs;
    if (!(ttl > 0) || !Number.isFinite(ttl)) throw new Error('leaseTtlMs must be a positive number');
    this.leaseTtlMs = Math.ceil(ttl);
    this.hashAddresses = options.hashAddresses ?? false;
    this.#client = client;
    for (const [name, lua] of Object.entries(SCRIPTS)) client.defineCommand(name, { numberOfKeys: 1, lua });
    this.#scripts = client as unknown as Scripted;
  }

  /** The underlying ioredis client (Redis or Cluster). */
  get client(): RedisClient | ClusterClient {
    return this.#client;
  }

  /** The hash-tagged part of a client's keys: `PREFIX{CLIENT}`. */
  keyBase(client: string): string {
    let base = this.#keyBases.get(client);
    if (base !== undefined) return base;
    const tag = this.hashAddresses
      ? createHash('sha256').update(client).digest('base64url').slice(0, 22)
      : client;
    base = `${this.prefix}{${tag}}`;
    if (this.#keyBases.size >= KEY_CACHE) this.#keyBases.clear();
    this.#keyBases.set(client, base);
    return base;
  }

  leaseKey(client: string): string {
    return `${this.keyBase(client)}:l`;
  }

  messageKey(client: string, windowMs: number): string {
    return `${this.keyBase(client)}:m:${windowMs}`;
  }

  // `_now` (the policy clock) is ignored: the scripts read the server's TIME.
  async sessionOpened(client: string, sessionId: string, _now?: number): Promise<number> {
    return Number(
      await this.#scripts.milterdLeaseOpen(
        this.leaseKey(client),
        `${this.#instance}:${sessionId}`,
        this.leaseTtlMs,
      ),
    );
  }

  async sessionClosed(client: string, sessionId: string, _now?: number): Promise<void> {
    await this.#scripts.milterdLeaseClose(this.leaseKey(client), `${this.#instance}:${sessionId}`);
  }

  async addMessage(client: string, windowMs: number, _now?: number): Promise<number> {
    const member = `${this.#instance}:${(this.#seq = (this.#seq + 1) % Number.MAX_SAFE_INTEGER)}`;
    return Number(
      await this.#scripts.milterdMessageAdd(this.messageKey(client, windowMs), Math.ceil(windowMs), member),
    );
  }

  async messageCount(client: string, windowMs: number, _now?: number): Promise<number> {
    return Number(
      await this.#scripts.milterdMessageCount(this.messageKey(client, windowMs), Math.ceil(windowMs)),
    );
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

  /** QUIT, or drop the connection if the server does not answer within a second (paused, gone). */
  async close(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const gaveUp = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, 1000);
    });
    try {
      await Promise.race([this.#client.quit(), gaveUp]);
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
    enableAutoPipelining: true,
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
        enableAutoPipelining: true,
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
