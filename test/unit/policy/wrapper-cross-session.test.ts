import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision, type Filter } from '../../../src/filter.js';
import { ShutdownPolicy } from '../../../src/policy/chain.js';
import { createShutdownPolicy, type PolicyRule } from '../../../src/policy/rules.js';
import { MemoryPolicyStore, type PolicyStore } from '../../../src/policy/store.js';
import { withShutdownPolicy } from '../../../src/policy/wrapper.js';
import type { PolicyFiredEvent } from '../../../src/policy/types.js';
import { memoryLogger } from '../../helpers/logs.js';
import { FakeMta, shutdownText } from './fake-context.js';

const client = (address: string): { hostname: string; family: 'inet'; port: number; address: string } => ({
  hostname: 'c.example',
  family: 'inet',
  port: 1,
  address,
});

test('max-concurrent-sessions: the extra session gets 421 at HELO; closing frees the slot; no leftovers', async () => {
  const store = new MemoryPolicyStore();
  const policy = createShutdownPolicy(
    { dryRun: false, rules: [{ name: 'conc', limit: { kind: 'max-concurrent-sessions', max: 2 } }] },
    { store },
  );
  const filter = withShutdownPolicy({}, policy);
  const log = memoryLogger();
  const a = new FakeMta(filter, 'a', client('192.0.2.1'), log);
  const b = new FakeMta(filter, 'b', client('192.0.2.1'), log);
  const c = new FakeMta(filter, 'c', client('192.0.2.1'), log);
  const other = new FakeMta(filter, 'o', client('192.0.2.2'), log);
  for (const m of [a, b, c, other]) assert.equal(await m.connect(), 'continue', 'never decided at CONNECT');
  assert.equal(await a.helo(), 'continue');
  assert.equal(await b.helo(), 'continue');
  assert.equal(await c.helo(), '421', 'third concurrent session');
  assert.equal(await other.helo(), 'continue');
  await c.close();
  const d = new FakeMta(filter, 'd', client('192.0.2.1'), log);
  await d.connect();
  assert.equal(await d.helo(), '421', 'still two open (a, b) plus d');
  await d.close();
  await a.close();
  const e = new FakeMta(filter, 'e', client('192.0.2.1'), log);
  await e.connect();
  assert.equal(await e.helo(), 'continue', 'a closed: room again');
  for (const m of [b, e, other]) await m.close();
  assert.deepEqual(store.size, { clients: 0, windows: 0 });
});

test('max-messages-per-client: counted across sessions within the window, new sessions refused too', async () => {
  let now = 0;
  const rules: PolicyRule[] = [
    { name: 'rate', limit: { kind: 'max-messages-per-client', max: 3, windowMs: 60_000 } },
  ];
  const policy = createShutdownPolicy({ dryRun: false, rules }, { now: () => now });
  const filter = withShutdownPolicy({}, policy);
  const s1 = new FakeMta(filter, 's1', client('198.51.100.5'));
  await s1.connect();
  assert.equal((await s1.message()).final, 'continue');
  assert.equal((await s1.message()).final, 'continue');
  await s1.close();
  const s2 = new FakeMta(filter, 's2', client('198.51.100.5'));
  await s2.connect();
  assert.equal((await s2.message()).final, 'continue', 'third message of the window');
  assert.equal((await s2.message()).final, '421');
  await s2.close();
  const s3 = new FakeMta(filter, 's3', client('198.51.100.5'));
  await s3.connect();
  assert.equal((await s3.message()).final, '421', 'a new session in the same window is refused at MAIL');
  await s3.close();
  now = 60_000;
  const s4 = new FakeMta(filter, 's4', client('198.51.100.5'));
  await s4.connect();
  assert.equal((await s4.message()).final, 'continue', 'next window');
  await s4.close();
});

test('a failing store never cuts mail', async () => {
  const broken: PolicyStore = {
    sessionOpened: () => Promise.reject(new Error('redis down')),
    sessionClosed: () => {
      throw new Error('redis down');
    },
    addMessage: () => Promise.reject(new Error('redis down')),
    messageCount: () => Promise.reject(new Error('redis down')),
  };
  const policy = createShutdownPolicy(
    {
      dryRun: false,
      rules: [
        { name: 'conc', limit: { kind: 'max-concurrent-sessions', max: 1 } },
        { name: 'rate', limit: { kind: 'max-messages-per-client', max: 1, windowMs: 1000 } },
      ],
    },
    { store: broken },
  );
  const mta = new FakeMta(withShutdownPolicy({}, policy));
  await mta.connect();
  assert.equal(await mta.helo(), 'continue');
  assert.equal((await mta.message()).final, 'continue');
  await mta.close();
  assert.ok(
    mta.log.lines.some((l) => l.msg === 'shutdown policy store failed; cross-session limits not applied'),
  );
});

