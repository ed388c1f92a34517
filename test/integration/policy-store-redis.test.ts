/**
 * RedisPolicyStore against real servers: the shared store suite (test/unit/policy/store-suite.ts) on one
 * redis-server and on a 3-master Redis Cluster built on loopback, then what only Redis has: the server's
 * clock, key expiry set by the scripts, hash tags (one slot per client), the prefix, hashed addresses, the
 * Unix-socket URL.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  createRedisPolicyStore,
  type RedisPolicyStore,
  type RedisPolicyStoreOptions,
} from '../../src/policy/redis-store.js';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RedisCluster, RedisServer, freeLoopbackPort, redisCli, redisCommand } from '../helpers/redis.js';
import { storeSuite, until } from '../unit/policy/store-suite.js';

let single: RedisServer;
let cluster: RedisCluster;

before(async () => {
  single = await RedisServer.start({ unixSocket: true });
  cluster = await RedisCluster.start(3);
});
after(async () => {
  await single?.stop();
  await cluster?.stop();
});

async function open(
  url: string,
  options: Omit<RedisPolicyStoreOptions, 'url'> = {},
): Promise<RedisPolicyStore> {
  const store = await createRedisPolicyStore({ url, ...options });
  await store.ready();
  return store;
}

/** The server's clock in ms (TIME), read through the store's own client. */
async function serverClock(store: RedisPolicyStore): Promise<number> {
  const [s, us] = (await store.client.call('TIME')) as [string, string];
  return Number(s) * 1000 + Number(us) / 1000;
}

for (const [name, url] of [
  ['RedisPolicyStore (one server)', () => single.url],
  ['RedisPolicyStore (3-master Cluster)', () => cluster.url],
] as const) {
  storeSuite(name, async ({ leaseTtlMs }) => {
    const store = await open(url(), { leaseTtlMs, prefix: `t${Math.random().toString(36).slice(2, 8)}:` });
    return { store, clock: () => serverClock(store), close: () => store.close() };
  });
}

test('Redis: the scripts use the server clock, not the `now` they are given', async (t) => {
  const store = await open(single.url, { leaseTtlMs: 60_000 });
  t.after(() => store.close());
  const before = await serverClock(store);
  // A policy clock a day off (a skewed instance) changes nothing.
  await store.sessionOpened('192.0.2.1', 'skewed', Date.now() - 86_400_000);
  assert.equal(await store.addMessage('192.0.2.1', 60_000, Date.now() + 86_400_000), 1);
  assert.equal(await store.messageCount('192.0.2.1', 60_000, 0), 1);
  const afterTime = await serverClock(store);
  const [member, expiry] = (await store.client.zrange(store.leaseKey('192.0.2.1'), 0, 0, 'WITHSCORES')) as [
    string,
    string,
  ];
  assert.match(
    member,
    /^[A-Za-z0-9_-]{12}:skewed$/,
    "lease members are this instance's id and the session id",
  );
  const leaseExpiry = Number(expiry);
  assert.ok(
    leaseExpiry >= Math.floor(before) + 60_000 && leaseExpiry <= Math.ceil(afterTime) + 60_000,
    'lease expiry = server TIME + TTL',
  );
  const [, score] = (await store.client.zrange(
    store.messageKey('192.0.2.1', 60_000),
    0,
    0,
    'WITHSCORES',
  )) as [string, string];
  assert.ok(
    Number(score) / 1000 >= before && Number(score) / 1000 <= afterTime,
    'message time = server TIME (µs)',
  );
  await store.sessionClosed('192.0.2.1', 'skewed');
});

