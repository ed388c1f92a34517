/**
 * A malformed or oversize frame ends only its own connection, with a logged coded error and no reply,
 * while the other sessions on the same server carry on and complete.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { MilterErrorCode } from '../../src/errors.js';
import { LogRateLimiter } from '../../src/logging/rate-limit.js';
import { Command } from '../../src/protocol/constants.js';
import { everyActionFilter, newRecord } from '../helpers/filters.js';
import { memoryLogger } from '../helpers/logs.js';
import { RawMta, rawFrame, rawMessage } from '../helpers/raw-mta.js';
import { startServer } from '../helpers/server.js';
import { waitFor } from '../helpers/wait.js';

const BAD_FRAMES: Array<{ name: string; bytes: Buffer; code: MilterErrorCode }> = [
  {
    name: 'unknown command byte',
    bytes: rawFrame(0x01, Buffer.from('x')),
    code: 'ERR_MILTER_UNKNOWN_COMMAND',
  },
  {
    name: 'zero length field',
    bytes: rawFrame(Command.MAIL, Buffer.alloc(0), 0),
    code: 'ERR_MILTER_FRAME_EMPTY',
  },
  {
    name: 'header with one string',
    bytes: rawFrame(Command.HEADER, Buffer.from('Subject\0')),
    code: 'ERR_MILTER_MALFORMED_PAYLOAD',
  },
  {
    // Only the length field is sent: the server must refuse before buffering the payload.
    name: 'oversize frame',
    bytes: rawFrame(Command.BODY, Buffer.alloc(0), 64 * 1024 * 1024),
    code: 'ERR_MILTER_FRAME_TOO_LARGE',
  },
];

test('bad frames close only their connection, with coded errors, while others complete', async (t) => {
  const log = memoryLogger();
  const record = newRecord();
  const observed: string[] = [];
  const { address } = await startServer(t, {
    filter: everyActionFilter(record),
    logger: log.logger,
    observer: { error: (code) => observed.push(code) },
  });

  // Good sessions negotiate and start a transaction first, so they are mid-flight when the bad ones hit.
  const good = await Promise.all([1, 2, 3].map(() => RawMta.connect(address)));
  t.after(() => good.forEach((m) => m.destroy()));
  const protocols = await Promise.all(good.map(async (m) => (await m.negotiate()).protocol));

  for (const bad of BAD_FRAMES) {
    const mta = await RawMta.connect(address);
    t.after(() => mta.destroy());
    const { protocol } = await mta.negotiate();
    const first = await rawMessage(mta, protocol, 'continue', true);
    assert.equal(first.final?.kind, 'continue');
    const before = mta.received.length;
    mta.sendBytes(bad.bytes);
    await mta.closed;
    assert.equal(mta.received.length, before, `${bad.name}: no reply after the bad frame`);
    const lines = log.coded(bad.code);
    assert.equal(lines.length, 1, `${bad.name}: one ${bad.code} log line`);
    assert.ok(lines[0]?.conn, `${bad.name}: logged with the connection id`);
    // The peer's fault: code and message, no error object and no stack trace.
    assert.equal(typeof lines[0]?.reason, 'string', `${bad.name}: logged with the reason`);
    assert.equal(lines[0]?.err, undefined, `${bad.name}: no { err }`);
    assert.doesNotMatch(JSON.stringify(lines[0]), /stack/, `${bad.name}: no stack trace`);
    assert.ok(observed.includes(bad.code), `${bad.name}: observer.error(${bad.code})`);
  }

  for (const [i, mta] of good.entries()) {
    const outcome = await rawMessage(mta, protocols[i] as number, 'accept', true);
    assert.equal(outcome.final?.kind, 'accept');
    mta.send({ kind: 'quit' });
    await mta.closed;
  }
  // Every connection, good or bad, had its close callback exactly once.
  await waitFor(() => record.closes.size === good.length + BAD_FRAMES.length, 'every close callback');
  assert.deepEqual([...record.closes.values()], Array(good.length + BAD_FRAMES.length).fill(1));
});

test('protocol errors from many bad connections: a bounded number of lines, no stacks, a count of the rest', async (t) => {
  const log = memoryLogger();
  const observed: string[] = [];
  // A clock the test moves: every connection below falls into one window.
  let now = 0;
  const logLimiter = new LogRateLimiter({ logger: log.logger, lines: 5, windowMs: 1000, now: () => now });
  const { address } = await startServer(t, {
    filter: everyActionFilter(),
    logger: log.logger,
    logLimiter,
    observer: { error: (code) => observed.push(code) },
  });
  const N = 200;
  // The 5-byte frame of the report: length 1, command byte 0x01 (unknown).
  const bad = Buffer.from([0, 0, 0, 1, 0x01]);
  for (let i = 0; i < N; i += 20) {
    await Promise.all(
      Array.from({ length: 20 }, async () => {
        const mta = await RawMta.connect(address);
        mta.sendBytes(bad);
        await mta.closed;
      }),
    );
  }
  await waitFor(() => observed.length === N, 'every bad connection counted');
  assert.ok(observed.every((c) => c === 'ERR_MILTER_UNKNOWN_COMMAND'));
  // The window ends: the next line brings the summary of what was suppressed.
  now = 1000;
  const last = await RawMta.connect(address);
  last.sendBytes(bad);
  await last.closed;
  await waitFor(() => observed.length === N + 1, 'the last bad connection counted');

  const errors = log.coded('ERR_MILTER_UNKNOWN_COMMAND');
  assert.equal(errors.length, 6, 'five lines in the first window, one in the next');
  for (const line of errors) assert.doesNotMatch(JSON.stringify(line), /stack/);
  const summaries = log.lines.filter(
    (l) => l.key === 'ERR_MILTER_UNKNOWN_COMMAND' && l.suppressed !== undefined,
  );
  // One summary, unless the limiter's own timer fired during the burst and split it: the total is exact.
  assert.ok(summaries.length >= 1);
  assert.equal(
    summaries.reduce((sum, l) => sum + (l.suppressed as number), 0),
    N - 5,
  );
  assert.match(String(summaries[0]?.msg), /^suppressed \d+ similar lines$/);
});
