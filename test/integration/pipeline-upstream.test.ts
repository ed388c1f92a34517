/**
 * upstreamFilter behind a plain milterd server, against a real libmilter filter in another process
 * (pipeline-upstream-milter.c, built with gcc + Debian's libmilter-dev: the test fails, never skips,
 * without them). The MTA side is the project's MilterClient.
 *
 * Happy path: the MTA sees exactly the replies and modification packets (compared as wire bytes) it sees
 * talking to the libmilter filter directly. Faults: nothing listening, a killed upstream (between
 * commands and during EOM), a stopped one (SIGSTOP) and one that never answers at EOM: the failure action
 * answers every command (no desync), the breaker fails sessions fast and then probes, and no file
 * descriptor outlives the sessions.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import {
  MilterClient,
  playMessage,
  type MessageResult,
  type MessageScript,
  type MilterClientOptions,
} from '../../src/client/index.js';
import { MTA_OFFER } from '../../src/client/mta-profiles.js';
import { SMFIP_NR_HDR } from '../../src/protocol/constants.js';
import { decodeCommand } from '../../src/protocol/decode.js';
import { encodeResponse, encodeResponses } from '../../src/protocol/encode.js';
import { FrameDecoder } from '../../src/protocol/frame.js';
import type { MilterResponse } from '../../src/protocol/types.js';
import { upstreamFilter, type UpstreamEvent, type UpstreamOptions } from '../../src/pipeline/upstream.js';
import { memoryLogger, type MemoryLog } from '../helpers/logs.js';
import { startServer } from '../helpers/server.js';
import { waitFor } from '../helpers/wait.js';

const SOURCE = fileURLToPath(
  new URL('../../../test/integration/pipeline-upstream-milter.c', import.meta.url),
);

let dir = '';
let exe = '';
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'milterd-upstream-'));
  exe = path.join(dir, 'pipeline-upstream-milter');
  await promisify(execFile)('gcc', ['-O1', '-o', exe, SOURCE, '-lmilter', '-lpthread']);
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Open descriptors of this process (sockets, pipes, files). */
function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Every thread of `pid` is stopped (state T in /proc): a signal stops a process asynchronously. */
function stopped(pid: number): boolean {
  const tasks = readdirSync(`/proc/${pid}/task`);
  return tasks.every((tid) => /^\d+ \(.*\) T /.test(readFileSync(`/proc/${pid}/task/${tid}/stat`, 'latin1')));
}

interface Upstream {
  proc: ChildProcess;
  spec: string;
  /** Lines printed so far ("ready", "eom", "close"). */
  lines: string[];
  count(line: string): number;
  /** SIGKILL and wait until the process and its pipes are gone. */
  kill(): Promise<void>;
}

let seq = 0;
/** A fresh Unix socket spec in the test directory. */
function freshSpec(): string {
  return `unix:${path.join(dir, `up${++seq}.sock`)}`;
}

