/**
 * Byte transparency through the whole filter API (issue 11 item 1): random byte strings in CONNECT, HELO,
 * MAIL, RCPT, HEADER and macro frames go through decode → session → filter → action → encode, and every
 * value the filter echoes comes back as the identical bytes. Frames are built and read back by hand, so
 * the codec is tested, not trusted. Seeded and bounded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Filter } from '../../../src/filter.js';
import { silentLogger } from '../../../src/logging/logger.js';
import { decodeCommand } from '../../../src/protocol/decode.js';
import { encodeResponses } from '../../../src/protocol/encode.js';
import { PackedMacros } from '../../../src/protocol/packed-macros.js';
import { createSession } from '../../../src/session/session.js';
import { inlineBody } from '../../../src/session/body-store.js';
import {
  echoFilter,
  expectedEom,
  messageFrames,
  randomByteMessage,
  splitRawFrames,
  type RawFrame,
} from '../../helpers/bytes.js';
import { prng } from '../../helpers/prng.js';

const show = (frames: RawFrame[]): string[] => frames.map((f) => `${f.command} ${f.payload.toString('hex')}`);

async function runMessages(async: boolean, seed: number, count: number): Promise<void> {
  const rand = prng(seed);
  for (let i = 0; i < count; i++) {
    const m = randomByteMessage(rand, i % 5 === 4);
    const session = createSession(
      {
        id: `bytes-${i}`,
        filter: echoFilter(async) as Filter<unknown>,
        logger: silentLogger,
        callbackTimeoutMs: 0,
      },
      { sendNow: () => assert.fail('nothing is sent out of band') },
    );
    await session.handle({ kind: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff });
    const out: Buffer[] = [];
    const frames = messageFrames(m);
    for (const [frame] of frames) {
      const command = frame[4] as number;
      const payload = frame.subarray(5);
      // Macros reach the session packed from the server and decoded elsewhere: both paths.
      const cmd =
        command === 0x44 && rand() < 0.5
          ? PackedMacros.fromPayload(payload)
          : decodeCommand({ command, payload });
      const result = await inlineBody(await session.handle(cmd));
      out.push(encodeResponses(result.responses));
    }
    await session.handle({ kind: 'quit' });
    const { frames: replies, rest } = splitRawFrames(Buffer.concat(out));
    assert.equal(rest.length, 0);
    const owed = frames.filter(([, replies]) => replies).length;
    const expected: RawFrame[] = [
      ...Array.from({ length: owed - 1 }, () => ({ command: 'c', payload: Buffer.alloc(0) })),
      ...expectedEom(m),
    ];
    assert.deepEqual(show(replies), show(expected), `message ${i} (seed ${seed})`);
  }
}

test('echo filter (synchronous): every received value comes back byte for byte', async () => {
  await runMessages(false, 0xeca0, 1_500);
});

test('echo filter (async callbacks): every received value comes back byte for byte', async () => {
  await runMessages(true, 0xeca1, 500);
});
