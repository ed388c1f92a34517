/**
 * `milterd test` against milterd itself and against a libmilter filter compiled from
 * fixtures/libmilter-filter.c (needs gcc and Debian's libmilter-dev: the test fails, never skips,
 * when they are missing).
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { Daemon, FIXTURES, runMilterd } from './helpers.js';

const EML = `${FIXTURES}message.eml`;

interface Report {
  milter: string;
  negotiated: { version: number; actions: string[] };
  steps: Array<{ stage: string; sent: string; reply: { kind: string; text?: string } }>;
  modifications: Array<Record<string, unknown>>;
  result: { outcome: string; stoppedAt: string; reply: { kind: string }; acceptedRecipients: string[] };
}

let dir = '';
let daemon: Daemon | undefined;
let milterd = '';

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'milterd-test-cmd-'));
  daemon = new Daemon(['--listen', 'inet:0@127.0.0.1']);
  milterd = (await daemon.started()).milter;
});

after(async () => {
  await daemon?.kill();
  await rm(dir, { recursive: true, force: true });
});

test('milterd test against milterd: JSON report with every step and the X-Milterd header', async () => {
  const r = await runMilterd(['test', EML, '--milter', milterd, '--json', '--queue-id', 'Q1TEST']);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as Report;
  assert.equal(report.milter, milterd);
  assert.equal(report.negotiated.version, 6);
  assert.deepEqual(
    report.steps.map((s) => s.stage).filter((s, i, a) => a.indexOf(s) === i),
    ['connect', 'helo', 'envfrom', 'envrcpt', 'data', 'header', 'eoh', 'body', 'eom'],
  );
  // Envelope defaults come from the From:/To: headers.
  assert.equal(report.steps.find((s) => s.stage === 'envfrom')?.sent, 'FROM:<alice@example.org>');
  assert.deepEqual(report.result.acceptedRecipients, ['<bob@example.net>', '<carol@example.net>']);
  assert.equal(report.result.outcome, 'accepted');
  assert.equal(report.result.stoppedAt, 'eom');
  assert.deepEqual(report.modifications, [
    { kind: 'addHeader', name: 'X-Milterd', value: report.modifications[0]?.value },
  ]);
  assert.match(String(report.modifications[0]?.value), /^milterd \d/);
  assert.ok(daemon?.lines.some((l) => l.msg === 'message passed' && l.txn === 'Q1TEST'));
});

test('milterd test: text report, envelope from options', async () => {
  const r = await runMilterd([
    'test',
    EML,
    '--milter',
    milterd,
    '--from',
    'other@example.org',
    '--rcpt',
    'x@example.net',
    '--helo',
    'mx.example.org',
    '--connect-addr',
    '2001:db8::1',
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^envfrom\s+FROM:<other@example\.org>\s+-> continue$/m);
  assert.match(r.stdout, /^envrcpt\s+TO:<x@example\.net>\s+-> continue$/m);
  assert.match(r.stdout, /^helo\s+mx\.example\.org\s+-> continue$/m);
  assert.match(r.stdout, /add header\s+X-Milterd: milterd/);
  assert.match(r.stdout, /^result\s+accepted/m);
});

test('milterd test: unreachable milter exits 5, unreadable file exits 3, no stack traces', async () => {
  // A port nobody listens on: bound, then released.
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const closedPort = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const r1 = await runMilterd(['test', EML, '--milter', `inet:${closedPort}@127.0.0.1`, '--timeout', '2s']);
  assert.equal(r1.code, 5);
  assert.match(r1.stderr, /ERR_MILTER_/);
  assert.doesNotMatch(r1.stderr, /\n\s+at /);
  const r2 = await runMilterd(['test', path.join(dir, 'missing.eml'), '--milter', milterd]);
  assert.equal(r2.code, 3);
  assert.match(r2.stderr, /ENOENT/);
  const r3 = await runMilterd(['test', EML, '--milter', 'tcp:nonsense']);
  assert.equal(r3.code, 2);
});

test('milterd test reads the message from stdin', async () => {
  const { readFile } = await import('node:fs/promises');
  const r = await runMilterd(['test', '-', '--milter', milterd, '--json'], {
    input: await readFile(EML, 'utf8'),
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal((JSON.parse(r.stdout) as Report).result.outcome, 'accepted');
});

test('milterd test against a libmilter filter (gcc + libmilter-dev)', async (t) => {
  const exe = path.join(dir, 'libmilter-filter');
  await promisify(execFile)('gcc', [
    '-O1',
    '-o',
    exe,
    `${FIXTURES}libmilter-filter.c`,
    '-lmilter',
    '-lpthread',
  ]);
  const sock = path.join(dir, 'libmilter.sock');
  const filter = spawn(exe, [`unix:${sock}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(async () => {
    if (filter.exitCode === null && filter.signalCode === null) {
      filter.kill('SIGKILL');
      await once(filter, 'exit');
    }
  });
  filter.stdout.setEncoding('utf8');
  const [first] = (await once(filter.stdout, 'data')) as [string];
  assert.match(first, /ready/);

  const r = await runMilterd([
    'test',
    EML,
    '--milter',
    `unix:${sock}`,
    '--json',
    '--rcpt',
    '<reject-me@example.net>',
    '--rcpt',
    '<bob@example.net>',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout) as Report;
  const rcpts = report.steps.filter((s) => s.stage === 'envrcpt');
  assert.deepEqual(rcpts[0]?.reply, { kind: 'replyCode', text: '550 5.1.1 No such user here' });
  assert.equal(rcpts[1]?.reply.kind, 'continue');
  assert.deepEqual(report.result.acceptedRecipients, ['<bob@example.net>']);
  assert.equal(report.result.reply.kind, 'accept');
  assert.deepEqual(report.modifications, [
    { kind: 'addHeader', name: 'X-Libmilter-Test', value: 'seen 5 headers' },
    {
      kind: 'changeHeader',
      index: 1,
      name: 'Subject',
      value: '[libmilter] milterd test message\n with a folded subject',
    },
    { kind: 'addRecipient', recipient: '<audit@example.net>' },
  ]);

  const text = await runMilterd(['test', EML, '--milter', `unix:${sock}`]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(
    text.stdout,
    /change header\s+Subject\[1\]: \[libmilter\] milterd test message\\n with a folded subject/,
  );
  assert.match(text.stdout, /add recipient\s+<audit@example\.net>/);
  assert.match(text.stdout, /^result\s+accepted \(decided at eom: accept\)$/m);

  // --expect against libmilter: its 550 reply at RCPT counts as reject, its EOM accept as the final decision.
  const rcptArgs = ['--rcpt', '<reject-me@example.net>', '--rcpt', '<bob@example.net>'];
  const met = await runMilterd([
    'test',
    EML,
    '--milter',
    `unix:${sock}`,
    ...rcptArgs,
    '--expect',
    'reject@envrcpt',
    '--expect',
    'accept',
  ]);
  assert.equal(met.code, 0, met.stderr);
  const unmet = await runMilterd([
    'test',
    EML,
    '--milter',
    `unix:${sock}`,
    ...rcptArgs,
    '--expect',
    'discard',
  ]);
  assert.equal(unmet.code, 6);
  assert.equal(unmet.stderr, 'milterd: expected discard, the milter decided accept at eom\n');
});
