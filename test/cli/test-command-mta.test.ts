/**
 * `milterd test` as a given MTA (issue 16): `--mta postfix|sendmail` plays packet for packet what the real
 * MTAs sent in fixtures/captures (offer, MACRO stages and names, UNKNOWN, ABORT/QUIT at the end);
 * `--version/--actions/--protocol` change the offer; `--unknown`, `--auth-user`, `--rcpt-macro` reach the
 * milter where the MTA would send them; `--repeat N --concurrency C` runs N conversations and sums them up.
 * Checked on what the milter saw: a recording milterd filter, and a libmilter filter compiled from
 * fixtures/libmilter-recorder.c (gcc + Debian's libmilter-dev: the test fails, never skips, without them).
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { runTest, type RepeatReport, type TestCommandOptions } from '../../src/cli/test-command.js';
import type { Filter, StageContext } from '../../src/index.js';
import { FrameDecoder } from '../../src/protocol/frame.js';
import { loadCaptures, type Capture } from '../helpers/captures.js';
import { startServer } from '../helpers/server.js';
import { FIXTURES, runMilterd } from './helpers.js';

const EML = `${FIXTURES}message.eml`;
const MY_HOSTNAME = 'milterd-test.localdomain';

let dir = '';
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'milterd-test-mta-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Run `milterd test` in this process; resolves with the exit code, stdout and stderr. */
async function run(
  file: string,
  o: Partial<TestCommandOptions> & { milter: string },
): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runTest(
    file,
    { connectAddr: '127.0.0.1', connectPort: 54321, timeout: 5000, ...o },
    (s) => void (out += s),
    (s) => void (err += s),
  );
  return { code, out, err };
}

// ---------------------------------------------------------------------------------------------------------
// Against the captures: the same packets as the real MTA, in the same order.

/** A packet as compared: the command letter; MACRO with its stage letter and macro names; UNKNOWN whole. */
function describe(packet: Buffer): string {
  const cmd = String.fromCharCode(packet[0] as number);
  const strings = packet.subarray(1).toString('latin1').split('\0');
  if (cmd === 'U') return `U ${strings[0] ?? ''}`;
  if (cmd !== 'D') return cmd;
  const names = packet.subarray(2).toString('latin1').split('\0').slice(0, -1);
  return `D${String.fromCharCode(packet[1] as number)}[${names.filter((_, i) => i % 2 === 0).join(' ')}]`;
}

/**
 * A milter that answers as the captured libmilter filter did: after each MTA packet it writes the
 * capture's milter packets that followed it. Records what it was sent (command byte + payload).
 */
