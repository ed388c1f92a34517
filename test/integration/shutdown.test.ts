/** Graceful close: stop accepting, wait for sessions to QUIT, force-close after the deadline. */
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { MilterClient } from '../../src/client/client.js';
import { isMilterError } from '../../src/errors.js';
import type { Filter } from '../../src/filter.js';
import { everyActionFilter, newRecord } from '../helpers/filters.js';
import { assertEomOutcome, assertPassed, clientMessage } from '../helpers/mta.js';
import { RawMta, rawMessage } from '../helpers/raw-mta.js';
import { startServer } from '../helpers/server.js';
import { deferred, sleep, waitFor } from '../helpers/wait.js';

/** everyActionFilter whose body callback waits for `gate`. */
function gatedFilter(gate: Promise<void>, record = newRecord()): Filter<{ subject: string | undefined }> {
  return {
    ...everyActionFilter(record),
    async body() {
      await gate;
    },
  };
}

async function startMessage(client: MilterClient, subject: string): Promise<void> {
  assertPassed(
    await client.connect({ hostname: 'h', family: 'inet', port: 1, address: '192.0.2.9' }),
    'connect',
  );
  assertPassed(await client.envfrom('<s@example.org>'), 'envfrom');
  assertPassed(await client.envrcpt('<r@example.net>'), 'envrcpt');
  assertPassed(await client.header('Subject', subject), 'header');
  assertPassed(await client.eoh(), 'eoh');
}

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

test('close() waits for a session in flight to reach QUIT', async (t) => {
  const gate = deferred();
  const record = newRecord();
  const { server, address } = await startServer(t, { filter: gatedFilter(gate.promise, record) });
  const client = await MilterClient.connect(address.spec);
  t.after(() => client.close());
  await startMessage(client, 'accept');
  const body = client.body(Buffer.from('slow body\r\n')); // parks in the gated callback

  let closed = false;
  const closing = server.close({ deadlineMs: 60_000 });
  void closing.then(() => (closed = true));
  assert.equal(server.draining, true);
  assert.equal(server.close(), closing, 'close() is idempotent');
  assert.equal(await refused(address.port as number), true, 'no longer accepting');
  await assert.rejects(server.listen('inet:0@127.0.0.1'), (err) =>
    isMilterError(err, 'ERR_MILTER_SERVER_CLOSED'),
  );

  gate.resolve();
  assertPassed(await body, 'body');
  assertEomOutcome(await client.eom(), 'accept');
  await sleep(20);
  assert.equal(closed, false, 'still waiting: the session has not quit');
  await client.quit();
  await closing;
  assert.deepEqual([...record.closes.values()], [1]);
  assert.equal(server.connectionCount, 0);
});

test('a connection accepted but not yet negotiating when close() starts gets its whole session', async (t) => {
  const record = newRecord();
  const { server, address } = await startServer(t, { filter: everyActionFilter(record) });
  // Postfix connects, then negotiates: SIGTERM may come in between.
  const mta = await RawMta.connect(address);
  t.after(() => mta.destroy());
  await waitFor(() => server.connectionCount === 1, 'the connection to be accepted');
  let closed = false;
  const closing = server.close({ deadlineMs: 60_000 });
  void closing.then(() => (closed = true));
  assert.equal(await refused(address.port as number), true, 'no longer accepting');

  // Before: the socket was closed at once (Postfix: "read error in initial handshake", tempfail).
  const { protocol } = await mta.negotiate();
  assert.equal((await rawMessage(mta, protocol, 'accept', true)).final?.kind, 'accept');
  assert.equal(closed, false, 'still waiting: the session has not quit');
  // After the message Postfix sends ABORT; the session ends at QUIT, the safe point.
  mta.send({ kind: 'abort' }, { kind: 'quit' });
  await mta.closed;
  await closing;
  assert.equal(record.eoms, 1);
  assert.deepEqual([...record.closes.values()], [1]);
  assert.equal(server.connectionCount, 0);
});

test('close() force-closes sessions still open after the deadline', async (t) => {
  const record = newRecord();
  const hung = deferred(); // never resolved: an EOM callback that hangs
  const filter: Filter<{ subject: string | undefined }> = {
    ...everyActionFilter(record),
    eom: () => hung.promise.then(() => 'accept' as const),
  };
  const errors: string[] = [];
  const { server, address } = await startServer(t, {
    filter,
    // The session waits for a running callback before abort/close, up to the callback budget.
    timeouts: { callbackMs: 200 },
    observer: { error: (code) => errors.push(code) },
  });
  const idle = await MilterClient.connect(address.spec); // mid-transaction, simply not sending
  const busy = await MilterClient.connect(address.spec); // stuck in a callback
  t.after(() => [idle, busy].forEach((c) => c.close()));
  await startMessage(idle, 'accept');
  await startMessage(busy, 'accept');
  const eom = busy.eom();
  eom.catch(() => undefined);

  await server.close({ deadlineMs: 50 });
  await assert.rejects(eom, (err) => isMilterError(err, 'ERR_MILTER_CONNECTION_CLOSED'));
  await waitFor(() => record.closes.size === 2, 'close callbacks');
  assert.deepEqual([...record.closes.values()], [1, 1], 'close called once per connection');
  // The idle one's open transaction is aborted; the busy one's EOM already ended its transaction.
  assert.ok(record.aborts >= 1, 'the open transaction was aborted');
  assert.equal(server.connectionCount, 0);
});

test('after QUIT_NC the connection is reused, and close() ends it at once at that safe point', async (t) => {
  const record = newRecord();
  const { server, address } = await startServer(t, { filter: everyActionFilter(record) });
  const client = await MilterClient.connect(address.spec);
  t.after(() => client.close());
  assertEomOutcome(await clientMessage(client, 'modify', true), 'modify');
  client.quitNewConnection();
  // Same socket, no new OPTNEG: a second SMTP session.
  assertEomOutcome(await clientMessage(client, 'accept', true), 'accept');
  client.quitNewConnection();
  await waitFor(() => [...record.closes.values()][0] === 2, 'close per QUIT_NC session');

  // The deadline is far away: close() must not wait for it, the session is between SMTP sessions.
  const closing = server.close({ deadlineMs: 600_000 });
  const guard = sleep(10_000).then(() => 'waited for the deadline');
  assert.equal(await Promise.race([closing.then(() => 'closed'), guard]), 'closed');
  assert.equal(record.aborts, 0, 'nothing was open to abort');
});

test('close() does not outwait a callback that never settles once the deadline passed', async (t) => {
  const filter: Filter = { envfrom: () => new Promise<undefined>(() => undefined) };
  const { server, address } = await startServer(t, { filter, timeouts: { callbackMs: 0 } });
  const client = await MilterClient.connect(address.spec);
  t.after(() => client.close());
  const mail = client.envfrom('<stuck@example.org>');
  mail.catch(() => undefined);
  await waitFor(() => server.connectionCount === 1, 'the connection');
  await server.close({ deadlineMs: 50 });
  await assert.rejects(mail, (err) => isMilterError(err, 'ERR_MILTER_CONNECTION_CLOSED'));
});