test('Redis: every key the scripts write has an expiry; the lease set lives as long as its longest lease', async (t) => {
  const store = await open(single.url, { leaseTtlMs: 30_000, prefix: 'ttl:' });
  t.after(() => store.close());
  await store.sessionOpened('192.0.2.2', 'a');
  await store.addMessage('192.0.2.2', 120_000);
  await store.messageCount('192.0.2.2', 5_000);
  const keys = (await redisCli(single.port, '--scan', '--pattern', 'ttl:*')).trim().split('\n').sort();
  assert.deepEqual(
    keys,
    [store.leaseKey('192.0.2.2'), store.messageKey('192.0.2.2', 120_000)].sort(),
    'reading creates nothing',
  );
  const leasePttl = Number(await redisCli(single.port, 'pttl', store.leaseKey('192.0.2.2')));
  const logPttl = Number(await redisCli(single.port, 'pttl', store.messageKey('192.0.2.2', 120_000)));
  assert.ok(leasePttl > 0 && leasePttl <= 30_000, `lease set PTTL ${leasePttl}`);
  assert.ok(logPttl > 30_000 && logPttl <= 120_000, `message log PTTL ${logPttl}`);
  await store.sessionClosed('192.0.2.2', 'a');
  assert.equal(
    (await redisCli(single.port, 'exists', store.leaseKey('192.0.2.2'))).trim(),
    '0',
    'the last release deletes the set',
  );
});

test('Redis: one hash tag per client: all its keys in one Cluster slot; prefix on every key', async (t) => {
  const store = await open(cluster.url, { prefix: 'fleet-a:' });
  t.after(() => store.close());
  const client = '2001:db8:1:2::/64';
  const keys = [
    store.leaseKey(client),
    store.messageKey(client, 60_000),
    store.messageKey(client, 3_600_000),
  ];
  for (const k of keys) assert.ok(k.startsWith(`fleet-a:{${client}}:`), k);
  const slots = new Set<string>();
  for (const k of keys) slots.add((await redisCli(cluster.servers[0]!.port, 'cluster', 'keyslot', k)).trim());
  assert.equal(slots.size, 1, 'one slot');
  // And the scripts run there (a CROSSSLOT or MOVED would reject).
  assert.equal(await store.sessionOpened(client, 's1'), 1);
  assert.equal(await store.addMessage(client, 60_000), 1);
  assert.equal(await store.addMessage(client, 3_600_000), 1);
  await store.sessionClosed(client, 's1');
});

test('Redis: hashed addresses: keys hold no address, counts are the same', async (t) => {
  const store = await open(single.url, { prefix: 'hash:', hashAddresses: true });
  t.after(() => store.close());
  assert.equal(await store.sessionOpened('192.0.2.77', 'x'), 1);
  assert.equal(await store.sessionOpened('192.0.2.77', 'y'), 2);
  assert.equal(await store.addMessage('192.0.2.77', 60_000), 1);
  const keys = (await redisCli(single.port, '--scan', '--pattern', 'hash:*')).trim().split('\n');
  assert.equal(keys.length, 2);
  for (const k of keys) {
    assert.ok(!k.includes('192.0.2.77'), k);
    assert.match(k, /^hash:\{[A-Za-z0-9_-]{22}\}:(l|m:60000)$/);
  }
  await store.sessionClosed('192.0.2.77', 'x');
  await store.sessionClosed('192.0.2.77', 'y');
});

test('Redis: a Unix-socket URL (redis+unix://) works like TCP', async (t) => {
  const store = await open(`redis+unix://${single.socketPath}`, { prefix: 'unix:' });
  t.after(() => store.close());
  assert.equal(await store.sessionOpened('192.0.2.9', 'u'), 1);
  assert.equal(await store.addMessage('192.0.2.9', 60_000), 1);
  await store.sessionClosed('192.0.2.9', 'u');
});