async function replayMilter(t: TestContext, capture: Capture): Promise<{ spec: string; sent: Buffer[] }> {
  const sent: Buffer[] = [];
  const server = net.createServer((socket) => {
    const decoder = new FrameDecoder(1 << 20);
    let at = 0;
    socket.on('data', (chunk: Buffer) => {
      decoder.push(chunk);
      for (let f = decoder.next(); f !== undefined; f = decoder.next()) {
        sent.push(Buffer.concat([Buffer.from([f.command]), f.payload]));
        while (at < capture.packets.length && capture.packets[at]?.dir !== '>') at++;
        at++;
        for (; capture.packets[at]?.dir === '<'; at++) {
          const bytes = (capture.packets[at] as { bytes: Buffer }).bytes;
          const len = Buffer.alloc(4);
          len.writeUInt32BE(bytes.length);
          socket.write(Buffer.concat([len, bytes]));
        }
        if (f.command === 'Q'.charCodeAt(0)) socket.end();
      }
    });
    socket.on('error', () => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { spec: `inet:${(server.address() as net.AddressInfo).port}@127.0.0.1`, sent };
}

/** The capture's message as a file, and its envelope as options. */
async function messageOf(capture: Capture): Promise<{ file: string; args: Partial<TestCommandOptions> }> {
  const mta = capture.packets.filter((p) => p.dir === '>').map((p) => p.bytes);
  const strings = (b: Buffer): string[] => b.subarray(1).toString('latin1').split('\0');
  const of = (c: string): Buffer[] => mta.filter((b) => b[0] === c.charCodeAt(0));
  const headers = of('L').map((b) => `${strings(b)[0]}: ${strings(b)[1]}\r\n`);
  const body = Buffer.concat(of('B').map((b) => b.subarray(1)));
  const file = path.join(dir, `${capture.name.replace(/\//g, '-')}.eml`);
  await writeFile(file, Buffer.concat([Buffer.from(headers.join('') + '\r\n', 'latin1'), body]));
  const unknown = of('U').map((b) => strings(b)[0] as string);
  return {
    file,
    args: {
      from: strings(of('M')[0] as Buffer)[0],
      rcpt: of('R').map((b) => strings(b)[0] as string),
      helo: strings(of('H')[0] as Buffer)[0],
      // Postfix passes on only the verb: the client said "XFOO bar" (Sendmail's capture shows it).
      ...(unknown.length > 0 ? { unknown: ['XFOO bar'] } : {}),
    },
  };
}

const CAPTURES = loadCaptures();
for (const name of [
  'postfix/plain/conn-0001',
  'sendmail/plain/conn-0001',
  'postfix/unknown_cmd/conn-0034',
  'sendmail/unknown_cmd/conn-0034',
  // Two recipients (Postfix: `i` from the second RCPT on) and every modification at EOM.
  'postfix/combo/conn-0018',
  'sendmail/combo/conn-0018',
  // Three BODY chunks (Postfix: a `D B` before each).
  'postfix/large_body/conn-0035',
  'sendmail/large_body/conn-0035',
]) {
  test(`milterd test --mta ${name.split('/')[0]}: packet for packet what ${name} shows`, async (t) => {
    const capture = CAPTURES.find((c) => c.name === name);
    assert.ok(capture !== undefined, name);
    const { spec, sent } = await replayMilter(t, capture);
    const { file, args } = await messageOf(capture);
    const mta = name.startsWith('postfix') ? 'postfix' : 'sendmail';
    const r = await run(file, { milter: spec, mta, ...args });
    assert.equal(r.code, 0, r.err + r.out);
    const expected = capture.packets.filter((p) => p.dir === '>').map((p) => p.bytes);
    assert.deepEqual(sent.map(describe), expected.map(describe));
    // The offer byte for byte; the milter's ADDHEADER reached the report.
    assert.deepEqual(sent[0], expected[0]);
    assert.match(r.out, /X-Ref-Milter/);
  });
}

// ---------------------------------------------------------------------------------------------------------
// Against milterd: a filter that records every callback with the macros it sees.

const WATCHED = [
  'v',
  '_',
  '{daemon_name}',
  'i',
  '{auth_type}',
  '{auth_authen}',
  '{mail_addr}',
  '{mail_mailer}',
  '{rcpt_addr}',
  '{msg_id}',
  '{x}',
];

interface Seen {
  event: string;
  arg: string;
  macros: Record<string, string>;
}

function recorder(seen: Seen[], omit: readonly string[] = []): Filter {
  const rec =
    (event: string) =>
    (ctx: StageContext<unknown>, arg?: unknown): undefined => {
      const macros: Record<string, string> = {};
      for (const name of WATCHED) {
        const v = ctx.macro(name);
        if (v !== undefined) macros[name] = v;
      }
      seen.push({ event, arg: typeof arg === 'string' ? arg : '', macros });
      return undefined;
    };
  const filter: Filter = {
    negotiate: (_ctx, offer) => {
      seen.push({
        event: 'negotiate',
        arg: `${offer.version} 0x${offer.actions.toString(16)} 0x${offer.protocol.toString(16)}`,
        macros: {},
      });
      return { actions: 0, protocol: 0 };
    },
    connect: (ctx, info) => rec('connect')(ctx, info.hostname),
    helo: rec('helo'),
    unknown: rec('unknown'),
    envfrom: rec('mail'),
    envrcpt: rec('rcpt'),
    data: rec('data'),
    header: rec('header'),
    eoh: rec('eoh'),
    body: (ctx) => rec('body')(ctx),
    eom: rec('eom'),
    abort: (ctx) => void rec('abort')(ctx),
  };
  for (const name of omit) delete (filter as Record<string, unknown>)[name];
  return filter;
}

const events = (seen: readonly Seen[]): string[] => seen.map((s) => s.event);
const at = (seen: readonly Seen[], event: string, n = 0): Seen => {
  const s = seen.filter((x) => x.event === event)[n];
  assert.ok(s !== undefined, `no ${event} #${n}`);
  return s;
};

test("--mta postfix / sendmail against milterd: each MTA's offer, macros, UNKNOWN and event order", async (t) => {
  const seen: Seen[] = [];
  const { address } = await startServer(t, { filter: recorder(seen) });
  const milter = `inet:${address.port}@127.0.0.1`;
  const common = { milter, unknown: ['XFOO bar'], authUser: 'joe', queueId: 'QID1' };

  const pf = await run(EML, { ...common, mta: 'postfix' });
  assert.equal(pf.code, 0, pf.err);
  assert.deepEqual(events(seen), [
    'negotiate',
    'connect',
    'helo',
    'unknown',
    'mail',
    'rcpt',
    'rcpt',
    'data',
    ...new Array<string>(5).fill('header'),
    'eoh',
    'body',
    'eom',
  ]);
  assert.equal(at(seen, 'negotiate').arg, '6 0x1ff 0x1fffff');
  assert.equal(at(seen, 'connect').macros.v, 'Postfix 3.7.11');
  assert.equal(at(seen, 'connect').macros['{daemon_name}'], MY_HOSTNAME);
  assert.equal(at(seen, 'connect').macros._, 'unknown [127.0.0.1]');
  // Postfix passes on the verb only.
  assert.equal(at(seen, 'unknown').arg, 'XFOO');
  // At MAIL: AUTH macros, the address without brackets, no queue id yet (Postfix opens the queue file at
  // the first accepted recipient: `i` from the second RCPT on).
  assert.deepEqual(at(seen, 'mail').macros, {
    ...at(seen, 'connect').macros,
    '{auth_type}': 'PLAIN',
    '{auth_authen}': 'joe',
    '{mail_addr}': 'alice@example.org',
    '{mail_mailer}': 'smtp',
  });
  assert.equal(at(seen, 'rcpt', 0).macros.i, undefined);
  assert.equal(at(seen, 'rcpt', 1).macros.i, 'QID1');
  assert.equal(at(seen, 'rcpt', 1).macros['{rcpt_addr}'], 'carol@example.net');
  assert.equal(at(seen, 'eom').macros.i, 'QID1');

  seen.length = 0;
  const sm = await run(EML, { ...common, mta: 'sendmail' });
  assert.equal(sm.code, 0, sm.err);
  assert.equal(at(seen, 'negotiate').arg, '6 0x1ff 0x1fffff');
  assert.equal(at(seen, 'connect').macros['{daemon_name}'], 'MTA');
  assert.equal(at(seen, 'connect').macros._, '[127.0.0.1]');
  assert.equal(at(seen, 'connect').macros.v, undefined);
  // Sendmail passes on the whole line, and has the queue id at MAIL already.
  assert.equal(at(seen, 'unknown').arg, 'XFOO bar');
  assert.equal(at(seen, 'mail').macros.i, 'QID1');
  assert.equal(at(seen, 'mail').macros['{auth_authen}'], 'joe');
  assert.equal(at(seen, 'mail').macros['{mail_mailer}'], 'relay');
  assert.equal(at(seen, 'eom').macros['{msg_id}'], '<test-1@example.org>');

  // Without --mta: what milterd test always sent (its own macros, the whole UNKNOWN line), plus AUTH.
  seen.length = 0;
  const plain = await run(EML, { ...common });
  assert.equal(plain.code, 0, plain.err);
  assert.equal(at(seen, 'connect').macros.v, 'milterd test');
  assert.equal(at(seen, 'unknown').arg, 'XFOO bar');
  assert.equal(at(seen, 'mail').macros['{auth_authen}'], 'joe');
  assert.equal(at(seen, 'mail').macros.i, 'QID1');
  // The report lists the UNKNOWN step after HELO.
  assert.match(plain.out, /^helo .*\nunknown\s+XFOO bar\s+-> continue\nenvfrom /m);
});

test('--unknown: a reject refuses that command only, the message goes on; --expect sees it at unknown', async (t) => {
  const filter: Filter = { unknown: () => 'reject', eom: () => 'accept' };
  const { address } = await startServer(t, { filter });
  const milter = `inet:${address.port}@127.0.0.1`;
  const r = await runMilterd([
    'test',
    EML,
    '--milter',
    milter,
    '--unknown',
    'XFOO',
    '--expect',
    'reject@unknown',
    '--expect',
    'accept',
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^unknown\s+XFOO\s+-> reject$/m);
  assert.match(r.stdout, /^result\s+accepted \(decided at eom: accept\)$/m);
});

test('--mta: the macros of an event the milter turned off still arrive, as both MTAs send them', async (t) => {
  const seen: Seen[] = [];
  const filter = recorder(seen, ['negotiate', 'envfrom']);
  const { address } = await startServer(t, { filter });
  const milter = `inet:${address.port}@127.0.0.1`;
  for (const mta of ['postfix', 'sendmail'] as const) {
    seen.length = 0;
    const r = await run(EML, { milter, mta });
    assert.equal(r.code, 0, r.err);
    assert.ok(!events(seen).includes('mail'), mta);
    assert.equal(at(seen, 'rcpt').macros['{mail_addr}'], 'alice@example.org', mta);
    assert.match(r.out, /^envfrom\s+FROM:<alice@example\.org>\s+-> \(not sent/m);
  }
  // The default keeps today's behaviour: no macros for an event not sent.
  seen.length = 0;
  assert.equal((await run(EML, { milter })).code, 0);
  assert.equal(at(seen, 'rcpt').macros['{mail_mailer}'], undefined);
});

test("--version/--actions/--protocol change the offer (over --mta's); --version 2 has no DATA", async (t) => {
  const seen: Seen[] = [];
  const { address } = await startServer(t, { filter: recorder(seen) });
  const milter = `inet:${address.port}@127.0.0.1`;
  const r = await runMilterd([
    'test',
    EML,
    '--milter',
    milter,
    '--mta',
    'sendmail',
    '--version',
    '4',
    '--actions',
    'addHeader,changeHeader',
    '--protocol',
    '0x400',
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(at(seen, 'negotiate').arg, '4 0x11 0x400');
  assert.match(r.stdout, /^milter .*\(protocol v4\)$/m);

  seen.length = 0;
  const v2 = await runMilterd(['test', EML, '--milter', milter, '--version', '2', '--json']);
  assert.equal(v2.code, 0, v2.stderr);
  assert.equal(at(seen, 'negotiate').arg, '2 0x1ff 0x1fffff');
  assert.ok(!events(seen).includes('data'));
  const report = JSON.parse(v2.stdout) as { steps: Array<{ stage: string; reply: { kind: string } }> };
  assert.equal(report.steps.find((s) => s.stage === 'data')?.reply.kind, 'skipped');

  const bad = await runMilterd(['test', EML, '--actions', 'addHeader,nonsense']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /unknown flag "nonsense"; expected 0xHEX or a list of: addHeader, replaceBody/);
  const badVersion = await runMilterd(['test', EML, '--version', '7']);
  assert.equal(badVersion.code, 2);
  assert.match(badVersion.stderr, /expected 2 to 6/);
});

test("--rcpt-macro: a macro before one recipient's RCPT only; an unknown recipient is a usage error", async (t) => {
  const seen: Seen[] = [];
  const { address } = await startServer(t, { filter: recorder(seen) });
  const milter = `inet:${address.port}@127.0.0.1`;
  const r = await runMilterd([
    'test',
    EML,
    '--milter',
    milter,
    '--mta',
    'postfix',
    '--rcpt-macro',
    'carol@example.net:{x}=a:b=c',
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(at(seen, 'rcpt', 0).macros['{x}'], undefined);
  assert.equal(at(seen, 'rcpt', 1).macros['{x}'], 'a:b=c');
  // Postfix's own RCPT macros are still there.
  assert.equal(at(seen, 'rcpt', 1).macros['{rcpt_addr}'], 'carol@example.net');

  const bad = await runMilterd(['test', EML, '--milter', milter, '--rcpt-macro', 'dave@example.net:{x}=1']);
  assert.equal(bad.code, 3);
  assert.match(
    bad.stderr,
    /<dave@example\.net> is not a recipient \(recipients: <bob@example\.net>, <carol@example\.net>\)/,
  );
});

test('--repeat N --concurrency C against milterd: N messages, one connection each; summary and exit codes', async (t) => {
  let eoms = 0;
  let open = 0;
  let maxOpen = 0;
  let connects = 0;
  const release: Array<() => void> = [];
  t.after(() => release.forEach((r) => r()));
  const filter: Filter = {
    connect: () => {
      connects++;
      maxOpen = Math.max(maxOpen, ++open);
      return undefined;
    },
    eom: () => {
      eoms++;
      return 'accept';
    },
    close: () => void open--,
  };
  const { address } = await startServer(t, { filter });
  const milter = `inet:${address.port}@127.0.0.1`;
  const r = await runMilterd([
    'test',
    EML,
    '--milter',
    milter,
    '--repeat',
    '9',
    '--concurrency',
    '3',
    '--json',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout) as RepeatReport;
  assert.equal(eoms, 9);
  assert.equal(connects, 9);
  assert.ok(maxOpen <= 3, `at most 3 connections at a time, saw ${maxOpen}`);
  assert.deepEqual(
    {
      repeat: s.repeat,
      concurrency: s.concurrency,
      completed: s.completed,
      failed: s.failed,
      outcomes: s.outcomes,
    },
    { repeat: 9, concurrency: 3, completed: 9, failed: 0, outcomes: { accepted: 9 } },
  );
  const l = s.latencyMs;
  assert.ok(l.p50 > 0 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max, JSON.stringify(l));
  assert.ok(s.elapsedMs > 0 && s.messagesPerSecond > 0);

  const text = await runMilterd(['test', EML, '--milter', milter, '--repeat', '4', '--concurrency', '2']);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^runs\s+4 \(2 at a time\): 4 completed, 0 failed$/m);
  assert.match(text.stdout, /^outcomes\s+accepted 4$/m);
  assert.match(text.stdout, /^elapsed\s+\d+\.\d{3} s, [\d.]+ msg\/s$/m);
  assert.match(text.stdout, /^latency\s+p50 [\d.]+ ms, p90 [\d.]+ ms, p99 [\d.]+ ms, max [\d.]+ ms$/m);

  // Expectations over all runs: every miss counted, exit 6.
  const missed = await runMilterd(['test', EML, '--milter', milter, '--repeat', '3', '--expect', 'reject']);
  assert.equal(missed.code, 6);
  assert.equal(missed.stderr, 'milterd: expected reject, the milter decided accept at eom (3 of 3 runs)\n');
});

test('--repeat: a conversation that fails counts as failed, and the exit code says the milter failed', async (t) => {
  let n = 0;
  const release: Array<() => void> = [];
  t.after(() => release.forEach((r) => r()));
  // Every second message never gets its EOM reply: the client's --timeout ends that conversation.
  const filter: Filter = {
    eom: () =>
      ++n % 2 === 0 ? new Promise<undefined>((resolve) => release.push(() => resolve(undefined))) : 'accept',
  };
  const { address } = await startServer(t, { filter });
  const milter = `inet:${address.port}@127.0.0.1`;
  const r = await runMilterd(['test', EML, '--milter', milter, '--repeat', '4', '--timeout', '1s', '--json']);
  assert.equal(r.code, 5, r.stderr);
  const s = JSON.parse(r.stdout) as RepeatReport;
  assert.equal(s.completed, 2);
  assert.equal(s.failed, 2);
  assert.deepEqual(s.outcomes, { accepted: 2 });
  assert.equal(s.errors.length, 1);
  assert.match(s.errors[0]?.message ?? '', /no reply within 1000 ms/);
  assert.match(r.stderr, /no reply within 1000 ms \(2 of 4 runs\)/);
});

// ---------------------------------------------------------------------------------------------------------
// Against a libmilter filter that prints what libmilter hands it.

interface LibmilterLine {
  event: string;
  arg: string;
  macros: Record<string, string>;
}

test('every flag against a libmilter filter (gcc + libmilter-dev): what libmilter handed the filter', async (t) => {
  const exe = path.join(dir, 'libmilter-recorder');
  await promisify(execFile)('gcc', [
    '-O1',
    '-o',
    exe,
    `${FIXTURES}libmilter-recorder.c`,
    '-lmilter',
    '-lpthread',
  ]);
  const sock = path.join(dir, 'recorder.sock');
  const filter = spawn(exe, [`unix:${sock}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(async () => {
    if (filter.exitCode === null && filter.signalCode === null) {
      filter.kill('SIGKILL');
      await once(filter, 'exit');
    }
  });
  let buf = '';
  filter.stdout.setEncoding('utf8').on('data', (d: string) => (buf += d));
  while (!buf.includes('ready\n')) await once(filter.stdout, 'data');
  buf = '';
  /** Run milterd test and return the lines the filter printed for it (up to its close). */
  const play = async (
    ...args: string[]
  ): Promise<{ code: number | null; stdout: string; stderr: string; lines: LibmilterLine[] }> => {
    const r = await runMilterd(['test', EML, '--milter', `unix:${sock}`, ...args]);
    const connections = args.includes('--repeat') ? Number(args[args.indexOf('--repeat') + 1]) : 1;
    while ((buf.match(/^close /gm) ?? []).length < connections) await once(filter.stdout, 'data');
    const lines = buf
      .trimEnd()
      .split('\n')
      .map((line): LibmilterLine => {
        const [event = '', ...rest] = line.split(' ');
        const macros: Record<string, string> = {};
        const words: string[] = [];
        // Macro values may hold spaces ("unknown [127.0.0.1]"): a word without "=" continues the last one.
        let last: string | undefined;
        for (const w of rest) {
          const m = /^([a-z_]|\{[a-z_]+\})=(.*)$/.exec(w);
          if (m !== null) macros[(last = m[1] as string)] = m[2] as string;
          else if (last !== undefined) macros[last] += ` ${w}`;
          else words.push(w);
        }
        return { event, arg: words.join(' '), macros };
      });
    buf = '';
    return { ...r, lines };
  };
  const one = (lines: LibmilterLine[], event: string, n = 0): LibmilterLine => {
    const l = lines.filter((x) => x.event === event)[n];
    assert.ok(l !== undefined, `no ${event} #${n}`);
    return l;
  };

  const pf = await play(
    '--mta',
    'postfix',
    '--unknown',
    'XFOO bar',
    '--auth-user',
    'joe',
    '--rcpt-macro',
    'bob@example.net:{x}=1',
    '--queue-id',
    'QID2',
  );
  assert.equal(pf.code, 0, pf.stderr);
  assert.deepEqual(
    pf.lines.map((l) => l.event),
    [
      'negotiate',
      'connect',
      'helo',
      'unknown',
      'mail',
      'rcpt',
      'rcpt',
      'data',
      'header',
      'header',
      'header',
      'header',
      'header',
      'eoh',
      'body',
      'eom',
      'close',
    ],
  );
  assert.equal(one(pf.lines, 'negotiate').arg, 'actions=0x1ff protocol=0x1fffff');
  assert.equal(one(pf.lines, 'connect').macros.v, 'Postfix 3.7.11');
  assert.equal(one(pf.lines, 'connect').macros._, 'unknown [127.0.0.1]');
  assert.equal(one(pf.lines, 'unknown').arg, 'XFOO');
  assert.equal(one(pf.lines, 'mail').macros['{auth_authen}'], 'joe');
  assert.equal(one(pf.lines, 'mail').macros['{auth_type}'], 'PLAIN');
  assert.equal(one(pf.lines, 'mail').macros.i, undefined);
  assert.equal(one(pf.lines, 'rcpt', 0).macros['{x}'], '1');
  assert.equal(one(pf.lines, 'rcpt', 0).macros.i, undefined);
  assert.equal(one(pf.lines, 'rcpt', 1).macros['{x}'], undefined);
  assert.equal(one(pf.lines, 'rcpt', 1).macros.i, 'QID2');
  assert.equal(one(pf.lines, 'eom').macros.i, 'QID2');

  const sm = await play(
    '--mta',
    'sendmail',
    '--unknown',
    'XFOO bar',
    '--auth-user',
    'joe',
    '--queue-id',
    'QID3',
  );
  assert.equal(sm.code, 0, sm.stderr);
  assert.equal(one(sm.lines, 'connect').macros['{daemon_name}'], 'MTA');
  assert.equal(one(sm.lines, 'unknown').arg, 'XFOO bar');
  assert.equal(one(sm.lines, 'mail').macros.i, 'QID3');
  assert.equal(one(sm.lines, 'mail').macros['{auth_authen}'], 'joe');
  assert.equal(one(sm.lines, 'mail').macros['{mail_mailer}'], 'relay');
  assert.equal(one(sm.lines, 'eom').macros['{msg_id}'], '<test-1@example.org>');

  const offer = await play('--version', '4', '--actions', 'addHeader,addRecipient', '--protocol', '0x400');
  assert.equal(offer.code, 0, offer.stderr);
  // libmilter adds the bits it emulates for an MTA that lacks them (NOHREPL, the NR_* bits) to what it shows.
  assert.equal(one(offer.lines, 'negotiate').arg, 'actions=0x5 protocol=0xff480');
  assert.match(offer.stdout, /\(protocol v4\)/);
  const v2 = await play('--version', '2');
  assert.equal(v2.code, 0, v2.stderr);
  assert.ok(!v2.lines.some((l) => l.event === 'data'), 'no DATA for a version 2 offer');
  assert.match(v2.stdout, /^data\s+DATA\s+-> \(not sent/m);

  const rep = await play('--repeat', '6', '--concurrency', '3', '--json', '--expect', 'accept');
  assert.equal(rep.code, 0, rep.stderr);
  const s = JSON.parse(rep.stdout) as RepeatReport;
  assert.deepEqual([s.completed, s.failed, s.outcomes], [6, 0, { accepted: 6 }]);
  assert.equal(rep.lines.filter((l) => l.event === 'eom').length, 6);
  assert.equal(rep.lines.filter((l) => l.event === 'connect').length, 6);

  // A filter built without xxfi_negotiate: libmilter hangs up on an offer lacking the actions it registered.
  const strict = path.join(dir, 'libmilter-filter');
  await promisify(execFile)('gcc', [
    '-O1',
    '-o',
    strict,
    `${FIXTURES}libmilter-filter.c`,
    '-lmilter',
    '-lpthread',
  ]);
  const strictSock = path.join(dir, 'strict.sock');
  const strictFilter = spawn(strict, [`unix:${strictSock}`], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.after(async () => {
    if (strictFilter.exitCode === null && strictFilter.signalCode === null) {
      strictFilter.kill('SIGKILL');
      await once(strictFilter, 'exit');
    }
  });
  await once(strictFilter.stdout, 'data');
  const refused = await runMilterd(['test', EML, '--milter', `unix:${strictSock}`, '--actions', 'addHeader']);
  assert.equal(refused.code, 5);
  assert.match(refused.stderr, /or it refused the offer of --version\/--actions\/--protocol/);
});
