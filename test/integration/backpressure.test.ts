/**
 * Backpressure: an MTA flooding BODY frames while the body callback is slow must not make the server
 * buffer without bound. The connection stops reading once its pending chunks pass the read budget.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Filter } from '../../src/filter.js';
import { MILTER_CHUNK_SIZE } from '../../src/protocol/constants.js';
import { encodeCommands } from '../../src/protocol/encode.js';
import { connectionDebugStats, resetConnectionDebugStats } from '../../src/server/connection-stats.js';
import { RawMta, endOfMessage, step } from '../helpers/raw-mta.js';
import { startServer } from '../helpers/server.js';
import { sleep, tempDir } from '../helpers/wait.js';

const BUDGET = 256 * 1024;
const CHUNKS = 120; // ~7.5 MiB of body, far above the budget

test('a BODY flood against a slow body callback pauses reading instead of buffering', async (t) => {
  resetConnectionDebugStats();
  let bodyBytes = 0;
  let maxChunk = 0;
  const filter: Filter = {
    envfrom: () => undefined,
    envrcpt: () => undefined,
    async body(_ctx, chunk) {
      bodyBytes += chunk.length;
      maxChunk = Math.max(maxChunk, chunk.length);
      await sleep(2);
    },
    eom: () => 'accept',
  };
  const { address } = await startServer(t, { filter, readBudgetBytes: BUDGET });
  const mta = await RawMta.connect(address);
  t.after(() => mta.destroy());
  const { protocol } = await mta.negotiate();
  const mail = await step(mta, protocol, { kind: 'mail', sender: '<flood@example.org>', args: [] });
  assert.deepEqual(mail, { kind: 'continue' });
  const rcpt = await step(mta, protocol, { kind: 'rcpt', recipient: '<user@example.net>', args: [] });
  assert.deepEqual(rcpt, { kind: 'continue' });

  // Write everything without waiting for replies (as a broken or hostile MTA would).
  const chunk = Buffer.alloc(MILTER_CHUNK_SIZE, 0x61);
  const frames = encodeCommands(Array.from({ length: CHUNKS }, () => ({ kind: 'body' as const, chunk })));
  mta.sendBytes(frames);

  const replies = [];
  for (let i = 0; i < CHUNKS; i++) replies.push(await mta.next());
  assert.ok(
    replies.every((r) => r?.kind === 'continue'),
    'every BODY frame answered with continue',
  );
  assert.equal((await endOfMessage(mta)).final?.kind, 'accept');
  assert.equal(bodyBytes, CHUNKS * MILTER_CHUNK_SIZE, 'every body byte reached the filter, in frames');
  assert.equal(maxChunk, MILTER_CHUNK_SIZE);

  assert.ok(connectionDebugStats.pauses > 0, 'reading paused at least once');
  // One socket read can overshoot the budget by at most one stream buffer's worth (< 128 KiB).
  assert.ok(
    connectionDebugStats.maxPendingBytes < BUDGET + 128 * 1024,
    `pending bytes stayed bounded (${connectionDebugStats.maxPendingBytes})`,
  );
});

for (const shared of [true, false]) {
  // Shared reads write replies straight to the handle (direct-write.ts); otherwise through socket.write().
  const writes = shared ? 'direct writes' : 'socket.write()';
  test(`${writes}: a reply larger than the socket buffer is flushed before the next command is dispatched`, async (t) => {
    resetConnectionDebugStats();
    const big = Buffer.alloc(4 * 1024 * 1024, 0x62);
    const order: string[] = [];
    const filter: Filter = {
      envfrom(_ctx, sender) {
        order.push(`envfrom ${sender}`);
      },
      envrcpt: () => undefined,
      async eom(ctx) {
        order.push('eom');
        await ctx.replaceBody(big);
        return 'accept' as const;
      },
    };
    // A Unix socket: its kernel buffers (~200 KiB) are far smaller than the reply, unlike loopback TCP's.
    const dir = await tempDir(t);
    const { address } = await startServer(
      t,
      { filter, sharedReadBuffer: shared },
      `unix:${join(dir, 'drain.sock')}`,
    );
    const mta = await RawMta.connect(address);
    t.after(() => mta.destroy());
    const { protocol } = await mta.negotiate();
    assert.deepEqual(await step(mta, protocol, { kind: 'mail', sender: '<one@example.org>', args: [] }), {
      kind: 'continue',
    });
    assert.deepEqual(await step(mta, protocol, { kind: 'rcpt', recipient: '<user@example.net>', args: [] }), {
      kind: 'continue',
    });
    // EOM and the next MAIL in one write, while we do not read: the 4 MiB reply cannot flush at once.
    mta.socket.pause();
    mta.send(
      { kind: 'eom', chunk: Buffer.alloc(0) },
      { kind: 'mail', sender: '<two@example.org>', args: [] },
    );
    await sleep(50);
    mta.socket.resume();

    let replaced = 0;
    for (;;) {
      const r = await mta.next();
      assert.ok(r, 'connection still open');
      if (r.kind !== 'replaceBody') {
        assert.equal(r.kind, 'accept');
        break;
      }
      replaced += r.chunk.length;
    }
    assert.equal(replaced, big.length);
    assert.deepEqual(await mta.next(), { kind: 'continue' }, 'the second MAIL is answered after the EOM');
    assert.deepEqual(order, ['envfrom <one@example.org>', 'eom', 'envfrom <two@example.org>']);
    assert.ok(connectionDebugStats.drainWaits > 0, 'the connection waited for the reply to go out');
    // The path this case is about was the one taken.
    assert.equal(connectionDebugStats.queuedDirectWrites > 0, shared);
  });
}