for (const [name, url] of [
  ['one server', () => single.url],
  ['Cluster', () => cluster.url],
] as const) {
  test(`Redis (${name}): sessionCount reads the live leases without opening one; forget deletes a client's keys`, async (t) => {
    const store = await open(url(), { prefix: 'read:', leaseTtlMs: 60_000 });
    t.after(() => store.close());
    assert.equal(await store.sessionCount('192.0.2.30'), 0);
    await store.sessionOpened('192.0.2.30', 's1');
    await store.sessionOpened('192.0.2.30', 's2');
    await store.addMessage('192.0.2.30', 60_000);
    await store.sessionOpened('192.0.2.31', 'other');
    assert.equal(await store.sessionCount('192.0.2.30'), 2);
    assert.equal(await store.sessionCount('192.0.2.30'), 2, 'reading opens nothing');
    assert.equal(
      await store.forget('192.0.2.30', [60_000, 3_600_000]),
      2,
      'the lease set and one log existed',
    );
    assert.equal(await store.sessionCount('192.0.2.30'), 0);
    assert.equal(await store.messageCount('192.0.2.30', 60_000), 0);
    assert.equal(await store.sessionCount('192.0.2.31'), 1, 'other clients are untouched');
    assert.equal(await store.forget('192.0.2.30', [60_000]), 0);
  });
}

test('Redis: two instances with the same connection ids count two sessions (lease members carry an instance id)', async (t) => {
  const [a, b] = [await open(single.url, { prefix: 'two:' }), await open(single.url, { prefix: 'two:' })];
  t.after(() => Promise.all([a.close(), b.close()]));
  assert.equal(await a.sessionOpened('192.0.2.3', 'conn-1'), 1);
  assert.equal(await b.sessionOpened('192.0.2.3', 'conn-1'), 2);
  await a.sessionClosed('192.0.2.3', 'conn-1');
  assert.equal(await b.sessionOpened('192.0.2.3', 'conn-1'), 1, "a's close released only a's lease");
  await b.sessionClosed('192.0.2.3', 'conn-1');
});

test('Redis: session ids with white space or % are distinct leases, and each close releases its own', async (t) => {
  const store = await open(single.url, { prefix: 'ids:' });
  t.after(() => store.close());
  // The batch script separates fields with white space: ids that differ only there must stay apart.
  const ids = ['a b', 'a\nb', 'a%20;b', 'a\tb', 'a b ', '', ' ', '%', 'a\u00a0b'];
  for (const [i, id] of ids.entries()) assert.equal(await store.sessionOpened('192.0.2.4', id), i + 1, id);
  assert.equal(await store.sessionOpened('192.0.2.4', 'a b'), ids.length, 'renewing one id adds none');
  for (const [i, id] of ids.entries()) {
    await store.sessionClosed('192.0.2.4', id);
    assert.equal(
      await store.messageCount('192.0.2.4', 60_000),
      0,
      'a message count next to the closes still parses',
    );
    const left = Number(await redisCli(single.port, 'zcard', store.leaseKey('192.0.2.4')));
    assert.equal(left, ids.length - i - 1, `closing ${JSON.stringify(id)} released exactly its lease`);
  }
});

test('Redis: a Sentinel URL (redis+sentinel://HOST:PORT/MASTER) finds the master through the sentinel', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'milterd-sentinel-'));
  const port = await freeLoopbackPort();
  const conf = join(dir, 'sentinel.conf');
  await writeFile(
    conf,
    `port ${port}\nbind 127.0.0.1\ndir ${dir}\nsentinel monitor fleet 127.0.0.1 ${single.port} 1\n`,
  );
  const sentinel = spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' });
  t.after(async () => {
    if (sentinel.exitCode === null && sentinel.signalCode === null) {
      sentinel.kill('SIGKILL');
      await once(sentinel, 'exit');
    }
    await rm(dir, { recursive: true, force: true });
  });
  await until(
    async () => (await redisCommand(port, 'PING', 300).catch(() => '')) === '+PONG',
    'the sentinel',
  );
  const store = await open(`redis+sentinel://127.0.0.1:${port}/fleet`, { prefix: 'sentinel:' });
  t.after(() => store.close());
  assert.equal(await store.sessionOpened('192.0.2.8', 's'), 1);
  assert.equal(await store.addMessage('192.0.2.8', 60_000), 1);
  // The keys are on the master the sentinel named.
  assert.equal((await redisCli(single.port, 'exists', store.leaseKey('192.0.2.8'))).trim(), '1');
  await store.sessionClosed('192.0.2.8', 's');
});

