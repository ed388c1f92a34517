/**
 * Unit tests of the example filters, as a filter author writes them: `fakeTransaction` for the changes a
 * transaction-API filter makes (the milter actions, in order), `testFilter` for a whole filter (a real
 * session with a scripted MTA, no socket).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fakeTransaction, testFilter, type FakeMessage, type RecordedAction } from 'milterd/testing';
import type { Transaction } from 'milterd';
import tagExternalModule, { tagExternalMessage } from '../tag-external.js';
import { disclaimerMessage } from '../disclaimer.js';
import { archiveCopyMessage } from '../archive-copy.js';
import { recipientLimit } from '../recipient-limit.js';

async function changes(
  change: (trx: Transaction) => unknown,
  message: FakeMessage,
): Promise<RecordedAction[]> {
  const fake = fakeTransaction(message);
  await change(fake.transaction);
  return fake.actions();
}

test('tag-external: an outside sender gets [EXTERNAL] and loses X-Internal-Only; an inside one is untouched', async () => {
  const tag = tagExternalMessage({ internalDomains: ['example.org'] });
  const outside = await changes(tag, {
    sender: '<someone@elsewhere.test>',
    headers: [
      ['From', 'someone@elsewhere.test'],
      ['X-Internal-Only', 'yes'],
      ['Subject', 'Invoice'],
    ],
  });
  assert.deepEqual(outside, [
    { action: 'changeHeader', name: 'Subject', index: 1, value: '[EXTERNAL] Invoice' },
    { action: 'changeHeader', name: 'X-Internal-Only', index: 1, value: null },
  ]);
  assert.deepEqual(
    await changes(tag, { sender: '<boss@Mail.Example.ORG>', headers: [['Subject', 'Invoice']] }),
    [],
  );
});

test('tag-external as a module: the default export is the factory `milterd serve --filter` calls', async () => {
  const filter = tagExternalModule({ internalDomains: ['other.test'], prefix: '[EXT] ' });
  const t = await testFilter(filter, {
    messages: [
      {
        sender: '<a@example.org>',
        recipients: ['<r@other.test>'],
        headers: [['Subject', 'Hi']],
        body: 'x\r\n',
      },
    ],
  });
  const eom = t.messages[0]?.eom;
  assert.ok(eom);
  assert.deepEqual(eom.modifications, [
    { kind: 'changeHeader', index: 1, name: 'Subject', value: '[EXT] Hi' },
  ]);
});

test('disclaimer: plain text gets the footer (streamed) and a header; HTML, base64 and marked mail are left alone', async () => {
  const add = disclaimerMessage({ lines: ['Sent via Example.'] });
  assert.deepEqual(await changes(add, { headers: [['Subject', 's']], body: 'Hello\r\nBye' }), [
    { action: 'addHeader', name: 'X-Disclaimer', value: 'added' },
    { action: 'replaceBody', body: Buffer.from('Hello\r\nBye\r\n\r\n-- \r\nSent via Example.\r\n') },
  ]);
  const untouched: Array<Array<[string, string]>> = [
    [['Content-Type', 'text/html; charset=utf-8']],
    [['Content-Transfer-Encoding', 'base64']],
    [['X-Disclaimer', 'added']],
  ];
  for (const headers of untouched) {
    assert.deepEqual(await changes(add, { headers, body: 'x\r\n' }), [], JSON.stringify(headers));
  }
});

test('archive-copy: mail for an archived domain gets the archive recipient once, other mail nothing', async () => {
  const copy = archiveCopyMessage({ archive: '<archive@example.org>', domains: ['example.org'] });
  assert.deepEqual(await changes(copy, { recipients: ['<a@example.org>', '<b@other.test>'] }), [
    { action: 'addRecipient', recipient: '<archive@example.org>', args: undefined },
    { action: 'addHeader', name: 'X-Archived-To', value: '<archive@example.org>' },
  ]);
  assert.deepEqual(await changes(copy, { recipients: ['<b@other.test>'] }), []);
  assert.deepEqual(
    await changes(copy, { recipients: ['<a@example.org>', '<archive@example.org>'] }),
    [],
    'already a recipient',
  );
});

test('recipient-limit: the third recipient of a message gets 452 4.5.3, and the count restarts per message', async () => {
  const t = await testFilter(recipientLimit({ max: 2 }), {
    messages: [1, 2].map(() => ({
      sender: '<s@example.org>',
      recipients: ['<a@example.org>', '<b@example.org>', '<c@example.org>'],
    })),
  });
  assert.equal(t.messages.length, 2);
  for (const m of t.messages) {
    assert.deepEqual(m.acceptedRecipients, ['<a@example.org>', '<b@example.org>']);
    const third = m.envrcpt[2];
    assert.equal(third?.kind, 'replyCode');
    assert.match(third.kind === 'replyCode' ? third.text : '', /^452 4\.5\.3 Too many recipients/);
  }
});
