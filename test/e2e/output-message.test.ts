/**
 * `milterd test --output-message` against what a real Postfix 3.7 delivered, byte for byte: a private
 * Postfix relays a message through a filter that edits every part of it (header adds, inserts, changes,
 * deletes, body replacement, envelope changes) to the recording sink; then `milterd test` plays the same
 * message file through the same filter and its output message must equal the sink's bytes.
 *
 * The one difference allowed, removed explicitly: the Received: header Postfix prepends itself
 * ("from … by mta.test (Postfix) with ESMTP id …"), which the milter never sees and `milterd test`
 * cannot know (queue id, time). Exactly one such header must be present. Nothing else is stripped:
 * the message has From:, To:, Date: and Message-ID:, so Postfix adds no header of its own, and the
 * sink offers 8BITMIME, so no MIME conversion happens.
 *
 * Filters: one written with milterd's API (with SMFIP_HDR_LEADSPC) and one on Sendmail's libmilter
 * (fixtures/libmilter-editor.c, needs gcc and libmilter-dev: fails, never skips, without them), behind
 * one Postfix whose smtpd_milters is a Unix socket each filter listens on in turn.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { chmod, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createMilterServer } from '../../src/server/server.js';
import type { Filter } from '../../src/filter.js';
import { runMilterd } from '../cli/helpers.js';
import { PostfixMta } from './harness/postfix.js';
import { makeWorkDir, stopPid, waitExit, waitFor } from './harness/proc.js';
import { SmtpSink, withoutPostfixReceived, type SinkMessage } from './harness/sink.js';
import { SmtpClient } from './harness/smtp-client.js';

const FIXTURES = fileURLToPath(new URL('../../../test/e2e/fixtures/', import.meta.url));

const FROM = '<alice@example.org>';
const RCPTS = ['<bob@example.net>', '<carol@example.net>'];

/** The message file: an earlier hop's Received:, obsolete "Name  :" syntax, folded and 8-bit headers, dots. */
const MESSAGE = Buffer.from(
  [
    'Received: from relay.example.org (relay.example.org [192.0.2.1])',
    '\tby mx.example.org with ESMTP; Sun, 6 Dec 2026 01:00:00 +0000',
    'From: Alice <alice@example.org>',
    'To: Bob <bob@example.net>, carol@example.net',
    'Subject: output message test',
    '  folded with two spaces',
    'X-Tag: first',
    'X-Obs  : obsolete syntax',
    'X-Remove: please',
    'x-tag: second',
    'X-Latin1: caf\xe9 \xff',
    'Date: Sun, 06 Dec 2026 01:00:00 +0000',
    'Message-ID: <output-message@example.org>',
    '',
    'Original body \xe9',
    '.a line with a leading dot',
    '',
    'last line',
    '',
  ].join('\n'),
  'latin1',
);

/** Every EOM edit milterd's API offers (values carry their own leading space: HDR_LEADSPC is on). */
function editingFilter(): Filter<{ subject: string }> {
  return {
    name: 'editor',
    headerLeadingSpace: true,
    envfrom(ctx) {
      ctx.priv = { subject: '' };
    },
    header(ctx, name, value) {
      if (name.toLowerCase() === 'subject' && ctx.priv) ctx.priv.subject = value;
    },
    async eom(ctx) {
      ctx.insertHeader(0, 'X-Top', " above the MTA's Received:");
      ctx.insertHeader(1, 'X-Second', ' just below it');
      ctx.insertHeader(4, 'X-Fourth', ' inserted at 4');
      ctx.addHeader('X-Added', ' one');
      ctx.addHeader('X-Tight', 'no leading space');
      ctx.addHeader('X-Folded', ' line one\n\tline two\nline three');
      ctx.addHeader('X-Latin1-Added', ' na\udcefve');
      ctx.changeHeader('Subject', 0, ` [tagged]${ctx.priv?.subject ?? ''}`);
      ctx.changeHeader('X-TAG', 2, ' second, changed');
      ctx.deleteHeader('X-Remove', 1);
      // Postfix's own Received: is hidden: #1 is the one the message came with.
      ctx.changeHeader('Received', 1, ' from changed.example.org by mx.example.org');
      ctx.changeHeader('X-Missing', 1, ' appended by a change');
      ctx.deleteHeader('X-Nothing', 1);
      ctx.changeFrom('<new-sender@example.org>');
      ctx.addRecipient('<added@example.net>');
      ctx.addRecipient('<bob@example.net>'); // already a recipient: Postfix relays to it twice
      ctx.deleteRecipient('<carol@example.net>');
      await ctx.replaceBody(
        Buffer.from('Replaced \xe9 body\r\n.leading dot\nbare LF line\r\n\r\nno final newline', 'latin1'),
      );
      return 'accept' as const;
    },
  };
}

