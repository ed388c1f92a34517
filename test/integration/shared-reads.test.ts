/**
 * Shared-buffer reads (src/server/shared-read.ts): every connection reads into one process-wide buffer,
 * so anything that outlives a read callback must have been copied. These tests make other connections
 * read while bytes of the first one are still in use, and check that nothing changed under it, on both
 * read paths (shared buffer and ordinary stream reads, the fallback).
 */
import assert from 'node:assert/strict';
import diagnosticsChannel from 'node:diagnostics_channel';
import net from 'node:net';
import { test, type TestContext } from 'node:test';
import type { Filter } from '../../src/filter.js';
import { encodeCommands } from '../../src/protocol/encode.js';
import type { MilterCommand } from '../../src/protocol/types.js';
import { connectionDebugStats, resetConnectionDebugStats } from '../../src/server/connection-stats.js';
import { createMilterServer, type ListenAddress, type MilterServer } from '../../src/server/server.js';
import { RawMta, endOfMessage, step } from '../helpers/raw-mta.js';
import { startServer } from '../helpers/server.js';
import { deferred, sleep, waitFor } from '../helpers/wait.js';

/** A body chunk whose every byte depends on `tag` and the position: any overwrite shows. */
function pattern(tag: number, size: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) b[i] = (tag * 31 + i * 7) & 0xff;
  return b;
}

const TRANSACTION_FILTER: Filter = {
  envfrom: () => undefined,
  envrcpt: () => undefined,
  eom: () => 'accept',
};

/** Negotiate and open a transaction (MAIL, RCPT), each step answered with continue. */
async function openTransaction(mta: RawMta): Promise<void> {
  const { protocol } = await mta.negotiate();
  assert.deepEqual(await step(mta, protocol, { kind: 'mail', sender: '<a@example.org>', args: [] }), {
    kind: 'continue',
  });
  assert.deepEqual(await step(mta, protocol, { kind: 'rcpt', recipient: '<b@example.net>', args: [] }), {
    kind: 'continue',
  });
}

/** A milter server listening through a net.Server built by the caller (as listen(net.Server) allows). */
async function adoptedServer(
  t: TestContext,
  pauseOnConnect: boolean,
): Promise<{ server: MilterServer; external: net.Server; address: ListenAddress }> {
  const server = createMilterServer({ filter: TRANSACTION_FILTER });
  t.after(() => server.close({ deadlineMs: 100 }));
  const external = net.createServer({ allowHalfOpen: true, pauseOnConnect });
  await new Promise<void>((resolve) => external.listen(0, '127.0.0.1', resolve));
  return { server, external, address: await server.listen(external) };
}

/** One whole message over a new connection; its final answer must be accept. */
async function acceptedMessage(t: TestContext, address: ListenAddress): Promise<RawMta> {
  const mta = await RawMta.connect(address);
  t.after(() => mta.destroy());
  await openTransaction(mta);
  assert.equal((await endOfMessage(mta)).final?.kind, 'accept');
  return mta;
}

function connectionsOf(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) =>
    server.getConnections((err, n) => (err ? reject(err) : resolve(n))),
  );
}