/** Script calls the server has run (EVALSHA and EVAL), from INFO commandstats. */
async function scriptCalls(port: number): Promise<number> {
  const stats = await redisCli(port, 'info', 'commandstats');
  let n = 0;
  for (const m of stats.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)) n += Number(m[1]);
  return n;
}

test('Redis: the operations of many sessions go out as one script call, in order; what comes while a call is in flight goes in the next one', async (t) => {
  // A long interval: what follows a call within it waits for the next one.
  const store = await open(single.url, { prefix: 'batch:', batchIntervalMs: 15 });
  t.after(() => store.close());
  const before = await scriptCalls(single.port);
  const opened = await Promise.all(
    Array.from({ length: 50 }, (_, i) => store.sessionOpened('192.0.2.30', `s${i}`)),
  );
  // One script call: 50 operations run in the order they were issued, each seeing the ones before.
  assert.equal((await scriptCalls(single.port)) - before, 1);
  assert.deepEqual(
    opened,
    Array.from({ length: 50 }, (_, i) => i + 1),
  );
  // Open then close of one session in one batch: the close sees the open (order kept inside a call).
  const [n, left] = await Promise.all([
    store.sessionOpened('192.0.2.31', 'x'),
    store.sessionClosed('192.0.2.31', 'x').then(() => store.sessionOpened('192.0.2.31', 'probe')),
  ]);
  assert.equal(n, 1);
  assert.equal(left, 1, 'x was released before the probe opened');
  // While a call is in flight (the server paused), operations of two later delays wait, and go out
  // together in one call once the first is answered: three operations, two calls.
  const mid = await scriptCalls(single.port);
  const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
  await single.pause();
  let results: number[];
  try {
    const first = store.addMessage('192.0.2.32', 60_000, Date.now());
    await sleep(25); // the first call is out, unanswered
    const second = store.addMessage('192.0.2.32', 60_000, Date.now());
    await sleep(25); // the second's delay is over: it waits for the call in flight
    const third = store.messageCount('192.0.2.32', 60_000, Date.now());
    await sleep(25);
    single.resume();
    results = await Promise.all([first, second, third]);
  } finally {
    single.resume();
  }
  assert.deepEqual(results, [1, 2, 2]);
  assert.equal((await scriptCalls(single.port)) - mid, 2);
});

test('Redis: in one script call each key is counted once and later lines keep the count from what ZADD and ZREM answer (renewals, double releases, expired leases)', async (t) => {
  const store = await open(single.url, { prefix: 'count:', batchIntervalMs: 0, leaseTtlMs: 100 });
  t.after(() => store.close());
  const client = '192.0.2.33';
  assert.equal(await store.sessionOpened(client, 'old'), 1);
  assert.equal(await store.addMessage(client, 60_000, Date.now()), 1);
  await new Promise((resolve) => setTimeout(resolve, 250)); // 'old' expires, its key may be gone
  const before = await scriptCalls(single.port);
  const now = Date.now();
  const answers = await Promise.all([
    store.sessionOpened(client, 'a'), // 'old' pruned: 1
    store.sessionOpened(client, 'a'), // a renewal: still 1
    store.sessionOpened(client, 'b'), // 2
    store.sessionClosed(client, 'old').then(() => 'released'), // expired already: nothing to remove
    store.sessionOpened(client, 'probe1'), // 3
    store.sessionClosed(client, 'probe1').then(() => 'released'),
    store.sessionClosed(client, 'probe1').then(() => 'released'), // twice: removed once
    store.sessionOpened(client, 'c'), // a, b, c: 3
    store.messageCount(client, 60_000, now), // the message of the earlier call: 1
    store.addMessage(client, 60_000, now), // 2
    store.addMessage(client, 60_000, now), // 3
    store.messageCount(client, 60_000, now), // 3
  ]);
  assert.equal((await scriptCalls(single.port)) - before, 1, 'one script call');
  assert.deepEqual(answers, [1, 1, 2, 'released', 3, 'released', 'released', 3, 1, 2, 3, 3]);
  // The server agrees with the counts the script kept.
  assert.equal(await store.client.zcard(store.leaseKey(client)), 3);
  assert.equal(await store.client.zcard(store.messageKey(client, 60_000)), 3);
});

