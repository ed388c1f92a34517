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
import { FrameDecoder } from '../../src/protocol/frame.js';
import type { Filter } from '../../src/filter.js';
import { benchFilter, benchFilterAsync } from '../servers/bench-filters.js';
import { arg, handleWrite, microSession, MICRO_SHAPE, negotiatedProtocol } from '../lib/micro.js';
import { buildPlan, connectionWrites } from '../loadgen/script.js';

const MESSAGES = 10;

/** One connection's writes through decoder, session and encoder; returns the reply bytes written. */
async function connection(filter: Filter, writes: readonly Buffer[]): Promise<number> {
  const session = microSession('c', filter);
  const decoder = new FrameDecoder();
  let out = 0;
  for (const w of writes) out += await handleWrite(session, decoder, w);
  await session.terminate('eof');
  return out;
}

async function measure(name: string, filter: Filter, seconds: number): Promise<void> {
  const plan = buildPlan(MICRO_SHAPE, negotiatedProtocol(filter), false, 'postfix');
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
