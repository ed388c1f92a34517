/** The filter shown in README.md ("Writing a filter"), run through testFilter, so the README stays true. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision, fromWireBytes, wireBytes, type Filter } from '../../../src/index.js';
import { encodeResponse } from '../../../src/protocol/index.js';
import { testFilter } from '../../../src/testing/index.js';

interface Priv {
  rejected: number;
}
const closed: Array<number | undefined> = [];

const filter: Filter<Priv> = {
  name: 'example',
  macros: { connect: ['{client_addr}'], envfrom: ['i', '{auth_authen}'] },
  connect(ctx) {
    ctx.priv = { rejected: 0 };
  },
  envrcpt(ctx, recipient) {
    if (recipient.includes('spamtrap')) {
      if (ctx.priv) ctx.priv.rejected++;
      return Decision.reject({ code: 550, xcode: '5.7.1', text: 'No such user' });
    }
  },
  eom(ctx) {
    ctx.addHeader('X-Filtered-By', 'milterd');
    ctx.changeHeader('Subject', 1, '[checked] ' + (ctx.macro('i') ?? ''));
    return Decision.accept;
  },
  close(ctx) {
    closed.push(ctx.priv?.rejected);
  },
};

test('README filter: rejects the spamtrap recipient, edits headers at EOM, close sees the private data', async () => {
  closed.length = 0;
  const t = await testFilter(filter, {
    messages: [
      {
        macros: { envfrom: { i: 'Q1' } },
        sender: '<alice@example.org>',
        recipients: ['<spamtrap@example.net>', '<bob@example.net>'],
        headers: [['Subject', 'hello']],
        body: 'hi\r\n',
      },
    ],
  });
  const [message] = t.messages;
  assert.ok(message);
  assert.deepEqual(message.acceptedRecipients, ['<bob@example.net>']);
  assert.equal(message.reply.kind, 'accept');
  assert.deepEqual(message.eom?.modifications, [
    { kind: 'addHeader', name: 'X-Filtered-By', value: 'milterd' },
    { kind: 'changeHeader', index: 1, name: 'Subject', value: '[checked] Q1' },
  ]);
  assert.deepEqual(closed, [1]);
});

test('README filter: close before connect gets undefined private data and does not throw', async () => {
  closed.length = 0;
  const t = await testFilter(filter, { connect: null });
  assert.equal(t.end, 'quit');
  assert.deepEqual(closed, [undefined]);
});

// README "Strings are the MTA's bytes, losslessly".
const tagger: Filter<{ subject: string }> = {
  header(ctx, name, value) {
    if (name === 'Subject') ctx.priv = { subject: value }; // "Subject: caf\xe9" (latin1): 'caf\udce9'
  },
  eom(ctx) {
    const subject = ctx.priv?.subject ?? '';
    ctx.changeHeader('Subject', 1, '[SPAM] ' + subject); // the MTA gets "[SPAM] caf\xe9"
    ctx.addHeader('X-Subject-Hex', wireBytes(subject).toString('hex')); // 636166e9
    ctx.addHeader('X-Latin1', fromWireBytes(Buffer.from('na\xefve', 'latin1'))); // sends na\xefve
  },
};

test('README byte example: a latin1 Subject written back reaches the MTA as the same bytes', async () => {
  const subject = fromWireBytes(Buffer.from('caf\xe9', 'latin1'));
  assert.equal(subject, 'caf\udce9');
  const t = await testFilter(tagger, {
    messages: [
      { sender: '<a@example.org>', recipients: ['<b@example.net>'], headers: [['Subject', subject]] },
    ],
  });
  const frames = (t.messages[0]?.eom?.modifications ?? []).map((m) => encodeResponse(m).subarray(5));
  assert.deepEqual(frames, [
    Buffer.from('\0\0\0\x01Subject\0[SPAM] caf\xe9\0', 'latin1'),
    Buffer.from('X-Subject-Hex\x00636166e9\0', 'latin1'),
    Buffer.from('X-Latin1\0na\xefve\0', 'latin1'),
  ]);
});
