/**
 * Seeded fuzzing of the decoder and the session: whatever bytes arrive, the only thing that may escape is
 * a coded MilterProtocolError (the server then closes that one connection). A TypeError or RangeError here
 * would be a crash path. And whatever a plausible MTA sends and a filter decides, no reply is ever sent
 * twice or out of turn (test/helpers/mta-model.ts), in a session and through a server.
 * Bounded: a fixed number of cases per run, reproducible from the seed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MilterProtocolError } from '../../../src/errors.js';
import { decodeCommand, decodeResponse } from '../../../src/protocol/decode.js';
import { FrameDecoder } from '../../../src/protocol/frame.js';
import { createSession } from '../../../src/session/session.js';
import { inlineBody } from '../../../src/session/body-store.js';
import { silentLogger } from '../../../src/logging/logger.js';
import { Decision, type Filter } from '../../../src/filter.js';
import type { MilterCommand, MilterResponse } from '../../../src/protocol/types.js';
import {
  playRandomConnection,
  randomDecisionFilter,
  randomNoReply,
  randomOffer,
  type Transport,
} from '../../helpers/mta-model.js';
import { prng } from '../../helpers/prng.js';
import { isDecision, RawMta } from '../../helpers/raw-mta.js';
import { startServer } from '../../helpers/server.js';

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

/** The model against one in-memory session: what `handle` returns plus what it sent out of band. */
function sessionTransport(filter: Filter, id: string): Transport {
  const sentNow: MilterResponse[] = [];
  const session = createSession(
    { id, filter: filter as Filter<unknown>, logger: silentLogger, callbackTimeoutMs: 0 },
    { sendNow: (r) => void sentNow.push(r) },
  );
  return {
    async exchange(cmd) {
      sentNow.length = 0;
      const result = await inlineBody(await session.handle(cmd));
      assert.equal(result.end, undefined, `${cmd.kind}: the session must not end`);
      return [...sentNow, ...result.responses];
    },
    async quit() {
      const result = await session.handle({ kind: 'quit' });
      assert.equal(result.end, 'quit');
      assert.deepEqual(result.responses, []);
      await session.terminate('eof');
    },
  };
}

/** Fails the wait instead of hanging when an owed reply never comes. */
function withDeadline<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within 10 s`)), 10_000);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

/** The model over a real socket: commands without reply are written and not waited for (pipelined). */
function socketTransport(mta: RawMta): Transport {
  // Like an MTA: small writes go out at once (Nagle would hold each pipelined one for a delayed ACK).
  mta.socket.setNoDelay(true);
  let consumed = 0;
  return {
    async exchange(cmd, owed) {
      mta.send(cmd);
      if (!owed) return [];
      const out: MilterResponse[] = [];
      for (;;) {
        const r = await withDeadline(mta.next(), `reply to ${cmd.kind}`);
        assert.ok(r !== undefined, `${cmd.kind}: connection closed before its reply`);
        consumed++;
        out.push(r);
        if (isDecision(r) || r.kind === 'optneg') return out;
      }
    },
    async quit() {
      mta.send({ kind: 'quit' });
      await withDeadline(mta.closed, 'close after QUIT');
      assert.deepEqual(
        mta.received.slice(consumed).map((r) => r.kind),
        [],
        'nothing written that no command was owed',
      );
    },
  };
}

test('model: in a session, every owed reply comes exactly once and nothing else is written', async () => {
  const rand = prng(0x7e91);
  const totals = { replies: 0, unreplied: 0, eoms: 0, aborts: 0, quitNewConnections: 0 };
  for (let c = 0; c < 600; c++) {
    const filter = randomDecisionFilter(rand, randomNoReply(rand), c % 2 === 0 ? 0 : 0.5);
    const stats = await playRandomConnection(rand, sessionTransport(filter, `model-${c}`), randomOffer(rand));
    for (const k of Object.keys(totals) as Array<keyof typeof totals>) totals[k] += stats[k];
  }
  // The generator really covered what the model is about.
  for (const [k, v] of Object.entries(totals)) assert.ok(v > 50, `${k}: ${v}`);
});

test('model: through a server, replies come once each, in command order, and none unowed', async (t) => {
  const rand = prng(0x7e92);
  const totals = { replies: 0, unreplied: 0, eoms: 0 };
  for (let s = 0; s < 4; s++) {
    // One server per filter shape (noReply is fixed per filter); each plays sequential connections.
    const filter = randomDecisionFilter(rand, randomNoReply(rand), 0.5);
    const { address, server } = await startServer(t, { filter });
    for (let c = 0; c < 60; c++) {
      const mta = await RawMta.connect(address);
      t.after(() => mta.destroy());
      const stats = await playRandomConnection(rand, socketTransport(mta), randomOffer(rand));
      totals.replies += stats.replies;
      totals.unreplied += stats.unreplied;
      totals.eoms += stats.eoms;
    }
    await server.close({ deadlineMs: 100 });
  }
  for (const [k, v] of Object.entries(totals)) assert.ok(v > 50, `${k}: ${v}`);
});
