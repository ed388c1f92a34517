/**
 * The fleet cells' target check (issue 15): a Redis row counts only when the bench server answered every
 * store call from Redis. A call that timed out or was refused by the open breaker let its message through
 * uncounted (`on-store-error: allow`), which makes the Redis row look faster than Redis is.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseStoreCalls } from '../../../bench/lib/candidates.js';
import { fleetTargets, type FleetRow } from '../../../bench/lib/fleet.js';
import type { Cell } from '../../../bench/lib/measure.js';

test('the bench server’s store line: calls and failures summed over the codes', () => {
  assert.deepEqual(parseStoreCalls('store redis://127.0.0.1:6379: 61503 calls, failed: none'), {
    total: 61503,
    failed: 0,
  });
  assert.deepEqual(
    parseStoreCalls(
      'store redis://127.0.0.1:36865: 27770 calls, failed: ERR_MILTER_STORE_TIMEOUT 149, ERR_MILTER_STORE_UNAVAILABLE 20050',
    ),
    { total: 27770, failed: 20199 },
  );
  assert.equal(parseStoreCalls('READY ["inet:1@127.0.0.1"]'), undefined);
});

const cell: Cell = {
  connections: 128,
  messagesPerConnection: 1,
  recipients: 1,
  headers: 10,
  bodySize: 4096,
  socket: 'tcp',
};

/** A summary row of `cell`: msg/s, EOM p99 in ms, steal %, and (Redis rows) calls and failed calls. */
function row(
  candidate: string,
  msgs: number,
  p99Ms: number,
  steal: number,
  calls?: [number, number],
): FleetRow {
  return {
    candidate,
    cell,
    messagesPerSecond: msgs,
    eomP99: p99Ms * 1e6,
    stealPercent: steal,
    ...(calls === undefined ? {} : { storeCalls: { total: calls[0], failed: calls[1] } }),
  };
}

test('fleet targets: a Redis row with failed store calls fails its check, whatever its speed', () => {
  const rows = [
    row('milterd-policy', 2000, 4, 0.4),
    row('milterd-redis', 2500, 3, 0, [27770, 20199]),
    row('milterd-redis-unix', 1900, 4.5, 1.2, [57000, 0]),
  ];
  const checks = fleetTargets(rows).map((c) => [c.target, c.value, c.ok]);
  assert.deepEqual(checks, [
    ['128×1 tcp: host quiet (steal ≤ 2 % in every measurement)', '1.2 % at most', true],
    [
      '128×1 tcp: milterd-redis answered every store call (no timeout, breaker closed)',
      '20199 of 27770 failed',
      false,
    ],
    ["128×1 tcp: milterd-redis ≥ 90 % of the memory store's msg/s", '125.0 %', true],
    ["128×1 tcp: milterd-redis EOM p99 ≤ memory store's + 1 ms", '3.0 ms vs 4.0 ms', true],
    [
      '128×1 tcp: milterd-redis-unix answered every store call (no timeout, breaker closed)',
      '0 of 57000 failed',
      true,
    ],
    ["128×1 tcp: milterd-redis-unix ≥ 90 % of the memory store's msg/s", '95.0 %', true],
    ["128×1 tcp: milterd-redis-unix EOM p99 ≤ memory store's + 1 ms", '4.5 ms vs 4.0 ms', true],
  ]);
});

test('fleet targets: a cell where the hypervisor stole CPU time fails its host check', () => {
  const rows = [row('milterd-policy', 2000, 4, 0), row('milterd-redis', 1900, 4.2, 21.4, [1000, 0])];
  const host = fleetTargets(rows)[0];
  assert.deepEqual(host, {
    target: '128×1 tcp: host quiet (steal ≤ 2 % in every measurement)',
    value: '21.4 % at most',
    ok: false,
  });
});
