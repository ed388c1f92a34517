/** Table-driven conversations (§7): commands in, responses and callback order out. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Filter } from '../../../src/filter.js';
import type { MilterCommand } from '../../../src/protocol/types.js';
import { isMilterError } from '../../../src/errors.js';
import { C, harness, recordingFilter } from './helpers.js';

interface Row {
  name: string;
  filter?: (calls: string[]) => Filter<unknown>;
  steps: Array<[MilterCommand, string[]]>;
  calls: string[];
  /** Call terminate('eof') after the steps. */
  terminate?: boolean;
}

const full = (calls: string[]): Filter<unknown> => recordingFilter(calls);
const O: [MilterCommand, string[]] = [C.optneg(), ['O:6/0xff/0x400']];
const msg: Array<[MilterCommand, string[]]> = [
  [C.macro('M', ['i', 'Q1']), []],
  [C.mail(), ['c']],
  [C.rcpt(), ['c']],
  [C.data(), ['c']],
  [C.header(), ['c']],
  [C.eoh(), ['c']],
  [C.body(), ['c']],
  [C.eom(), ['c']],
];
const msgCalls = [
  'envfrom:<a@example.org>',
  'envrcpt:<b@example.net>',
  'data',
  'header:Subject,hello',
  'eoh',
  'body',
  'eom',
];
const reject = (stage: keyof Filter<unknown>) => (calls: string[]) =>
  recordingFilter(calls, { [stage]: () => 'reject' as const });

