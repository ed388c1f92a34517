/**
 * RedisPolicyStore over TLS (`rediss://`) against a real redis-server listening on a TLS port only, with a
 * certificate for 127.0.0.1 from a private CA made at run time with openssl (test/helpers/redis.ts): the
 * shared store suite with the CA given; a certificate that is not trusted (no CA, another CA) makes every
 * call fail fast with a store error code so each rule's on-store-error applies; mutual TLS
 * (`tls-auth-clients yes`) works with a client certificate and fails without one.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TLSSocket } from 'node:tls';
import { after, before, test } from 'node:test';
import type { Cluster, Redis } from 'ioredis';
import { storeErrorMessage } from '../../src/cli/store-source.js';
import { GuardedStore } from '../../src/policy/guarded-store.js';
import {
  createRedisPolicyStore,
  type RedisPolicyStore,
  type RedisStoreTls,
} from '../../src/policy/redis-store.js';
import type { OnStoreError } from '../../src/policy/rules.js';
import { makeTestPki, RedisCluster, RedisServer, redisCommand, type TestPki } from '../helpers/redis.js';
import { tempDir } from '../helpers/wait.js';
import { concurrencyLimited, heldSessions } from '../unit/policy/fake-context.js';
import { storeCallCode as code, storeSuite, until } from '../unit/policy/store-suite.js';

let server: RedisServer;
let mutual: RedisServer;
let cluster: RedisCluster;
let pki: TestPki;
let ca: Buffer;
let client: { cert: Buffer; key: Buffer };

before(async () => {
  server = await RedisServer.start({ tls: {} });
  pki = (server.tls as { pki: TestPki }).pki;
  mutual = await RedisServer.start({ tls: { pki, authClients: true } });
  ca = await readFile(pki.ca);
  client = { cert: await readFile(pki.clientCert), key: await readFile(pki.clientKey) };
  cluster = await RedisCluster.start(3, { tls: true });
});
after(async () => {
  await cluster?.stop();
  await mutual?.stop();
  await server?.stop();
});

const prefix = (): string => `tls${Math.random().toString(36).slice(2, 8)}:`;

async function open(
  url: string,
  tls: RedisStoreTls | undefined,
  options: { leaseTtlMs?: number; onError?: (err: Error) => void } = {},
): Promise<RedisPolicyStore> {
  return createRedisPolicyStore({ url, prefix: prefix(), ...(tls === undefined ? {} : { tls }), ...options });
}

for (const [name, url, trust] of [
  ['RedisPolicyStore (TLS: rediss:// with the private CA)', () => server.url, () => ca],
  [
    'RedisPolicyStore (TLS: rediss+cluster://, 3 masters, with the private CA)',
    () => cluster.url,
    () => cluster.servers[0]?.tls?.client.ca as Buffer,
  ],
] as const) {
  storeSuite(name, async ({ leaseTtlMs }) => {
    const store = await open(url(), { ca: trust() }, { leaseTtlMs });
    await store.ready();
    return {
      store,
      clock: async () => {
        const [s, us] = (await store.client.call('TIME')) as [string, string];
        return Number(s) * 1000 + Number(us) / 1000;
      },
      close: () => store.close(),
    };
  });
}

test('TLS: the rediss:// connection is TLS, verified against the given CA; the port speaks no plain Redis', async (t) => {
  assert.match(server.url, /^rediss:\/\/127\.0\.0\.1:\d+$/);
  const store = await open(server.url, { ca });
  t.after(() => store.close());
  await store.ready();
  const stream = (store.client as Redis).stream;
  assert.ok(stream instanceof TLSSocket, 'the connection is a TLS socket');
  assert.equal(stream.authorized, true, 'the server certificate was verified');
  assert.equal(stream.getPeerCertificate().subjectaltname, 'IP Address:127.0.0.1');
  assert.equal(await store.sessionOpened('192.0.2.1', 'a'), 1);
  // A plain-text PING gets no PONG from the TLS port (the server waits for a TLS hello, or drops it).
  const plain = await redisCommand(server.port, 'PING', 500).catch((err: Error) => err.message);
  assert.doesNotMatch(plain, /PONG/);
});

test('TLS: a server certificate that is not trusted (no CA given, or another CA): calls fail with store error codes, never hang, and the error says what to configure', async (t) => {
  const other = await makeTestPki(join(await tempDir(t), 'other-ca'));
  for (const [what, tls] of [
    ["no CA (Node's default CAs)", undefined],
    ['another private CA', { ca: await readFile(other.ca) }],
  ] as const) {
    const errors: Error[] = [];
    const inner = await open(server.url, tls, { onError: (err) => errors.push(err) });
    const guard = new GuardedStore(inner, {
      timeoutMs: 50,
      instances: 1,
      breaker: { failures: 2, openMs: 60_000 },
    });
    try {
      await until(async () => errors.length > 0, `a connection error (${what})`);
      // Node's verification code (SELF_SIGNED_CERT_IN_CHAIN, UNABLE_TO_VERIFY_LEAF_SIGNATURE…), told apart.
      const verify = errors.find((e) => /certificate is not trusted/.test(storeErrorMessage(e)));
      assert.ok(
        verify,
        `${what}: ${errors.map((e) => `${(e as NodeJS.ErrnoException).code} ${e.message}`).join('; ')}`,
      );
      assert.match(storeErrorMessage(verify), /--store-tls-ca.*NODE_EXTRA_CA_CERTS/);
      assert.notEqual(inner.client.status, 'ready');
      // Not queued while disconnected: the calls fail at once, then the breaker refuses without calling.
      assert.equal(await code(guard.sessionOpened('192.0.2.2', 'a')), 'ERR_MILTER_STORE_FAILED', what);
      // Failures within one timeout count once toward the breaker: the second comes a timeout later.
      await new Promise((resolve) => setTimeout(resolve, 60));
      assert.equal(await code(guard.addMessage('192.0.2.2', 60_000, Date.now())), 'ERR_MILTER_STORE_FAILED');
      assert.equal(guard.breakerState, 'open');
      assert.equal(
        await code(guard.messageCount('192.0.2.2', 60_000, Date.now())),
        'ERR_MILTER_STORE_UNAVAILABLE',
      );
    } finally {
      await guard.close();
    }
  }
});

/** Four concurrent sessions of one client, the store behind an untrusted certificate (limit 2). */
async function untrustedVerdicts(onStoreError: OnStoreError | undefined): Promise<string[]> {
  const errors: Error[] = [];
  const inner = await open(server.url, undefined, { onError: (err) => errors.push(err) });
  const guard = new GuardedStore(inner, { timeoutMs: 50, instances: 1 });
  // The store has tried, and been refused by the certificate check.
  await until(
    async () => errors.some((e) => /not trusted/.test(storeErrorMessage(e))),
    'the certificate to be refused',
  );
  const filter = concurrencyLimited(guard, 2, onStoreError);
  try {
    const held = await heldSessions(filter, '192.0.2.3', 4);
    await held.close();
    return held.helos;
  } finally {
    await guard.close();
  }
}

