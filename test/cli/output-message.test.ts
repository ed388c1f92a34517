/**
 * `--output-message`'s model of Postfix 3.7 (src/cli/output-message.ts), in process: untouched bytes stay
 * as they were, header edits land where cleanup_milter.c puts them, replaced bodies and envelope changes.
 * test/e2e/output-message.test.ts checks the same rules against what a real Postfix delivered.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseEml } from '../../src/cli/eml.js';
import {
  deliveredMessage,
  envelopeHeaderBlock,
  milterHeaderBytes,
  replacedBodyBytes,
} from '../../src/cli/output-message.js';
import type { ModificationResponse } from '../../src/protocol/types.js';

const FILE = Buffer.from(
  'Received: from relay.example by mx.example; Sun, 6 Dec 2026 01:00:00 +0000\r\n' +
    'From: A <a@example.org>\r\n' +
    'X-Obs  : obsolete\r\n' +
    'Subject: caf\xe9\r\n\t\xff folded\r\n' +
    'X-Tag: one\r\n' +
    'To: b@example.net\r\n' +
    'x-tag: two\r\n' +
    '\r\n' +
    'body \xe9\r\n' +
    '.dot\r\n',
  'latin1',
);

function deliver(mods: ModificationResponse[], file = FILE, leadingSpace = false): string {
  const message = parseEml(file);
  const d = deliveredMessage(
    { message, sender: '<a@example.org>', recipients: ['<b@example.net>'] },
    mods,
    leadingSpace,
  );
  assert.deepEqual(d.problems, []);
  return d.bytes.toString('latin1');
}

const HEAD = (FILE.toString('latin1').split('\r\n\r\n')[0] as string).replace('X-Obs  :', 'X-Obs:');
const headLines = (out: string): string[] => (out.split('\r\n\r\n')[0] as string).split('\r\n');

test('output message: no modification gives the file bytes back, byte for byte', () => {
  // Only the obsolete "Name  :" becomes "Name:", as Postfix stores it.
  const expected = FILE.toString('latin1').replace('X-Obs  :', 'X-Obs:');
  assert.equal(deliver([]), expected);
  // LF line ends come out as CRLF, as over SMTP; nothing else changes.
  const lf = Buffer.from(FILE.toString('latin1').replace(/\r\n/g, '\n'), 'latin1');
  assert.equal(deliver([], lf), expected);
  // Headers only, no empty line: none is delivered either; a non-header line gets one before it.
  assert.equal(deliver([], Buffer.from('Subject: x\r\nTo: b@x\r\n')), 'Subject: x\r\nTo: b@x\r\n');
  assert.equal(
    deliver([], Buffer.from('Subject: x\r\nnot a header\r\n')),
    'Subject: x\r\n\r\nnot a header\r\n',
  );
});

test('output message: add appends, insert counts the hidden Received: of the MTA', () => {
  const base = HEAD.split('\r\n');
  assert.deepEqual(headLines(deliver([{ kind: 'addHeader', name: 'X-A', value: 'a' }])), [...base, 'X-A: a']);
  // Index 0 lands above the MTA's Received:, 1 just below it: both at the top here; later inserts count
  // the earlier ones.
  assert.deepEqual(
    headLines(
      deliver([
        { kind: 'insertHeader', index: 0, name: 'X-Zero', value: '0' },
        { kind: 'insertHeader', index: 1, name: 'X-One', value: '1' },
      ]),
    ).slice(0, 3),
    ['X-Zero: 0', 'X-One: 1', base[0]],
  );
  assert.deepEqual(
    headLines(
      deliver([
        { kind: 'insertHeader', index: 1, name: 'X-One', value: '1' },
        { kind: 'insertHeader', index: 0, name: 'X-Zero', value: '0' },
      ]),
    ).slice(0, 3),
    ['X-Zero: 0', 'X-One: 1', base[0]],
  );
  // Index 2: before the message's second header; past the end: appended after added ones.
  assert.deepEqual(
    headLines(
      deliver([
        { kind: 'addHeader', name: 'X-A', value: 'a' },
        { kind: 'insertHeader', index: 2, name: 'X-Two', value: '2' },
        { kind: 'insertHeader', index: 99, name: 'X-End', value: 'e' },
      ]),
    ),
    [base[0], 'X-Two: 2', ...base.slice(1), 'X-A: a', 'X-End: e'],
  );
});

test('output message: change and delete count headers of that name, case-insensitively', () => {
  const base = HEAD.split('\r\n');
  const out = headLines(
    deliver([
      { kind: 'changeHeader', index: 2, name: 'X-TAG', value: 'second' },
      { kind: 'changeHeader', index: 0, name: 'subject', value: 'new\nline two\n\tline three' },
      { kind: 'changeHeader', index: 1, name: 'X-Obs', value: '' },
      { kind: 'changeHeader', index: 5, name: 'To', value: '' }, // missing: nothing to delete
      { kind: 'changeHeader', index: 3, name: 'X-Tag', value: 'appended' }, // missing: appended
    ]),
  );
  assert.deepEqual(out, [
    base[0],
    base[1],
    'subject: new',
    '\tline two',
    '\tline three',
    'X-Tag: one',
    'To: b@example.net',
    'X-TAG: second',
    'X-Tag: appended',
  ]);
  // An inserted Received: counts for later changes; the MTA's own never does.
  const r = headLines(
    deliver([
      { kind: 'insertHeader', index: 0, name: 'Received', value: 'by milter' },
      { kind: 'changeHeader', index: 2, name: 'Received', value: 'changed' },
    ]),
  );
  assert.deepEqual(r.slice(0, 2), ['Received: by milter', 'Received: changed']);
});

test('output message: header bytes of the milter (leading space, 8-bit values, LF)', () => {
  assert.equal(milterHeaderBytes('X', 'v', false).toString(), 'X: v');
  assert.equal(milterHeaderBytes('X', ' v', true).toString(), 'X: v');
  assert.equal(milterHeaderBytes('X', 'a\n b\n', false).toString(), 'X: a\r\n b\r\n\t');
  assert.deepEqual(milterHeaderBytes('X', 'caf\udce9', false), Buffer.from('X: caf\xe9', 'latin1'));
  assert.deepEqual(
    headLines(deliver([{ kind: 'addHeader', name: 'X-L', value: ' lead' }], FILE, true)).at(-1),
    'X-L: lead',
  );
});

test('output message: replaced body as Postfix splits it into lines', () => {
  assert.equal(
    replacedBodyBytes(Buffer.from('a\r\nb\nc\rd\r\n\r\ne')).toString(),
    'a\r\nb\r\nc\rd\r\n\r\ne\r\n',
  );
  assert.equal(replacedBodyBytes(Buffer.alloc(0)).length, 0);
  const out = deliver([
    { kind: 'addHeader', name: 'X-A', value: 'a' },
    { kind: 'replaceBody', chunk: Buffer.from('new \xe9\r\nbo', 'latin1') },
    { kind: 'replaceBody', chunk: Buffer.from('dy') },
  ]);
  assert.equal(out, `${HEAD}\r\nX-A: a\r\n\r\nnew \xe9\r\nbody\r\n`);
  // An empty replacement leaves the empty separator line, even for a message that had none.
  assert.equal(
    deliver([{ kind: 'replaceBody', chunk: Buffer.alloc(0) }], Buffer.from('Subject: x\r\n')),
    'Subject: x\r\n\r\n',
  );
  // Postfix refuses body chunks resumed after another request.
  const d = deliveredMessage(
    { message: parseEml(FILE), sender: '<>', recipients: ['<b@x>'] },
    [
      { kind: 'replaceBody', chunk: Buffer.from('a') },
      { kind: 'addHeader', name: 'X', value: 'y' },
      { kind: 'replaceBody', chunk: Buffer.from('b') },
    ],
    false,
  );
  assert.equal(d.problems.length, 1);
});

test('output message: envelope changes, and the header block that shows them', () => {
  const d = deliveredMessage(
    {
      message: parseEml(FILE),
      sender: '<a@example.org>',
      recipients: ['<b@example.net>', '<c@example.net>'],
    },
    [
      { kind: 'changeFrom', sender: 'new@example.org', args: 'RET=HDRS' },
      { kind: 'addRecipient', recipient: 'b@example.net' }, // already there: Postfix relays to it twice
      { kind: 'addRecipientWithArgs', recipient: '<d@example.net>', args: 'NOTIFY=NEVER' },
      { kind: 'deleteRecipient', recipient: '<c@example.net>' },
      { kind: 'deleteRecipient', recipient: '<nobody@example.net>' },
      { kind: 'quarantine', reason: 'look' },
    ],
    false,
  );
  assert.deepEqual(d.envelope, {
    sender: '<new@example.org>',
    senderArgs: 'RET=HDRS',
    originalSender: '<a@example.org>',
    recipients: [
      { address: '<b@example.net>', added: false },
      { address: '<b@example.net>', added: true },
      { address: '<d@example.net>', args: 'NOTIFY=NEVER', added: true },
    ],
    deleted: ['<c@example.net>'],
    quarantine: 'look',
  });
  assert.equal(d.bytes.toString('latin1'), `${HEAD}\r\n\r\nbody \xe9\r\n.dot\r\n`);
  assert.equal(
    envelopeHeaderBlock(d.envelope).toString(),
    'X-Milterd-Envelope-From: <new@example.org> RET=HDRS (changed by the milter, was <a@example.org>)\r\n' +
      'X-Milterd-Envelope-To: <b@example.net>\r\n' +
      'X-Milterd-Envelope-To: <b@example.net> (added by the milter)\r\n' +
      'X-Milterd-Envelope-To: <d@example.net> NOTIFY=NEVER (added by the milter)\r\n' +
      'X-Milterd-Envelope-Deleted: <c@example.net> (deleted by the milter)\r\n',
  );
  const none = deliveredMessage(
    { message: parseEml(FILE), sender: '<a@x>', recipients: ['<b@x>'] },
    [],
    false,
  );
  assert.equal(envelopeHeaderBlock(none.envelope).length, 0);
});