let dir = '';
let sock = '';
let messageFile = '';
let mta: PostfixMta | undefined;
const sink = new SmtpSink();

before(async () => {
  dir = await makeWorkDir('milterd-e2e-outmsg-');
  await chmod(dir, 0o755); // Postfix's smtpd (user postfix) reaches the milter socket in here
  sock = path.join(dir, 'milter.sock');
  messageFile = path.join(dir, 'message.eml');
  await writeFile(messageFile, MESSAGE); // LF line ends: the output must have CRLF, as delivered
  await sink.start();
  mta = await PostfixMta.start({
    dir: path.join(dir, 'postfix'),
    sinkPort: sink.port,
    milter: { kind: 'unix', path: sock },
  });
});

after(async () => {
  await mta?.stop();
  await sink.stop();
  if (process.env.MILTERD_E2E_KEEP !== '1') await rm(dir, { recursive: true, force: true });
});

/** Relay `message` through Postfix (and the milter on `sock`); resolve with what the sink received. */
async function deliverThroughPostfix(message: Buffer): Promise<SinkMessage> {
  if (mta === undefined) throw new Error('Postfix is not running');
  const before = sink.messages.length;
  const client = new SmtpClient();
  await client.connect('127.0.0.1', mta.port);
  try {
    assert.equal((await client.readReply()).code, 220);
    assert.equal((await client.command('EHLO client.example.org')).code, 250);
    assert.equal((await client.command(`MAIL FROM:${FROM}`)).code, 250);
    for (const r of RCPTS) assert.equal((await client.command(`RCPT TO:${r}`)).code, 250);
    assert.equal((await client.command('DATA')).code, 354);
    const data = Buffer.from(message.toString('latin1').replace(/\n/g, '\r\n'), 'latin1');
    const reply = await client.content(data);
    assert.equal(reply.code, 250, `Postfix refused the message: ${reply.text}\n${await mta.log()}`);
    await client.command('QUIT');
  } finally {
    client.close();
  }
  return waitFor('the sink to receive the message', () => sink.messages[before], { timeoutMs: 30_000 });
}

interface Delivered {
  written: boolean;
  envelope: { sender: string; recipients: Array<{ address: string; added: boolean }>; deleted: string[] };
}

/** `milterd test --output-message` with the same message and envelope; its report's `delivered`. */
async function milterdTest(file: string, out: string): Promise<Delivered> {
  const args = ['test', file, '--milter', `unix:${sock}`, '--from', FROM];
  for (const r of RCPTS) args.push('--rcpt', r);
  const r = await runMilterd([...args, '--json', '--output-message', out]);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as { delivered: Delivered };
  assert.equal(report.delivered.written, true);
  return report.delivered;
}

async function compare(label: string, message = MESSAGE): Promise<{ sink: SinkMessage; ours: Buffer }> {
  const file = message === MESSAGE ? messageFile : path.join(dir, `${label}-in.eml`);
  if (message !== MESSAGE) await writeFile(file, message);
  const delivered = await deliverThroughPostfix(message);
  const out = path.join(dir, `${label}.eml`);
  const report = await milterdTest(file, out);
  const ours = await readFile(out);
  const { message: theirs, removed } = withoutPostfixReceived(delivered.raw);
  assert.equal(
    removed,
    1,
    `exactly one Received: of Postfix expected in:\n${delivered.raw.toString('latin1')}`,
  );
  assert.equal(ours.toString('latin1'), theirs.toString('latin1'), `${label}: output differs from Postfix's`);
  assert.ok(ours.equals(theirs));
  // The envelope Postfix relayed (recipients in its own order, sorted here) is the one reported.
  assert.equal(delivered.from, report.envelope.sender);
  assert.deepEqual(
    delivered.recipients.map((r) => r.address).sort(),
    report.envelope.recipients.map((r) => r.address).sort(),
  );
  return { sink: delivered, ours };
}