/** Start the libmilter fixture on `spec`; killed by pid after the test (SIGKILL also ends a stopped one). */
async function startUpstream(t: TestContext, spec = freshSpec()): Promise<Upstream> {
  const proc = spawn(exe, [spec], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let buffered = '';
  const stdoutClosed = once(proc.stdout as NodeJS.ReadableStream, 'close');
  proc.stdout?.setEncoding('utf8');
  proc.stdout?.on('data', (s: string) => {
    buffered += s;
    const parts = buffered.split('\n');
    buffered = parts.pop() ?? '';
    lines.push(...parts);
  });
  const kill = async (): Promise<void> => {
    if (proc.exitCode === null && proc.signalCode === null) {
      process.kill(proc.pid as number, 'SIGKILL');
      await once(proc, 'exit');
    }
    await stdoutClosed;
  };
  t.after(kill);
  await waitFor(() => lines.includes('ready'), 'the upstream to listen');
  return { proc, spec, lines, count: (l) => lines.filter((x) => x === l).length, kill };
}

/** A milterd server hosting upstreamFilter; its events are collected. */
async function startProxy(
  t: TestContext,
  options: UpstreamOptions,
): Promise<{ spec: string; events: UpstreamEvent[]; log: MemoryLog }> {
  const events: UpstreamEvent[] = [];
  const log = memoryLogger();
  const filter = upstreamFilter({ logger: log.logger, ...options, onEvent: (e) => events.push(e) });
  const { address } = await startServer(t, { filter, logger: log.logger });
  return { spec: `inet:${address.port}@127.0.0.1`, events, log };
}

const CONNECT = { hostname: 'client.example', family: 'inet' as const, port: 40000, address: '192.0.2.1' };

/** A message that meets every branch of the fixture but the hanging one. */
const MESSAGE: MessageScript = {
  connect: CONNECT,
  macros: {
    connect: { '{client_addr}': '192.0.2.1', '{daemon_name}': 'mx-in', j: 'mx.example' },
    envfrom: { '{mail_addr}': 'alice@example.org', i: 'Q1' },
    eom: { i: 'Q1' },
  },
  helo: 'client.example',
  unknown: ['FOO bar'],
  sender: '<alice@example.org>',
  senderArgs: ['SIZE=100'],
  recipients: ['<bob@example.net>', '<reject@example.net>', '<multi@example.net>', '<carol@example.net>'],
  headers: [
    ['Subject', 'hello, 50% off'],
    ['X-Tag', 'tag'],
    ['X-Action', 'quarantine'],
  ],
  body: 'line one\r\nline two\r\n',
};

/** Every reply and modification of a message, as the bytes the MTA received (replies without payload by kind). */
function wire(r: MessageResult): unknown {
  const reply = (c: MessageResult['reply'] | undefined): string | undefined => {
    if (c === undefined) return undefined;
    if (c.kind === 'noreply' || c.kind === 'skipped') return c.kind;
    return encodeResponse(c as MilterResponse).toString('hex');
  };
  return {
    connect: reply(r.connect),
    helo: reply(r.helo),
    unknown: r.unknown?.map(reply),
    mail: reply(r.mail),
    rcpt: r.rcpt.map(reply),
    accepted: r.acceptedRecipients,
    data: reply(r.data),
    headers: r.headers.map(reply),
    eoh: reply(r.eoh),
    body: reply(r.body),
    eom: r.eom && {
      reply: reply(r.eom.reply),
      modifications: encodeResponses(r.eom.modifications).toString('hex'),
      progress: r.eom.progress,
    },
    stoppedAt: r.stoppedAt,
  };
}

async function play(
  spec: string,
  script: MessageScript,
  offer: MilterClientOptions = MTA_OFFER,
): Promise<MessageResult> {
  const client = await MilterClient.connect(spec, offer);
  try {
    return await playMessage(client, script);
  } finally {
    await client.quit();
  }
}

test('happy path: through milterd the MTA gets the same bytes as from the libmilter filter directly', async (t) => {
  const up = await startUpstream(t);
  const proxy = await startProxy(t, { address: up.spec, name: 'lib' });

  for (const script of [MESSAGE, { ...MESSAGE, connect: { ...CONNECT, hostname: 'reject.example' } }]) {
    const direct = await play(up.spec, script);
    const proxied = await play(proxy.spec, script);
    assert.deepEqual(wire(proxied), wire(direct));
  }
  // An older MTA's offer (v2 actions, no NR/SKIP, no macro lists) reaches the upstream as it is: it asks
  // for less, fails its CHGFROM at EOM and tempfails, with the edits made before: the same either way.
  const old = { version: 6, actions: 0x3f, protocol: 0x7f };
  const oldDirect = await play(up.spec, MESSAGE, old);
  assert.deepEqual(wire(await play(proxy.spec, MESSAGE, old)), wire(oldDirect));
  assert.deepEqual(oldDirect.eom?.reply, { kind: 'tempfail' });
  assert.equal(oldDirect.eom?.modifications.length, 4);

  // What the comparison covered: each branch of the fixture really happened.
  const direct = await play(up.spec, MESSAGE);
  assert.equal(direct.stoppedAt, 'eom');
  assert.deepEqual(direct.rcpt.slice(1), [
    { kind: 'replyCode', text: '550 5.1.1 No such user here' },
    { kind: 'replyCode', text: '452-4.2.1 first line\r\n452 4.2.1 second line' },
    { kind: 'continue' },
  ]);
  assert.deepEqual(direct.unknown, [{ kind: 'replyCode', text: '500 5.5.1 unknown command' }]);
  assert.deepEqual(
    direct.headers.map((h) => h.kind),
    ['noreply', 'noreply', 'noreply'],
  );
  assert.equal(direct.eom?.progress, 1);
  const mods = direct.eom?.modifications ?? [];
  assert.deepEqual(
    mods.map((m) => m.kind),
    [
      'insertHeader',
      'addHeader',
      'changeHeader',
      'changeHeader',
      'changeFrom',
      'deleteRecipient',
      'addRecipient',
      'addRecipientWithArgs',
      'quarantine',
      'replaceBody',
      'replaceBody',
    ],
  );
  // The macros the upstream asked for reached it through milterd too (same bytes as direct).
  assert.deepEqual(mods[1], {
    kind: 'addHeader',
    name: 'X-Up-Macros',
    value: 'client_addr=192.0.2.1 daemon_name=mx-in mail_addr=alice@example.org body=20',
  });
  const rejected = await play(proxy.spec, {
    ...MESSAGE,
    connect: { ...CONNECT, hostname: 'reject.example' },
  });
  assert.deepEqual(rejected.connect, { kind: 'replyCode', text: '554 5.7.1 go away, 100%% sure' });

  // One upstream connection per MTA connection, closed with it: 8 sessions (6 proxied or direct, 2 more
  // direct above), 8 closes seen by libmilter.
  await waitFor(() => up.count('close') === 8, 'libmilter to see every connection close');
  assert.equal(up.count('close'), 8);
  assert.ok(proxy.events.some((e) => e.type === 'connect'));
  assert.ok(!proxy.events.some((e) => e.type === 'error' || e.type === 'failure' || e.type === 'dropped'));
});

test('an action the MTA did not grant is dropped and counted, never forwarded', async (t) => {
  // A rogue upstream: negotiates no action at all, then sends a header and a quarantine at EOM.
  const rogue = net.createServer((socket) => {
    const decoder = new FrameDecoder(1 << 20);
    socket.on('data', (chunk) => {
      decoder.push(chunk);
      for (let f = decoder.next(); f !== undefined; f = decoder.next()) {
        const cmd = decodeCommand(f);
        if (cmd.kind === 'optneg') {
          socket.write(encodeResponse({ kind: 'optneg', version: 6, actions: 0, protocol: 0 }));
        } else if (cmd.kind === 'eom') {
          socket.write(
            encodeResponses([
              { kind: 'addHeader', name: 'X-Rogue', value: 'yes' },
              { kind: 'quarantine', reason: 'rogue' },
              { kind: 'continue' },
            ]),
          );
        } else if (cmd.kind === 'quit') socket.end();
        else if (cmd.kind !== 'macro' && cmd.kind !== 'abort')
          socket.write(encodeResponse({ kind: 'continue' }));
      }
    });
  });
  await new Promise<void>((resolve) => rogue.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => rogue.close(() => resolve())));
  const port = (rogue.address() as net.AddressInfo).port;
  const proxy = await startProxy(t, { address: `inet:${port}@127.0.0.1` });

  const r = await play(proxy.spec, MESSAGE);
  assert.equal(r.stoppedAt, 'eom');
  assert.deepEqual(r.eom?.reply, { kind: 'continue' });
  assert.deepEqual(r.eom?.modifications, []);
  assert.deepEqual(
    proxy.events.filter((e) => e.type === 'dropped'),
    [
      { upstream: `inet:${port}@127.0.0.1`, type: 'dropped', action: 'addHeader', reason: 'not-granted' },
      { upstream: `inet:${port}@127.0.0.1`, type: 'dropped', action: 'quarantine', reason: 'not-granted' },
    ],
  );
  // One warning per dropped action (rate-limited per reason), in the connection's log.
  assert.deepEqual(
    proxy.log.lines
      .filter((l) => l.reason === 'not-granted')
      .map((l) => [l.level, l.action, l.conn !== undefined]),
    [
      [40, 'addHeader', true],
      [40, 'quarantine', true],
    ],
  );
});

