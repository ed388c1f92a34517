/**
 * `milterd serve --store`: two daemons sharing one real redis-server count one client's sessions
 * together; the store's metrics are exported; a Redis that dies or freezes never holds a session past the
 * deadline, and /readyz follows the store's circuit breaker only with --store-readyz. check-config
 * validates the URL and never prints its password.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { MilterClient } from '../../src/client/index.js';
import { RedisServer } from '../helpers/redis.js';
import { tempDir } from '../helpers/wait.js';
import { Daemon, httpGet, parsePrometheus, runMilterd, sampleValue } from './helpers.js';

const POLICY = 'version: 1\nrules:\n  - name: conc\n    max-concurrent-sessions: 1\n';

async function session(milter: string, address: string): Promise<{ client: MilterClient; helo: string }> {
  const client = await MilterClient.connect(milter, { timeoutMs: 5000 });
  await client.connect({ hostname: 'c.example', family: 'inet', port: 4000, address });
  const reply = await client.helo('c.example');
  return { client, helo: reply.kind === 'replyCode' ? reply.text.slice(0, 3) : reply.kind };
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
  const third = await session(sb.milter, '192.0.2.50');
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

  redis.pause();
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
