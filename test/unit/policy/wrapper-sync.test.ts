/**
 * The policy answers the session at once (a value, not a promise) where it has nothing to wait for: an
 * in-process store, rules that answer at once and a synchronous user filter. Each test also checks that
 * the same verdicts are delivered where they were, at once or by promise.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { BodyResult, Filter, MaybePromise } from '../../../src/filter.js';
import { ShutdownPolicy } from '../../../src/policy/chain.js';
import { createShutdownPolicy, type PolicyRule } from '../../../src/policy/rules.js';
import { MemoryPolicyStore } from '../../../src/policy/store.js';
import { withShutdownPolicy } from '../../../src/policy/wrapper.js';
import { FakeContext, seen, type Seen } from './fake-context.js';
import { memoryLogger } from '../../helpers/logs.js';

const info = { hostname: 'client.example', family: 'inet', port: 40000, address: '192.0.2.77' } as const;

/** Every rule kind that the daemon's default and the bench use: per session and across sessions. */
const rules: PolicyRule[] = [
  { name: 'conc', limit: { kind: 'max-concurrent-sessions', max: 10 } },
  { name: 'rate', limit: { kind: 'max-messages-per-client', max: 2, windowMs: 60_000 } },
  { name: 'rcpt', limit: { kind: 'max-rejected-recipients', max: 5 } },
];

/** A user filter following every stage, each callback answering at once (CONTINUE). */
function syncFilter(extra: Partial<Filter> = {}): Filter {
  const none = (): undefined => undefined;
  return {
    connect: none,
    helo: none,
    envfrom: none,
    envrcpt: none,
    data: none,
    header: none,
    eoh: none,
    body: none,
    eom: none,
    abort: none,
    close: none,
    ...extra,
  };
}

/** What a callback returned: 'promise', or its decision seen as the MTA would. */
type Answer = Seen | 'promise';

/** `n` commands answered CONTINUE at once. */
function continues(n: number): Answer[] {
  return Array.from({ length: n }, (): Answer => 'continue');
}

function answer(r: MaybePromise<BodyResult | void>): Answer {
  return r instanceof Promise ? 'promise' : seen(r as BodyResult);
}

/** One message, every command of it as Postfix sends them; the answers, in order. */
function message(f: Filter, ctx: FakeContext): Answer[] {
  const out: Answer[] = [];
  ctx.macroTable = {};
  out.push(answer(f.envfrom?.(ctx, '<s@example.org>', [])));
  if (out[0] !== 'continue') return out;
  ctx.macroTable = { '{rcpt_mailer}': 'smtp' };
  out.push(answer(f.envrcpt?.(ctx, '<r@example.net>', [])));
  out.push(answer(f.data?.(ctx)));
  out.push(answer(f.header?.(ctx, 'Subject', 'x')));
  out.push(answer(f.eoh?.(ctx)));
  out.push(answer(f.body?.(ctx, Buffer.from('hello\r\n'))));
  out.push(answer(f.eom?.(ctx)));
  out.push(answer(f.abort?.(ctx)));
  return out;
}

test('memory store, rules and a synchronous filter: every command answered at once, the 421 too', () => {
  const policy = createShutdownPolicy({ dryRun: false, rules });
  const fired: string[] = [];
  policy.on('fired', (e) => fired.push(`${e.hook}@${e.stage}`));
  const f = withShutdownPolicy(syncFilter(), policy);
  const ctx = new FakeContext('c1', memoryLogger().logger, info);
  assert.equal(answer(f.connect?.(ctx, info)), 'continue');
  assert.equal(answer(f.helo?.(ctx, 'client.example')), 'continue');
  const accepted = continues(8);
  assert.deepEqual(message(f, ctx), accepted);
  assert.deepEqual(message(f, ctx), accepted);
  // The client's third message in the minute: the 421 at its MAIL, at once.
  assert.deepEqual(message(f, ctx).slice(0, 1), ['421']);
  assert.deepEqual(fired, ['rate@envfrom']);
  assert.equal(f.close?.(ctx), undefined);
});

test('a filter-rejected recipient past the limit gets the 421 on its own reply, at once', () => {
  const policy = createShutdownPolicy({ dryRun: false, rules });
  const f = withShutdownPolicy(syncFilter({ envrcpt: () => 'reject' }), policy);
  const ctx = new FakeContext('c2', memoryLogger().logger, info);
  f.connect?.(ctx, info);
  assert.equal(answer(f.envfrom?.(ctx, '<s@example.org>', [])), 'continue');
  ctx.macroTable = { '{rcpt_mailer}': 'smtp' };
  const replies = [1, 2, 3, 4, 5, 6].map(() => answer(f.envrcpt?.(ctx, '<r@example.net>', [])));
  assert.deepEqual(replies, ['reject', 'reject', 'reject', 'reject', 'reject', '421']);
});