const rows: Row[] = [
  {
    name: 'Postfix conversation: ABORT after EOM does not call abort, QUIT closes',
    filter: full,
    steps: [
      O,
      [C.macro('C', ['j', 'mx']), []],
      [C.connect(), ['c']],
      [C.helo(), ['c']],
      ...msg,
      [C.abort(), []],
      [C.quit(), ['end:quit']],
    ],
    calls: ['connect', 'helo:client.example', ...msgCalls, 'close'],
  },
  {
    name: 'Postfix ABORT ABORT between messages, then a second message',
    filter: full,
    steps: [
      O,
      [C.connect(), ['c']],
      ...msg,
      [C.abort(), []],
      [C.abort(), []],
      ...msg,
      [C.abort(), []],
      [C.quit(), ['end:quit']],
    ],
    calls: ['connect', ...msgCalls, ...msgCalls, 'close'],
  },
  {
    name: 'Sendmail: next MAIL after EOM without ABORT',
    filter: full,
    steps: [O, [C.connect(), ['c']], ...msg, ...msg, [C.quit(), ['end:quit']]],
    calls: ['connect', ...msgCalls, ...msgCalls, 'close'],
  },
  {
    name: 'ABORT inside a transaction calls abort once; a second ABORT does not',
    filter: full,
    steps: [
      O,
      [C.connect(), ['c']],
      [C.mail(), ['c']],
      [C.rcpt(), ['c']],
      [C.abort(), []],
      [C.abort(), []],
      [C.mail(), ['c']],
    ],
    calls: [
      'connect',
      'envfrom:<a@example.org>',
      'envrcpt:<b@example.net>',
      'abort',
      'envfrom:<a@example.org>',
    ],
  },
  {
    name: 'close before connect (QUIT right after OPTNEG)',
    filter: full,
    steps: [O, [C.quit(), ['end:quit']]],
    calls: ['close'],
  },
  {
    name: 'QUIT before OPTNEG still closes once',
    filter: full,
    steps: [[C.quit(), ['end:quit']]],
    calls: ['close'],
    terminate: true,
  },
  {
    name: 'EOF mid-body: terminate aborts then closes, once',
    filter: full,
    steps: [
      O,
      [C.connect(), ['c']],
      [C.mail(), ['c']],
      [C.rcpt(), ['c']],
      [C.eoh(), ['c']],
      [C.body(), ['c']],
    ],
    calls: ['connect', 'envfrom:<a@example.org>', 'envrcpt:<b@example.net>', 'eoh', 'body', 'abort', 'close'],
    terminate: true,
  },
  {
    name: 'EOF after EOM: close only',
    filter: full,
    steps: [O, [C.connect(), ['c']], ...msg],
    calls: ['connect', ...msgCalls, 'close'],
    terminate: true,
  },
  {
    name: 'QUIT inside a transaction: abort, then close',
    filter: full,
    steps: [O, [C.connect(), ['c']], [C.mail(), ['c']], [C.quit(), ['end:quit']], [C.helo(), []]],
    calls: ['connect', 'envfrom:<a@example.org>', 'abort', 'close'],
    terminate: true,
  },
  {
    name: 'out-of-order RCPT outside a transaction is dropped silently',
    filter: full,
    steps: [O, [C.connect(), ['c']], [C.rcpt(), []], [C.data(), []], [C.eom(), []], [C.helo(), ['c']]],
    calls: ['connect', 'helo:client.example'],
  },
  {
    name: 'out-of-order HELO inside a transaction: abort, then handled as from HELO',
    filter: full,
    steps: [
      O,
      [C.connect(), ['c']],
      [C.mail(), ['c']],
      [C.rcpt(), ['c']],
      [C.helo('again'), ['c']],
      [C.abort(), []],
    ],
    calls: ['connect', 'envfrom:<a@example.org>', 'envrcpt:<b@example.net>', 'abort', 'helo:again'],
  },
  {
    name: 'out-of-order BODY inside a transaction: abort, then dropped',
    filter: full,
    steps: [O, [C.connect(), ['c']], [C.mail(), ['c']], [C.body(), []], [C.abort(), []], [C.mail(), ['c']]],
    calls: ['connect', 'envfrom:<a@example.org>', 'abort', 'envfrom:<a@example.org>'],
  },
  {
    name: 'MAIL after a rejected RCPT (no ABORT): synthesised abort',
    filter: reject('envrcpt'),
    steps: [O, [C.connect(), ['c']], [C.mail(), ['c']], [C.rcpt(), ['r']], [C.mail(), ['c']]],
    calls: ['connect', 'envfrom:<a@example.org>', 'envrcpt', 'abort', 'envfrom:<a@example.org>'],
  },
  {
    name: 'RCPT reject keeps the transaction: later ABORT calls abort',
    filter: reject('envrcpt'),
    steps: [
      O,
      [C.connect(), ['c']],
      [C.mail(), ['c']],
      [C.rcpt(), ['r']],
      [C.rcpt(), ['r']],
      [C.abort(), []],
    ],
    calls: ['connect', 'envfrom:<a@example.org>', 'envrcpt', 'envrcpt', 'abort'],
  },
  {
    name: 'MAIL reject ends the message: ABORT is ignored',
    filter: reject('envfrom'),
    steps: [O, [C.connect(), ['c']], [C.mail(), ['r']], [C.abort(), []], [C.mail(), ['r']]],
    calls: ['connect', 'envfrom', 'envfrom'],
  },
  {
    name: 'header ACCEPT ends the message: rest dropped, ABORT ignored, next MAIL fine',
    filter: (calls) => recordingFilter(calls, { header: () => 'accept' as const }),
    steps: [
      O,
      [C.connect(), ['c']],
      [C.mail(), ['c']],
      [C.rcpt(), ['c']],
      [C.header(), ['a']],
      [C.eoh(), []],
      [C.abort(), []],
      [C.mail(), ['c']],
    ],
    calls: [
      'connect',
      'envfrom:<a@example.org>',
      'envrcpt:<b@example.net>',
      'header',
      'envfrom:<a@example.org>',
    ],
  },
  {
    name: 'connect REJECT → HELO state; HELO still handled',
    filter: reject('connect'),
    steps: [O, [C.connect(), ['r']], [C.helo(), ['c']]],
    calls: ['connect', 'helo:client.example'],
  },
  {
    name: 'UNKNOWN anywhere; reject keeps its state',
    filter: reject('unknown'),
    steps: [
      O,
      [C.connect(), ['c']],
      [C.unknown(), ['r']],
      [C.mail(), ['c']],
      [C.unknown(), ['r']],
      [C.rcpt(), ['c']],
      [C.abort(), []],
    ],
    calls: ['connect', 'unknown', 'envfrom:<a@example.org>', 'unknown', 'envrcpt:<b@example.net>', 'abort'],
  },
  {
    name: 'QUIT_NC: close, reset, new session without OPTNEG, close again',
    filter: full,
    steps: [
      O,
      [C.connect(), ['c']],
      ...msg,
      [C.quitNc(), []],
      [C.connect('second'), ['c']],
      [C.mail(), ['c']],
      [C.quit(), ['end:quit']],
    ],
    calls: ['connect', ...msgCalls, 'close', 'connect', 'envfrom:<a@example.org>', 'abort', 'close'],
  },
  {
    name: 'QUIT_NC then EOF: close fires once per session',
    filter: full,
    steps: [O, [C.quitNc(), []]],
    calls: ['close', 'close'],
    terminate: true,
  },
  {
    name: 'absent callbacks answer continue; MAIL opted out: HELO → RCPT allowed',
    filter: (calls) => recordingFilter(calls, {}, ['envfrom', 'helo']),
    steps: [
      [C.optneg(), ['O:6/0xff/0x406']],
      [C.connect(), ['c']],
      [C.helo(), ['c']],
      [C.rcpt(), ['c']],
      [C.eom(), ['c']],
      [C.abort(), []],
    ],
    calls: ['connect', 'envrcpt:<b@example.net>', 'eom'],
  },
  {
    name: 'no eom callback: EOM answers continue',
    filter: (calls) => recordingFilter(calls, {}, ['eom']),
    steps: [
      [C.optneg(), ['O:6/0x0/0x400']],
      [C.connect(), ['c']],
      [C.mail(), ['c']],
      [C.rcpt(), ['c']],
      [C.eom(), ['c']],
    ],
    calls: ['connect', 'envfrom:<a@example.org>', 'envrcpt:<b@example.net>'],
  },
];

