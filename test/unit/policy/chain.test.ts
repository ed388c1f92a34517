import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_SHUTDOWN_TEXT_BYTES, replyTextBytes, ShutdownPolicy } from '../../../src/policy/chain.js';
import type {
  PolicyDecisionEvent,
  PolicyHookErrorEvent,
  ShouldShutdownHook,
} from '../../../src/policy/types.js';
import { isMilterError } from '../../../src/errors.js';
import { LogRateLimiter } from '../../../src/logging/rate-limit.js';
import { memoryLogger } from '../../helpers/logs.js';
import { record } from './records.js';

const yes =
  (reason: string, text?: string): ShouldShutdownHook =>
  () => ({ shutdown: true, reason, text });
const no: ShouldShutdownHook = () => false;

/** A hook that notes its name in `calls`, then answers `result`. */
function spy(
  calls: string[],
  name: string,
  result: ReturnType<ShouldShutdownHook> = undefined,
): ShouldShutdownHook {
  return () => {
    calls.push(name);
    return result;
  };
}

test('chain order: registerFirst puts hooks at the front (latest first), registerLast at the back', async () => {
  const calls: string[] = [];
  const p = new ShutdownPolicy();
  p.registerLast('l1', spy(calls, 'l1'));
  p.registerFirst('f1', spy(calls, 'f1'));
  p.registerLast('l2', spy(calls, 'l2'));
  p.registerFirst('f2', spy(calls, 'f2'));
  assert.deepEqual(p.list(), ['f2', 'f1', 'l1', 'l2']);
  assert.equal(await p.evaluate(record()), undefined);
  assert.deepEqual(calls, ['f2', 'f1', 'l1', 'l2']);
});

test('the first hook asking for shutdown wins, names the reason, and later hooks are not called', async () => {
  const calls: string[] = [];
  const p = new ShutdownPolicy({ replyText: 'default text' });
  p.registerLast('a', spy(calls, 'a', false));
  p.registerLast('b', spy(calls, 'b', { shutdown: true, reason: 'too-many', text: 'go away' }));
  p.registerLast('c', spy(calls, 'c', { shutdown: true, reason: 'other' }));
  const v = await p.evaluate(record());
  assert.deepEqual(v, { hook: 'b', reason: 'too-many', text: 'go away' });
  assert.deepEqual(calls, ['a', 'b']);
});

test('reason defaults to the hook name, text to the hook text, then the policy text', async () => {
  const p = new ShutdownPolicy({ replyText: 'policy text' });
  p.registerLast('bare', () => ({ shutdown: true }));
  assert.deepEqual(await p.evaluate(record()), { hook: 'bare', reason: 'bare', text: 'policy text' });
  const q = new ShutdownPolicy();
  q.registerLast('h', () => ({ shutdown: true, text: 'line1\r\nline2' }), { text: 'hook text' });
  assert.equal((await q.evaluate(record()))?.text, 'line1 line2', 'CR/LF cannot be in a reply line');
  const r = new ShutdownPolicy();
  r.registerLast('h', () => ({ shutdown: true }), { text: 'hook text' });
  assert.equal((await r.evaluate(record()))?.text, 'hook text');
});

test('falsy and malformed answers mean no shutdown', async () => {
  const p = new ShutdownPolicy();
  for (const [i, v] of [false, null, undefined, 0, '', { shutdown: 'yes' }, { reason: 'x' }].entries()) {
    p.registerLast(`h${i}`, (() => v) as unknown as ShouldShutdownHook);
  }
  assert.equal(await p.evaluate(record()), undefined);
});

test('async hooks are awaited in order', async () => {
  const calls: string[] = [];
  const p = new ShutdownPolicy();
  p.registerLast('slow', async () => {
    await new Promise((r) => setImmediate(r));
    calls.push('slow');
    return false;
  });
  p.registerLast('async-yes', async () => {
    calls.push('async-yes');
    return { shutdown: true, reason: 'async' };
  });
  assert.equal((await p.evaluate(record()))?.reason, 'async');
  assert.deepEqual(calls, ['slow', 'async-yes']);
});

