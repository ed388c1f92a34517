/**
 * `milterd serve --store`: two daemons sharing one real redis-server count one client's sessions
 * together; the store's metrics are exported; a Redis that dies or freezes never holds a session past the
 * deadline (its warnings rate-limited), and /readyz follows the store's circuit breaker only with
 * --store-readyz. check-config
 * validates the URL and never prints its password. Over rediss:// (a TLS-only redis-server with a private
 * CA): the limit holds with the CA given by flag, config file or NODE_EXTRA_CA_CERTS, mutual TLS needs the
 * client certificate, and a refused certificate is logged with what to configure.
 */
import assert from 'node:assert/strict';
import { copyFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { MilterClient } from '../../src/client/index.js';
import { freeLoopbackPort, makeTestPki, RedisServer, type TestPki } from '../helpers/redis.js';
import { tempDir } from '../helpers/wait.js';
import { Daemon, httpGet, parsePrometheus, runMilterd, sampleValue } from './helpers.js';

const POLICY = 'version: 1\nrules:\n  - name: conc\n    max-concurrent-sessions: 1\n';

async function session(milter: string, address: string): Promise<{ client: MilterClient; helo: string }> {
  const client = await MilterClient.connect(milter, { timeoutMs: 5000 });
  await client.connect({ hostname: 'c.example', family: 'inet', port: 4000, address });
  const reply = await client.helo('c.example');
  return { client, helo: reply.kind === 'replyCode' ? reply.text.slice(0, 3) : reply.kind };
}

/**
 * A session of `address` on `milter` once the lease of a session that just ended on another daemon is
 * released: a daemon sends the release with its next batch and does not hold the session's end for it, so
 * the other daemon may still count it for a few milliseconds (bounded wait: 50 tries 20 ms apart).
 */
async function sessionAfterRelease(
  milter: string,
  address: string,
): Promise<{ client: MilterClient; helo: string }> {
  for (let tries = 1; ; tries++) {
    const s = await session(milter, address);
    if (s.helo !== '421' || tries === 50) return s;
    await s.client.quit();
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function metrics(adminPort: number): Promise<ReturnType<typeof parsePrometheus>> {
  const res = await httpGet(adminPort, '/metrics');
  assert.equal(res.status, 200);
  return parsePrometheus(res.body);
}

test('two daemons on one Redis: the second concurrent session of a client gets 421 whichever daemon it reaches', async (t) => {
  const redis = await RedisServer.start();
  t.after(() => redis.stop());
  const dir = await tempDir(t);
  const policy = join(dir, 'policy.yaml');
  await writeFile(policy, POLICY);
  const args = ['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1', '--policy', policy];
  const a = new Daemon([...args, '--store', redis.url]);
  const b = new Daemon(args, { MILTERD_STORE: redis.url });
  t.after(() => Promise.all([a.kill(), b.kill()]));
  const [sa, sb] = [await a.started(), await b.started()];
  await a.waitFor((l) => l.msg === 'policy store connected', 'store connected (a)');
  await b.waitFor((l) => l.msg === 'policy store connected', 'store connected (b)');

  const first = await session(sa.milter, '192.0.2.50');
  assert.equal(first.helo, 'continue');
  const second = await session(sb.milter, '192.0.2.50');
  assert.equal(second.helo, '421', 'the other daemon sees the first session');
  const other = await session(sb.milter, '192.0.2.51');
  assert.equal(other.helo, 'continue', 'another client is not limited');
  for (const s of [second, other]) await s.client.quit();
  await first.client.quit();
  // The first session closed: its lease is released, a new session on b is let in.
  const third = await sessionAfterRelease(sb.milter, '192.0.2.50');
  assert.equal(third.helo, 'continue');
  await third.client.quit();

  const m = await metrics(sa.adminPort as number);
  assert.ok(sampleValue(m, 'milterd_store_call_duration_seconds_count', { op: 'session-open' }) >= 1);
  assert.equal(sampleValue(m, 'milterd_store_breaker_state', { state: 'closed' }), 1);
  assert.equal(sampleValue(m, 'milterd_store_breaker_state'), 1, 'one state at a time');
});

test('Redis killed, then frozen (SIGSTOP): sessions are answered within the deadline, the breaker opens, /readyz follows it only with --store-readyz, and limits resume', async (t) => {
  const redis = await RedisServer.start();
  t.after(() => redis.stop());
  const dir = await tempDir(t);
  const policy = join(dir, 'policy.yaml');
  await writeFile(policy, POLICY);
  const args = [
    '--listen',
    'inet:0@127.0.0.1',
    '--admin',
    'inet:0@127.0.0.1',
    '--policy',
    policy,
    '--store',
    redis.url,
  ];
  const d = new Daemon([...args, '--store-readyz', '--store-timeout', '50ms']);
  const plain = new Daemon(args);
  t.after(() => Promise.all([d.kill(), plain.kill()]));
  const [s, p] = [await d.started(), await plain.started()];
  await d.waitFor((l) => l.msg === 'policy store connected', 'store connected');
  await plain.waitFor((l) => l.msg === 'policy store connected', 'store connected');
  assert.equal((await httpGet(s.adminPort as number, '/readyz')).status, 200);

  await redis.pause();
  // 30 sessions at once: each one's call fails at the deadline, and the log gets at most 10 warnings a
  // second (the daemon's log rate limit), then one line saying how many more there were.
  const burst = await Promise.all(Array.from({ length: 30 }, () => session(s.milter, '192.0.2.62')));
  assert.deepEqual(new Set(burst.map((one) => one.helo)), new Set(['continue']));
  await Promise.all(burst.map((one) => one.client.quit()));
  const summary = await d.waitFor(
    (l) => l.msg?.startsWith('suppressed ') === true && l.key === 'policy store ERR_MILTER_STORE_TIMEOUT',
    'the summary of the store warnings',
  );
  assert.ok(Number(summary.suppressed) >= 20, `${String(summary.suppressed)} suppressed`);
  const warned = d.lines.filter(
    (l) => l.msg === 'shutdown policy store failed; rules apply their on-store-error' && l.level === 40,
  );
  assert.ok(warned.length >= 1 && warned.length <= 10, `${warned.length} warnings`);
  // Every session is still served (on-store-error: allow), two at once from one client included.
  const held = [];
  for (let i = 0; i < 6; i++) {
    const one = await session(s.milter, '192.0.2.60');
    assert.equal(one.helo, 'continue', `session ${i} with Redis frozen`);
    held.push(one);
  }
  const m = await metrics(s.adminPort as number);
  assert.ok(sampleValue(m, 'milterd_store_errors_total', { code: 'ERR_MILTER_STORE_TIMEOUT' }) >= 1);
  assert.equal(
    sampleValue(m, 'milterd_store_breaker_state', { state: 'open' }),
    1,
    'five failures opened the breaker',
  );
  assert.equal(sampleValue(m, 'milterd_store_breaker_state', { state: 'closed' }), 0);
  assert.ok(sampleValue(m, 'milterd_store_errors_total', { code: 'ERR_MILTER_STORE_UNAVAILABLE' }) >= 1);
  assert.equal((await httpGet(s.adminPort as number, '/readyz')).status, 503, '--store-readyz: not ready');
  assert.equal(
    (await httpGet(p.adminPort as number, '/readyz')).status,
    200,
    'default: Redis does not matter',
  );
  for (const one of held) await one.client.quit();

  // Killed and restarted (empty): the breaker's probe finds it back, and limits apply again.
  await redis.kill();
  await redis.restart();
  let blocked = false;
  for (let i = 0; i < 100 && !blocked; i++) {
    const first = await session(s.milter, '192.0.2.61');
    const again = await session(s.milter, '192.0.2.61');
    blocked = first.helo === 'continue' && again.helo === '421';
    await again.client.quit();
    await first.client.quit();
    if (!blocked) await new Promise((r) => setTimeout(r, 200));
  }
  assert.ok(blocked, 'the limit applies again once Redis is back');
  assert.equal((await httpGet(s.adminPort as number, '/readyz')).status, 200);
});

test("milterd store ADDRESS: a client's live sessions and messages as the daemons count them; --clear forgets them; errors exit 1, 2, 3", async (t) => {
  const redis = await RedisServer.start();
  t.after(() => redis.stop());
  const dir = await tempDir(t);
  const policy = join(dir, 'policy.yaml');
  await writeFile(
    policy,
    'version: 1\nrules:\n  - name: conc\n    max-concurrent-sessions: 5\n' +
      '  - name: rate\n    max-messages-per-client: 2\n    window: 1m\n',
  );
  const shared = ['--policy', policy, '--store', redis.url];
  const d = new Daemon(['--listen', 'inet:0@127.0.0.1', ...shared]);
  t.after(() => d.kill());
  const s = await d.started();
  await d.waitFor((l) => l.msg === 'policy store connected', 'store connected');
  const show = async (...extra: string[]): Promise<Record<string, unknown>> => {
    const r = await runMilterd(['store', '192.0.2.80', ...shared, ...extra]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as Record<string, unknown>;
  };

  // One session kept open, two messages in it.
  const held = await session(s.milter, '192.0.2.80');
  t.after(() => held.client.quit());
  assert.equal(held.helo, 'continue');
  for (let i = 0; i < 2; i++) {
    await held.client.envfrom('<a@example.org>');
    await held.client.envrcpt('<b@example.net>');
    assert.equal((await held.client.eom()).reply.kind, 'continue');
  }
  // Each message was counted at its MAIL, whose reply waited for Redis: both are there now.
  const report = await show();
  assert.deepEqual(report, {
    store: redis.url,
    client: '192.0.2.80',
    key: '192.0.2.80',
    concurrentSessions: 1,
    messagesInWindow: { '60000': 2 },
  });
  const refused = await session(s.milter, '192.0.2.80');
  assert.equal(refused.helo, '421', 'the client reached its rate');
  await refused.client.quit();

  // --clear: read, then forgotten; a new session passes, and nothing is left to read.
  assert.deepEqual(await show('--clear'), { ...report, cleared: true });
  const again = await session(s.milter, '192.0.2.80');
  assert.equal(again.helo, 'continue', 'the client starts again from zero');
  await again.client.quit();
  const after = await show();
  assert.deepEqual(after.messagesInWindow, { '60000': 0 });

  // IPv6 clients are counted by /64, as the daemon counts them.
  const v6 = await runMilterd(['store', '2001:db8::7', ...shared]);
  assert.equal(v6.code, 0, v6.stderr);
  assert.equal((JSON.parse(v6.stdout) as { key: string }).key, '2001:db8::/64');

  const empty = await runMilterd(['store', '', ...shared]);
  assert.equal(empty.code, 2);
  assert.match(empty.stderr, /an empty address is not counted/);
  const memory = await runMilterd(['store', '192.0.2.80', '--policy', policy]);
  assert.equal(memory.code, 3);
  assert.match(memory.stderr, /nothing shared to read/);
  const dead = await runMilterd([
    'store',
    '192.0.2.80',
    '--policy',
    policy,
    '--store',
    `redis://127.0.0.1:${await freeLoopbackPort()}/0`,
  ]);
  assert.equal(dead.code, 1);
  assert.match(dead.stderr, /not ready within 5000 ms/);
});

test('check-config: store URL checked, password never printed; a bad URL is a located problem', async (t) => {
  const dir = await tempDir(t);
  const good = join(dir, 'good.yaml');
  await writeFile(good, 'store:\n  url: redis://milterd:s3cret@10.0.0.7:6380/2\n  instances: 3\n');
  const r = await runMilterd(['check-config', good]);
  assert.equal(r.code, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as {
    config: { store: { url: string; instances: number } };
    sources: Record<string, string>;
  };
  assert.equal(doc.config.store.url, 'redis://milterd:***@10.0.0.7:6380/2');
  assert.equal(doc.config.store.instances, 3);
  assert.equal(doc.sources['store.url'], 'file');
  assert.ok(!r.stdout.includes('s3cret'));
  const bad = join(dir, 'bad.yaml');
  await writeFile(bad, 'logLevel: info\nstore: mysql://db\n');
  const rb = await runMilterd(['check-config', bad]);
  assert.equal(rb.code, 3);
  assert.match(rb.stderr, /bad\.yaml:2:\d+: store(\.url)?: unknown scheme "mysql:"/);
});

test('check-config: store.batchInterval defaults to 10ms, is read from the file and the flag, and is refused outside 0 to 20ms', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'milterd.yaml');
  await writeFile(file, 'store:\n  url: redis://127.0.0.1:6379/0\n  batchInterval: 15ms\n');
  const batchInterval = async (args: string[]): Promise<string> => {
    const r = await runMilterd(['check-config', ...args]);
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { config: { store: { batchInterval: string } } }).config.store
      .batchInterval;
  };
  assert.equal(await batchInterval([]), '10ms');
  assert.equal(await batchInterval([file]), '15ms');
  assert.equal(await batchInterval(['--store-batch-interval', '0', file]), '0s');
  // A bad flag is a usage error (2), a bad file value a configuration problem (3).
  for (const bad of ['21ms', '1s']) {
    const r = await runMilterd(['check-config', '--store-batch-interval', bad]);
    assert.equal(r.code, 2, `${bad}: ${r.stderr}`);
    assert.match(r.stderr, /store-batch-interval.*between 0 and 20ms/);
  }
  await writeFile(file, 'store:\n  batchInterval: 1s\n');
  const r = await runMilterd(['check-config', file]);
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /milterd\.yaml:2:\d+: store\.batchInterval: must be between 0 and 20ms/);
});

test('serve over rediss:// (TLS): daemons trusting the private CA by --store-tls-ca, store.tlsCa (relative to the config file) and NODE_EXTRA_CA_CERTS share the concurrent-session limit', async (t) => {
  const redis = await RedisServer.start({ tls: {} });
  t.after(() => redis.stop());
  const pki = (redis.tls as { pki: TestPki }).pki;
  assert.match(redis.url, /^rediss:\/\/127\.0\.0\.1:\d+$/);
  const dir = await tempDir(t);
  const policy = join(dir, 'policy.yaml');
  await writeFile(policy, POLICY);
  await copyFile(pki.ca, join(dir, 'redis-ca.pem'));
  const config = join(dir, 'milterd.yaml');
  await writeFile(config, `store:\n  url: ${redis.url}\n  tlsCa: redis-ca.pem\n`);
  const args = ['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1', '--policy', policy];
  const a = new Daemon([...args, '--store', redis.url, '--store-tls-ca', pki.ca]);
  const b = new Daemon([...args, '--config', config]);
  const c = new Daemon([...args, '--store', redis.url], { NODE_EXTRA_CA_CERTS: pki.ca });
  t.after(() => Promise.all([a.kill(), b.kill(), c.kill()]));
  const daemons = [a, b, c];
  const specs = [];
  for (const d of daemons) {
    specs.push(await d.started());
    await d.waitFor((l) => l.msg === 'policy store connected', 'store connected over TLS');
  }
  const [sa, sb, sc] = specs as [(typeof specs)[0], (typeof specs)[0], (typeof specs)[0]];

  const first = await session(sa.milter, '192.0.2.70');
  assert.equal(first.helo, 'continue');
  for (const [name, s] of [
    ['b', sb],
    ['c', sc],
    ['a', sa],
  ] as const) {
    const again = await session(s.milter, '192.0.2.70');
    assert.equal(again.helo, '421', `daemon ${name} sees the session held on a, through TLS`);
    await again.client.quit();
  }
  await first.client.quit();
  const next = await sessionAfterRelease(sc.milter, '192.0.2.70');
  assert.equal(next.helo, 'continue', 'released through TLS too');
  await next.client.quit();
  for (const s of specs) {
    const m = await metrics(s.adminPort as number);
    assert.equal(sampleValue(m, 'milterd_store_breaker_state', { state: 'closed' }), 1);
    assert.equal(sampleValue(m, 'milterd_store_errors_total', { code: 'ERR_MILTER_STORE_FAILED' }), 0);
  }
  for (const d of daemons) {
    assert.ok(
      !d.lines.some((l) => /^policy store (TLS|connection)/.test(l.msg ?? '')),
      JSON.stringify(d.lines),
    );
  }
});

test('serve over rediss:// with tls-auth-clients yes: the client certificate (--store-tls-cert/--store-tls-key) is required; without it, or without the CA, the log says what is missing and on-store-error applies', async (t) => {
  const redis = await RedisServer.start({ tls: { authClients: true } });
  t.after(() => redis.stop());
  const pki = (redis.tls as { pki: TestPki }).pki;
  const dir = await tempDir(t);
  const policy = join(dir, 'policy.yaml');
  await writeFile(
    policy,
    'version: 1\nrules:\n  - name: conc\n    max-concurrent-sessions: 1\n' +
      '  - name: strict\n    max-concurrent-sessions: 1\n    on-store-error: tempfail\n' +
      '    when: { client: [192.0.2.128/25] }\n',
  );
  const args = ['--listen', 'inet:0@127.0.0.1', '--admin', 'inet:0@127.0.0.1', '--policy', policy];
  const tlsEnv = {
    MILTERD_STORE: redis.url,
    MILTERD_STORE_TLS_CA: pki.ca,
    MILTERD_STORE_TLS_CERT: pki.clientCert,
    MILTERD_STORE_TLS_KEY: pki.clientKey,
  };
  const good = new Daemon(args, tlsEnv);
  const noCert = new Daemon([...args, '--store', redis.url, '--store-tls-ca', pki.ca]);
  const noCa = new Daemon([...args, '--store', redis.url]);
  t.after(() => Promise.all([good.kill(), noCert.kill(), noCa.kill()]));
  const sg = await good.started();
  await good.waitFor((l) => l.msg === 'policy store connected', 'store connected with a client certificate');
  const first = await session(sg.milter, '192.0.2.80');
  assert.equal(first.helo, 'continue');
  const second = await session(sg.milter, '192.0.2.80');
  assert.equal(second.helo, '421', 'the limit holds through mutual TLS');
  await second.client.quit();

  for (const [d, why] of [
    [noCert, /server wants a client certificate: give one with --store-tls-cert and --store-tls-key/],
    [noCa, /server's certificate is not trusted: give its CA with --store-tls-ca .* or NODE_EXTRA_CA_CERTS/],
  ] as const) {
    const s = await d.started();
    const line = await d.waitFor((l) => why.test(l.msg ?? ''), `the log line ${why}`);
    assert.equal(line.level, 40, 'a warning');
    assert.equal(line.store, redis.url);
    assert.ok(!d.lines.some((l) => l.msg === 'policy store connected'));
    // on-store-error: allow (default) lets the same client in twice; tempfail answers 421 at once.
    const one = await session(s.milter, '192.0.2.80');
    const two = await session(s.milter, '192.0.2.80');
    assert.deepEqual([one.helo, two.helo], ['continue', 'continue'], 'allow: the store is not reachable');
    const strict = await session(s.milter, '192.0.2.200');
    assert.equal(strict.helo, '421', 'tempfail');
    for (const x of [one, two, strict]) await x.client.quit();
    const m = await metrics(s.adminPort as number);
    assert.ok(sampleValue(m, 'milterd_store_errors_total', { code: 'ERR_MILTER_STORE_FAILED' }) >= 1);
  }
  await first.client.quit();
});

test('check-config and serve: store TLS files are read at start; an unreadable, non-PEM or mismatched file, a half client certificate or a non-TLS URL is a configuration problem (exit 3)', async (t) => {
  const dir = await tempDir(t);
  const pki = await makeTestPki(join(dir, 'pki'));
  const good = join(dir, 'good.yaml');
  await writeFile(
    good,
    'store:\n  url: rediss://10.0.0.7:6380\n  tlsCa: pki/ca.crt\n  tlsCert: pki/client.crt\n  tlsKey: pki/client.key\n',
  );
  const r = await runMilterd(['check-config', good]);
  assert.equal(r.code, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as {
    config: { store: Record<string, unknown> };
    sources: Record<string, string>;
  };
  assert.equal(doc.config.store.tlsCa, pki.ca, 'relative to the config file');
  assert.equal(doc.config.store.tlsCert, pki.clientCert);
  assert.equal(doc.config.store.tlsKey, pki.clientKey);
  assert.equal(doc.sources['store.tlsCa'], 'file');

  const notPem = join(dir, 'not.pem');
  await writeFile(notPem, 'hello\n');
  const missing = join(dir, 'missing.pem');
  const cases: Array<[string[], Record<string, string>, RegExp]> = [
    [
      ['--store', 'rediss://127.0.0.1:1', '--store-tls-ca', missing],
      {},
      /--store-tls-ca: cannot read .*missing\.pem: ENOENT/,
    ],
    [
      ['--store', 'rediss://127.0.0.1:1'],
      { MILTERD_STORE_TLS_CA: notPem },
      /MILTERD_STORE_TLS_CA: .*not\.pem: no PEM certificate/,
    ],
    [
      ['--store', 'rediss://127.0.0.1:1', '--store-tls-ca', dir],
      {},
      /--store-tls-ca: cannot read .*: (EISDIR|not a regular file)/,
    ],
    [
      ['--store', 'redis://127.0.0.1:1', '--store-tls-ca', pki.ca],
      {},
      /--store-tls-ca: the store is not a TLS URL .*redis:\/\/127\.0\.0\.1:1/,
    ],
    [
      ['--store', 'rediss://127.0.0.1:1', '--store-tls-cert', pki.clientCert],
      {},
      /--store-tls-cert: a client certificate needs both --store-tls-cert and --store-tls-key \(store\.tlsKey\)/,
    ],
    [
      [
        '--store',
        'rediss://127.0.0.1:1',
        '--store-tls-cert',
        pki.clientCert,
        '--store-tls-key',
        pki.serverKey,
      ],
      {},
      /--store-tls-key: .*server\.key: not the key of --store-tls-cert/,
    ],
  ];
  for (const [args, env, expected] of cases) {
    const res = await runMilterd(['check-config', ...args], { env });
    assert.equal(res.code, 3, `${args.join(' ')}: ${res.stderr}`);
    assert.match(res.stderr, expected);
  }
  // serve refuses to start the same way, before listening.
  const s = await runMilterd([
    'serve',
    '--listen',
    'inet:0@127.0.0.1',
    '--store',
    'rediss://127.0.0.1:1',
    '--store-tls-ca',
    missing,
  ]);
  assert.equal(s.code, 3);
  assert.match(s.stderr, /--store-tls-ca: cannot read .*missing\.pem: ENOENT/);
  assert.doesNotMatch(s.stdout, /milterd started/);
});
