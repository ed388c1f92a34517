/**
 * bench/tools/policy-micro.ts measures the policy's store path without sockets: it must really run the
 * benchmark's fleet policy on the store it names (a measurement of the memory store labelled Redis would
 * mislead), one message per connection, and report the figures it promises.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const tool = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../../bench/tools/policy-micro.js',
);
const run = (args: string[]): Promise<{ stdout: string }> =>
  promisify(execFile)(process.execPath, [
    tool,
    '--connections',
    '8',
    '--seconds',
    '0.4',
    '--warmup',
    '100',
    ...args,
  ]);

test('the Redis store path (fake client): two store calls per one-message session, allocations by function', async () => {
  const { stdout } = await run(['--store', 'fake', '--heap']);
  const m =
    /^fake: ([\d.]+) µs CPU per message \((\d+) messages, \d+\/s, 8 connections\), ([\d.]+) store calls per message$/m.exec(
      stdout,
    );
  assert.ok(m, stdout);
  assert.ok(Number(m[1]) > 0 && Number(m[2]) > 0, stdout);
  // The lease with the first message's reservation at CONNECT, the release at the end (docs/policy.md).
  assert.ok(Math.abs(Number(m[3]) - 2) < 0.2, `store calls per message: ${m[3]}`);
  assert.match(stdout, /^allocated: [\d.]+ KiB per message$/m);
  assert.match(stdout, /^ +\d+ B {2}\S+ \S+:\d+$/m);
});

test('the memory store: no store calls to report', async () => {
  const { stdout } = await run(['--store', 'memory']);
  assert.match(stdout, /^memory: [\d.]+ µs CPU per message \(\d+ messages, \d+\/s, 8 connections\)$/m);
});
