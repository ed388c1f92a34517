/** The store URL forms (--store, MILTERD_STORE, store.url) and what each refuses; passwords redacted. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseStoreUrl, redactStoreUrl } from '../../../src/policy/store-url.js';

test('store URLs: memory, redis, rediss, unix, sentinel, cluster', () => {
  assert.deepEqual(parseStoreUrl('memory'), { kind: 'memory' });
  assert.deepEqual(parseStoreUrl(' MEMORY '), { kind: 'memory' });
  assert.deepEqual(parseStoreUrl('redis://u:p%40ss@10.0.0.7:6380/2'), {
    kind: 'redis',
    mode: 'standalone',
    tls: false,
    node: { host: '10.0.0.7', port: 6380 },
    path: undefined,
    db: 2,
    username: 'u',
    password: 'p@ss',
  });
  const tls = parseStoreUrl('rediss://:secret@[2001:db8::7]');
  assert.ok(tls.kind === 'redis' && tls.mode === 'standalone');
  assert.equal(tls.tls, true);
  assert.deepEqual(tls.node, { host: '2001:db8::7', port: 6379 });
  assert.equal(tls.username, undefined);
  assert.equal(tls.password, 'secret');
  const unix = parseStoreUrl('redis+unix:///run/redis/redis.sock?db=3&password=x');
  assert.ok(unix.kind === 'redis' && unix.mode === 'standalone');
  assert.deepEqual(
    [unix.path, unix.db, unix.password, unix.node],
    ['/run/redis/redis.sock', 3, 'x', undefined],
  );
  const sentinel = parseStoreUrl('rediss+sentinel://u:p@s1:26380,s2/mymaster/1?sentinelPassword=sp');
  assert.ok(sentinel.kind === 'redis' && sentinel.mode === 'sentinel');
  assert.deepEqual(sentinel.sentinels, [
    { host: 's1', port: 26380 },
    { host: 's2', port: 26379 },
  ]);
  assert.deepEqual(
    [sentinel.masterName, sentinel.db, sentinel.tls, sentinel.sentinelPassword],
    ['mymaster', 1, true, 'sp'],
  );
  const cluster = parseStoreUrl('redis+cluster://n1:7000,n2:7001,n3');
  assert.ok(cluster.kind === 'redis' && cluster.mode === 'cluster');
  assert.deepEqual(
    cluster.nodes.map((n) => `${n.host}:${n.port}`),
    ['n1:7000', 'n2:7001', 'n3:6379'],
  );
});

test('store URLs: what is refused, with the reason', () => {
  const refused: Array<[string, RegExp]> = [
    ['mysql://db:3306', /unknown scheme "mysql:"/],
    ['redis://', /expected one HOST/],
    ['redis://a:6379,b:6379', /expected one HOST/],
    ['redis://a:99999', /bad port/],
    ['redis://a/x', /bad database number/],
    ['redis://a/1/2', /at most \/DB/],
    ['redis+sentinel://s1:26379', /\/MASTER/],
    ['redis+cluster://n1:7000/1', /only database 0/],
    ['redis+unix://host/path', /takes no host/],
    ['redis://a?timeout=1', /unknown URL parameter "timeout"/],
    ['localhost:6379', /expected memory or a redis/],
  ];
  for (const [url, why] of refused) assert.throws(() => parseStoreUrl(url), why, url);
});

test('store URLs: passwords are redacted for logs and check-config', () => {
  assert.equal(redactStoreUrl('redis://u:s3cret@h:6379/0'), 'redis://u:***@h:6379/0');
  assert.equal(redactStoreUrl('rediss+cluster://:s3cret@n1,n2'), 'rediss+cluster://:***@n1,n2');
  assert.equal(
    redactStoreUrl('redis+unix:///s.sock?password=s3cret&db=1'),
    'redis+unix:///s.sock?password=***&db=1',
  );
  assert.equal(redactStoreUrl('redis://h:6379'), 'redis://h:6379');
  assert.equal(redactStoreUrl('memory'), 'memory');
});
