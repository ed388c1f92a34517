import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision, type Filter } from '../../../src/filter.js';
import { ShutdownPolicy } from '../../../src/policy/chain.js';
import { createShutdownPolicy, type PolicyRule } from '../../../src/policy/rules.js';
import { withShutdownPolicy } from '../../../src/policy/wrapper.js';
import type { DeliveryRecord, PolicyDecisionEvent, PolicyFiredEvent } from '../../../src/policy/types.js';
import { FakeMta } from './fake-context.js';

function policyOf(rules: PolicyRule[], extra: { dryRun?: boolean; now?: () => number } = {}): ShutdownPolicy {
  return createShutdownPolicy({ dryRun: extra.dryRun ?? false, rules }, { now: extra.now });
}

/** Watch the policy's events. */
function watch(policy: ShutdownPolicy): { decisions: PolicyDecisionEvent[]; fired: PolicyFiredEvent[] } {
  const decisions: PolicyDecisionEvent[] = [];
  const fired: PolicyFiredEvent[] = [];
  policy.on('decision', (e) => decisions.push(e));
  policy.on('fired', (e) => fired.push(e));
  return { decisions, fired };
}

/** A user filter that counts its callback calls. */
function countingFilter(extra: Partial<Filter> = {}): { filter: Filter; calls: Record<string, number> } {
  const calls: Record<string, number> = {};
  const bump = (k: string): void => void (calls[k] = (calls[k] ?? 0) + 1);
  const filter: Filter = {
    name: 'user',
    envfrom: () => bump('envfrom'),
    envrcpt: () => bump('envrcpt'),
    eom: () => bump('eom'),
    abort: () => bump('abort'),
    close: () => bump('close'),
    ...extra,
  };
  return { filter, calls };
}

test('max-messages 2: messages 1 and 2 accepted at EOM, MAIL #3 gets the 421 shutdown', async () => {
  const policy = policyOf([{ name: 'max-messages', limit: { kind: 'max-messages', max: 2 } }]);
  const events = watch(policy);
  const { filter, calls } = countingFilter();
  const mta = new FakeMta(withShutdownPolicy(filter, policy));
  assert.equal(await mta.connect(), 'continue');
  assert.equal(await mta.helo(), 'continue');
  const m1 = await mta.message({ postfixAbort: true });
  const m2 = await mta.message({ postfixAbort: true });
  assert.deepEqual([m1.final, m1.endedAt, m2.final, m2.endedAt], ['continue', 'eom', 'continue', 'eom']);
  // The decision was taken after message 2 (armed); it must not have touched message 2's EOM reply.
  assert.deepEqual(
    events.decisions.map((d) => [d.hook, d.reason, d.mode, d.event, d.firesAt, d.counters.messagesAccepted]),
    [['max-messages', 'max-messages', 'enforce', 'message', 'next-command', 2]],
  );
  const m3 = await mta.message();
  assert.deepEqual([m3.final, m3.endedAt], ['421', 'envfrom']);
  const d = await mta.filter.envfrom?.(mta.ctx, '<x@example.org>', []);
  assert.deepEqual(d, {
    kind: 'tempfail',
    reply: { code: 421, xcode: '4.7.0', text: 'Too many messages in this session, closing connection' },
  });
  assert.deepEqual(
    events.fired.map((f) => [f.stage, f.reason]),
    [
      ['envfrom', 'max-messages'],
      ['envfrom', 'max-messages'],
    ],
  );
  assert.equal(calls.envfrom, 2, 'the user never sees MAIL #3');
  assert.equal(calls.eom, 2);
  assert.equal(calls.abort, undefined, 'Postfix ABORTs after completed messages are not aborts');
  await mta.close();
  assert.equal(calls.close, 1);
  // One structured log line per decision, with the counters.
  const lines = mta.log.lines.filter((l) => l.msg === 'shutdown policy decision');
  assert.equal(lines.length, 1);
  assert.equal((lines[0]?.policy as PolicyDecisionEvent).counters.messagesAccepted, 2);
});

test('max-rejected-recipients 3: the 4th rejected recipient’s own reply is the 421', async () => {
  const policy = policyOf([{ name: 'dict', limit: { kind: 'max-rejected-recipients', max: 3 } }]);
  const events = watch(policy);
  const unknownUser = Decision.reject({ code: 550, xcode: '5.1.1', text: 'No such user' });
  const filter: Filter = { envrcpt: (_ctx, rcpt) => (rcpt.startsWith('<bad') ? unknownUser : undefined) };
  const mta = new FakeMta(withShutdownPolicy(filter, policy));
  await mta.connect();
  await mta.helo();
  const m = await mta.message({
    rcpts: [
      '<good@example.net>',
      '<bad1@example.net>',
      '<bad2@example.net>',
      '<bad3@example.net>',
      '<bad4@example.net>',
      '<bad5@example.net>',
    ],
  });
  assert.deepEqual(
    m.stages.map(([, s]) => s),
    ['continue', 'continue', 'reject', 'reject', 'reject', '421'],
  );
  assert.deepEqual([m.final, m.endedAt], ['421', 'envrcpt']);
  assert.equal(events.decisions[0]?.firesAt, 'this-reply');
  assert.equal(events.decisions[0]?.counters.recipientsRejected, 4);
  assert.deepEqual(
    events.fired.map((f) => f.stage),
    ['envrcpt'],
  );
  // Whatever comes next is refused too (the MTA has closed; a confused one still gets 421).
  assert.equal(await mta.helo(), '421');
});