test('nothing listening: the failure action at CONNECT, the breaker opens, fails fast, then probes', async (t) => {
  const spec = freshSpec();
  let now = 0;
  const proxy = await startProxy(t, {
    address: spec,
    name: 'later',
    breaker: { failures: 2, openMs: 1000, now: () => now },
  });
  const before = fdCount();
  const session = async (): Promise<MessageResult> => play(proxy.spec, MESSAGE);
  const errors = (): number => proxy.events.filter((e) => e.type === 'error').length;

  const first = await session();
  assert.equal(first.stoppedAt, 'connect');
  assert.deepEqual(first.connect, { kind: 'tempfail' });
  assert.equal(errors(), 1);
  await session();
  assert.equal(errors(), 2);
  assert.ok(proxy.events.some((e) => e.type === 'breaker' && e.state === 'open'));
  assert.ok(proxy.log.lines.some((l) => l.upstream === 'later' && l.state === 'open' && l.level === 40));
  assert.equal(
    proxy.log.coded('ERR_MILTER_CONNECTION_CLOSED').filter((l) => l.stage === 'negotiate').length,
    2,
  );

  // Open: failed fast (no attempt, so no new error), even once the upstream is back, until openMs passed.
  const up = await startUpstream(t, spec);
  const fast = await session();
  assert.deepEqual(fast.connect, { kind: 'tempfail' });
  assert.equal(errors(), 2);
  assert.equal(proxy.events.at(-1)?.type, 'failure');
  assert.deepEqual(proxy.events.at(-1), {
    upstream: 'later',
    type: 'failure',
    stage: 'connect',
    action: 'tempfail',
    cause: 'breaker',
  });

  now += 1000;
  const probe = await session();
  assert.equal(probe.stoppedAt, 'eom');
  assert.equal(probe.eom?.modifications.length, 11);
  const states = proxy.events.flatMap((e) => (e.type === 'breaker' ? [e.state] : []));
  assert.deepEqual(states, ['open', 'half-open', 'closed']);
  assert.equal((await session()).stoppedAt, 'eom');
  await waitFor(() => up.count('close') === 2, 'both upstream sessions to end');

  await up.kill();
  await waitFor(() => fdCount() === before, 'every descriptor to be closed');
  assert.equal(fdCount(), before);
});

