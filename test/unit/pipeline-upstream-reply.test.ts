/**
 * An upstream's SMFIR_REPLYCODE text becomes a decision whose reply the session formats back to the same
 * text (so the MTA sees the bytes the upstream sent), or the bare decision when the text breaks the
 * session's reply rules; a text that is no 4xx/5xx reply is refused (the caller applies the failure action).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { replyFromText } from '../../src/pipeline/upstream-reply.js';
import { formatReply } from '../../src/session/reply.js';

test('libmilter reply texts round-trip through the session formatter byte for byte', () => {
  const texts = [
    '550 5.7.1 Blocked by SpamAssassin', // smfi_setreply(ctx, "550", "5.7.1", text)
    '451 4.7.1 Please try again later',
    '550 No such user', // no xcode
    '550 5.7.1', // no text
    '554 5.7.1 go away, 100%% sure', // '%' as it reaches the wire
    '421 4.7.0 Closing connection', // shutdown form
    '452-4.2.1 first line\r\n452 4.2.1 second line', // smfi_setmlreply
    '550-5.7.1 a\r\n550-5.7.1 b\r\n550 5.7.1 c',
  ];
  for (const text of texts) {
    const parsed = replyFromText(text);
    assert.ok(parsed?.reply, text);
    assert.equal(parsed.kind, text.startsWith('4') ? 'tempfail' : 'reject');
    assert.equal(formatReply(parsed.reply, parsed.kind), text);
  }
  assert.deepEqual(replyFromText('452-4.2.1 one\r\n452 4.2.1 two'), {
    kind: 'tempfail',
    reply: { code: '452', xcode: '4.2.1', text: ['one', 'two'] },
  });
});

test('a reply the session would refuse keeps its decision and loses its text', () => {
  // Enhanced code of another class (Postfix refuses it), mixed codes across lines, a line too long.
  assert.deepEqual(replyFromText('550 4.7.1 mixed classes'), { kind: 'reject' });
  assert.deepEqual(replyFromText('452-4.2.1 a\r\n451 4.2.1 b'), { kind: 'tempfail' });
  assert.deepEqual(replyFromText(`550 5.7.1 ${'x'.repeat(2000)}`), { kind: 'reject' });
  assert.deepEqual(replyFromText('550x'), { kind: 'reject' });
});

test('a text that is not a 4xx/5xx reply is refused', () => {
  for (const text of ['250 ok', '', 'hello', '5', '55']) assert.equal(replyFromText(text), undefined, text);
});
