/**
 * What the benchmark's socket-less tools share (bench/tools/session-micro.ts, policy-micro.ts): the message
 * shape, their argument reading, and sessions built as the server builds them, with a silent logger.
 */
import pino from 'pino';
import { LogRateLimiter } from '../../src/logging/rate-limit.js';
import { SMFIC_MACRO } from '../../src/protocol/constants.js';
import { decodeCommand } from '../../src/protocol/decode.js';
import { encodeResponse, encodeResponses } from '../../src/protocol/encode.js';
import { FrameDecoder } from '../../src/protocol/frame.js';
import { PackedMacros } from '../../src/protocol/packed-macros.js';
import { createSession } from '../../src/session/session.js';
import type { HandleResult, Session } from '../../src/session/types.js';
import type { Filter } from '../../src/filter.js';
import { OPTNEG_BYTES } from '../loadgen/script.js';

/** The message of the micro tools: one recipient, ten headers, a 4 KiB body. */
export const MICRO_SHAPE = { recipients: 1, headers: 10, bodySize: 4096 };

/** The value after `name` on the command line, or `fallback`. */
export function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const logger = pino({ level: 'silent' });
const limiter = new LogRateLimiter({ logger });

/** A session of `filter` as the server makes one, without a connection (replies are encoded by the caller). */
export function microSession(id: string, filter: Filter): Session {
  return createSession(
    { id, filter, logger, callbackTimeoutMs: 30_000, logLimiter: limiter },
    { sendNow() {} },
  );
}

/** The protocol `filter` negotiates with the load generators' offer (their plans depend on it). */
export function negotiatedProtocol(filter: Filter): number {
  const decoder = new FrameDecoder();
  decoder.push(OPTNEG_BYTES);
  const frame = decoder.next();
  if (frame === undefined) throw new Error('no OPTNEG frame');
  const r = microSession('n', filter).handle(decodeCommand(frame));
  if (r instanceof Promise) throw new Error('negotiation went async');
  const reply = r.responses[0];
  if (reply?.kind !== 'optneg') throw new Error('no OPTNEG reply');
  return reply.protocol;
}

/**
 * One write of the MTA through the decoder, the session and the encoder, the way MilterConnection.dispatch
 * chains them: the reply bytes it makes.
 */
export async function handleWrite(session: Session, decoder: FrameDecoder, bytes: Buffer): Promise<number> {
  let out = 0;
  decoder.push(bytes);
  for (let frame = decoder.next(); frame !== undefined; frame = decoder.next()) {
    const command =
      frame.command === SMFIC_MACRO ? PackedMacros.fromPayload(frame.payload) : decodeCommand(frame);
    let r: HandleResult | Promise<HandleResult> = session.handle(command);
    if (r instanceof Promise) r = await r;
    const n = r.responses.length;
    if (n === 1) out += encodeResponse(r.responses[0]!).length;
    else if (n > 1) out += encodeResponses(r.responses).length;
  }
  return out;
}