for (const [onFailure, expected] of [
  ['reject', { kind: 'reject' }],
  ['accept', { kind: 'accept' }],
] as const) {
  test(`nothing listening, onFailure ${onFailure}: the MTA gets ${onFailure} at CONNECT`, async (t) => {
    const proxy = await startProxy(t, { address: `unix:${path.join(dir, 'none.sock')}`, onFailure });
    const r = await play(proxy.spec, MESSAGE);
    assert.equal(r.stoppedAt, 'connect');
    assert.deepEqual(r.connect, expected);
  });
}

test('nothing listening, onFailure skip: the member asks the MTA for nothing and the message goes through', async (t) => {
  const proxy = await startProxy(t, { address: `unix:${path.join(dir, 'none.sock')}`, onFailure: 'skip' });
  const client = await MilterClient.connect(proxy.spec, MTA_OFFER);
  t.after(() => client.close());
  assert.equal(client.negotiated.actions, 0);
  const r = await playMessage(client, MESSAGE);
  await client.quit();
  assert.equal(r.connect?.kind, 'skipped');
  assert.equal(r.stoppedAt, 'eom');
  assert.deepEqual(r.eom?.modifications, []);
  assert.deepEqual(r.eom?.reply, { kind: 'continue' });
});

/** Play up to and including MAIL and the first RCPT on a fresh MTA connection. */
async function openMessage(spec: string): Promise<MilterClient> {
  const client = await MilterClient.connect(spec, MTA_OFFER);
  client.macro('C', { '{client_addr}': '192.0.2.1' });
  assert.equal((await client.connect(CONNECT)).kind, 'continue');
  assert.equal((await client.helo('client.example')).kind, 'continue');
  assert.equal((await client.mail('<alice@example.org>')).kind, 'continue');
  assert.equal((await client.rcpt('<carol@example.net>')).kind, 'continue');
  return client;
}

