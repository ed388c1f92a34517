/**
 * Byte transparency over a real socket (issue 11 item 1): random 8-bit values in CONNECT, HELO, MAIL, RCPT,
 * HEADER and macro frames reach an echo filter through the server (shared reads, packed macros), and the
 * modification frames it writes carry the identical bytes. Frames are written and read back by hand.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import type { ListenAddress } from '../../src/server/server.js';
import {
  echoFilter,
  expectedEom,
  messageFrames,
  randomByteMessage,
  rawFrameOf,
  splitRawFrames,
  u32,
  type ByteMessage,
  type RawFrame,
} from '../helpers/bytes.js';
import { prng } from '../helpers/prng.js';
import { startServer } from '../helpers/server.js';

const show = (frames: RawFrame[]): string[] => frames.map((f) => `${f.command} ${f.payload.toString('hex')}`);

/** One connection: OPTNEG, then the message's frames pipelined in one write; resolves with every reply. */
function converse(address: ListenAddress, m: ByteMessage): Promise<RawFrame[]> {
  const frames = messageFrames(m);
  const owed = 1 + frames.filter(([, replies]) => replies).length;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: address.host as string, port: address.port as number });
    let stream: Buffer = Buffer.alloc(0);
    const replies: RawFrame[] = [];
    socket.on('error', reject);
    socket.on('close', () => reject(new Error(`closed after ${replies.length} of ${owed} replies`)));
    socket.on('data', (chunk: Buffer) => {
      const split = splitRawFrames(Buffer.concat([stream, chunk]));
      stream = split.rest;
      replies.push(...split.frames);
      if (replies.length === 1 && split.frames.length > 0) {
        socket.write(Buffer.concat(frames.map(([f]) => f)));
      }
      if (replies.length >= owed) {
        socket.removeAllListeners('close');
        socket.end(rawFrameOf('Q'));
        socket.destroy();
        resolve(replies);
      }
    });
    socket.write(rawFrameOf('O', u32(6), u32(0x1ff), u32(0x1fffff)));
  });
}

for (const async of [false, true]) {
  test(`server: an echo filter (${async ? 'async' : 'sync'}) sends back every 8-bit value byte for byte`, async (t) => {
    const { address } = await startServer(t, { filter: echoFilter(async) });
    const rand = prng(async ? 0xb7e1 : 0xb7e0);
    for (let i = 0; i < 60; i++) {
      const m = randomByteMessage(rand, i % 5 === 4);
      const replies = await converse(address, m);
      assert.equal(replies[0]?.command, 'O');
      const expected: RawFrame[] = [
        ...Array.from({ length: messageFrames(m).filter(([, r]) => r).length - 1 }, () => ({
          command: 'c',
          payload: Buffer.alloc(0),
        })),
        ...expectedEom(m),
      ];
      assert.deepEqual(show(replies.slice(1)), show(expected), `message ${i}`);
    }
  });
}
