/**
 * `milterd inspect` behind a real Postfix 3.7: the built binary listens on a Unix socket (--json), a
 * private Postfix uses it as its milter, and one SMTP session (XCLIENT login, MAIL with a parameter, a
 * recipient, a message, an unknown command) must show up as the events and macros Postfix really sends.
 * The message must be delivered exactly as sent (inspect never modifies mail). Then the same behind a
 * private Sendmail 8.17, which must honour the macro lists inspect asks for (SMFIR_SETSYMLIST).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, rm } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { SMFIF_SETSYMLIST, SMFIP_HDR_LEADSPC } from '../../src/protocol/constants.js';
import type { InspectEvent } from '../../src/cli/inspect.js';
import { BIN, cleanEnv } from '../cli/helpers.js';
import { PostfixMta } from './harness/postfix.js';
import { SendmailMta } from './harness/sendmail.js';
import { makeWorkDir, stopPid, waitExit, waitFor } from './harness/proc.js';
import { SmtpSink, withoutPostfixReceived } from './harness/sink.js';
import { SmtpClient } from './harness/smtp-client.js';

const MESSAGE =
  'From: Alice <alice@example.org>\r\n' +
  'To: bob@example.net\r\n' +
  'Subject: inspect me\r\n' +
  'X-Spaces:  two leading spaces\r\n' +
  'Date: Sun, 06 Dec 2026 01:00:00 +0000\r\n' +
  'Message-ID: <inspect@example.org>\r\n' +
  '\r\n' +
  'Body line.\r\n';

let dir = '';
let sock = '';
let mta: PostfixMta | undefined;
const sink = new SmtpSink();
let inspector: ReturnType<typeof spawn> | undefined;
const events: InspectEvent[] = [];
let stderr = '';
let inetPort = 0;

before(async () => {
  dir = await makeWorkDir('milterd-e2e-inspect-');
  await chmod(dir, 0o755); // Postfix's smtpd (user postfix) reaches the socket in here
  sock = path.join(dir, 'inspect.sock');
  const child = spawn(
    process.execPath,
    // Two sockets: Postfix uses the Unix one; Sendmail refuses a socket under /tmp (world-writable).
    [
      BIN,
      'inspect',
      '--listen',
      `unix:${sock}`,
      '--listen',
      'inet:0@127.0.0.1',
      '--socket-mode',
      '0666',
      '--json',
    ],
    { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] },
  );
  inspector = child;
  let buf = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      events.push(JSON.parse(buf.slice(0, nl)) as InspectEvent);
      buf = buf.slice(nl + 1);
    }
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  inetPort = await waitFor(
    'milterd inspect to listen',
    () => {
      const m = /listening on unix:\S+, inet:(\d+)@127\.0\.0\.1/.exec(stderr);
      return m ? Number(m[1]) : undefined;
    },
    { timeoutMs: 15_000 },
  );
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
  if (inspector?.pid !== undefined) {
    await stopPid(inspector.pid, 3000);
    await waitExit(inspector, 5000);
  }
  if (process.env.MILTERD_E2E_KEEP !== '1') await rm(dir, { recursive: true, force: true });
});

test('milterd inspect logs every event and macro Postfix sends, and lets the message through unchanged', async () => {
  if (mta === undefined) throw new Error('Postfix is not running');
  const client = new SmtpClient();
  await client.connect('127.0.0.1', mta.port);
  try {
    assert.equal((await client.readReply()).code, 220);
    assert.equal((await client.command('EHLO client.example.org')).code, 250);
    assert.equal((await client.command('XCLIENT LOGIN=alice')).code, 220);
    assert.equal((await client.command('EHLO client.example.org')).code, 250);
    assert.equal((await client.command('MAIL FROM:<alice@example.org> BODY=8BITMIME')).code, 250);
    assert.equal((await client.command('RCPT TO:<bob@example.net>')).code, 250);
    assert.equal((await client.command('DATA')).code, 354);
    assert.equal((await client.content(Buffer.from(MESSAGE, 'latin1'))).code, 250);
    assert.equal((await client.command('FOO bar')).code, 500);
    assert.equal((await client.command('QUIT')).code, 221);
  } finally {
    client.close();
  }
  const delivered = await waitFor('the sink to receive the message', () => sink.messages[0], {
    timeoutMs: 30_000,
  });
  // Never modifies mail: what arrives is what was sent, plus Postfix's own Received: header.
  const { message, removed } = withoutPostfixReceived(delivered.raw);
  assert.equal(removed, 1);
  assert.equal(message.toString('latin1'), MESSAGE);
  assert.equal(delivered.from, '<alice@example.org>');
  assert.deepEqual(
    delivered.recipients.map((r) => r.address),
    ['<bob@example.net>'],
  );

  // The milter connection with the message (XCLIENT makes Postfix start a new one).
  await waitFor('the close of the milter connection', () =>
    events.some((e) => e.event === 'close' && events.some((m) => m.event === 'eom' && m.conn === e.conn))
      ? true
      : undefined,
  );
  const conn = events.find((e) => e.event === 'eom')?.conn;
  const mine = events.filter((e) => e.conn === conn);
  const kinds = mine.map((e) => e.event).filter((k, i, a) => k !== 'header' || a[i - 1] !== 'header');
  assert.deepEqual(kinds, [
    'open',
    'optneg',
    'connect',
    'helo',
    'mail',
    'rcpt',
    'data',
    'header',
    'eoh',
    'body',
    'eom',
    'abort',
    'unknown',
    'abort',
    'quit',
    'close',
  ]);
  const ev = (kind: InspectEvent['event']): InspectEvent =>
    mine.find((e) => e.event === kind) as InspectEvent;
  // Negotiation: every step, SETSYMLIST and HDR_LEADSPC taken from Postfix's offer.
  const agreed = String(ev('optneg').fields.agreed);
  const num = (name: string): number => Number(new RegExp(`${name}=(0x[0-9a-f]+)`).exec(agreed)?.[1]);
  assert.equal(num('actions'), SMFIF_SETSYMLIST);
  assert.equal(num('protocol') & SMFIP_HDR_LEADSPC, SMFIP_HDR_LEADSPC);
  assert.match(agreed, /^version=6 /);
  // What Postfix sent with each event, with the macros we asked for.
  // No reverse lookup here (smtpd_peername_lookup = no): the name is the address literal.
  assert.deepEqual(ev('connect').fields, {
    hostname: '[127.0.0.1]',
    family: 'inet',
    address: '127.0.0.1',
    port: ev('connect').fields.port,
  });
  const connect = ev('connect').macros ?? {};
  assert.equal(connect.j, 'mta.test');
  assert.equal(connect['{client_addr}'], '127.0.0.1');
  assert.equal(connect['{daemon_addr}'], '127.0.0.1');
  assert.match(connect.v ?? '', /^Postfix 3\.7/);
  assert.equal(ev('helo').fields.hostname, 'client.example.org');
  assert.deepEqual(ev('mail').fields, { sender: '<alice@example.org>', args: ['BODY=8BITMIME'] });
  const mail = ev('mail').macros ?? {};
  assert.equal(mail['{auth_authen}'], 'alice');
  assert.equal(mail['{mail_addr}'], 'alice@example.org');
  assert.equal(ev('rcpt').macros?.['{rcpt_addr}'], 'bob@example.net');
  const headers = mine.filter((e) => e.event === 'header').map((e) => [e.fields.name, e.fields.value]);
  assert.deepEqual(headers, [
    ['From', ' Alice <alice@example.org>'],
    ['To', ' bob@example.net'],
    ['Subject', ' inspect me'],
    ['X-Spaces', '  two leading spaces'],
    ['Date', ' Sun, 06 Dec 2026 01:00:00 +0000'],
    ['Message-ID', ' <inspect@example.org>'],
  ]);
  assert.equal(ev('body').fields.bytes, 'Body line.\r\n'.length);
  const queueId = ev('eom').macros?.i ?? '';
  assert.match(queueId, /^[0-9A-Z]+$/);
  assert.match(delivered.raw.toString('latin1'), new RegExp(` id ${queueId}\\b`));
  assert.deepEqual(ev('unknown').fields, { line: 'FOO' });
});

test("milterd inspect behind Sendmail: every event, and the macros it asked for beyond Sendmail's defaults", async (t) => {
  sink.reset();
  const sendmail = await SendmailMta.start({
    dir: path.join(dir, 'sendmail'),
    sinkPort: sink.port,
    milter: { kind: 'inet', port: inetPort },
  });
  t.after(() => sendmail.stop());
  const seen = new Set(events.map((e) => e.conn));
  const client = new SmtpClient();
  await client.connect('127.0.0.1', sendmail.port);
  try {
    assert.equal((await client.readReply()).code, 220);
    assert.equal((await client.command('EHLO client.example.org')).code, 250);
    assert.equal((await client.command('MAIL FROM:<alice@example.org>')).code, 250);
    assert.equal((await client.command('RCPT TO:<bob@example.net>')).code, 250);
    assert.equal((await client.command('DATA')).code, 354);
    assert.equal((await client.content(Buffer.from(MESSAGE, 'latin1'))).code, 250);
    assert.equal((await client.command('QUIT')).code, 221);
  } finally {
    client.close();
  }
  const delivered = await waitFor('the sink to receive the message', () => sink.messages[0], {
    timeoutMs: 30_000,
  });
  assert.equal(delivered.body.toString('latin1'), 'Body line.\r\n');
  assert.ok(delivered.raw.toString('latin1').includes('\r\nX-Spaces:  two leading spaces\r\n'));
  await waitFor('the close of the milter connection', () =>
    events.some(
      (e) =>
        !seen.has(e.conn) &&
        e.event === 'close' &&
        events.some((m) => m.event === 'eom' && m.conn === e.conn),
    )
      ? true
      : undefined,
  );
  const conn = events.find((e) => !seen.has(e.conn) && e.event === 'eom')?.conn;
  const mine = events.filter((e) => e.conn === conn);
  const kinds = mine.map((e) => e.event);
  for (const k of [
    'optneg',
    'connect',
    'helo',
    'mail',
    'rcpt',
    'data',
    'header',
    'eoh',
    'body',
    'eom',
  ] as const)
    assert.ok(kinds.includes(k), `${k} in ${kinds.join(' ')}`);
  const ev = (kind: InspectEvent['event']): InspectEvent =>
    mine.find((e) => e.event === kind) as InspectEvent;
  const connect = ev('connect').macros ?? {};
  // Not in Sendmail's default connect macros (j _ {daemon_name} {if_name} {if_addr}): asked for.
  assert.match(connect.v ?? '', /^8\./);
  assert.equal(connect['{client_addr}'], '127.0.0.1');
  assert.equal(ev('mail').macros?.['{mail_addr}'], 'alice@example.org');
  assert.equal(ev('rcpt').macros?.['{rcpt_addr}'], 'bob@example.net');
  assert.match(ev('eom').macros?.i ?? '', /^\w+$/);
  const spaces = mine.find((e) => e.event === 'header' && e.fields.name === 'X-Spaces');
  assert.equal(spaces?.fields.value, '  two leading spaces');
});
