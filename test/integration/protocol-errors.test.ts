/**
 * A malformed or oversize frame ends only its own connection, with a logged coded error and no reply,
 * while the other sessions on the same server carry on and complete.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { MilterErrorCode } from '../../src/errors.js';
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
    assert.ok(lines[0]?.err, `${bad.name}: logged with { err }`);
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