test('an asynchronous user callback makes only its own stage answer by promise, with its decision', async () => {
  const policy = createShutdownPolicy({ dryRun: false, rules });
  const f = withShutdownPolicy(syncFilter({ envrcpt: async () => 'tempfail' as const }), policy);
  const ctx = new FakeContext('c3', memoryLogger().logger, info);
  assert.equal(answer(f.connect?.(ctx, info)), 'continue');
  assert.equal(answer(f.envfrom?.(ctx, '<s@example.org>', [])), 'continue');
  ctx.macroTable = { '{rcpt_mailer}': 'smtp' };
  const rcpt = f.envrcpt?.(ctx, '<r@example.net>', []);
  assert.equal(answer(rcpt), 'promise');
  assert.equal(seen(await rcpt), 'tempfail');
  assert.equal(answer(f.abort?.(ctx)), 'promise', 'the open transaction is aborted, and the user told');
});

test('a throwing synchronous callback is answered with a rejected promise, after its outcome is counted', async () => {
  const policy = createShutdownPolicy({ dryRun: false, rules });
  const f = withShutdownPolicy(
    syncFilter({
      eom: () => {
        throw new Error('boom');
      },
    }),
    policy,
  );
  const ctx = new FakeContext('c4', memoryLogger().logger, info);
  f.connect?.(ctx, info);
  f.envfrom?.(ctx, '<s@example.org>', []);
  ctx.macroTable = { '{rcpt_mailer}': 'smtp' };
  f.envrcpt?.(ctx, '<r@example.net>', []);
  const eom = f.eom?.(ctx);
  assert.equal(answer(eom), 'promise');
  await assert.rejects(Promise.resolve(eom), /boom/);
  // Counted as tempfailed (the session's default failure decision): the next MAIL sees it.
  const records: number[] = [];
  policy.registerFirst('watch', (r) => void records.push(r.counters.messagesTempfailed));
  f.envfrom?.(ctx, '<s@example.org>', []);
  assert.deepEqual(records, [1]);
});

test('an asynchronous hook: CONNECT still at once, HELO waits for the verdict and gets the 421', async () => {
  const policy = new ShutdownPolicy();
  let answerHook: ((v: boolean) => void) | undefined;
  policy.registerLast('slow', (r) =>
    r.event === 'connect' ? new Promise<boolean>((resolve) => (answerHook = resolve)) : false,
  );
  const f = withShutdownPolicy(syncFilter(), policy);
  const ctx = new FakeContext('c5', memoryLogger().logger, info);
  assert.equal(answer(f.connect?.(ctx, info)), 'continue');
  const helo = f.helo?.(ctx, 'client.example');
  assert.equal(answer(helo), 'promise');
  answerHook?.(true);
  assert.equal(seen(await helo), '421');
});

test('a store that answers by promise: the first MAIL was counted at CONNECT and is answered at once, a later MAIL waits for its count', async () => {
  const inner = new MemoryPolicyStore();
  const store = {
    sessionOpened: (c: string, s: string, n: number) => Promise.resolve(inner.sessionOpened(c, s, n)),
    sessionClosed: (c: string, s: string, n: number) => Promise.resolve(inner.sessionClosed(c, s, n)),
    addMessage: (c: string, w: number, n: number, id?: string) =>
      Promise.resolve(inner.addMessage(c, w, n, id)),
    removeMessage: (c: string, w: number, id: string, at: number) =>
      Promise.resolve(inner.removeMessage(c, w, id, at)),
    messageCount: (c: string, w: number, n: number) => Promise.resolve(inner.messageCount(c, w, n)),
  };
  const policy = createShutdownPolicy({ dryRun: false, rules }, { store });
  const f = withShutdownPolicy(syncFilter(), policy);
  const ctx = new FakeContext('c6', memoryLogger().logger, info);
  assert.equal(answer(f.connect?.(ctx, info)), 'continue', 'CONNECT does not wait for the lease');
  const helo = f.helo?.(ctx, 'client.example');
  assert.equal(answer(helo), 'promise', 'HELO waits for it (a verdict fires there)');
  assert.equal(seen(await helo), 'continue');
  for (let m = 0; m < 2; m++) {
    const from = f.envfrom?.(ctx, '<s@example.org>', []);
    if (m === 0) assert.equal(answer(from), 'continue', 'the first message was counted with the lease');
    else {
      assert.equal(answer(from), 'promise', 'a later MAIL waits for its count');
      assert.equal(seen(await from), 'continue');
    }
    ctx.macroTable = { '{rcpt_mailer}': 'smtp' };
    const rest = [
      f.envrcpt?.(ctx, '<r@example.net>', []),
      f.data?.(ctx),
      f.header?.(ctx, 'Subject', 'x'),
      f.eoh?.(ctx),
      f.body?.(ctx, Buffer.from('hello\r\n')),
      f.eom?.(ctx),
      f.abort?.(ctx),
    ].map(answer);
    assert.deepEqual(rest, continues(7));
  }
  const third = f.envfrom?.(ctx, '<s@example.org>', []);
  assert.equal(seen(await third), '421', "the client's third message in the minute");
  await f.close?.(ctx);
  assert.equal(inner.sessionCount('192.0.2.77', Date.now()), 0);
  assert.equal(inner.messageCount('192.0.2.77', 60_000, Date.now()), 2, 'the refused third taken back');
});
