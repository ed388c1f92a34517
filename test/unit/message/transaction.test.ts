/** The whole-message API: the transaction model, its diff into milter actions, the body store, messageFilter. */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { test } from 'node:test';
import { MilterUsageError } from '../../../src/errors.js';
import { Decision, type Filter } from '../../../src/filter.js';
import { messageFilter } from '../../../src/message/index.js';
import { BodyStore } from '../../../src/session/body-store.js';
import { fakeTransaction, testFilter } from '../../../src/testing/index.js';

const HEADERS: Array<[string, string]> = [
  ['Received', 'from a'],
  ['Subject', 'hello'],
  ['X-Spam', 'one'],
  ['X-Spam', 'two'],
  ['X-Spam', 'three'],
  ['From', 'alice@example.org'],
];

test('no change, no action', async () => {
  const f = fakeTransaction({ headers: HEADERS, body: 'Hi.\r\n' });
  assert.equal(f.transaction.headers.get('subject'), 'hello');
  assert.deepEqual(f.transaction.headers.getAll('X-SPAM'), ['one', 'two', 'three']);
  assert.deepEqual(await f.actions(), []);
});

test('changes and deletions go bottom up, so no index addresses a renumbered header', async () => {
  const f = fakeTransaction({ headers: HEADERS });
  const h = f.transaction.headers;
  h.delete('X-Spam', 1);
  h.set('x-spam', 'TWO', 1); // now the first X-Spam is the received second one
  h.delete('X-Spam', 2); // the received third
  h.set('Subject', '[tag] hello');
  assert.deepEqual(
    [...h].map((x) => `${x.name}: ${x.value}`),
    ['Received: from a', 'Subject: [tag] hello', 'X-Spam: TWO', 'From: alice@example.org'],
  );
  assert.deepEqual(await f.actions(), [
    { action: 'changeHeader', name: 'X-Spam', index: 3, value: null },
    { action: 'changeHeader', name: 'X-Spam', index: 2, value: 'TWO' },
    { action: 'changeHeader', name: 'X-Spam', index: 1, value: null },
    { action: 'changeHeader', name: 'Subject', index: 1, value: '[tag] hello' },
  ]);
});

test('new headers: inserted at their final position top first, appended after the last received one', async () => {
  const f = fakeTransaction({ headers: HEADERS });
  const h = f.transaction.headers;
  h.insert(0, 'X-Top', 'a');
  h.add('X-End-1', 'b');
  h.insert(3, 'X-Middle', 'c'); // before the first X-Spam (Received, Subject shifted by X-Top)
  h.add('X-End-2', 'd');
  h.delete('From');
  assert.deepEqual(
    [...h].map((x) => x.name),
    ['X-Top', 'Received', 'Subject', 'X-Middle', 'X-Spam', 'X-Spam', 'X-Spam', 'X-End-1', 'X-End-2'],
  );
  assert.deepEqual(await f.actions(), [
    { action: 'changeHeader', name: 'From', index: 1, value: null },
    // +1: the index counts the MTA's own Received: header, on top and never sent to the filter.
    { action: 'insertHeader', index: 1, name: 'X-Top', value: 'a' },
    { action: 'insertHeader', index: 4, name: 'X-Middle', value: 'c' },
    { action: 'addHeader', name: 'X-End-1', value: 'b' },
    { action: 'addHeader', name: 'X-End-2', value: 'd' },
  ]);
});

test('replaying the actions on the received list gives the edited list (random edits, MTA model)', async () => {
  // A model of how an MTA applies the actions: occurrence counts among the headers present now.
  let seed = 7;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const names = ['A', 'B', 'C'];
  for (let round = 0; round < 300; round++) {
    const received: Array<[string, string]> = [];
    for (let i = rand(6); i > 0; i--) received.push([names[rand(3)] as string, `v${received.length}`]);
    const f = fakeTransaction({ headers: received });
    const h = f.transaction.headers;
    for (let i = rand(6); i > 0; i--) {
      const name = names[rand(3)] as string;
      const op = rand(4);
      if (op === 0) h.add(name, `new${i}`);
      else if (op === 1) h.insert(rand(h.length + 1), name, `ins${i}`);
      else if (op === 2) h.set(name, `set${i}`, 1 + rand(2));
      else h.delete(name, rand(2) === 0 ? undefined : 1 + rand(2));
    }
    const list = received.map(([n, v]) => [n, v] as [string, string]);
    const nth = (name: string, occurrence: number): number => {
      let k = 0;
      return list.findIndex(([n]) => n.toLowerCase() === name.toLowerCase() && ++k === occurrence);
    };
    for (const a of await f.actions()) {
      if (a.action === 'changeHeader') {
        const i = nth(a.name, a.index);
        assert.ok(i >= 0, `round ${round}: ${a.name} #${a.index} exists`);
        if (a.value === null) list.splice(i, 1);
        else (list[i] as [string, string])[1] = a.value;
      } else if (a.action === 'insertHeader')
        list.splice(a.index - 1, 0, [a.name, a.value]); // hidden Received
      else if (a.action === 'addHeader') list.push([a.name, a.value]);
    }
    assert.deepEqual(
      list,
      [...h].map((x) => [x.name, x.value]),
      `round ${round}`,
    );
  }
});

