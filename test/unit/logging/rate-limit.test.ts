/** The per-key log rate limit: a fixed budget per window, then one summary of what was suppressed. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LogRateLimiter } from '../../../src/logging/rate-limit.js';
import { memoryLogger } from '../../helpers/logs.js';

test('LogRateLimiter: N lines per key and window, the rest counted and summarised once', () => {
  const log = memoryLogger();
  let now = 0;
  const limiter = new LogRateLimiter({ logger: log.logger, lines: 3, windowMs: 1000, now: () => now });
  const allowed = Array.from({ length: 10 }, () => limiter.allow('A'));
  assert.deepEqual(allowed, [true, true, true, false, false, false, false, false, false, false]);
  // Keys are independent.
  assert.equal(limiter.allow('B'), true);
  assert.equal(log.lines.length, 0, 'no summary inside the window');
  now = 1500;
  assert.equal(limiter.allow('A'), true, 'a new window');
  assert.equal(log.lines.length, 1);
  assert.equal(log.lines[0]?.key, 'A');
  assert.equal(log.lines[0]?.suppressed, 7);
  assert.equal(log.lines[0]?.msg, 'suppressed 7 similar lines');
  assert.equal(limiter.suppressedTotal, 7);
  // B never overflowed: nothing to say about it.
  limiter.flush();
  assert.equal(log.lines.length, 1);
});

test('LogRateLimiter: the summary is written when the window ends, without a further line', async () => {
  const log = memoryLogger();
  const limiter = new LogRateLimiter({ logger: log.logger, lines: 1, windowMs: 20 });
  assert.equal(limiter.allow('A'), true);
  assert.equal(limiter.allow('A'), false);
  assert.equal(limiter.allow('A'), false);
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(log.lines.length, 1);
  assert.equal(log.lines[0]?.suppressed, 2);
  // flush() after the timer: nothing left to say.
  limiter.flush();
  assert.equal(log.lines.length, 1);
});

test('LogRateLimiter: flush() writes pending summaries at once', () => {
  const log = memoryLogger();
  const limiter = new LogRateLimiter({ logger: log.logger, lines: 1, windowMs: 60_000 });
  limiter.allow('A');
  limiter.allow('A');
  limiter.flush();
  assert.equal(log.lines.length, 1);
  assert.equal(log.lines[0]?.suppressed, 1);
});