test('a hook that throws or rejects is logged with ERR_MILTER_HOOK_FAILED and counts as no shutdown', async () => {
  const log = memoryLogger();
  const errors: PolicyHookErrorEvent[] = [];
  const p = new ShutdownPolicy();
  p.on('hookError', (e) => errors.push(e));
  p.registerLast('throws', () => {
    throw new Error('boom');
  });
  p.registerLast('rejects', async () => {
    throw new Error('async boom');
  });
  p.registerLast('after', no);
  assert.equal(await p.evaluate(record(), { logger: log.logger }), undefined);
  assert.deepEqual(
    errors.map((e) => [e.hook, e.error.code]),
    [
      ['throws', 'ERR_MILTER_HOOK_FAILED'],
      ['rejects', 'ERR_MILTER_HOOK_FAILED'],
    ],
  );
  const logged = log.lines.filter(
    (l) => (l.err as { code?: string } | undefined)?.code === 'ERR_MILTER_HOOK_FAILED',
  );
  assert.equal(logged.length, 2);
  assert.equal(logged[0]?.hook, 'throws');
});

test('a throwing hook does not stop a later hook from deciding', async () => {
  const p = new ShutdownPolicy();
  p.registerLast('throws', () => {
    throw new Error('boom');
  });
  p.registerLast('decides', yes('later'));
  assert.equal((await p.evaluate(record()))?.reason, 'later');
});

test('timeout: ERR_MILTER_HOOK_TIMEOUT, no shutdown, and the late answer is ignored', async () => {
  const log = memoryLogger();
  const errors: string[] = [];
  let release: (v: { shutdown: true; reason: string }) => void = () => {};
  const p = new ShutdownPolicy({ hookTimeoutMs: 5 });
  p.on('hookError', (e) => errors.push(e.error.code));
  const decisions: PolicyDecisionEvent[] = [];
  p.on('decision', (e) => decisions.push(e));
  p.registerLast('hangs', () => new Promise((resolve) => (release = resolve)));
  p.registerLast('next', spy([], 'next'));
  assert.equal(await p.evaluate(record(), { logger: log.logger }), undefined);
  assert.deepEqual(errors, ['ERR_MILTER_HOOK_TIMEOUT']);
  release({ shutdown: true, reason: 'too-late' });
  await new Promise((r) => setImmediate(r));
  assert.equal(decisions.length, 0, 'a late verdict must not become a decision');
  assert.ok(log.lines.some((l) => l.msg === 'late hook answer ignored' && l.late === true));
});

test('per-hook timeout overrides the policy budget; 0 means no budget', async () => {
  const p = new ShutdownPolicy({ hookTimeoutMs: 1 });
  p.registerLast(
    'patient',
    async () => {
      await new Promise((r) => setTimeout(r, 20));
      return { shutdown: true, reason: 'patient' };
    },
    { timeoutMs: 0 },
  );
  assert.equal((await p.evaluate(record()))?.reason, 'patient');
});

test('per-hook dry-run: logged and emitted as dry-run, the chain goes on to enforced hooks', async () => {
  const log = memoryLogger();
  const decisions: PolicyDecisionEvent[] = [];
  const p = new ShutdownPolicy({ onDecision: (e) => decisions.push(e) });
  p.registerLast('trial', yes('trial-reason'), { dryRun: true });
  p.registerLast('real', yes('real-reason'));
  const v = await p.evaluate(record({ counters: { messagesAccepted: 3 } }), { logger: log.logger });
  assert.equal(v?.hook, 'real');
  assert.deepEqual(
    decisions.map((d) => [d.hook, d.reason, d.mode]),
    [
      ['trial', 'trial-reason', 'dry-run'],
      ['real', 'real-reason', 'enforce'],
    ],
  );
  const lines = log.lines.filter((l) => l.policy !== undefined);
  assert.equal(lines.length, 2, 'one log line per decision');
  const first = lines[0]?.policy as PolicyDecisionEvent;
  assert.equal(first.mode, 'dry-run');
  assert.equal(first.counters.messagesAccepted, 3, 'counters at that moment are logged');
});

test('global dry-run: the winner is logged as dry-run and nothing is returned', async () => {
  const decisions: PolicyDecisionEvent[] = [];
  const p = new ShutdownPolicy({ dryRun: true, onDecision: (e) => decisions.push(e) });
  p.registerLast('a', yes('a'));
  p.registerLast('b', yes('b'));
  assert.equal(await p.evaluate(record()), undefined);
  assert.deepEqual(
    decisions.map((d) => [d.hook, d.mode]),
    [['a', 'dry-run']],
  );
});

test('has / list / remove', () => {
  const p = new ShutdownPolicy();
  assert.equal(p.has(), false);
  p.registerLast('a', no).registerLast('b', no);
  assert.equal(p.has(), true);
  assert.equal(p.has('a'), true);
  assert.equal(p.has('zzz'), false);
  assert.equal(p.remove('a'), true);
  assert.equal(p.remove('a'), false);
  assert.deepEqual(p.list(), ['b']);
  p.remove('b');
  assert.equal(p.has(), false);
});