test('Redis: a message log is pruned at most 1,000 expired entries a call (a bounded share of the server), counted exactly meanwhile; a message taken back after it expired lowers no count', async (t) => {
  const store = await open(single.url, { prefix: 'prune:', batchIntervalMs: 0 });
  t.after(() => store.close());
  const client = '192.0.2.35';
  const window = 60_000;
  const key = store.messageKey(client, window);
  // A busy client's log that sat idle: 3,500 entries past the window, and m1 (counted at a MAIL whose
  // transaction outlived the window) the newest of them.
  assert.equal(await store.addMessage(client, window, Date.now(), 'm1'), 1);
  const [m1] = (await store.client.zrange(key, 0, 0)) as [string];
  const nowUs = Math.floor((await serverClock(store)) * 1000);
  await store.client.zadd(key, 'XX', String(nowUs - 61_000_000), m1);
  for (let i = 0; i < 3500; i += 500) {
    const args: string[] = [];
    for (let j = i; j < i + 500; j++) args.push(String(nowUs - 120_000_000 - j), `old:${j}`);
    await store.client.zadd(key, ...args);
  }
  assert.equal(await store.messageCount(client, window, Date.now()), 0);
  assert.equal(await store.client.zcard(key), 2501, 'the 1,000 oldest removed');
  assert.equal(await store.addMessage(client, window, Date.now(), 'm2'), 1);
  assert.equal(await store.client.zcard(key), 1502);
  // m1 is still there, past the window: taking it back removes it and leaves the count alone (a count
  // read after it in the same call still has m2).
  const [, count] = await Promise.all([
    store.removeMessage(client, window, 'm1', Date.now()),
    store.messageCount(client, window, Date.now()),
  ]);
  assert.equal(count, 1);
  assert.equal(await store.client.zscore(key, m1), null);
  assert.equal(await store.messageCount(client, window, Date.now()), 1);
  assert.deepEqual(await store.client.zrange(key, 0, -1), [`${m1.slice(0, m1.indexOf(':'))}:r:m2`]);
});

