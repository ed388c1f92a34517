/**
 * Replays a captured MTA → milter byte stream into a real session, the way the server would drive it:
 * frames are cut by the FrameDecoder (limit taken from the session after every command), each command is
 * decoded and handed to `session.handle`, and the next command is fed only after the previous result has
 * settled (an MTA waits for each reply). Out-of-band responses (`sendNow`) and the command's own responses
 * are encoded together, in that order, as the server writes them.
 */
import { pino } from 'pino';
import type { Filter } from '../../../src/filter.js';
import type { HexPacket } from '../../helpers/captures.js';
import type { MilterCommand, MilterResponse } from '../../../src/protocol/types.js';
import type { HandleResult } from '../../../src/session/types.js';
import { createSession } from '../../../src/session/session.js';
import { inlineBody } from '../../../src/session/body-store.js';
import { decodeCommand } from '../../../src/protocol/decode.js';
import { encodeResponses } from '../../../src/protocol/encode.js';
import { FrameDecoder } from '../../../src/protocol/frame.js';
import { MILTER_LEN_BYTES } from '../../../src/protocol/constants.js';
import { DEFAULTS } from '../../../src/defaults.js';

/** The server's default callback budget (timeouts.callbackMs): replay under production settings. */
const SERVER_CALLBACK_TIMEOUT_MS = DEFAULTS.callbackMs;

/** What the session wrote in answer to one MTA packet. */
export interface ReplayStep {
  kind: MilterCommand['kind'];
  /** Encoded bytes written for this command (length prefixes included); empty when nothing was written. */
  reply: Buffer;
}

/** Outcome of one replay. */
export interface ReplayOutcome {
  steps: ReplayStep[];
  /** Everything the session wrote, in order: what `conn-*.milter.bin` holds for libmilter. */
  bytes: Buffer;
  /** How the stream ended: QUIT, a fatal result, or EOF (the stream ran out: `terminate('eof')`). */
  end: 'quit' | 'fatal' | 'eof';
  /** Bytes left unread after the session ended (a server stops reading). */
  unread: number;
}

/**
 * Feed `mta` (a `conn-*.mta.bin`) to a fresh session running `filter`.
 *
 * When the stream ends without QUIT, `terminate('eof')` is called, as the server does on socket EOF; after
 * a QUIT it is called too (a server racing the EOF), which the session must treat as a no-op.
 */
export async function replayStream(mta: Buffer, filter: Filter<unknown>, id: string): Promise<ReplayOutcome> {
  const outOfBand: MilterResponse[] = [];
  const session = createSession(
    { id, filter, logger: pino({ level: 'silent' }), callbackTimeoutMs: SERVER_CALLBACK_TIMEOUT_MS },
    { sendNow: (r) => void outOfBand.push(r) },
  );
  const decoder = new FrameDecoder(session.maxDataSize);
  decoder.push(mta);
  const steps: ReplayStep[] = [];
  const parts: Buffer[] = [];
  let end: ReplayOutcome['end'] = 'eof';
  for (let frame = decoder.next(); frame !== undefined; frame = decoder.next()) {
    const command = decodeCommand(frame);
    const result: HandleResult = await inlineBody(await session.handle(command));
    const written = encodeResponses([...outOfBand.splice(0), ...result.responses]);
    steps.push({ kind: command.kind, reply: written });
    parts.push(written);
    decoder.maxDataSize = session.maxDataSize;
    if (result.end !== undefined) {
      end = result.end;
      break;
    }
  }
  await session.terminate('eof');
  return { steps, bytes: Buffer.concat(parts), end, unread: decoder.bufferedBytes };
}

/**
 * The captured reply bytes grouped per MTA packet, from the `.hex` log's arrival order: the milter packets
 * logged after MTA packet i and before MTA packet i+1 answer packet i.
 */
export function capturedSteps(packets: readonly HexPacket[]): Buffer[] {
  const groups: Buffer[][] = [];
  for (const p of packets) {
    if (p.dir === '>') {
      groups.push([]);
      continue;
    }
    const group = groups[groups.length - 1];
    if (group === undefined) throw new Error('milter packet before any MTA packet');
    group.push(framed(p.bytes));
  }
  return groups.map((g) => Buffer.concat(g));
}

/** A `.hex` packet (command byte + payload) with its 4-byte length prefix, as on the wire. */
export function framed(bytes: Buffer): Buffer {
  const out = Buffer.alloc(MILTER_LEN_BYTES + bytes.length);
  out.writeUInt32BE(bytes.length, 0);
  bytes.copy(out, MILTER_LEN_BYTES);
  return out;
}
