/** MilterClient against a scripted in-test filter over TCP (127.0.0.1:0) and a temp Unix socket. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MilterClient } from '../../../src/client/client.js';
import { isMilterError } from '../../../src/errors.js';
import { encodeCommands } from '../../../src/protocol/encode.js';
import {
  SMFIF_ADDHDRS,
  SMFIF_CHGBODY,
  SMFIF_CHGHDRS,
  SMFIP_MDS_1M,
  SMFIP_NOHELO,
  SMFIP_NR_CONN,
  SMFIP_NR_HDR,
  SMFIP_SKIP,
} from '../../../src/protocol/constants.js';
import type { OptnegResponse } from '../../../src/protocol/types.js';
import { startFakeFilter, type Handler } from './fake-filter.js';

const V6: OptnegResponse = { kind: 'optneg', version: 6, actions: 0, protocol: 0 };
const inet = { hostname: 'client.example', family: 'inet' as const, port: 4567, address: '192.0.2.7' };

async function setup(
  t: { after: (fn: () => Promise<void> | void) => void },
  optneg: OptnegResponse = V6,
  handler?: Handler,
  unix = false,
) {
  const filter = await startFakeFilter(optneg, handler, { unix });
  t.after(() => filter.close());
  const client = await MilterClient.connect(filter.spec, { timeoutMs: 2000 });
  t.after(() => client.close());
  return { filter, client };
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => isMilterError(err) && err.code === code);
}

for (const unix of [false, true]) {
  test(`negotiates and runs commands over ${unix ? 'a Unix socket' : 'TCP'}`, async (t) => {
    const optneg: OptnegResponse = { ...V6, actions: SMFIF_ADDHDRS, macroLists: { 2: 'i {auth_type}' } };
    const { filter, client } = await setup(t, optneg, undefined, unix);
    assert.deepEqual(client.negotiated, {
      version: 6,
      actions: SMFIF_ADDHDRS,
      protocol: 0,
      macroLists: { 2: 'i {auth_type}' },
    });
    assert.deepEqual(await client.connect(inet), { kind: 'continue' });
    assert.deepEqual(await client.helo('client.example'), { kind: 'continue' });
    assert.deepEqual(filter.commands[0], { kind: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff });
    assert.deepEqual(filter.commands.slice(1), [
      { kind: 'connect', ...inet },
      { kind: 'helo', hostname: 'client.example' },
    ]);
    await client.quit();
    assert.equal(client.closed, true);
    assert.equal(filter.commands.at(-1)?.kind, 'quit');
  });
}

test('negotiation: bits and versions the MTA did not offer are refused with ERR_MILTER_NEGOTIATION', async (t) => {
  const bad: OptnegResponse[] = [
    { ...V6, version: 7 },
    { ...V6, version: 1 },
    { ...V6, actions: 0x200 },
    { ...V6, protocol: 0x00200000 },
  ];
  for (const optneg of bad) {
    const filter = await startFakeFilter(optneg);
    t.after(() => filter.close());
    await rejectsWith(MilterClient.connect(filter.spec), 'ERR_MILTER_NEGOTIATION');
  }
  // MDS bits are internal and accepted even though never offered.
  const { client } = await setup(t, { ...V6, protocol: SMFIP_MDS_1M });
  assert.equal(client.negotiated.protocol, SMFIP_MDS_1M);
});

test('NO bits: the command is skipped and nothing is sent', async (t) => {
  const { filter, client } = await setup(t, { ...V6, protocol: SMFIP_NOHELO });
  client.macro('helo', { '{tls_version}': 'TLSv1.3' });
  assert.deepEqual(await client.helo('x'), { kind: 'skipped' });
  assert.deepEqual(await client.envfrom('<a@b>'), { kind: 'continue' });
  assert.deepEqual(
    filter.commands.map((c) => c.kind),
    ['optneg', 'mail'],
    'neither HELO nor its macros were sent',
  );
});

test('NR bits: the command is sent and no reply awaited; the next reply still matches', async (t) => {
  const { filter, client } = await setup(t, { ...V6, protocol: SMFIP_NR_CONN | SMFIP_NR_HDR });
  assert.deepEqual(await client.connect(inet), { kind: 'noreply' });
  assert.deepEqual(await client.header('Subject', 'x'), { kind: 'noreply' });
  assert.deepEqual(await client.helo('h'), { kind: 'continue' });
  assert.deepEqual(
    filter.commands.map((c) => c.kind),
    ['optneg', 'connect', 'header', 'helo'],
  );
});

test('protocol version: v2 skips DATA and UNKNOWN, v3 skips only DATA', async (t) => {
  const v2 = await setup(t, { ...V6, version: 2 });
  assert.deepEqual(await v2.client.data(), { kind: 'skipped' });
  assert.deepEqual(await v2.client.unknown('XFOO'), { kind: 'skipped' });
  const v3 = await setup(t, { ...V6, version: 3 });
  assert.deepEqual(await v3.client.data(), { kind: 'skipped' });
  assert.deepEqual(await v3.client.unknown('XFOO'), { kind: 'continue' });
  assert.deepEqual(v3.filter.commands.at(-1), { kind: 'unknown', line: 'XFOO' });
});

test('queued macros go out in the same write as the next command', async (t) => {
  const { filter, client } = await setup(t);
  client.macro('connect', { j: 'mx.example.net', '{daemon_name}': 'mx' });
  client.macro('connect', { v: 'Postfix 3.7.11' });
  await client.connect(inet);
  const expected = encodeCommands([
    {
      kind: 'macro',
      stage: 'C',
      macros: [
        ['j', 'mx.example.net'],
        ['{daemon_name}', 'mx'],
      ],
    },
    { kind: 'macro', stage: 'C', macros: [['v', 'Postfix 3.7.11']] },
    { kind: 'connect', ...inet },
  ]);
  // Chunk 0 is OPTNEG; the client then waits for each reply, so chunk 1 is exactly one write.
  assert.deepEqual(filter.chunks[1], expected);
  assert.equal(filter.chunks.length, 2);
});

test('EOM collects modifications in order and counts progress packets', async (t) => {
  const optneg = { ...V6, actions: SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_CHGBODY };
  const { client } = await setup(t, optneg, (c, fallback) =>
    c.kind === 'eom'
      ? [
          { kind: 'progress' },
          { kind: 'addHeader', name: 'X-Scanned', value: 'yes' },
          { kind: 'progress' },
          { kind: 'changeHeader', index: 1, name: 'Subject', value: '' },
          { kind: 'replaceBody', chunk: Buffer.from('new body\r\n') },
          { kind: 'replyCode', text: '250 2.0.0 ok' },
        ]
      : fallback(),
  );
  const result = await client.eom();
  assert.deepEqual(result, {
    reply: { kind: 'replyCode', text: '250 2.0.0 ok' },
    progress: 2,
    modifications: [
      { kind: 'addHeader', name: 'X-Scanned', value: 'yes' },
      { kind: 'changeHeader', index: 1, name: 'Subject', value: '' },
      { kind: 'replaceBody', chunk: Buffer.from('new body\r\n') },
    ],
  });
});

test('body is split at 65535 bytes and stops at the first non-continue reply', async (t) => {
  let bodies = 0;
  const { filter, client } = await setup(t, { ...V6, protocol: SMFIP_SKIP }, (c, fallback) =>
    c.kind === 'body' && ++bodies === 4 ? [{ kind: 'skip' }] : fallback(),
  );
  assert.deepEqual(await client.body(Buffer.alloc(150_000, 1)), { kind: 'continue' });
  const sizes = filter.commands.flatMap((c) => (c.kind === 'body' ? [c.chunk.length] : []));
  assert.deepEqual(sizes, [65535, 65535, 18930]);
  assert.deepEqual(await client.body(Buffer.alloc(200_000, 2)), { kind: 'skip' });
  assert.equal(filter.commands.filter((c) => c.kind === 'body').length, 4, 'no chunk after the skip');
  assert.deepEqual(await client.body(Buffer.alloc(0)), { kind: 'skipped' });
});

test('a missing reply times out with ERR_MILTER_TIMEOUT and closes the connection', async (t) => {
  const filter = await startFakeFilter(V6, (c, fallback) => (c.kind === 'helo' ? 'silent' : fallback()));
  t.after(() => filter.close());
  const client = await MilterClient.connect(filter.spec, { timeoutMs: 50 });
  t.after(() => client.close());
  await rejectsWith(client.helo('slow'), 'ERR_MILTER_TIMEOUT');
  assert.equal(client.closed, true);
  await rejectsWith(client.envfrom('<a@b>'), 'ERR_MILTER_CONNECTION_CLOSED');
});

test('EOF in the middle of a call rejects it with ERR_MILTER_CONNECTION_CLOSED', async (t) => {
  const { client } = await setup(t, V6, (c, fallback) => (c.kind === 'mail' ? 'hangup' : fallback()));
  await rejectsWith(client.envfrom('<a@b>'), 'ERR_MILTER_CONNECTION_CLOSED');
  assert.equal(client.closed, true);
  assert.throws(
    () => client.abort(),
    (err: unknown) => isMilterError(err, 'ERR_MILTER_CONNECTION_CLOSED'),
  );
});

test('a modification outside EOM is an unexpected response', async (t) => {
  const { client } = await setup(t, V6, (c, fallback) =>
    c.kind === 'rcpt' ? [{ kind: 'addRecipient', recipient: '<x@y>' }] : fallback(),
  );
  await rejectsWith(client.envrcpt('<b@c>'), 'ERR_MILTER_UNEXPECTED_RESPONSE');
  assert.equal(client.closed, true);
});

test('progress outside EOM and a reply nobody asked for are unexpected', async (t) => {
  const a = await setup(t, V6, (c, fallback) => (c.kind === 'helo' ? [{ kind: 'progress' }] : fallback()));
  await rejectsWith(a.client.helo('h'), 'ERR_MILTER_UNEXPECTED_RESPONSE');
  // Replying to ABORT (never replied to) puts a packet on the wire while nothing is awaited.
  const b = await setup(t, V6, (c, fallback) => (c.kind === 'abort' ? [{ kind: 'continue' }] : fallback()));
  b.client.abort();
  // Bounded wait for the stray packet to arrive; the client fails the connection when it does.
  for (let i = 0; i < 200 && !b.client.closed; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(b.client.closed, true);
  await rejectsWith(b.client.eom(), 'ERR_MILTER_CONNECTION_CLOSED');
});

test('CONN_FAIL is reported as the reply and drops the connection', async (t) => {
  const { client } = await setup(t, V6, (c, fallback) =>
    c.kind === 'connect' ? [{ kind: 'connFail' }] : fallback(),
  );
  assert.deepEqual(await client.connect(inet), { kind: 'connFail' });
  assert.equal(client.closed, true);
});

test('calls must not overlap', async (t) => {
  const { client } = await setup(t);
  const first = client.helo('a');
  await rejectsWith(client.helo('b'), 'ERR_MILTER_INVALID_ARGUMENT');
  assert.deepEqual(await first, { kind: 'continue' });
});

test('QUIT_NC keeps the connection open for a new CONNECT', async (t) => {
  const { filter, client } = await setup(t);
  await client.connect(inet);
  client.quitNewConnection();
  assert.deepEqual(await client.connect(inet), { kind: 'continue' });
  assert.deepEqual(
    filter.commands.map((c) => c.kind),
    ['optneg', 'connect', 'quitNewConnection', 'connect'],
  );
});