test("TLS: with the certificate not trusted, each rule's on-store-error decides: allow (default) lets every session in, tempfail answers 421, local counts here", async () => {
  assert.deepEqual(await untrustedVerdicts(undefined), ['continue', 'continue', 'continue', 'continue']);
  assert.deepEqual(await untrustedVerdicts('tempfail'), ['421', '421', '421', '421']);
  assert.deepEqual(await untrustedVerdicts('local'), ['continue', 'continue', '421', '421']);
});

test('mutual TLS (tls-auth-clients yes): the store works with a client certificate of the CA, and fails without one', async (t) => {
  const withCert = await open(mutual.url, { ca, ...client });
  t.after(() => withCert.close());
  await withCert.ready();
  assert.equal(await withCert.sessionOpened('192.0.2.4', 'a'), 1);
  assert.equal(await withCert.addMessage('192.0.2.4', 60_000), 1);

  const errors: Error[] = [];
  const without = await open(mutual.url, { ca }, { onError: (err) => errors.push(err) });
  const guard = new GuardedStore(without, { timeoutMs: 50, instances: 1 });
  t.after(() => guard.close());
  // The server refuses the handshake with a TLS alert (which may follow a reset of the first write).
  await until(
    async () => errors.some((e) => /CERTIFICATE_REQUIRED$/.test(String((e as NodeJS.ErrnoException).code))),
    'the certificate-required alert',
  );
  const alert = errors.find((e) => /CERTIFICATE_REQUIRED$/.test(String((e as NodeJS.ErrnoException).code)));
  assert.match(
    storeErrorMessage(alert as Error),
    /wants a client certificate.*--store-tls-cert.*--store-tls-key/,
  );
  assert.notEqual(without.client.status, 'ready');
  assert.equal(await code(guard.sessionOpened('192.0.2.4', 'b')), 'ERR_MILTER_STORE_FAILED');
  // The session opened with the certificate is the only one counted.
  assert.equal(await withCert.sessionOpened('192.0.2.4', 'a'), 1);
});

