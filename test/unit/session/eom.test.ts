/** EOM: modifications in call order, body replacement last, one decision; the EomContext guards. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { EomContext, Filter } from '../../../src/filter.js';
import type { MilterCommand } from '../../../src/protocol/types.js';
import { isMilterError } from '../../../src/errors.js';
import { C, harness, summarize, type Harness } from './helpers.js';

async function toEom(h: Harness, offer: MilterCommand = C.optneg()): Promise<string[]> {
  await h.send(offer);
  await h.send(C.macro('M', ['i', 'QUEUE1']));
  await h.send(C.mail());
  await h.send(C.rcpt());
  return h.send(C.eom());
}

const codeOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (e) {
    return isMilterError(e) ? e.code : 'not-coded';
  }
  return 'no-throw';
};

test('modifications in call order, body replacement last in ≤65535 chunks, then the decision', async () => {
  const h = harness({
    eom(ctx) {
      void ctx.replaceBody(Buffer.alloc(150_000, 0x61));
      ctx.addHeader('X-A', 'one');
      ctx.insertHeader(0, 'X-Top', 'v');
      ctx.changeHeader('Subject', 1, 'new');
      ctx.deleteHeader('X-Old', 2);
      ctx.changeHeader('X-Gone', 0, null);
      ctx.addRecipient('<c@x>');
      ctx.addRecipient('<d@x>', 'NOTIFY=NEVER');
      ctx.deleteRecipient('<b@example.net>');
      ctx.changeFrom('<new@x>', 'BODY=8BITMIME');
      ctx.changeFrom('<newer@x>');
      ctx.quarantine('policy hold');
      return 'accept';
    },
  });
  assert.deepEqual(await toEom(h), [
    'h:X-A=one',
    'i:0:X-Top=v',
    'm:1:Subject=new',
    'm:2:X-Old=',
    'm:0:X-Gone=',
    '+:<c@x>',
    '2:<d@x>:NOTIFY=NEVER',
    '-:<b@example.net>',
    'e:<new@x>:BODY=8BITMIME',
    'e:<newer@x>:',
    'q:policy hold',
    'b:65535',
    'b:65535',
    'b:18930',
    'a',
  ]);
});

test('replaceBody: iterables, async iterables (awaited or not), empty body, last call wins', async () => {
  async function* gen(): AsyncGenerator<Buffer> {
    yield Buffer.from('a\r\n');
    await new Promise((r) => setTimeout(r, 1));
    yield Buffer.from('b\r\n');
  }
  const rows: Array<[Filter<unknown>['eom'], string[]]> = [
    [(ctx) => void ctx.replaceBody([Buffer.from('x'), new Uint8Array([0x79, 0x7a])]), ['b:3', 'c']],
    [async (ctx) => ctx.replaceBody(gen()), ['b:6', 'c']],
    [(ctx) => void ctx.replaceBody(gen()), ['b:6', 'c']],
    [(ctx) => void ctx.replaceBody(Buffer.alloc(0)), ['b:0', 'c']],
    [
      (ctx) => {
        void ctx.replaceBody(Buffer.alloc(10));
        void ctx.replaceBody(Buffer.alloc(5));
      },
      ['b:5', 'c'],
    ],
  ];
  for (const [eom, expected] of rows) assert.deepEqual(await toEom(harness({ eom })), expected);
});

test('EOM guards: action not negotiated, invalid arguments, wrong stage after return', async () => {
  const codes: string[] = [];
  let saved: EomContext<unknown> | undefined;
  const h = harness({
    actions: ['addHeader', 'changeHeader', 'quarantine', 'addRecipient'],
    eom(ctx) {
      saved = ctx;
      codes.push(codeOf(() => ctx.replaceBody(Buffer.from('x'))));
      codes.push(codeOf(() => ctx.changeFrom('<a@b>')));
      codes.push(codeOf(() => ctx.deleteRecipient('<a@b>')));
      codes.push(codeOf(() => ctx.addRecipient('<a@b>', 'X=1')));
      codes.push(codeOf(() => ctx.addHeader('', 'v')));
      codes.push(codeOf(() => ctx.addHeader('X\rY', 'v')));
      codes.push(codeOf(() => ctx.addHeader('X:Y', 'v')));
      codes.push(codeOf(() => ctx.insertHeader(-1, 'X', 'v')));
      codes.push(codeOf(() => ctx.changeHeader('X', 1.5, 'v')));
      codes.push(codeOf(() => ctx.quarantine('')));
      codes.push(codeOf(() => ctx.quarantine('a\nb')));
      codes.push(codeOf(() => ctx.addRecipient('')));
      codes.push(codeOf(() => ctx.addHeader('X-Ok', '')));
    },
  });
  assert.deepEqual(await toEom(h), ['h:X-Ok=', 'c']);
  assert.deepEqual(codes, [
    ...new Array<string>(4).fill('ERR_MILTER_ACTION_NOT_NEGOTIATED'),
    ...new Array<string>(8).fill('ERR_MILTER_INVALID_ARGUMENT'),
    'no-throw',
  ]);
  assert.equal(
    codeOf(() => saved?.addHeader('X', 'late')),
    'ERR_MILTER_WRONG_STAGE',
  );
  assert.equal(
    codeOf(() => saved?.setReply(550)),
    'ERR_MILTER_WRONG_STAGE',
  );
});

test('an uncaught modification error fails the EOM: no modification is sent', async () => {
  const h = harness({
    actions: ['addHeader'],
    eom(ctx) {
      ctx.addHeader('X-A', '1');
      ctx.quarantine('not negotiated');
    },
  });
  assert.deepEqual(await toEom(h), ['t']);
});

test('timed-out EOM: modifications dropped, late calls refused, next message unaffected', async () => {
  let late: EomContext<unknown> | undefined;
  let n = 0;
  const h = harness(
    {
      eom(ctx) {
        if (n++ > 0) {
          ctx.addHeader('X-Second', 'yes');
          return 'continue';
        }
        late = ctx;
        ctx.addHeader('X-First', 'partial');
        return new Promise<undefined>(() => undefined);
      },
    },
    { callbackTimeoutMs: 20 },
  );
  assert.deepEqual(await toEom(h), ['t']);
  assert.equal(
    codeOf(() => late?.addHeader('X-Late', '1')),
    'ERR_MILTER_WRONG_STAGE',
  );
  await h.send(C.mail());
  await h.send(C.rcpt());
  assert.deepEqual(await h.send(C.eom()), ['h:X-Second=yes', 'c']);
});

test('progress: sent during EOM via sendNow, ignored elsewhere', async () => {
  const h = harness({
    envrcpt(ctx) {
      ctx.progress();
    },
    async eom(ctx) {
      ctx.progress();
      await new Promise((r) => setTimeout(r, 1));
      ctx.progress();
    },
  });
  assert.deepEqual(await toEom(h), ['c']);
  assert.deepEqual(h.sentNow.map(summarize), ['p', 'p']);
});

test('context: envelope, macros, txn logger, priv shared between stage and EOM contexts', async () => {
  const seen: unknown[] = [];
  const h = harness({
    connect(ctx) {
      ctx.priv = 'P';
      seen.push(ctx.envelope);
    },
    envrcpt(ctx) {
      seen.push(
        ctx.envelope?.sender,
        ctx.envelope?.recipients.map((r) => r.address),
      );
      ctx.logger.info('in rcpt');
    },
    eom(ctx) {
      seen.push(
        ctx.priv,
        ctx.macro('i'),
        ctx.macros()['i'],
        ctx.negotiated?.version,
        ctx.connection?.address,
      );
      ctx.priv = 'Q';
    },
    close(ctx) {
      seen.push(ctx.priv);
    },
  });
  await h.send(C.optneg());
  await h.send(C.connect());
  await h.send(C.macro('M', ['i', 'QUEUE1']));
  await h.send(C.mail());
  await h.send(C.rcpt('<r1>'));
  await h.send(C.rcpt('<r2>'));
  await h.send(C.eom());
  await h.send(C.quit());
  assert.deepEqual(seen, [
    undefined,
    '<a@example.org>',
    ['<r1>'],
    '<a@example.org>',
    ['<r1>', '<r2>'],
    'P',
    'QUEUE1',
    'QUEUE1',
    6,
    '192.0.2.7',
    'Q',
  ]);
  const rcptLog = h.lines.filter((l) => l['msg'] === 'in rcpt');
  assert.deepEqual(
    rcptLog.map((l) => l['txn']),
    ['QUEUE1', 'QUEUE1'],
  );
});
