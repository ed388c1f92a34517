/** The filter shown in README.md ("Writing a filter"), run through testFilter, so the README stays true. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision, type Filter } from '../../../src/index.js';
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