test('recipients the MTA rejected itself (RCPT_REJ) are counted; the 421 waits for the next command', async () => {
  const policy = policyOf([{ name: 'dict', limit: { kind: 'max-rejected-recipients', max: 3 } }]);
  const events = watch(policy);
  const { filter, calls } = countingFilter();
  const mta = new FakeMta(withShutdownPolicy(filter, policy));
  await mta.connect();
  const bad = (n: number): { address: string; mtaRejected: true } => ({
    address: `<u${n}@x.test>`,
    mtaRejected: true,
  });
  const m = await mta.message({ rcpts: [bad(1), bad(2), bad(3), bad(4), bad(5), '<ok@x.test>'] });
  // Replies to MTA-rejected recipients are ignored by the MTA: firing there would be lost.
  assert.deepEqual(
    m.stages.map(([, s]) => s),
    ['continue', 'continue', 'continue', 'continue', 'continue', 'continue', '421'],
  );
  assert.equal(events.decisions[0]?.firesAt, 'next-command');
  assert.equal(calls.envrcpt, undefined, 'the user did not ask for rejected recipients');
});

test('a user that asked for rejectedRecipients still sees them', async () => {
  const policy = policyOf([]);
  const { filter, calls } = countingFilter({ rejectedRecipients: true });
  const mta = new FakeMta(withShutdownPolicy(filter, policy));
  await mta.connect();
  await mta.message({ rcpts: [{ address: '<u@x.test>', mtaRejected: true }, '<ok@x.test>'] });
  assert.equal(calls.envrcpt, 2);
});

test('a throwing hook cuts nothing: 5 messages accepted, errors logged with their code', async () => {
  const policy = new ShutdownPolicy();
  policy.registerFirst('broken', () => {
    throw new Error('bug in policy');
  });
  const errors: string[] = [];
  policy.on('hookError', (e) => errors.push(e.error.code));
  const mta = new FakeMta(withShutdownPolicy(countingFilter().filter, policy));
  await mta.connect();
  await mta.helo();
  for (let i = 0; i < 5; i++) assert.equal((await mta.message()).final, 'continue');
  assert.equal(errors.filter((c) => c === 'ERR_MILTER_HOOK_FAILED').length, 6, 'connect + 5 outcomes');
  assert.ok(
    mta.log.lines.some((l) => (l.err as { code?: string } | undefined)?.code === 'ERR_MILTER_HOOK_FAILED'),
  );
});

test('dry-run: all 5 messages accepted, each decision logged as dry-run', async () => {
  const policy = policyOf([{ name: 'max-messages', limit: { kind: 'max-messages', max: 2 } }], {
    dryRun: true,
  });
  const events = watch(policy);
  const mta = new FakeMta(withShutdownPolicy(countingFilter().filter, policy));
  await mta.connect();
  for (let i = 0; i < 5; i++) assert.equal((await mta.message()).final, 'continue');
  assert.deepEqual(
    events.decisions.map((d) => [d.mode, d.counters.messagesAccepted]),
    [
      ['dry-run', 2],
      ['dry-run', 3],
      ['dry-run', 4],
      ['dry-run', 5],
    ],
  );
  assert.equal(events.fired.length, 0);
  assert.equal(mta.log.lines.filter((l) => l.msg === 'shutdown policy decision (dry-run)').length, 4);
});

test('the user’s own decisions pass through unchanged', async () => {
  const senderReject = Decision.reject({ code: 550, xcode: '5.7.1', text: 'Sender blocked' });
  const eomTempfail = Decision.tempfail({ code: 451, text: 'Try later' });
  const ownShutdown = Decision.shutdown('My own 421');
  const decisions = new Map<string, Decision>([
    ['<blocked@x.test>', senderReject],
    ['<later@x.test>', eomTempfail],
    ['<drop@x.test>', Decision.discard],
    ['<bye@x.test>', ownShutdown],
  ]);
  let sender = '';
  const filter: Filter = {
    envfrom: (_c, s) => {
      sender = s;
      return s === '<blocked@x.test>' ? senderReject : undefined;
    },
    header: (_c, name) => (name === 'X-Spam' ? Decision.reject() : undefined),
    eom: () => (sender === '<blocked@x.test>' ? undefined : decisions.get(sender)),
  };
  const wrapped = withShutdownPolicy(
    filter,
    policyOf([{ name: 'm', limit: { kind: 'max-messages', max: 50 } }]),
  );
  const mta = new FakeMta(wrapped);
  await mta.connect();
  assert.equal(await wrapped.envfrom?.(mta.ctx, '<blocked@x.test>', []), senderReject, 'same object');
  mta.ctx.macroTable = {};
  await wrapped.envfrom?.(mta.ctx, '<later@x.test>', []);
  await wrapped.envrcpt?.(mta.ctx, '<r@x.test>', []);
  assert.equal(await wrapped.eom?.(mta.ctx), eomTempfail);
  await wrapped.envfrom?.(mta.ctx, '<drop@x.test>', []);
  assert.equal(await wrapped.eom?.(mta.ctx), Decision.discard);
  await wrapped.envfrom?.(mta.ctx, '<bye@x.test>', []);
  assert.equal(await wrapped.eom?.(mta.ctx), ownShutdown);
  const spam = await mta.message({ from: '<x@x.test>', headers: [['X-Spam', 'yes']] });
  assert.deepEqual([spam.final, spam.endedAt], ['reject', 'header']);
});