test('envelope: sender, recipients added and removed as received, body replaced, quarantine', async () => {
  const f = fakeTransaction({ recipients: ['<a@x>', '<b@x>'], body: 'old\r\n' });
  const t = f.transaction;
  t.setSender('<new@example.org>', 'SIZE=100');
  t.recipients.remove('<a@x>');
  t.recipients.add('<c@x>');
  t.recipients.add('<d@x>', 'NOTIFY=NEVER');
  t.recipients.add('<b@x>'); // already there: nothing
  t.replaceBody(Buffer.from('new\r\n'));
  t.quarantine('looks odd');
  assert.equal((await t.bodyBuffer()).toString(), 'old\r\n');
  assert.deepEqual([...t.recipients], ['<b@x>', '<c@x>', '<d@x>']);
  assert.deepEqual(await f.actions(), [
    { action: 'changeFrom', sender: '<new@example.org>', args: 'SIZE=100' },
    { action: 'deleteRecipient', recipient: '<a@x>' },
    { action: 'addRecipient', recipient: '<c@x>', args: undefined },
    { action: 'addRecipient', recipient: '<d@x>', args: 'NOTIFY=NEVER' },
    { action: 'quarantine', reason: 'looks odd' },
    { action: 'replaceBody', body: Buffer.from('new\r\n') },
  ]);
});

test('bad header names, values and addresses are refused when made, not at end of message', () => {
  const t = fakeTransaction().transaction;
  const h = t.headers;
  const usage = { name: 'MilterUsageError', code: 'ERR_MILTER_INVALID_ARGUMENT' };
  assert.throws(() => h.add('Bad Name', 'x'), usage);
  assert.throws(() => h.add('X:Y', 'x'), usage);
  assert.throws(() => h.add('X-Ok', 'a\0b'), usage);
  assert.throws(() => h.insert(5, 'X-Ok', 'x'), usage);
  assert.throws(() => h.set('X-Ok', 'x', 0), usage);
  assert.throws(() => t.recipients.add(''), usage);
  assert.throws(() => t.setSender('<a\0b>'), usage);
  assert.throws(() => h.add('Bad Name', 'x'), MilterUsageError);
});

