/**
 * Where the policy store lives, as one URL (`--store`, MILTERD_STORE, `store.url`). Pure: no I/O, no
 * client library, so the CLI can validate a URL without loading Redis support.
 *
 * - `memory`: the in-process store (the default).
 * - `redis://[USER:PASS@]HOST[:PORT][/DB]`, `rediss://…` (TLS).
 * - `redis+unix:///PATH/redis.sock[?db=N&username=U&password=P]` (a Unix socket; no TLS).
 * - `redis+sentinel://[USER:PASS@]HOST:PORT[,HOST:PORT…]/MASTER[/DB][?sentinelPassword=P]`,
 *   `rediss+sentinel://…` (TLS to the sentinels and the master). USER:PASS authenticate to the master.
 * - `redis+cluster://[USER:PASS@]HOST:PORT[,HOST:PORT…]`, `rediss+cluster://…`: seed nodes of a Redis Cluster
 *   (database 0 only: Cluster has no others).
 * The default port is 6379 (26379 for sentinels). User and password are percent-decoded.
 */

export interface StoreNode {
  host: string;
  port: number;
}

export type StoreLocation =
  | { kind: 'memory' }
  | {
      kind: 'redis';
      mode: 'standalone';
      tls: boolean;
      /** TCP node, or undefined with `path`. */
      node: StoreNode | undefined;
      /** Unix socket path (redis+unix). */
      path: string | undefined;
      db: number;
      username: string | undefined;
      password: string | undefined;
    }
  | {
      kind: 'redis';
      mode: 'sentinel';
      tls: boolean;
      sentinels: StoreNode[];
      masterName: string;
      db: number;
      username: string | undefined;
      password: string | undefined;
      sentinelPassword: string | undefined;
    }
  | {
      kind: 'redis';
      mode: 'cluster';
      tls: boolean;
      nodes: StoreNode[];
      username: string | undefined;
      password: string | undefined;
    };

const SCHEMES: Readonly<
  Record<string, { mode: 'standalone' | 'sentinel' | 'cluster' | 'unix'; tls: boolean }>
> = {
  redis: { mode: 'standalone', tls: false },
  rediss: { mode: 'standalone', tls: true },
  'redis+unix': { mode: 'unix', tls: false },
  'redis+sentinel': { mode: 'sentinel', tls: false },
  'rediss+sentinel': { mode: 'sentinel', tls: true },
  'redis+cluster': { mode: 'cluster', tls: false },
  'rediss+cluster': { mode: 'cluster', tls: true },
};

const URL_SHAPE = /^([a-z+]+):\/\/(?:([^@/]*)@)?([^/?#]*)(\/[^?#]*)?(?:\?([^#]*))?$/i;

function decode(text: string, what: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new Error(`bad percent-encoding in the ${what}`);
  }
}

function parseNode(text: string, defaultPort: number): StoreNode {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(text);
  if (m === null) throw new Error(`bad host "${text}" (expected HOST, HOST:PORT or [IPv6]:PORT)`);
  const port = m[3] === undefined ? defaultPort : Number(m[3]);
  if (port < 1 || port > 65535) throw new Error(`bad port in "${text}"`);
  return { host: (m[1] ?? m[2]) as string, port };
}

function parseDb(text: string | undefined | null): number {
  if (text === undefined || text === null || text === '') return 0;
  if (!/^\d{1,5}$/.test(text)) throw new Error(`bad database number "${text}"`);
  return Number(text);
}

/** Parse a store URL; throws an Error saying what is wrong (the CLI adds the field). */
export function parseStoreUrl(text: string): StoreLocation {
  const trimmed = text.trim();
  if (trimmed === '' || trimmed.toLowerCase() === 'memory') return { kind: 'memory' };
  const m = URL_SHAPE.exec(trimmed);
  if (m === null)
    throw new Error(
      'expected memory or a redis://, rediss://, redis+unix://, redis+sentinel:// or redis+cluster:// URL',
    );
  const scheme = SCHEMES[(m[1] as string).toLowerCase()];
  if (scheme === undefined) {
    throw new Error(`unknown scheme "${m[1]}:" (one of: ${Object.keys(SCHEMES).join(', ')})`);
  }
  let username: string | undefined;
  let password: string | undefined;
  if (m[2] !== undefined) {
    const colon = m[2].indexOf(':');
    const user = colon < 0 ? m[2] : m[2].slice(0, colon);
    username = user === '' ? undefined : decode(user, 'user name');
    password = colon < 0 ? undefined : decode(m[2].slice(colon + 1), 'password');
  }
  const query = new URLSearchParams(m[5] ?? '');
  for (const key of query.keys()) {
    if (!['db', 'username', 'password', 'sentinelPassword'].includes(key)) {
      throw new Error(`unknown URL parameter "${key}" (db, username, password, sentinelPassword)`);
    }
  }
  username = query.get('username') ?? username;
  password = query.get('password') ?? password;
  const hosts = m[3] as string;
  const pathParts = (m[4] ?? '').split('/').filter((p) => p !== '');
  switch (scheme.mode) {
    case 'unix': {
      if (hosts !== '') throw new Error('redis+unix:// takes no host: redis+unix:///path/to/redis.sock');
      const path = m[4];
      if (path === undefined || path === '/') throw new Error('redis+unix:// needs the socket path');
      return {
        kind: 'redis',
        mode: 'standalone',
        tls: false,
        node: undefined,
        path: decode(path, 'path'),
        db: parseDb(query.get('db')),
        username,
        password,
      };
    }
    case 'standalone': {
      if (hosts === '' || hosts.includes(',')) throw new Error('expected one HOST[:PORT]');
      if (pathParts.length > 1) throw new Error('expected at most /DB after the host');
      return {
        kind: 'redis',
        mode: 'standalone',
        tls: scheme.tls,
        node: parseNode(hosts, 6379),
        path: undefined,
        db: parseDb(query.get('db') ?? pathParts[0]),
        username,
        password,
      };
    }
    case 'sentinel': {
      if (hosts === '') throw new Error('expected sentinels: HOST:PORT[,HOST:PORT…]');
      const masterName = pathParts[0];
      if (masterName === undefined || pathParts.length > 2)
        throw new Error('expected /MASTER[/DB] after the sentinels');
      return {
        kind: 'redis',
        mode: 'sentinel',
        tls: scheme.tls,
        sentinels: hosts.split(',').map((h) => parseNode(h, 26379)),
        masterName: decode(masterName, 'master name'),
        db: parseDb(query.get('db') ?? pathParts[1]),
        username,
        password,
        sentinelPassword: query.get('sentinelPassword') ?? undefined,
      };
    }
    case 'cluster': {
      if (hosts === '') throw new Error('expected cluster nodes: HOST:PORT[,HOST:PORT…]');
      if (pathParts.length > 0 || query.has('db')) throw new Error('Redis Cluster has only database 0');
      return {
        kind: 'redis',
        mode: 'cluster',
        tls: scheme.tls,
        nodes: hosts.split(',').map((h) => parseNode(h, 6379)),
        username,
        password,
      };
    }
  }
}

/** The URL with its password(s) replaced by `***`, for logs and check-config. */
export function redactStoreUrl(text: string): string {
  return text
    .trim()
    .replace(/^([a-z+]+:\/\/[^:@/]*:)[^@/]*@/i, '$1***@')
    .replace(/([?&](?:password|sentinelPassword)=)[^&#]*/g, '$1***');
}