test('TLS options: refused with a non-TLS URL, and a client certificate needs its key', async () => {
  await assert.rejects(createRedisPolicyStore({ url: 'redis://127.0.0.1:1', tls: { ca } }), /TLS store URL/);
  await assert.rejects(
    createRedisPolicyStore({ url: 'rediss://127.0.0.1:1', tls: { ca, cert: client.cert } }),
    /needs both its certificate and its key/,
  );
});

test('TLS Cluster: every node is reached over TLS (clients spread over the three shards); without the CA nothing is', async (t) => {
  assert.match(cluster.url, /^rediss\+cluster:\/\//);
  const clusterCa = cluster.servers[0]?.tls?.client.ca as Buffer;
  const store = await open(cluster.url, { ca: clusterCa });
  t.after(() => store.close());
  await store.ready();
  const clients = Array.from({ length: 24 }, (_, i) => `198.51.100.${i + 1}`);
  for (const c of clients) assert.equal(await store.sessionOpened(c, 'x'), 1);
  // Every master holds some of the lease keys: each shard was written to, over TLS.
  for (const node of cluster.servers) {
    assert.ok(Number((await node.cli('dbsize')).trim()) > 0, `keys on ${node.port}`);
  }
  for (const node of (store.client as Cluster).nodes('master')) {
    assert.ok(
      node.stream instanceof TLSSocket && node.stream.authorized,
      'a verified TLS connection per node',
    );
  }
  for (const c of clients) await store.sessionClosed(c, 'x');

  const errors: Error[] = [];
  const untrusted = await open(cluster.url, undefined, { onError: (err) => errors.push(err) });
  const guard = new GuardedStore(untrusted, { timeoutMs: 50, instances: 1 });
  t.after(() => guard.close());
  await until(async () => errors.length > 0, 'a cluster connection error');
  // Refused at once, or at the deadline while the Cluster client still looks for its slot map.
  assert.match(await code(guard.sessionOpened('198.51.100.1', 'y')), /^ERR_MILTER_STORE_(FAILED|TIMEOUT)$/);
  assert.notEqual(untrusted.client.status, 'ready');
});

test('TLS Sentinel: rediss+sentinel:// finds the master through a TLS sentinel and reaches it over TLS; without the CA it fails', async (t) => {
  const sentinel = await RedisServer.start({ tls: { pki }, sentinel: { name: 'fleet', port: server.port } });
  t.after(() => sentinel.stop());
  const url = `rediss+sentinel://127.0.0.1:${sentinel.port}/fleet`;
  const store = await open(url, { ca });
  t.after(() => store.close());
  await store.ready();
  assert.equal(await store.sessionOpened('192.0.2.9', 's'), 1);
  assert.equal(await store.addMessage('192.0.2.9', 60_000), 1);
  const stream = (store.client as Redis).stream;
  assert.ok(stream instanceof TLSSocket && stream.authorized, 'the master connection is verified TLS');
  assert.equal(stream.remotePort, server.port, 'the master the sentinel named');
  assert.equal((await server.cli('exists', store.leaseKey('192.0.2.9'))).trim(), '1');
  await store.sessionClosed('192.0.2.9', 's');

  const errors: Error[] = [];
  const untrusted = await open(url, undefined, { onError: (err) => errors.push(err) });
  const guard = new GuardedStore(untrusted, { timeoutMs: 50, instances: 1 });
  t.after(() => guard.close());
  await until(async () => errors.length > 0, 'a sentinel connection error');
  assert.equal(await code(guard.sessionOpened('192.0.2.9', 't')), 'ERR_MILTER_STORE_FAILED');
  assert.notEqual(untrusted.client.status, 'ready');
});