test('Redis: batchIntervalMs 0 sends the operations of one event-loop turn together', async (t) => {
  const store = await open(single.url, { prefix: 'turn:', batchIntervalMs: 0 });
  t.after(() => store.close());
  const before = await scriptCalls(single.port);
  const counts = await Promise.all(
    Array.from({ length: 10 }, (_, i) => store.addMessage('192.0.2.33', 60_000, Date.now() + i)),
  );
  assert.deepEqual(counts, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal((await scriptCalls(single.port)) - before, 1);
});

test('Redis: at most one call per batchIntervalMs: the first operation goes at once, those of the next interval together', async (t) => {
  const store = await open(single.url, { prefix: 'pace:', batchIntervalMs: 1000 });
  t.after(() => store.close());
  const before = await scriptCalls(single.port);
  const pending: Array<Promise<number>> = [];
  for (let i = 0; i < 10; i++) {
    pending.push(store.addMessage('192.0.2.34', 60_000, Date.now()));
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  // The first went at once (an idle store does not wait) and is answered within the interval.
  assert.equal(await pending[0], 1);
  assert.equal((await scriptCalls(single.port)) - before, 1);
  // The nine others went together, one interval after the first call.
  assert.deepEqual(await Promise.all(pending.slice(1)), [2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal((await scriptCalls(single.port)) - before, 2);
});

test('Redis: a batch of 256 operations goes out at once; the rest follow in the next call, all answered in order', async (t) => {
  const store = await open(single.url, { prefix: 'full:', batchIntervalMs: 0 });
  t.after(() => store.close());
  const before = await scriptCalls(single.port);
  const counts = await Promise.all(
    Array.from({ length: 300 }, () => store.addMessage('192.0.2.35', 60_000, Date.now())),
  );
  assert.deepEqual(
    counts,
    Array.from({ length: 300 }, (_, i) => i + 1),
  );
  assert.equal((await scriptCalls(single.port)) - before, 2);
});

test('Redis: one batch answer resumes its sessions 16 per event-loop turn, so other connections run in between; lease releases do not count; `delivering` while slices are left', async (t) => {
  const store = await open(single.url, { prefix: 'slice:', batchIntervalMs: 0 });
  t.after(() => store.close());
  // A macrotask counter: each answer notes the turn it arrived in, and whether the store said it was
  // still handing answers out.
  let turn = 0;
  let ticking = true;
  const tick = (): void => {
    turn++;
    if (ticking) setImmediate(tick);
  };
  setImmediate(tick);
  const turns: number[] = [];
  const delivering: number[] = [];
  assert.equal(store.delivering, 0);
  const counts = await Promise.all(
    Array.from({ length: 40 }, () =>
      store.addMessage('192.0.2.36', 60_000, Date.now()).then((n) => {
        turns.push(turn);
        delivering.push(store.delivering);
        return n;
      }),
    ),
  );
  ticking = false;
  // Turns are left after the first two slices (the guard's deadlines wait for them; an upper bound: one
  // per 16 answers left, and one more), none after the last.
  assert.deepEqual([delivering[0], delivering[16], delivering[39]], [3, 2, 0]);
  assert.equal(store.delivering, 0);
  assert.deepEqual(
    counts,
    Array.from({ length: 40 }, (_, i) => i + 1),
  );
  // 40 answers of one call: 16, 16 and 8, each slice in a later turn than the one before.
  const slices = [...new Set(turns)];
  assert.equal(slices.length, 3, `answers by turn: ${turns.join(',')}`);
  assert.deepEqual(
    slices.map((s) => turns.filter((x) => x === s).length),
    [16, 16, 8],
  );
  // Lease releases resume nothing: they do not count toward a slice. 20 counts and 20 releases, interleaved,
  // in two turns: the first ends after the 16th count (31 answers), the rest (4 counts, 5 releases) next.
  const ids = Array.from({ length: 20 }, (_, i) => `r${i}`);
  await Promise.all(ids.map((id) => store.sessionOpened('192.0.2.37', id)));
  const mixed: number[] = [];
  ticking = true;
  setImmediate(tick);
  await Promise.all(
    ids.flatMap((id) => [
      store.addMessage('192.0.2.37', 60_000, Date.now()).then(() => mixed.push(turn)),
      store.sessionClosed('192.0.2.37', id).then(() => mixed.push(turn)),
    ]),
  );
  ticking = false;
  const mixedSlices = [...new Set(mixed)];
  assert.deepEqual(
    mixedSlices.map((s) => mixed.filter((x) => x === s).length),
    [31, 9],
    `answers by turn: ${mixed.join(',')}`,
  );
});

test('Redis: close() sends the operations still waiting for their batch (lease releases are not waited for) before QUIT', async (t) => {
  const store = await open(single.url, { prefix: 'drain:', batchIntervalMs: 60_000 });
  const probe = await open(single.url, { prefix: 'drain:' });
  t.after(() => probe.close());
  // The first call goes at once (an idle instance sends at once); the release after it would wait a minute.
  assert.equal(await store.sessionOpened('192.0.2.38', 'a'), 1);
  const released = store.sessionClosed('192.0.2.38', 'a');
  await store.close();
  await released;
  assert.equal(await probe.sessionOpened('192.0.2.38', 'probe'), 1, 'the release reached Redis before QUIT');
});