for (const row of rows) {
  test(`conversation: ${row.name}`, async () => {
    const h = harness(row.filter ?? full);
    for (const [i, [cmd, expected]] of row.steps.entries()) {
      assert.deepEqual(await h.send(cmd), expected, `step ${i} (${cmd.kind})`);
    }
    if (row.terminate) {
      await h.session.terminate('eof');
      await h.session.terminate('eof');
    }
    assert.deepEqual(h.calls, row.calls);
  });
}

test('protocol errors: command before OPTNEG, second OPTNEG, empty BODY', async () => {
  const before = harness(full);
  assert.throws(
    () => before.session.handle(C.connect()),
    (e) => isMilterError(e, 'ERR_MILTER_NEGOTIATION'),
  );
  const h = harness(full);
  await h.send(C.optneg());
  assert.throws(
    () => h.session.handle(C.optneg()),
    (e) => isMilterError(e, 'ERR_MILTER_NEGOTIATION'),
  );
  await h.send(C.connect());
  await h.send(C.mail());
  assert.throws(
    () => h.session.handle({ kind: 'body', chunk: Buffer.alloc(0) }),
    (e) => isMilterError(e, 'ERR_MILTER_MALFORMED_PAYLOAD'),
  );
  assert.throws(
    () => h.session.handle({ kind: 'bogus' } as unknown as MilterCommand),
    (e) => isMilterError(e, 'ERR_MILTER_UNKNOWN_COMMAND'),
  );
  await h.session.terminate('protocol');
  assert.deepEqual(h.calls, ['connect', 'envfrom:<a@example.org>', 'abort', 'close']);
});

test('close context: priv undefined before connect; K clears priv, connection and macros', async () => {
  const seen: Array<{ priv: unknown; host: string | undefined; j: string | undefined }> = [];
  const versions: Array<number | undefined> = [];
  const filter: Filter<{ n: number }> = {
    connect(ctx) {
      versions.push(ctx.negotiated?.version);
      ctx.priv = { n: (ctx.priv?.n ?? 0) + 1 };
    },
    close(ctx) {
      seen.push({ priv: ctx.priv, host: ctx.connection?.hostname, j: ctx.macro('j') });
    },
  };
  const h = harness(filter as Filter<unknown>);
  await h.send(C.optneg());
  await h.send(C.macro('C', ['j', 'mx']));
  await h.send(C.connect('first'));
  await h.send(C.quitNc());
  await h.send(C.connect('second'));
  await h.send(C.quit());
  assert.deepEqual(seen, [
    { priv: { n: 1 }, host: 'first', j: 'mx' },
    { priv: { n: 1 }, host: 'second', j: undefined },
  ]);
  // QUIT_NC keeps the negotiated options: no second OPTNEG.
  assert.deepEqual(versions, [6, 6]);
  const early = harness(filter as Filter<unknown>);
  await early.session.terminate('shutdown');
  assert.equal(seen.length, 3);
  assert.deepEqual(seen[2], { priv: undefined, host: undefined, j: undefined });
  assert.equal(early.session.idle, true);
});

