/**
 * `milterd test --output-message` as a command (the built binary against a milterd server in this
 * process): the message on stdout with the report on stderr, the envelope block above the message in
 * text mode, and nothing written for a message the MTA would not deliver. The delivered bytes themselves
 * are checked against a real Postfix in test/e2e/output-message.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { Decision, type Filter } from '../../src/filter.js';
import { startServer } from '../helpers/server.js';
import { FIXTURES, runMilterd } from './helpers.js';

const EML = `${FIXTURES}message.eml`;

const editor: Filter = {
  eom(ctx) {
    ctx.addHeader('X-Checked', 'yes');
    ctx.changeFrom('<bounce@example.org>');
    ctx.deleteRecipient('<carol@example.net>');
    return 'accept';
  },
};

test('--output-message -: the delivered message on stdout, envelope changes above it, report on stderr', async (t) => {
  const { address } = await startServer(t, { filter: editor });
  const r = await runMilterd(['test', EML, '--milter', address.spec, '--output-message', '-']);
  assert.equal(r.code, 0, r.stderr);
  const file = (await readFile(EML, 'utf8')).replace(/\r?\n/g, '\r\n');
  const split = file.indexOf('\r\n\r\n');
  const [head, body] = [file.slice(0, split), file.slice(split + 4)];
  assert.equal(
    r.stdout,
    'X-Milterd-Envelope-From: <bounce@example.org> (changed by the milter, was <alice@example.org>)\r\n' +
      'X-Milterd-Envelope-To: <bob@example.net>\r\n' +
      'X-Milterd-Envelope-Deleted: <carol@example.net> (deleted by the milter)\r\n' +
      `${head}\r\nX-Checked: yes\r\n\r\n${body}`,
  );
  assert.match(r.stderr, /^result\s+accepted/m);
  assert.match(r.stderr, /^envelope\s+from <bounce@example\.org> \(changed, was <alice@example\.org>\)$/m);
  assert.match(r.stderr, /^\s+deleted <carol@example\.net>$/m);
  assert.match(r.stderr, /^output\s+stdout \(\d+ bytes\)$/m);
});

test('--output-message with --json: the message alone in the file, the envelope in the report', async (t) => {
  const { address } = await startServer(t, { filter: editor });
  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-outmsg-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'out.eml');
  const r = await runMilterd(['test', EML, '--milter', address.spec, '--json', '--output-message', out]);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as { delivered: Record<string, unknown> };
  const written = await readFile(out, 'latin1');
  assert.ok(written.startsWith('From: Alice <alice@example.org>\r\n'));
  assert.match(written, /\r\nX-Checked: yes\r\n\r\nHello Bob,\r\n/);
  assert.deepEqual(report.delivered, {
    file: out,
    written: true,
    bytes: written.length,
    envelope: {
      sender: '<bounce@example.org>',
      originalSender: '<alice@example.org>',
      recipients: [{ address: '<bob@example.net>', added: false }],
      deleted: ['<carol@example.net>'],
    },
    problems: [],
  });
});

test('--output-message writes nothing for a rejected message, and says why', async (t) => {
  const { address } = await startServer(t, {
    filter: { eom: () => Decision.reject({ code: 550, text: 'no' }) } satisfies Filter,
  });
  const dir = await mkdtemp(path.join(tmpdir(), 'milterd-outmsg-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'out.eml');
  const r = await runMilterd(['test', EML, '--milter', address.spec, '--output-message', out]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^output\s+nothing written: the MTA would not deliver the message \(rejected\)$/m);
  await assert.rejects(stat(out), { code: 'ENOENT' });
});

test('--output-message into a folder that does not exist: exit 3 (bad input), one line', async (t) => {
  const { address } = await startServer(t, { filter: editor });
  const r = await runMilterd([
    'test',
    EML,
    '--milter',
    address.spec,
    '--output-message',
    '/nonexistent/dir/out.eml',
  ]);
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /cannot write \/nonexistent\/dir\/out\.eml: ENOENT/);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
});