test('upstream killed between commands: tempfail for this and every later command, in step; later sessions go on', async (t) => {
  const spec = freshSpec();
  const proxy = await startProxy(t, { address: spec, breaker: { failures: 1, openMs: 60_000 } });
  const before = fdCount();
  const up = await startUpstream(t, spec);
  const client = await openMessage(proxy.spec);
  await up.kill();

  // Every command still gets its answer: the MTA never waits for one that does not come.
  assert.deepEqual(await client.rcpt('<dave@example.net>'), { kind: 'tempfail' });
  assert.deepEqual(await client.rcpt('<erin@example.net>'), { kind: 'tempfail' });
  assert.deepEqual(await client.data(), { kind: 'tempfail' });
  await client.quit();
  assert.ok(
    proxy.events.some(
      (e) => e.type === 'error' && e.stage === 'envrcpt' && e.code === 'ERR_MILTER_CONNECTION_CLOSED',
    ),
  );

  // The breaker (1 failure) is open: the next session fails fast at CONNECT.
  const next = await play(proxy.spec, MESSAGE);
  assert.deepEqual(next.connect, { kind: 'tempfail' });
  assert.equal(proxy.events.at(-1)?.type, 'failure');

  await waitFor(() => fdCount() === before, 'every descriptor to be closed');
  assert.equal(fdCount(), before);
});

test('upstream killed between commands, onFailure skip: the rest of the message goes on without it', async (t) => {
  const up = await startUpstream(t);
  const proxy = await startProxy(t, { address: up.spec, onFailure: 'skip' });
  const client = await openMessage(proxy.spec);
  t.after(() => client.close());
  assert.equal(client.negotiated.protocol & SMFIP_NR_HDR, SMFIP_NR_HDR);
  await up.kill();
  assert.deepEqual(await client.rcpt('<dave@example.net>'), { kind: 'continue' });
  assert.deepEqual(await client.data(), { kind: 'continue' });
  assert.deepEqual(await client.header('Subject', 'x'), { kind: 'noreply' });
  assert.deepEqual(await client.eoh(), { kind: 'continue' });
  assert.deepEqual(await client.body(Buffer.from('body\r\n')), { kind: 'continue' });
  const eom = await client.eom();
  assert.deepEqual(eom, { reply: { kind: 'continue' }, modifications: [], progress: 0 });
  await client.quit();
});

/** Send the rest of a message whose header asks the fixture to hang at EOM; returns the EOM promise. */
async function hangingEom(client: MilterClient): Promise<ReturnType<MilterClient['eom']>> {
  assert.equal((await client.data()).kind, 'continue');
  await client.header('X-Action', 'hang-eom');
  assert.equal((await client.eoh()).kind, 'continue');
  assert.equal((await client.body(Buffer.from('body\r\n'))).kind, 'continue');
  return client.eom();
}

test('upstream killed during EOM: its progress reached the MTA, then tempfail; no leak', async (t) => {
  const spec = freshSpec();
  const proxy = await startProxy(t, { address: spec });
  const before = fdCount();
  const up = await startUpstream(t, spec);
  const client = await openMessage(proxy.spec);
  const eom = hangingEom(client);
  await waitFor(() => up.lines.includes('eom'), 'the upstream to start its EOM');
  await up.kill();
  assert.deepEqual(await eom, { reply: { kind: 'tempfail' }, modifications: [], progress: 1 });
  // Still in step: the next message of the session gets the failure action at MAIL.
  assert.deepEqual(await client.mail('<alice@example.org>'), { kind: 'tempfail' });
  await client.quit();
  assert.ok(proxy.events.some((e) => e.type === 'error' && e.stage === 'eom'));
  await waitFor(() => fdCount() === before, 'every descriptor to be closed');
  assert.equal(fdCount(), before);
});