test('idle: true before CONNECT and after QUIT_NC/QUIT, false during an SMTP session', async () => {
  const h = harness(full);
  assert.equal(h.session.idle, true);
  await h.send(C.optneg());
  await h.send(C.connect());
  assert.equal(h.session.idle, false);
  await h.send(C.quitNc());
  assert.equal(h.session.idle, true);
  await h.send(C.connect());
  assert.equal(h.session.idle, false);
  await h.send(C.quit());
  assert.equal(h.session.idle, true);
});

test('async abort/close run in order before the next callback; throwing ones are logged only', async () => {
  const calls: string[] = [];
  const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 1));
  const h = harness({
    connect: () => void calls.push('connect'),
    envfrom: () => void calls.push('envfrom'),
    envrcpt: () => void calls.push('envrcpt'),
    helo: () => void calls.push('helo'),
    unknown: () => void calls.push('unknown'),
    async abort() {
      await tick();
      calls.push('abort');
      throw new Error('abort broke');
    },
    async close() {
      await tick();
      calls.push('close');
      throw new Error('close broke');
    },
  });
  await h.send(C.optneg());
  await h.send(C.connect());
  await h.send(C.mail());
  await h.send(C.rcpt());
  // Out of sequence inside a transaction: abort (async) first, then HELO as from HELO state.
  const p = h.session.handle(C.helo());
  assert.ok(p instanceof Promise);
  assert.deepEqual((await p).responses, [{ kind: 'continue' }]);
  await h.send(C.mail());
  await h.send(C.unknown());
  // MAIL from UNKNOWN inside a transaction: allowed, but the open transaction is aborted first.
  assert.deepEqual(await h.send(C.mail()), ['c']);
  assert.deepEqual(await h.send(C.quit()), ['end:quit']);
  await h.session.terminate('eof');
  assert.deepEqual(calls, [
    'connect',
    'envfrom',
    'envrcpt',
    'abort',
    'helo',
    'envfrom',
    'unknown',
    'abort',
    'envfrom',
    'abort',
    'close',
  ]);
  const failed = h.lines.filter((l) => l['level'] === 50).map((l) => l['callback']);
  assert.deepEqual(failed, ['abort', 'abort', 'abort', 'close']);
});

test('a close that never settles times out and is logged; terminate still resolves', async () => {
  const h = harness({ close: () => new Promise<void>(() => undefined) }, { callbackTimeoutMs: 20 });
  await h.send(C.optneg());
  await h.session.terminate('timeout');
  const codes = h.lines.map((l) => (l['err'] as { code?: string } | undefined)?.code).filter(Boolean);
  assert.deepEqual(codes, ['ERR_MILTER_CALLBACK_TIMEOUT']);
});

test('several BODY chunks reach body in order; header values are passed as received', async () => {
  const seen: string[] = [];
  const h = harness({
    header: (_ctx, name, value) => void seen.push(`${name}:${value}`),
    body: (_ctx, chunk) => void seen.push(chunk.toString()),
    eom: () => 'accept',
  });
  await h.send(C.optneg());
  await h.send(C.mail());
  await h.send(C.rcpt());
  await h.send(C.header('Subject', ' lead'));
  await h.send(C.header('X-Empty', ''));
  await h.send(C.eoh());
  for (const part of ['one\r\n', 'two\r\n', 'three\r\n']) assert.deepEqual(await h.send(C.body(part)), ['c']);
  assert.deepEqual(await h.send(C.eom()), ['a']);
  assert.deepEqual(seen, ['Subject: lead', 'X-Empty:', 'one\r\n', 'two\r\n', 'three\r\n']);
});
