/**
 * An EOM answer with a streamed body replacement: the modifications, then the body in REPLBODY packets
 * read from its store one at a time, waiting for each write to drain, so a large body is never in memory
 * whole. The decision is the caller's to send, once this returned true.
 */
import { MILTER_CHUNK_SIZE } from '../protocol/constants.js';
import { encodeResponse, encodeResponses } from '../protocol/encode.js';
import type { MilterResponse } from '../protocol/types.js';
import type { BodyStore } from '../session/body-store.js';
import type { ReplyWriter } from './reply-writer.js';

const EMPTY = Buffer.alloc(0);

/**
 * Write `before` (the modifications), then `body` as REPLBODY packets. Returns false when the connection
 * ended meanwhile (`dead()`), true when the body went out whole. Throws on a read or write failure: the
 * caller ends the connection before the decision, so the MTA applies its own failure action and a
 * half-written body is never accepted.
 */
export async function writeBody(
  writer: ReplyWriter,
  before: readonly MilterResponse[],
  body: BodyStore,
  dead: () => boolean,
): Promise<boolean> {
  if (before.length > 0 && !writer.write(encodeResponses(before))) await writer.drained();
  let sent = false;
  for await (const piece of body.read()) {
    for (let off = 0; off < piece.length; off += MILTER_CHUNK_SIZE) {
      if (dead()) return false;
      const chunk = piece.subarray(off, off + MILTER_CHUNK_SIZE);
      if (!writer.write(encodeResponse({ kind: 'replaceBody', chunk }))) await writer.drained();
      sent = true;
    }
  }
  // An empty replacement is one empty packet (= empty body), as chunkBody sends it.
  if (!sent && !dead() && !writer.write(encodeResponse({ kind: 'replaceBody', chunk: EMPTY }))) {
    await writer.drained();
  }
  return !dead();
}