test('outcomes are counted per kind and class; the hook sees a frozen record', async () => {
  let now = 1_000;
  const policy = new ShutdownPolicy({ now: () => now });
  const records: DeliveryRecord[] = [];
  policy.registerLast('look', (r) => void records.push(r));
  const filter: Filter = {
    envfrom: (_c, s) => (s === '<rej@x.test>' ? Decision.reject() : undefined),
    data: () => undefined,
    eom: (ctx) => (ctx.envelope?.sender === '<tmp@x.test>' ? Decision.tempfail() : undefined),
  };
  const mta = new FakeMta(withShutdownPolicy(filter, policy));
  await mta.connect();
  await mta.helo('mx.client.example');
  now = 5_000;
  await mta.message({ from: '<ok@x.test>', auth: 'alice', body: '0123456789', headers: [['A', 'b']] });
  await mta.message({ from: '<rej@x.test>' });
  await mta.message({ from: '<tmp@x.test>' });
  await mta.message({ from: '<rset@x.test>', abortAfterRcpt: true });
  const last = records.at(-1);
  assert.ok(last);
  assert.ok(Object.isFrozen(last) && Object.isFrozen(last.counters));
  assert.deepEqual(
    { ...last.counters },
    {
      messagesAccepted: 1,
      messagesRejected: 1,
      messagesTempfailed: 1,
      messagesDiscarded: 0,
      messagesAborted: 1,
      recipientsAccepted: 3,
      recipientsRejected: 0,
      bytesReceived: 'A: b\r\n'.length + 10 + 'Subject: test\r\n'.length + 'hello\r\n'.length,
    },
  );
  assert.deepEqual(last.lastOutcome, { kind: 'aborted', class: 'aborted', stage: 'abort' });
  assert.deepEqual(
    records.filter((r) => r.event === 'message').map((r) => r.lastOutcome?.class),
    ['accepted', 'permanent-failure', 'temporary-failure', 'aborted'],
  );
  assert.equal(last.attempts, 3);
  assert.equal(last.failures, 2);
  assert.equal(last.helo, 'mx.client.example');
  assert.equal(last.authenticated, 'alice');
  assert.equal(last.client?.address, '192.0.2.10');
  assert.equal(last.connectionId, 'conn-1');
  assert.equal(last.startedAt, 1_000);
  assert.equal(last.ageMs, 4_000);
  assert.equal(last.clientStats.concurrentSessions, 1);
  assert.equal(records[0]?.event, 'connect');
});

test('max-session-age with an injected clock: the next MAIL after an old outcome gets 421', async () => {
  let now = 0;
  const policy = policyOf([{ name: 'age', limit: { kind: 'max-session-age', maxMs: 3_600_000 } }], {
    now: () => now,
  });
  const mta = new FakeMta(withShutdownPolicy(countingFilter().filter, policy));
  await mta.connect();
  assert.equal((await mta.message()).final, 'continue');
  now = 3_600_000;
  assert.equal((await mta.message()).final, 'continue', 'a message in progress is never cut');
  assert.equal((await mta.message()).final, '421');
});

test('max-bytes counts header and body bytes', async () => {
  const policy = policyOf([{ name: 'bytes', limit: { kind: 'max-bytes', max: 100 } }]);
  assert.equal(policy.trackBytes, true);
  const wrapped = withShutdownPolicy(countingFilter().filter, policy);
  assert.ok(wrapped.header && wrapped.body, 'header/body are watched');
  assert.ok(wrapped.noReply?.includes('header') && wrapped.noReply.includes('body'), '…without replies');
  const mta = new FakeMta(wrapped);
  await mta.connect();
  assert.equal((await mta.message({ body: 'x'.repeat(60) })).final, 'continue');
  assert.equal((await mta.message({ body: 'x'.repeat(60) })).final, 'continue');
  assert.equal((await mta.message()).final, '421');
});

test('without byte tracking the wrapper adds no header/body callbacks', () => {
  const policy = new ShutdownPolicy({ trackBytes: false });
  const wrapped = withShutdownPolicy(countingFilter().filter, policy);
  assert.equal(wrapped.header, undefined);
  assert.equal(wrapped.body, undefined);
  assert.equal(wrapped.eoh, undefined);
});
