import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CircuitBreaker, type BreakerState } from '../../../src/breaker.js';

function fixture(failures = 3, openMs = 1000) {
  let now = 0;
  const changes: string[] = [];
  const breaker = new CircuitBreaker({
    failures,
    openMs,
    now: () => now,
    onChange: (state: BreakerState, previous: BreakerState) => changes.push(`${previous}->${state}`),
  });
  return { breaker, changes, advance: (ms: number) => (now += ms) };
}

test('opens after the configured consecutive failures, and a success in between resets the count', () => {
  const { breaker, changes } = fixture(3);
  breaker.failure();
  breaker.failure();
  breaker.success();
  breaker.failure();
  breaker.failure();
  assert.equal(breaker.state, 'closed');
  assert.equal(breaker.allow(), true);
  breaker.failure();
  assert.equal(breaker.state, 'open');
  assert.equal(breaker.allow(), false);
  assert.deepEqual(changes, ['closed->open']);
});

test('after openMs one probe goes through; its success closes, its failure reopens for another openMs', () => {
  const { breaker, changes, advance } = fixture(1, 1000);
  breaker.failure();
  advance(999);
  assert.equal(breaker.allow(), false);
  advance(1);
  assert.equal(breaker.allow(), true, 'the probe');
  assert.equal(breaker.state, 'half-open');
  assert.equal(breaker.allow(), false, 'only one probe at a time');
  breaker.failure();
  assert.equal(breaker.state, 'open');
  advance(999);
  assert.equal(breaker.allow(), false, 'reopened for a full openMs');
  advance(1);
  assert.equal(breaker.allow(), true);
  breaker.success();
  assert.equal(breaker.state, 'closed');
  assert.equal(breaker.allow(), true);
  assert.equal(breaker.allow(), true);
  assert.deepEqual(changes, [
    'closed->open',
    'open->half-open',
    'half-open->open',
    'open->half-open',
    'half-open->closed',
  ]);
});
