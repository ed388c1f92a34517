/** Connection limit (fail fast), negotiation, idle and callback timeouts. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Filter } from '../../src/filter.js';
import { everyActionFilter, newRecord } from '../helpers/filters.js';
import { memoryLogger } from '../helpers/logs.js';
import { RawMta, rawMessage, step } from '../helpers/raw-mta.js';
import { startServer } from '../helpers/server.js';
import { sleep, waitFor } from '../helpers/wait.js';

test('connections beyond maxConnections are accepted and closed at once', async (t) => {
  const log = memoryLogger();
  let refused = 0;
  let opened = 0;
  const { server, address } = await startServer(t, {
    filter: everyActionFilter(),
    logger: log.logger,
    maxConnections: 2,
    observer: { connectionRefused: () => refused++, connectionOpened: () => opened++ },
  });
  const [a, b] = await Promise.all([RawMta.connect(address), RawMta.connect(address)]);
  t.after(() => [a, b].forEach((m) => m?.destroy()));
  await Promise.all([a?.negotiate(), b?.negotiate()]);
  assert.equal(server.connectionCount, 2);

  const extra = await RawMta.connect(address);
  t.after(() => extra.destroy());
  extra.send({ kind: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff });
  await extra.closed;
  assert.equal(extra.received.length, 0, 'the refused connection gets no reply');
  assert.equal(refused, 1);
  assert.equal(opened, 2);
  assert.ok(
    log.lines.some((l) => l.level === 40 && l.limit === 2),
    'a warning names the limit',
  );

  // Once a slot frees up, new connections are served again.
  a?.send({ kind: 'quit' });
  await a?.closed;
  await waitFor(() => server.connectionCount === 1, 'the quit connection to be released');
  const later = await RawMta.connect(address);
  t.after(() => later.destroy());
  assert.equal((await later.negotiate()).kind, 'optneg');
});

test('a connection that does not negotiate in time is closed', async (t) => {
  const errors: string[] = [];
  const { address } = await startServer(t, {
    filter: everyActionFilter(),
    timeouts: { negotiateMs: 300 },
    observer: { error: (code) => errors.push(code) },
  });
  const silent = await RawMta.connect(address);
  t.after(() => silent.destroy());
  await silent.closed;
  assert.deepEqual(errors, ['ERR_MILTER_TIMEOUT']);

  // The negotiation timer stops at OPTNEG: a prompt MTA may then stay quiet for longer.
  const prompt = await RawMta.connect(address);
  t.after(() => prompt.destroy());
  const { protocol } = await prompt.negotiate();
  await sleep(400);
  assert.equal((await rawMessage(prompt, protocol, 'accept', true)).final?.kind, 'accept');
});

test('an MTA idle between commands is disconnected; a slow callback is not idleness', async (t) => {
  const record = newRecord();
  const base = everyActionFilter(record);
  const filter: Filter<{ subject: string | undefined }> = {
    ...base,
    async envfrom() {
      await sleep(400); // longer than idleMs: the idle timer must not run while a callback does
    },
  };
  const { address } = await startServer(t, { filter, timeouts: { idleMs: 250, callbackMs: 0 } });
  const mta = await RawMta.connect(address);
  t.after(() => mta.destroy());
  const { protocol } = await mta.negotiate();
  assert.equal((await rawMessage(mta, protocol, 'accept', true)).final?.kind, 'accept');
  await mta.closed;
  await waitFor(() => record.closes.size === 1, 'close callback');
  assert.deepEqual([...record.closes.values()], [1]);
});

test('a callback over its time budget gets the failure decision and the session goes on', async (t) => {
  const filter: Filter = {
    // '<slow@…>' never settles, '<throw@…>' throws; anything else continues.
    envfrom(_ctx, sender) {
      if (sender === '<throw@example.org>') throw new Error('filter bug');
      return sender === '<slow@example.org>' ? new Promise<undefined>(() => undefined) : undefined;
    },
  };
  const { address } = await startServer(t, { filter, timeouts: { callbackMs: 50 } });
  const mta = await RawMta.connect(address);
  t.after(() => mta.destroy());
  const { protocol } = await mta.negotiate();
  const slow = await step(mta, protocol, { kind: 'mail', sender: '<slow@example.org>', args: [] });
  assert.deepEqual(slow, { kind: 'tempfail' });
  const thrown = await step(mta, protocol, { kind: 'mail', sender: '<throw@example.org>', args: [] });
  assert.deepEqual(thrown, { kind: 'tempfail' }, 'a throwing callback gets the failure decision too');
  const next = await step(mta, protocol, { kind: 'mail', sender: '<fast@example.org>', args: [] });
  assert.deepEqual(next, { kind: 'continue' }, 'the connection still works after the timeout');
});