test('remove during an evaluation does not disturb it', async () => {
  const calls: string[] = [];
  const p = new ShutdownPolicy();
  p.registerLast('remover', () => {
    calls.push('remover');
    p.remove('victim');
    return false;
  });
  p.registerLast('victim', spy(calls, 'victim'));
  await p.evaluate(record());
  assert.deepEqual(calls, ['remover', 'victim']);
  assert.deepEqual(p.list(), ['remover']);
});

test('registration is validated with ERR_MILTER_HOOK_INVALID', () => {
  const p = new ShutdownPolicy();
  p.registerLast('dup', no);
  const invalid = (fn: () => unknown): void =>
    assert.throws(fn, (err: unknown) => isMilterError(err, 'ERR_MILTER_HOOK_INVALID'));
  invalid(() => p.registerLast('dup', no));
  invalid(() => p.registerFirst('dup', no));
  invalid(() => p.registerLast('', no));
  invalid(() => p.registerLast(42 as unknown as string, no));
  invalid(() => p.registerLast('nf', 'not a function' as unknown as ShouldShutdownHook));
  invalid(() => p.registerLast('neg', no, { timeoutMs: -1 }));
  assert.deepEqual(p.list(), ['dup']);
  assert.throws(
    () => new ShutdownPolicy({ hookTimeoutMs: Number.NaN }),
    (e: unknown) => isMilterError(e),
  );
});

test('a listener that throws is logged and does not break the evaluation', async () => {
  const log = memoryLogger();
  const p = new ShutdownPolicy();
  const off = p.on('decision', () => {
    throw new Error('metrics broke');
  });
  p.registerLast('a', yes('a'));
  assert.equal((await p.evaluate(record(), { logger: log.logger }))?.hook, 'a');
  assert.ok(log.lines.some((l) => l.msg === 'shutdown policy listener threw'));
  off();
  const count = log.lines.length;
  await p.evaluate(record(), { logger: log.logger });
  assert.ok(!log.lines.slice(count).some((l) => l.msg === 'shutdown policy listener threw'), 'unsubscribed');
});

test('reply text size: UTF-8 bytes with % doubled, within 980 bytes after "421 4.7.0 "', () => {
  assert.equal(MAX_SHUTDOWN_TEXT_BYTES, 970);
  assert.equal(replyTextBytes('abc'), 3);
  assert.equal(replyTextBytes('é'), 2);
  assert.equal(replyTextBytes('100%'), 5, '% is doubled');
  assert.equal(replyTextBytes('€'), 3);
  assert.equal(replyTextBytes('😀'), 4, 'a surrogate pair is one 4-byte character');
  assert.equal(replyTextBytes('\udc80'), 3, 'a lone surrogate counts as much as it can become (U+FFFD)');
});

test('failing hooks and listeners log within the rate limit: per hook, then one summary line each', async () => {
  const log = memoryLogger();
  let clock = 0;
  const logLimiter = new LogRateLimiter({ logger: log.logger, lines: 2, windowMs: 1000, now: () => clock });
  const p = new ShutdownPolicy({ logLimiter });
  assert.equal(p.logLimiter, logLimiter);
  const errors: string[] = [];
  p.on('hookError', (e) => errors.push(e.hook));
  p.on('decision', () => {
    throw new Error('metrics broke');
  });
  p.registerLast('a', () => {
    throw new Error('a broke');
  });
  p.registerLast('b', () => Promise.reject(new Error('b broke')));
  p.registerLast('c', yes('c'));
  for (let i = 0; i < 5; i++) assert.equal((await p.evaluate(record(), { logger: log.logger }))?.hook, 'c');
  const failed = log.lines.filter((l) => l.msg === 'shutdown policy hook failed; counted as no shutdown');
  assert.deepEqual(
    failed.map((l) => l.hook),
    ['a', 'b', 'a', 'b'],
    'two lines per hook: a broken hook does not use up the budget of another',
  );
  assert.equal(log.lines.filter((l) => l.msg === 'shutdown policy listener threw').length, 2);
  assert.equal(errors.length, 10, 'every failure is still an event (metrics count them all)');
  clock = 1000;
  logLimiter.flush();
  assert.deepEqual(
    log.lines.filter((l) => l.msg === 'suppressed 3 similar lines').map((l) => l.key),
    [
      'policy hook ERR_MILTER_HOOK_FAILED a',
      'policy hook ERR_MILTER_HOOK_FAILED b',
      'policy listener decision',
    ],
  );
});