for (const shared of [true, false]) {
  const mode = shared ? 'shared buffer' : 'stream reads';

  test(`${mode}: an async body callback still sees its own bytes after other connections read`, async (t) => {
    resetConnectionDebugStats();
    const seen = new Map<number, Buffer[]>();
    const gate = deferred();
    const filter: Filter<number> = {
      envfrom: (ctx, sender) => {
        ctx.priv = Number(/\d+/.exec(sender)?.[0] ?? 0);
      },
      async body(ctx, chunk) {
        // The first connection holds its chunks across the other connections' traffic.
        if (ctx.priv === 1) await gate.promise;
        const list = seen.get(ctx.priv ?? 0) ?? [];
        list.push(Buffer.from(chunk));
        seen.set(ctx.priv ?? 0, list);
      },
      eom: () => 'accept',
    };
    const { address } = await startServer(t, { filter, sharedReadBuffer: shared });
    const mtas = await Promise.all([1, 2, 3].map(() => RawMta.connect(address)));
    t.after(() => mtas.forEach((m) => m.destroy()));
    for (const [i, mta] of mtas.entries()) {
      const { protocol } = await mta.negotiate();
      const sender = `<user${i + 1}@example.org>`;
      assert.deepEqual(await step(mta, protocol, { kind: 'mail', sender, args: [] }), { kind: 'continue' });
    }
    // Connection 1: two body frames in one write (the first goes in flight, the second stays in the
    // decoder), then a third one that arrives while the first is still running (queued as pending bytes).
    const first = mtas[0] as RawMta;
    const held = [pattern(1, 3000), pattern(2, 70), pattern(3, 5000)];
    first.sendBytes(encodeCommands(held.slice(0, 2).map((chunk) => ({ kind: 'body' as const, chunk }))));
    await sleep(20);
    first.send({ kind: 'body', chunk: held[2] as Buffer });
    await sleep(20);
    // Meanwhile the others stream plenty of different bytes through the (shared) read buffer.
    for (let round = 0; round < 20; round++) {
      for (const [i, mta] of mtas.slice(1).entries()) {
        mta.send({ kind: 'body', chunk: pattern(100 + round * 2 + i, 4096) });
        assert.deepEqual(await mta.next(), { kind: 'continue' });
      }
    }
    gate.resolve();
    for (let i = 0; i < held.length; i++) assert.deepEqual(await first.next(), { kind: 'continue' });
    assert.equal((await endOfMessage(first)).final?.kind, 'accept');
    assert.deepEqual(seen.get(1), held, 'the held chunks arrived unchanged, in order');
    for (const [i] of mtas.slice(1).entries()) {
      const expected = Array.from({ length: 20 }, (_, round) => pattern(100 + round * 2 + i, 4096));
      assert.deepEqual(seen.get(i + 2), expected);
    }
    assert.equal(connectionDebugStats.sharedReads, shared ? 3 : 0, 'the read path in use');
  });

  test(`${mode}: frames cut into small pieces across reads, interleaved between connections`, async (t) => {
    const headers = new Map<number, string[]>();
    const filter: Filter<number> = {
      envfrom: (ctx, sender) => {
        ctx.priv = Number(/\d+/.exec(sender)?.[0] ?? 0);
      },
      header: (ctx, name, value) => {
        const list = headers.get(ctx.priv ?? 0) ?? [];
        list.push(`${name}: ${value}`);
        headers.set(ctx.priv ?? 0, list);
      },
      eom: () => 'accept',
    };
    const { address } = await startServer(t, { filter, sharedReadBuffer: shared });
    const mtas = await Promise.all([1, 2, 3, 4].map(() => RawMta.connect(address)));
    t.after(() => mtas.forEach((m) => m.destroy()));
    for (const mta of mtas) await mta.negotiate();
    const streams = mtas.map((_, i) => {
      const commands: MilterCommand[] = [
        { kind: 'mail', sender: `<user${i + 1}@example.org>`, args: [] },
        ...Array.from({ length: 5 }, (_, h) => ({
          kind: 'header' as const,
          name: `X-Conn-${i + 1}`,
          value: `header ${h} ${'v'.repeat(40 + h * 13)}`,
        })),
      ];
      return encodeCommands(commands);
    });
    // 7-byte pieces, a pause after each round: every frame spans several reads, and each round of reads
    // hits every connection in turn.
    for (let offset = 0; streams.some((s) => offset < s.length); offset += 7) {
      for (const [i, mta] of mtas.entries()) {
        const s = streams[i] as Buffer;
        if (offset < s.length) mta.sendBytes(s.subarray(offset, offset + 7));
      }
      await sleep(1);
    }
    for (const mta of mtas) {
      for (let k = 0; k < 6; k++) assert.deepEqual(await mta.next(), { kind: 'continue' });
    }
    for (const [i] of mtas.entries()) {
      assert.deepEqual(
        headers.get(i + 1),
        Array.from({ length: 5 }, (_, h) => `X-Conn-${i + 1}: header ${h} ${'v'.repeat(40 + h * 13)}`),
      );
    }
  });
}

test('a net.Server passed to listen() without pauseOnConnect uses stream reads and works', async (t) => {
  resetConnectionDebugStats();
  const { address } = await adoptedServer(t, false);
  await acceptedMessage(t, address);
  assert.equal(connectionDebugStats.sharedReads, 0);
});

test('a net.Server passed to listen() with pauseOnConnect gets shared reads', async (t) => {
  resetConnectionDebugStats();
  const { server, external, address } = await adoptedServer(t, true);
  const mta = await acceptedMessage(t, address);
  assert.equal(connectionDebugStats.sharedReads, 1);
  // The server's own connection count follows the adopted socket.
  assert.equal(await connectionsOf(external), 1);
  mta.send({ kind: 'quit' });
  await mta.next();
  await waitFor(() => server.connectionCount === 0, 'the connection to close');
  assert.equal(await connectionsOf(external), 0);
});

test("a listener milterd creates accepts straight into shared reads, with net's bookkeeping", async (t) => {
  resetConnectionDebugStats();
  const published: net.Socket[] = [];
  const onSocket = (message: unknown): void => {
    published.push((message as { socket: net.Socket }).socket);
  };
  diagnosticsChannel.subscribe('net.server.socket', onSocket);
  t.after(() => diagnosticsChannel.unsubscribe('net.server.socket', onSocket));
  const server = createMilterServer({ filter: TRANSACTION_FILTER });
  let closed = false;
  t.after(() => (closed ? undefined : server.close({ deadlineMs: 100 })));
  const address = await server.listen('inet:0@127.0.0.1');
  const mtas = [await acceptedMessage(t, address), await acceptedMessage(t, address)];
  assert.equal(connectionDebugStats.sharedReads, 2);
  // The diagnostics channel still sees every accepted socket, as with net's own accept.
  assert.equal(published.length, 2);
  assert.deepEqual(published.map((s) => s.remotePort).sort(), mtas.map((m) => m.socket.localPort).sort());
  // The listener counts the sockets it accepted (net's getConnections), and counts them down again.
  const listener = (published[0] as net.Socket & { server: net.Server }).server;
  assert.ok(listener instanceof net.Server);
  assert.equal(await connectionsOf(listener), 2);
  for (const mta of mtas) {
    mta.send({ kind: 'quit' });
    await mta.next();
  }
  await waitFor(() => server.connectionCount === 0, 'the connections to close');
  assert.equal(await connectionsOf(listener), 0);
  await server.close({ deadlineMs: 100 });
  closed = true;
});
