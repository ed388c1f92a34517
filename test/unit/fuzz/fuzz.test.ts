/**
 * Seeded fuzzing of the decoder and the session: whatever bytes arrive, the only thing that may escape is
 * a coded MilterProtocolError (the server then closes that one connection). A TypeError or RangeError here
 * would be a crash path. Bounded: a fixed number of cases per run, reproducible from the seed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MilterProtocolError } from '../../../src/errors.js';
import { decodeCommand, decodeResponse } from '../../../src/protocol/decode.js';
import { FrameDecoder } from '../../../src/protocol/frame.js';
import { createSession } from '../../../src/session/session.js';
import { silentLogger } from '../../../src/logging/logger.js';
import { Decision, type Filter } from '../../../src/filter.js';
import type { MilterCommand } from '../../../src/protocol/types.js';
import { prng } from '../../helpers/prng.js';

const COMMAND_BYTES = Buffer.from('ABCDEHKLMNOQRTU');
const RESPONSE_BYTES = Buffer.from('+-24abcdefhilmpqrsty');
/** Bytes that make payloads interesting: NULs, digits, letters the decoders look for. */
const ALPHABET = Buffer.from('\0\0\0\0' + 'U4L6:[]IPv6: <>@.=0123456789abcXYZ\r\n\t ');

function randomPayload(rand: () => number): Buffer {
  const len = Math.floor(rand() * 40);
  const out = Buffer.alloc(len);
  for (let i = 0; i < len; i++) {
    out[i] =
      rand() < 0.8 ? (ALPHABET[Math.floor(rand() * ALPHABET.length)] as number) : Math.floor(rand() * 256);
  }
  return out;
}

function pick(rand: () => number, bytes: Buffer): number {
  return rand() < 0.95 ? (bytes[Math.floor(rand() * bytes.length)] as number) : Math.floor(rand() * 256);
}

function onlyProtocolErrors(fn: () => unknown, what: string): void {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof MilterProtocolError, `${what}: ${String(err)}`);
    assert.match(err.code, /^ERR_MILTER_/);
  }
}

test('decodeCommand and decodeResponse: random frames give a value or a coded MilterProtocolError', () => {
  const rand = prng(0x6d696c74);
  for (let i = 0; i < 20_000; i++) {
    const payload = randomPayload(rand);
    const command = pick(rand, COMMAND_BYTES);
    onlyProtocolErrors(
      () => decodeCommand({ command, payload }),
      `command ${command} ${payload.toString('hex')}`,
    );
    const response = pick(rand, RESPONSE_BYTES);
    onlyProtocolErrors(
      () => decodeResponse({ command: response, payload }),
      `response ${response} ${payload.toString('hex')}`,
    );
  }
});

test('FrameDecoder: random byte streams give frames or a coded error, never a crash', () => {
  const rand = prng(42);
  for (let i = 0; i < 2_000; i++) {
    const decoder = new FrameDecoder(1024);
    onlyProtocolErrors(() => {
      for (let c = 0; c < 8; c++) {
        decoder.push(randomPayload(rand));
        while (decoder.next() !== undefined);
      }
    }, `stream ${i}`);
  }
});

test('session: random sequences of decoded commands never throw anything but coded protocol errors', async () => {
  const rand = prng(7);
  const filter: Filter<{ n: number }> = {
    connect: (ctx) => void (ctx.priv = { n: 0 }),
    envrcpt: (_ctx, rcpt) => (rcpt.includes('0') ? Decision.reject({ code: 550, text: 'no' }) : undefined),
    header: () => undefined,
    body: (ctx) => (ctx.priv && ++ctx.priv.n > 3 ? Decision.skip : undefined),
    eom: (ctx) => {
      ctx.addHeader('X-Fuzz', 'yes');
      return Decision.accept;
    },
    unknown: () => Decision.accept,
    close: () => undefined,
  };
  let closes = 0;
  // Each SMFIC_QUIT_NC ends one SMTP session on the socket (close), and the next one is closed too.
  let quitNewConnections = 0;
  const counted: Filter<{ n: number }> = { ...filter, close: () => void closes++ };
  const sessions = 300;
  for (let s = 0; s < sessions; s++) {
    const session = createSession(
      { id: `fuzz-${s}`, filter: counted as Filter<unknown>, logger: silentLogger, callbackTimeoutMs: 0 },
      { sendNow: () => undefined },
    );
    const commands: MilterCommand[] = [{ kind: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff }];
    for (let c = 0; c < 30; c++) {
      try {
        commands.push(decodeCommand({ command: pick(rand, COMMAND_BYTES), payload: randomPayload(rand) }));
      } catch {
        // undecodable frames never reach a session
      }
    }
    for (const cmd of commands) {
      try {
        const r = await session.handle(cmd);
        if (cmd.kind === 'quitNewConnection') quitNewConnections++;
        if (r.end) break;
      } catch (err) {
        assert.ok(err instanceof MilterProtocolError, `session ${s}, ${cmd.kind}: ${String(err)}`);
        break;
      }
    }
    // After QUIT terminate must not call close again; otherwise it owes the last one.
    await session.terminate('eof');
  }
  assert.ok(quitNewConnections > 0, 'the fuzzer produced QUIT_NC sessions');
  assert.equal(
    closes,
    sessions + quitNewConnections,
    'close runs exactly once per connection plus once per QUIT_NC session, whatever arrived',
  );
});
