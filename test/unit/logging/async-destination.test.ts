/**
 * The daemon's asynchronous log destination: bounded, never blocking, dropping and counting lines when the
 * reader stalls, retrying EAGAIN, giving up on EPIPE, and draining with a bound. Driven through an
 * injected write function (the real pipe case is in test/cli/log-stall.test.ts).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AsyncLogDestination, type WriteFn } from '../../../src/logging/async-destination.js';

/** A write function under the test's control: each call waits until answered. */
function manualWriter(): {
  write: WriteFn;
  calls: Array<{ data: string; answer: (err: NodeJS.ErrnoException | null, n?: number) => void }>;
} {
  const calls: Array<{ data: string; answer: (err: NodeJS.ErrnoException | null, n?: number) => void }> = [];
  const write: WriteFn = (_fd, buffer, cb) => {
    const data = buffer.toString();
    calls.push({ data, answer: (err, n) => cb(err, n ?? (err === null ? buffer.length : 0)) });
  };
  return { write, calls };
}

const errno = (code: string): NodeJS.ErrnoException => Object.assign(new Error(code), { code });
const line = (i: number): string => `{"msg":"line ${String(i).padStart(4, '0')}"}\n`;

test('lines are written in order, batched while a write is in progress', () => {
  const w = manualWriter();
  const d = new AsyncLogDestination({ fd: 1, write: w.write });
  d.write(line(1));
  d.write(line(2));
  d.write(line(3));
  assert.equal(w.calls.length, 1, 'one write at a time');
  assert.equal(w.calls[0]?.data, line(1));
  w.calls[0]?.answer(null);
  assert.equal(w.calls[1]?.data, line(2) + line(3), 'what queued meanwhile goes in one write');
  w.calls[1]?.answer(null);
  assert.equal(d.bufferedBytes, 0);
});

test('a partial write continues with the rest of the bytes', () => {
  const w = manualWriter();
  const d = new AsyncLogDestination({ fd: 1, write: w.write });
  d.write(line(1));
  w.calls[0]?.answer(null, 5);
  assert.equal(w.calls[1]?.data, line(1).slice(5));
});

test('a stalled reader: the buffer stays bounded, lines beyond it are dropped and counted, then recovery is reported', () => {
  const w = manualWriter();
  const drops: number[] = [];
  const recovered: number[] = [];
  const max = 4096;
  const d = new AsyncLogDestination({
    fd: 1,
    maxBufferBytes: max,
    write: w.write,
    onDrop: (n) => drops.push(n),
    onRecovered: (n) => recovered.push(n),
  });
  const size = line(0).length;
  for (let i = 0; i < 1000; i++) d.write(line(i));
  assert.ok(d.bufferedBytes <= max, 'bounded');
  const kept = Math.floor(max / size);
  assert.equal(d.dropped, 1000 - kept);
  assert.equal(
    drops.reduce((a, b) => a + b, 0),
    1000 - kept,
  );
  assert.deepEqual(recovered, []);
  // The reader catches up: what was kept comes out in order, then the gap is reported once.
  let out = '';
  while (w.calls.length > 0) {
    const call = w.calls.shift();
    out += call?.data;
    call?.answer(null);
  }
  assert.equal(out, Array.from({ length: kept }, (_, i) => line(i)).join(''));
  assert.deepEqual(recovered, [1000 - kept]);
  // Logging resumes.
  d.write(line(5000));
  assert.equal(w.calls[0]?.data, line(5000));
});

test('EAGAIN (a full non-blocking pipe) is retried on a timer, with the same bytes', async () => {
  const w = manualWriter();
  const d = new AsyncLogDestination({ fd: 1, write: w.write });
  d.write(line(1));
  w.calls.shift()?.answer(errno('EAGAIN'));
  assert.equal(w.calls.length, 0, 'not retried synchronously');
  d.write(line(2));
  assert.equal(w.calls.length, 0, 'still waiting for the retry');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(w.calls[0]?.data, line(1));
  w.calls.shift()?.answer(null);
  assert.equal(w.calls[0]?.data, line(2));
  assert.equal(d.dropped, 0);
});

test('EPIPE (the reader is gone): everything from then on is dropped and counted, nothing thrown', () => {
  const w = manualWriter();
  const d = new AsyncLogDestination({ fd: 1, write: w.write });
  d.write(line(1));
  d.write(line(2));
  w.calls.shift()?.answer(errno('EPIPE'));
  assert.equal(d.dropped, 2);
  d.write(line(3));
  assert.equal(d.dropped, 3);
  assert.equal(w.calls.length, 0);
});

test('another write error loses that write only', () => {
  const w = manualWriter();
  const d = new AsyncLogDestination({ fd: 1, write: w.write });
  d.write(line(1));
  d.write(line(2));
  w.calls.shift()?.answer(errno('EIO'));
  assert.equal(d.dropped, 1);
  assert.equal(w.calls[0]?.data, line(2));
});

test('drain() resolves true once written, false after its timeout while stalled', async () => {
  const w = manualWriter();
  const d = new AsyncLogDestination({ fd: 1, write: w.write });
  assert.equal(await d.drain(10), true, 'nothing buffered');
  d.write(line(1));
  assert.equal(await d.drain(20), false, 'the reader never answered');
  const draining = d.drain(10_000);
  w.calls.shift()?.answer(null);
  assert.equal(await draining, true);
});

test('format() turns each line into what is written (pretty mode)', () => {
  const w = manualWriter();
  const d = new AsyncLogDestination({ fd: 1, write: w.write, format: (l) => l.toUpperCase() });
  d.write('{"msg":"x"}\n');
  assert.equal(w.calls[0]?.data, '{"MSG":"X"}\n');
});