test('the body store spills to an unlinked file past its bound and reads back byte for byte', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'milterd-store-test-'));
  try {
    const store = new BodyStore(1000, dir);
    const chunks: Buffer[] = [];
    for (let i = 0; i < 50; i++) {
      const c = Buffer.alloc(97 + i, i);
      chunks.push(c);
      await store.append(c);
    }
    const all = Buffer.concat(chunks);
    assert.equal(store.spilled, true);
    assert.equal(store.size, all.length);
    assert.deepEqual(await readdir(dir), [], 'nothing left in the directory while the file is in use');
    assert.ok((await store.buffer()).equals(all));
    const again: Buffer[] = [];
    for await (const c of store.read()) again.push(c);
    assert.ok(Buffer.concat(again).equals(all), 'read twice');
    await store.dispose();
    assert.deepEqual(await readdir(dir), []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('messageFilter through the real session: whole message in, minimal actions out', async () => {
  const seen: string[] = [];
  const filter = messageFilter({
    bodyMemoryLimit: 16,
    envrcpt: (_ctx, rcpt) => (rcpt === '<no@x>' ? Decision.reject({ code: 550, text: 'no' }) : undefined),
    async message(trx) {
      seen.push(trx.sender, [...trx.recipients].join(','), String(trx.bodySize));
      seen.push((await trx.bodyBuffer()).toString('latin1'));
      trx.headers.set('Subject', `[x] ${trx.headers.get('Subject') ?? ''}`);
      trx.headers.delete('X-Remove');
      trx.recipients.add('<added@x>');
      trx.replaceBody(Buffer.from('replaced\r\n'));
    },
  });
  const body = 'line one of a body longer than sixteen bytes\r\n';
  const t = await testFilter(filter, {
    messages: [
      {
        sender: '<s@x>',
        recipients: ['<r@x>', '<no@x>'],
        headers: [
          ['Subject', 'hi'],
          ['X-Remove', 'me'],
        ],
        body,
      },
    ],
  });
  assert.deepEqual(seen, ['<s@x>', '<r@x>', String(body.length), body]);
  assert.deepEqual(t.messages[0]?.eom?.modifications, [
    { kind: 'addRecipient', recipient: '<added@x>' },
    { kind: 'changeHeader', index: 1, name: 'X-Remove', value: '' },
    { kind: 'changeHeader', index: 1, name: 'Subject', value: '[x] hi' },
    { kind: 'replaceBody', chunk: Buffer.from('replaced\r\n') },
  ]);
});

test('messageFilter: a rejected message is not changed', async () => {
  const filter = messageFilter({
    message(trx) {
      trx.headers.add('X-Never', 'sent');
      return Decision.reject();
    },
  });
  const t = await testFilter(filter, {
    messages: [{ sender: '<s@x>', recipients: ['<r@x>'], headers: [['Subject', 'x']], body: 'b\r\n' }],
  });
  assert.deepEqual(t.messages[0]?.eom?.modifications, []);
  assert.deepEqual(t.messages[0]?.eom?.reply, { kind: 'reject' });
});

test('messagePriv is per message: undefined at every MAIL, still set in abort, gone after EOM and ABORT', async () => {
  const seen: string[] = [];
  const filter: Filter<{ n: number }, { sender: string }> = {
    connect(ctx) {
      ctx.priv = { n: 0 };
    },
    envfrom(ctx, sender) {
      seen.push(`mail ${sender} ${JSON.stringify(ctx.messagePriv)}`);
      ctx.messagePriv = { sender };
      if (ctx.priv) ctx.priv.n++;
    },
    eom(ctx) {
      seen.push(`eom ${ctx.messagePriv?.sender ?? '-'} n=${ctx.priv?.n ?? 0}`);
    },
    abort(ctx) {
      seen.push(`abort ${ctx.messagePriv?.sender ?? '-'}`);
    },
    close(ctx) {
      seen.push(`close n=${ctx.priv?.n ?? 0}`);
    },
  };
  await testFilter(filter, {
    messages: [
      { sender: '<a@x>', recipients: ['<r@x>'], body: 'x\r\n' },
      { sender: '<b@x>', recipients: ['<r@x>'], abortAfter: 'envrcpt' },
      { sender: '<c@x>', recipients: ['<r@x>'], body: 'x\r\n' },
    ],
  });
  assert.deepEqual(seen, [
    'mail <a@x> undefined',
    'eom <a@x> n=1',
    'mail <b@x> undefined',
    'abort <b@x>',
    'mail <c@x> undefined',
    'eom <c@x> n=3',
    'close n=3',
  ]);
});

test('fakeTransaction refuses the replacement bodies the EOM context refuses (a test fails where production would)', async () => {
  const asString = fakeTransaction({ body: 'x\r\n' });
  asString.transaction.replaceBody('text' as unknown as Buffer);
  await assert.rejects(asString.actions(), { code: 'ERR_MILTER_INVALID_ARGUMENT' });
  const badPiece = fakeTransaction({ body: 'x\r\n' });
  badPiece.transaction.replaceBody(
    (async function* () {
      yield Buffer.from('ok');
      yield 'not bytes' as unknown as Buffer;
    })(),
  );
  await assert.rejects(badPiece.actions(), { code: 'ERR_MILTER_INVALID_ARGUMENT' });
  const good = fakeTransaction({ body: 'x\r\n' });
  good.transaction.replaceBody([Buffer.from('a'), new Uint8Array([0x62])]);
  assert.deepEqual(await good.actions(), [{ action: 'replaceBody', body: Buffer.from('ab') }]);
});