test('conditions through the wrapper: authenticated clients exempt, custom text in the 421', async () => {
  const policy = createShutdownPolicy({
    dryRun: false,
    rules: [
      {
        name: 'anon',
        limit: { kind: 'max-messages', max: 1 },
        when: { authenticated: false },
        text: 'Authenticate to send more',
      },
    ],
  });
  const filter = withShutdownPolicy({}, policy);
  const auth = new FakeMta(filter, 'auth');
  await auth.connect();
  for (let i = 0; i < 3; i++) assert.equal((await auth.message({ auth: 'alice' })).final, 'continue');
  const anon = new FakeMta(filter, 'anon');
  await anon.connect();
  assert.equal((await anon.message()).final, 'continue');
  assert.equal(shutdownText(await filter.envfrom?.(anon.ctx, '<x@x.test>', [])), 'Authenticate to send more');
});

test('an armed shutdown fires at DATA and at unknown commands too', async () => {
  const fired: PolicyFiredEvent['stage'][] = [];
  const policy = createShutdownPolicy({
    dryRun: false,
    rules: [{ name: 'dict', limit: { kind: 'max-rejected-recipients', max: 0 } }],
  });
  policy.on('fired', (e) => fired.push(e.stage));
  const filter = withShutdownPolicy({}, policy);
  const mta = new FakeMta(filter);
  await mta.connect();
  // One good recipient, then one the MTA rejected: armed, the MTA ignores that reply; DATA gets the 421.
  const m = await mta.message({ rcpts: ['<ok@x.test>', { address: '<no@x.test>', mtaRejected: true }] });
  assert.deepEqual([m.final, m.endedAt], ['421', 'data']);
  assert.equal(await mta.unknown('VRFY x'), '421');
  assert.deepEqual(fired, ['data', 'unknown']);
});

test('a throwing user envrcpt counts as a rejected recipient (failure decision) and arms only', async () => {
  const policy = createShutdownPolicy({
    dryRun: false,
    rules: [{ name: 'dict', limit: { kind: 'max-rejected-recipients', max: 0 } }],
  });
  const user: Filter = {
    envrcpt: () => {
      throw new Error('user bug');
    },
  };
  const filter = withShutdownPolicy(user, policy);
  const mta = new FakeMta(filter);
  await mta.connect();
  await filter.envfrom?.(mta.ctx, '<a@x.test>', []);
  await assert.rejects(Promise.resolve(filter.envrcpt?.(mta.ctx, '<b@x.test>', [])), /user bug/);
  assert.equal(await mta.helo(), '421', 'armed for the next command');
});

test('a throwing user eom counts as tempfailed; with failureDecision accept it is not a failure', async () => {
  for (const [failureDecision, failures] of [
    ['tempfail', 1],
    ['accept', 0],
  ] as const) {
    const policy = new ShutdownPolicy();
    let seenFailures = -1;
    policy.registerLast('look', (r) => void (seenFailures = r.failures));
    const filter = withShutdownPolicy(
      {
        eom: () => {
          throw new Error('bug');
        },
      },
      policy,
      { failureDecision },
    );
    const mta = new FakeMta(filter);
    await mta.connect();
    await filter.envfrom?.(mta.ctx, '<a@x.test>', []);
    await assert.rejects(Promise.resolve(filter.eom?.(mta.ctx)));
    assert.equal(seenFailures, failures, failureDecision);
  }
});

test('per-connection state is dropped at close and rebuilt at a new CONNECT (QUIT_NC)', async () => {
  const policy = createShutdownPolicy({
    dryRun: false,
    rules: [{ name: 'm', limit: { kind: 'max-messages', max: 1 } }],
  });
  const filter = withShutdownPolicy({ eom: () => Decision.continue }, policy);
  const mta = new FakeMta(filter);
  await mta.connect();
  await mta.message();
  assert.equal((await mta.message()).final, '421');
  await mta.close();
  await mta.connect();
  assert.equal((await mta.message()).final, 'continue', 'a fresh session on the same milter connection');
});
