/**
 * Shutdown reply texts are measured as the MTA receives them: UTF-8 bytes with every `%` doubled, after
 * `421 4.7.0 `, within the 980-byte reply line. A longer text makes the session refuse the reply and send
 * a plain tempfail, which does not end the SMTP session: the 421 would be lost.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ShutdownPolicy, sanitizeText } from '../../../src/policy/chain.js';
import { parsePolicy } from '../../../src/policy/load.js';
import { createShutdownPolicy } from '../../../src/policy/rules.js';
import { withShutdownPolicy } from '../../../src/policy/wrapper.js';
import { MilterConfigError } from '../../../src/errors.js';
import { testFilter, type TestMessage } from '../../../src/testing/index.js';
import { memoryLogger } from '../../helpers/logs.js';
import { record } from './records.js';

const message = (n: number): TestMessage => ({
  sender: `<s${n}@example.org>`,
  recipients: ['<r@example.net>'],
  headers: [['Subject', `m${n}`]],
  body: 'x\r\n',
});

/** The escaped reply line as it goes on the wire (what formatReply builds). */
const wireBytes = (line: string): number => Buffer.byteLength(line);
/** A text's bytes as sent, the test's own oracle: UTF-8 with every `%` doubled. */
const replyTextBytes = (text: string): number => Buffer.byteLength(text.replace(/%/g, '%%'));

test('load: a text whose reply would exceed the line is refused with its location, in bytes as sent', () => {
  const cases: Array<[string, string, number, string]> = [
    // 600 é: 600 characters (under the old 900-character cap) but 1200 bytes.
    ['reply-text', `reply-text: ${'é'.repeat(600)}\n`, 1, 'reply-text'],
    ['rule text', `rules:\n  - max-messages: 2\n    text: "${'é'.repeat(600)}"\n`, 3, 'rules[0].text'],
    // 486 %: 972 bytes once doubled.
    ['percent', `rules:\n  - max-messages: 2\n    text: "${'%'.repeat(486)}"\n`, 3, 'rules[0].text'],
  ];
  for (const [title, yaml, line, field] of cases) {
    assert.throws(
      () => parsePolicy(yaml, 'p.yaml'),
      (err: unknown) => {
        assert.ok(err instanceof MilterConfigError, title);
        assert.deepEqual([err.line, err.field], [line, field], title);
        assert.match(
          err.message,
          /^p\.yaml:\d+:\d+: .*: a reply text must fit one reply line: \d+ bytes as sent/,
        );
        return true;
      },
    );
  }
  // At the limit: accepted, and the whole reply line is exactly 980 bytes.
  const ok = parsePolicy(`rules:\n  - max-messages: 2\n    text: "${'%'.repeat(485)}"\n`);
  assert.equal(replyTextBytes(ok.rules[0]?.text ?? ''), 970);
  const ascii = parsePolicy(`reply-text: ${'a'.repeat(970)}\n`);
  assert.equal(ascii.replyText?.length, 970);
});

test('runtime: a hook text too long for the line is cut on a character boundary and logged once', async () => {
  const log = memoryLogger();
  const p = new ShutdownPolicy({ logger: log.logger });
  p.registerLast('long', () => ({ shutdown: true, text: 'é'.repeat(600) }));
  for (let i = 0; i < 3; i++) {
    const v = await p.evaluate(record());
    assert.equal(v?.text, 'é'.repeat(485));
  }
  assert.equal(
    log.lines.filter((l) => String(l.msg).startsWith('shutdown hook reply text longer')).length,
    1,
  );
  // Never inside a surrogate pair, never half of a doubled %.
  assert.equal(sanitizeText('a' + '😀'.repeat(300)), 'a' + '😀'.repeat(242));
  assert.equal(replyTextBytes(sanitizeText('%'.repeat(600)) ?? ''), 970);
  assert.equal(sanitizeText('x' + '%'.repeat(600))?.length, 1 + 484);
});

test('runtime: a rule built in code with 600 é still ends the session with a 421 (not a plain tempfail)', async () => {
  const policy = createShutdownPolicy({
    dryRun: false,
    rules: [{ name: 'one', limit: { kind: 'max-messages', max: 1 }, text: 'é'.repeat(600) }],
  });
  const t = await testFilter(withShutdownPolicy({}, policy), { messages: [message(1), message(2)] });
  const mail = t.decisions.filter((d) => d.stage === 'envfrom');
  assert.equal(mail.length, 2);
  assert.equal(mail[0]?.verdict, 'continue');
  // The second MAIL is answered with a 421 reply (TEMPFAIL + `y`): the MTA sends it and closes the
  // session. A plain tempfail (no code) would only fail this message.
  assert.equal(mail[1]?.verdict, 'tempfail');
  assert.equal(mail[1]?.code, 421);
  const reply = mail[1]?.reply;
  assert.ok(reply?.kind === 'replyCode');
  assert.equal(reply.text, `421 4.7.0 ${'é'.repeat(485)}`);
  assert.ok(wireBytes(reply.text) <= 980);
});

test('runtime: % in a hook text is counted doubled, so the escaped line still fits', async () => {
  const policy = createShutdownPolicy({ dryRun: false, rules: [] });
  policy.registerLast(
    'pct',
    (r) => r.counters.messagesAccepted >= 1 && { shutdown: true, text: '%'.repeat(700) },
  );
  const t = await testFilter(withShutdownPolicy({}, policy), { messages: [message(1), message(2)] });
  const second = t.decisions.filter((d) => d.stage === 'envfrom')[1];
  assert.equal(second?.code, 421);
  assert.ok(second?.reply.kind === 'replyCode');
  assert.equal(second.reply.text, `421 4.7.0 ${'%%'.repeat(485)}`);
  assert.equal(wireBytes(second.reply.text), 980);
});
