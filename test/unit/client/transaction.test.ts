/** playMessage: the MTA's rules for which reply ends a message, against the scripted filter. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MilterClient } from '../../../src/client/client.js';
import { playMessage, type MessageScript } from '../../../src/client/transaction.js';
import { SMFIF_ADDHDRS } from '../../../src/protocol/constants.js';
import type { MilterCommand, OptnegResponse } from '../../../src/protocol/types.js';
import { startFakeFilter, type Handler } from './fake-filter.js';

const V6: OptnegResponse = { kind: 'optneg', version: 6, actions: SMFIF_ADDHDRS, protocol: 0 };

const script: MessageScript = {
  macros: { connect: { j: 'mx' }, envfrom: { i: 'Q1' }, envrcpt: { '{rcpt_addr}': 'x' } },
  connect: { hostname: 'client.example', family: 'inet', port: 4567, address: '192.0.2.7' },
  helo: 'client.example',
  sender: '<a@example.org>',
  senderArgs: ['SIZE=100'],
  recipients: ['<b@example.net>', { address: '<c@example.net>', args: ['NOTIFY=NEVER'] }],
  headers: [
    ['Subject', 'hi'],
    ['From', 'a@example.org'],
  ],
  body: 'hello\r\n',
  abortAfter: true,
};

async function run(t: { after: (fn: () => Promise<void> | void) => void }, handler?: Handler) {
  const filter = await startFakeFilter(V6, handler);
  t.after(() => filter.close());
  const client = await MilterClient.connect(filter.spec, { timeoutMs: 2000 });
  t.after(() => client.close());
  const result = await playMessage(client, script);
  // A round trip after the message guarantees the trailing ABORT has been received by the filter.
  await client.helo('sync');
  return { filter, result, kinds: filter.commands.map((c: MilterCommand) => c.kind) };
}

test('a full message: every step replied, EOM modifications collected, ABORT after', async (t) => {
  const { result, kinds, filter } = await run(t, (c, fallback) =>
    c.kind === 'eom' ? [{ kind: 'addHeader', name: 'X-A', value: '1' }, { kind: 'accept' }] : fallback(),
  );
  assert.equal(result.stoppedAt, 'eom');
  assert.deepEqual(result.reply, { kind: 'accept' });
  assert.deepEqual(result.eom?.modifications, [{ kind: 'addHeader', name: 'X-A', value: '1' }]);
  assert.deepEqual(result.acceptedRecipients, ['<b@example.net>', '<c@example.net>']);
  assert.equal(result.headers.length, 2);
  assert.equal(result.aborted, true);
  assert.deepEqual(kinds, [
    'optneg',
    'macro',
    'connect',
    'helo',
    'macro',
    'mail',
    'macro',
    'rcpt',
    'macro',
    'rcpt',
    'data',
    'header',
    'header',
    'eoh',
    'body',
    'eom',
    'abort',
    'helo',
  ]);
  assert.deepEqual(filter.commands[5], { kind: 'mail', sender: '<a@example.org>', args: ['SIZE=100'] });
  assert.deepEqual(filter.commands[9], {
    kind: 'rcpt',
    recipient: '<c@example.net>',
    args: ['NOTIFY=NEVER'],
  });
});

test('a reject at MAIL stops the message', async (t) => {
  const { result, kinds } = await run(t, (c, fallback) =>
    c.kind === 'mail' ? [{ kind: 'reject' }] : fallback(),
  );
  assert.equal(result.stoppedAt, 'envfrom');
  assert.deepEqual(result.reply, { kind: 'reject' });
  assert.equal(result.envrcpt.length, 0);
  assert.ok(!kinds.includes('rcpt'));
  assert.ok(kinds.includes('abort'));
});

test('a reject at RCPT fails only that recipient', async (t) => {
  const { result, kinds } = await run(t, (c, fallback) =>
    c.kind === 'rcpt' && c.recipient === '<b@example.net>'
      ? [{ kind: 'replyCode', text: '550 5.1.1 no such user' }]
      : fallback(),
  );
  assert.equal(result.stoppedAt, 'eom');
  assert.deepEqual(result.envrcpt, [
    { kind: 'replyCode', text: '550 5.1.1 no such user' },
    { kind: 'continue' },
  ]);
  assert.deepEqual(result.acceptedRecipients, ['<c@example.net>']);
  assert.ok(kinds.includes('eom'));
});

test('all recipients rejected: no DATA, the message stops at RCPT', async (t) => {
  const { result, kinds } = await run(t, (c, fallback) =>
    c.kind === 'rcpt' ? [{ kind: 'tempfail' }] : fallback(),
  );
  assert.equal(result.stoppedAt, 'envrcpt');
  assert.deepEqual(result.reply, { kind: 'tempfail' });
  assert.ok(!kinds.includes('data'));
});

test('a reject at CONNECT ends before any transaction and sends no ABORT', async (t) => {
  const { result, kinds } = await run(t, (c, fallback) =>
    c.kind === 'connect' ? [{ kind: 'reject' }] : fallback(),
  );
  assert.equal(result.stoppedAt, 'connect');
  assert.equal(result.aborted, false);
  assert.deepEqual(kinds, ['optneg', 'macro', 'connect', 'helo']);
});

test('a header-stage 421 reply code stops the message', async (t) => {
  const { result, kinds } = await run(t, (c, fallback) =>
    c.kind === 'header' ? [{ kind: 'replyCode', text: '421 4.7.0 Closing' }] : fallback(),
  );
  assert.equal(result.stoppedAt, 'header');
  assert.equal(result.headers.length, 1);
  assert.ok(!kinds.includes('eoh'));
});

test('a 421 at RCPT ends the message there, as testFilter plays it (the MTA ends the session)', async (t) => {
  const { result, kinds } = await run(t, (c, fallback) =>
    c.kind === 'rcpt' ? [{ kind: 'replyCode', text: '421 4.7.0 Closing' }] : fallback(),
  );
  assert.equal(result.stoppedAt, 'envrcpt');
  assert.deepEqual(result.envrcpt, [{ kind: 'replyCode', text: '421 4.7.0 Closing' }]);
  assert.deepEqual(result.acceptedRecipients, []);
  assert.equal(kinds.filter((k) => k === 'rcpt').length, 1, 'the second recipient is not tried');
  assert.ok(!kinds.includes('data'));
});

test('abortAfter a stage cuts the message there with SMFIC_ABORT', async (t) => {
  const filter = await startFakeFilter(V6);
  t.after(() => filter.close());
  const client = await MilterClient.connect(filter.spec, { timeoutMs: 2000 });
  t.after(() => client.close());
  const result = await playMessage(client, { ...script, abortAfter: 'data' });
  await client.helo('sync');
  assert.equal(result.stoppedAt, 'data');
  assert.deepEqual(result.reply, { kind: 'continue' });
  assert.equal(result.aborted, true);
  const kinds = filter.commands.map((c: MilterCommand) => c.kind);
  assert.deepEqual(kinds.slice(kinds.indexOf('data')), ['data', 'abort', 'helo']);
});
