/**
 * The server's per-command JavaScript without sockets: one connection's exact Postfix 3.7 byte stream
 * (bench/loadgen/script.ts) through FrameDecoder, decodeCommand, the session and encodeResponse, the way
 * MilterConnection.dispatch chains them, for the benchmark's sync and async filters. What is left of the
 * server's CPU per message in `npm run bench` is the kernel and Node's per-read and per-write glue.
 *
 *   node dist/bench/tools/session-micro.js [--seconds 5] [--filter sync|async|both]
 *
 * Prints µs of JavaScript per message (1 connection = OPTNEG, CONNECT, HELO, 10 messages, QUIT).
 */
import pino from 'pino';
import { LogRateLimiter } from '../../src/logging/rate-limit.js';
import { SMFIC_MACRO } from '../../src/protocol/constants.js';
import { decodeCommand } from '../../src/protocol/decode.js';
import { encodeResponse, encodeResponses } from '../../src/protocol/encode.js';
import { FrameDecoder } from '../../src/protocol/frame.js';
import { PackedMacros } from '../../src/protocol/packed-macros.js';
import { createSession } from '../../src/session/session.js';
import type { HandleResult } from '../../src/session/types.js';
import type { Filter } from '../../src/filter.js';
import { benchFilter, benchFilterAsync } from '../servers/bench-filters.js';
import { buildPlan, connectionWrites, OPTNEG_BYTES } from '../loadgen/script.js';

const MESSAGES = 10;
const SHAPE = { recipients: 1, headers: 10, bodySize: 4096 };

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const logger = pino({ level: 'silent' });
const limiter = new LogRateLimiter({ logger });

/** Negotiated protocol mask for `filter` (the plan depends on it, as the load generators' plans do). */
function negotiated(filter: Filter): number {
  const s = createSession(
    { id: 'n', filter, logger, callbackTimeoutMs: 30_000, logLimiter: limiter },
    { sendNow() {} },
  );
  const d = new FrameDecoder();
  d.push(OPTNEG_BYTES);
  const frame = d.next();
  if (frame === undefined) throw new Error('no OPTNEG frame');
  const r = s.handle(decodeCommand(frame));
  if (r instanceof Promise) throw new Error('negotiation went async');
  const resp = r.responses[0];
  if (resp?.kind !== 'optneg') throw new Error('no OPTNEG reply');
  return resp.protocol;
}

/** One connection's writes through decoder, session and encoder; returns the reply bytes written. */
async function connection(filter: Filter, writes: readonly Buffer[]): Promise<number> {
  const session = createSession(
    { id: 'c', filter, logger, callbackTimeoutMs: 30_000, logLimiter: limiter },
    { sendNow() {} },
  );
  const decoder = new FrameDecoder();
  let out = 0;
  for (const w of writes) {
    decoder.push(w);
    for (let frame = decoder.next(); frame !== undefined; frame = decoder.next()) {
      const cmd =
        frame.command === SMFIC_MACRO ? PackedMacros.fromPayload(frame.payload) : decodeCommand(frame);
      let r: HandleResult | Promise<HandleResult> = session.handle(cmd);
      if (r instanceof Promise) r = await r;
      const n = r.responses.length;
      if (n === 1) out += encodeResponse(r.responses[0]!).length;
      else if (n > 1) out += encodeResponses(r.responses).length;
    }
  }
  await session.terminate('eof');
  return out;
}

async function measure(name: string, filter: Filter, seconds: number): Promise<void> {
  const plan = buildPlan(SHAPE, negotiated(filter), false, 'postfix');
  const writes = connectionWrites(plan, MESSAGES);
  // Warm up (JIT), then count whole connections for `seconds`.
  const warmEnd = performance.now() + 1000;
  while (performance.now() < warmEnd) await connection(filter, writes);
  let conns = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  while (performance.now() < end) {
    await connection(filter, writes);
    conns++;
  }
  const cpu = process.cpuUsage(cpu0);
  const msgs = conns * MESSAGES;
  const usPerMsg = (cpu.user + cpu.system) / msgs;
  console.log(
    `${name}: ${usPerMsg.toFixed(2)} µs CPU per message (${msgs} messages, ${writes.length} writes per connection)`,
  );
}

async function main(): Promise<void> {
  const seconds = Number(arg('--seconds', '5'));
  const which = arg('--filter', 'both');
  if (which !== 'async') await measure('sync ', benchFilter, seconds);
  if (which !== 'sync') await measure('async', benchFilterAsync, seconds);
}

void main();
