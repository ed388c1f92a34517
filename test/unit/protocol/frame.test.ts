/** FrameDecoder: any chunking yields the same frames; coded errors for empty and oversize frames. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FrameDecoder } from '../../../src/protocol/frame.js';
import { encodeCommands } from '../../../src/protocol/encode.js';
import { isMilterError } from '../../../src/errors.js';
import type { MilterCommand } from '../../../src/protocol/types.js';
import { prng } from '../../helpers/prng.js';

const stream = encodeCommands([
  { kind: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff },
  { kind: 'macro', stage: 'C', macros: [['j', 'mx.example.net']] },
  { kind: 'connect', hostname: 'h', family: 'inet', port: 25, address: '192.0.2.7' },
  { kind: 'data' },
  { kind: 'body', chunk: Buffer.alloc(300, 0x41) },
  { kind: 'header', name: 'Subject', value: '' },
  { kind: 'eom', chunk: Buffer.alloc(0) },
] satisfies MilterCommand[]);

interface Copied {
  command: number;
  payload: Buffer;
}

/** Feed `chunks` and collect copies of every frame (payload views die at the next push). */
function drain(chunks: Buffer[], max = 65535): { frames: Copied[]; left: number } {
  const d = new FrameDecoder(max);
  const frames: Copied[] = [];
  for (const chunk of chunks) {
    d.push(chunk);
    for (let f = d.next(); f !== undefined; f = d.next()) {
      frames.push({ command: f.command, payload: Buffer.from(f.payload) });
    }
  }
  return { frames, left: d.bufferedBytes };
}

const expected = drain([stream]).frames;

test('whole stream gives seven frames', () => {
  assert.equal(expected.length, 7);
  assert.deepEqual(
    expected.map((f) => String.fromCharCode(f.command)),
    ['O', 'D', 'C', 'T', 'B', 'L', 'E'],
  );
  assert.equal(expected[4]?.payload.length, 300);
});

test('identical frames for every single split point', () => {
  for (let i = 0; i <= stream.length; i++) {
    const { frames, left } = drain([stream.subarray(0, i), stream.subarray(i)]);
    assert.deepEqual(frames, expected, `split at ${i}`);
    assert.equal(left, 0);
  }
});

test('identical frames for byte-by-byte feeding', () => {
  const chunks: Buffer[] = [];
  for (let i = 0; i < stream.length; i++) chunks.push(stream.subarray(i, i + 1));
  assert.deepEqual(drain(chunks).frames, expected);
});

test('identical frames for 500 seeded random chunkings, and the pushed buffers are never modified', () => {
  const rand = prng(0x5eed);
  const pristine = Buffer.from(stream);
  for (let run = 0; run < 500; run++) {
    const chunks: Buffer[] = [];
    let pos = 0;
    while (pos < stream.length) {
      const n = 1 + Math.floor(rand() * 64);
      chunks.push(stream.subarray(pos, pos + n));
      pos += n;
    }
    assert.deepEqual(drain(chunks).frames, expected, `run ${run}`);
  }
  assert.deepEqual(stream, pristine);
});

test('bufferedBytes counts held bytes; a partial frame waits', () => {
  const d = new FrameDecoder(65535);
  d.push(stream.subarray(0, 3));
  assert.equal(d.next(), undefined);
  assert.equal(d.bufferedBytes, 3);
  d.push(stream.subarray(3, 10));
  assert.equal(d.next(), undefined);
  assert.equal(d.bufferedBytes, 10);
  d.push(stream.subarray(10, 17));
  assert.equal(d.next()?.command, 0x4f);
  assert.equal(d.bufferedBytes, 0);
});

function errCode(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isMilterError(err) ? err.code : 'not a MilterError';
  }
  return undefined;
}

test('length 0 is ERR_MILTER_FRAME_EMPTY', () => {
  const d = new FrameDecoder(65535);
  d.push(Buffer.from('0000000163' + '00000000', 'hex'));
  assert.equal(d.next()?.command, 0x63);
  assert.equal(
    errCode(() => d.next()),
    'ERR_MILTER_FRAME_EMPTY',
  );
  assert.equal(
    errCode(() => d.next()),
    'ERR_MILTER_FRAME_EMPTY',
    'stays failed',
  );
});