test('--output-message equals what Postfix delivered through a milterd filter', async () => {
  const server = createMilterServer({ filter: editingFilter(), socketMode: 0o666 });
  await server.listen(`unix:${sock}`);
  try {
    const { sink: got, ours } = await compare('milterd');
    // The edits really happened (the comparison alone would pass for a filter doing nothing).
    const text = ours.toString('latin1');
    assert.match(
      text,
      /^X-Top: above the MTA's Received:\r\nX-Second: just below it\r\nReceived: from changed/,
    );
    assert.match(text, /\r\nX-Tight:no leading space\r\n/);
    assert.match(text, /\r\nX-Folded: line one\r\n\tline two\r\n\tline three\r\n/);
    assert.match(text, /\r\nSubject: \[tagged\] output message test\r\n {2}folded with two spaces\r\n/);
    assert.match(text, /\r\nX-Obs: obsolete syntax\r\n/); // Postfix's normalization, modelled
    assert.match(text, /\r\nX-Latin1: caf\xe9 \xff\r\n/);
    assert.doesNotMatch(text, /X-Remove/);
    assert.ok(
      text.endsWith('\r\n\r\nReplaced \xe9 body\r\n.leading dot\r\nbare LF line\r\n\r\nno final newline\r\n'),
    );
    assert.equal(got.from, '<new-sender@example.org>');
    assert.deepEqual(got.recipients.map((r) => r.address).sort(), [
      '<added@example.net>',
      '<bob@example.net>',
      '<bob@example.net>',
    ]);
  } finally {
    await server.close({ deadlineMs: 2000 });
  }
});

test('--output-message equals what Postfix delivered for messages without a body or an empty line', async () => {
  const filter: Filter = {
    eom(ctx) {
      ctx.addHeader('X-Added', 'at the end');
      ctx.insertHeader(99, 'X-Past-End', 'appended too');
      return 'accept' as const;
    },
  };
  const server = createMilterServer({ filter, socketMode: 0o666 });
  await server.listen(`unix:${sock}`);
  try {
    const head =
      'From: alice@example.org\nTo: bob@example.net\nDate: Sun, 06 Dec 2026 01:00:00 +0000\n' +
      'Message-ID: <no-body@example.org>\nSubject: no body\n';
    // Headers only, no empty line: Postfix delivers none either.
    const { ours } = await compare('no-body', Buffer.from(head));
    assert.ok(
      ours.toString().endsWith('Subject: no body\r\nX-Added: at the end\r\nX-Past-End: appended too\r\n'),
    );
    // A line that is not a header field ends the headers: Postfix puts an empty line before it.
    const { ours: garbage } = await compare('not-a-header', Buffer.from(`${head}this is no header\nbody\n`));
    assert.ok(garbage.toString().endsWith('X-Past-End: appended too\r\n\r\nthis is no header\r\nbody\r\n'));
  } finally {
    await server.close({ deadlineMs: 2000 });
  }
});

test('--output-message equals what Postfix delivered through a libmilter filter', async (t) => {
  const exe = path.join(dir, 'libmilter-editor');
  await promisify(execFile)('gcc', [
    '-O1',
    '-o',
    exe,
    path.join(FIXTURES, 'libmilter-editor.c'),
    '-lmilter',
    '-lpthread',
  ]);
  // umask 0: Postfix's smtpd (user postfix) must be able to connect to the socket libmilter creates.
  const filter = spawn('sh', ['-c', 'umask 0; exec "$0" "$1"', exe, `unix:${sock}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(async () => {
    if (filter.pid !== undefined && filter.exitCode === null && filter.signalCode === null) {
      await stopPid(filter.pid, 2000);
      await waitExit(filter, 5000);
    }
  });
  filter.stdout.setEncoding('utf8');
  await waitFor(
    'the libmilter filter to listen',
    () => (filter.stdout.read() as string | null)?.includes('ready') || undefined,
    {
      timeoutMs: 10_000,
    },
  );
  const { sink: got, ours } = await compare('libmilter');
  const text = ours.toString('latin1');
  assert.match(text, /^X-Lib-Top: top\r\nReceived: from relay\.example\.org/);
  assert.match(text, /\r\nSubject: \[libmilter\] output message test\r\n {2}folded with two spaces\r\n/);
  assert.match(text, /\r\nX-Lib-Added: added\r\n\tsecond line\r\n\r\n/);
  assert.doesNotMatch(text, /X-Tag: first/);
  assert.ok(
    text.endsWith('\r\n\r\nReplaced by libmilter.\r\n.a line with a leading dot\r\nno final newline\r\n'),
  );
  assert.equal(got.from, '<lib-sender@example.org>');
  assert.deepEqual(got.recipients.map((r) => r.address).sort(), [
    '<bob@example.net>',
    '<lib-added@example.net>',
  ]);
});