test('upstream that never answers at EOM: eomMs, then tempfail; its connection is closed', async (t) => {
  const up = await startUpstream(t);
  const before = fdCount();
  const proxy = await startProxy(t, { address: up.spec, timeouts: { eomMs: 300 } });
  const client = await openMessage(proxy.spec);
  assert.deepEqual(await hangingEom(client), { reply: { kind: 'tempfail' }, modifications: [], progress: 1 });
  await client.quit();
  assert.ok(
    proxy.events.some((e) => e.type === 'error' && e.stage === 'eom' && e.code === 'ERR_MILTER_TIMEOUT'),
  );
  // The upstream is alive (hanging in its EOM thread), so a leaked upstream socket would still be open here.
  await waitFor(() => fdCount() === before + 1, 'the MTA and upstream sockets to close');
  assert.equal(fdCount(), before + 1); // + the proxy's listening socket
});

test('stopped upstream (SIGSTOP): commandMs, connectMs, then tempfail; sessions stay in step; no leak', async (t) => {
  const up = await startUpstream(t);
  const before = fdCount();
  const proxy = await startProxy(t, {
    address: up.spec,
    timeouts: { connectMs: 300, commandMs: 300 },
    breaker: { failures: 100 },
  });
  const client = await openMessage(proxy.spec);
  process.kill(up.proc.pid as number, 'SIGSTOP');
  await waitFor(() => stopped(up.proc.pid as number), 'the upstream to stop');
  assert.deepEqual(await client.rcpt('<dave@example.net>'), { kind: 'tempfail' });
  assert.deepEqual(await client.data(), { kind: 'tempfail' });
  await client.quit();

  // A new session while it is still stopped: the kernel accepts the connection, OPTNEG is never answered.
  const next = await play(proxy.spec, MESSAGE);
  assert.deepEqual(next.connect, { kind: 'tempfail' });
  const timeouts = proxy.events.filter((e) => e.type === 'error' && e.code === 'ERR_MILTER_TIMEOUT');
  assert.deepEqual(
    timeouts.map((e) => (e.type === 'error' ? e.stage : '')),
    ['envrcpt', 'negotiate'],
  );
  await waitFor(() => fdCount() === before + 1, 'the MTA and upstream sockets to close');
  assert.equal(fdCount(), before + 1); // + the proxy's listening socket

  // Resumed, it serves new sessions again.
  process.kill(up.proc.pid as number, 'SIGCONT');
  assert.equal((await play(proxy.spec, MESSAGE)).stoppedAt, 'eom');
});

test('QUIT_NC: the next SMTP session on the same MTA connection gets a new upstream session, same bytes as direct', async (t) => {
  const up = await startUpstream(t);
  const proxy = await startProxy(t, { address: up.spec });
  const twoSessions = async (spec: string): Promise<unknown[]> => {
    const client = await MilterClient.connect(spec, MTA_OFFER);
    try {
      const first = await playMessage(client, MESSAGE);
      client.quitNewConnection();
      const second = await playMessage(client, MESSAGE);
      return [wire(first), wire(second)];
    } finally {
      await client.quit();
    }
  };
  const direct = await twoSessions(up.spec);
  const closesDirect = up.count('close');
  const proxied = await twoSessions(proxy.spec);
  assert.deepEqual(proxied, direct);
  assert.equal((direct[1] as { stoppedAt: string }).stoppedAt, 'eom');
  // Through milterd each SMTP session had its own upstream connection, closed with it.
  await waitFor(() => up.count('close') === closesDirect + 2, 'both upstream sessions to close');
  assert.equal(up.count('close'), closesDirect + 2);
});