test('oversize payload is refused as soon as the length is known', () => {
  const d = new FrameDecoder(10);
  d.push(Buffer.from('0000000b42', 'hex')); // payload 10: allowed
  assert.equal(d.next(), undefined);
  const e = new FrameDecoder(10);
  e.push(Buffer.from('0000000c', 'hex')); // payload 11, none of it buffered yet
  assert.equal(
    errCode(() => e.next()),
    'ERR_MILTER_FRAME_TOO_LARGE',
  );
});

test('maxDataSize is settable (MDS negotiation)', () => {
  const big = encodeCommands([{ kind: 'body', chunk: Buffer.alloc(1000) }]);
  const d = new FrameDecoder(100);
  d.push(big);
  assert.equal(
    errCode(() => d.next()),
    'ERR_MILTER_FRAME_TOO_LARGE',
  );
  d.maxDataSize = 1000;
  assert.equal(d.next()?.payload.length, 1000);
});

test('a frame larger than the initial accumulator grows it', () => {
  const body = Buffer.alloc(200_000, 7);
  const wire = Buffer.alloc(5 + body.length);
  wire.writeUInt32BE(body.length + 1, 0);
  wire[4] = 0x42;
  body.copy(wire, 5);
  const chunks: Buffer[] = [];
  for (let i = 0; i < wire.length; i += 16384) chunks.push(wire.subarray(i, i + 16384));
  const { frames } = drain(chunks, 1 << 20);
  assert.equal(frames.length, 1);
  assert.deepEqual(frames[0]?.payload, body);
});

/** One frame on the wire: length, command, payload. */
function wireFrame(command: number, payload: Buffer): Buffer {
  const wire = Buffer.alloc(5 + payload.length);
  wire.writeUInt32BE(payload.length + 1, 0);
  wire[4] = command;
  payload.copy(wire, 5);
  return wire;
}

test('after a large frame the decoder keeps no memory; the frame was assembled in one buffer; release()', () => {
  const d = new FrameDecoder(1 << 20);
  const body = Buffer.alloc((1 << 20) - 1, 9);
  const wire = wireFrame(0x42, body);
  // 64 KiB pieces, as reads from a socket arrive; the pieces are borrowed until retain().
  let frame: { command: number; payload: Buffer } | undefined;
  const capacities = new Set<number>();
  for (let i = 0; i < wire.length; i += 65536) {
    d.push(wire.subarray(i, i + 65536));
    frame = d.next();
    if (frame === undefined) {
      d.retain();
      capacities.add(d.capacity);
    }
  }
  assert.deepEqual(frame?.payload, body);
  assert.deepEqual([...capacities], [wire.length], 'sized for the whole frame once, no doubling');
  assert.equal(d.capacity, 0, 'dropped once the frame was read');
  assert.equal(d.bufferedBytes, 0);

  // The payload view stays valid after the decoder dropped its memory, until the next push.
  assert.equal(frame?.payload[12345], 9);

  // A stream of frames that span reads keeps reusing one accumulator while bytes are pending.
  const small = Buffer.concat(Array.from({ length: 40 }, () => wireFrame(0x42, Buffer.alloc(3000, 1))));
  let count = 0;
  for (let i = 0; i < small.length; i += 7000) {
    d.push(small.subarray(i, i + 7000));
    while (d.next() !== undefined) count++;
    d.retain();
  }
  assert.equal(count, 40);
  assert.ok(d.capacity > 0 && d.capacity <= 65544, 'one 64 KiB accumulator kept for the next frame');
  d.release();
  assert.equal(d.capacity, 0, 'given back on request once drained');
  d.push(small.subarray(0, 100));
  d.retain();
  d.release();
  assert.equal(d.bufferedBytes, 100, 'never while it holds bytes');
  assert.ok(d.capacity > 0);
});
