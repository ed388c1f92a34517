/** Reply discipline: NR stages, SKIP, DISCARD, E with data, failures, timeouts, custom replies. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision, type Filter, type HeaderCallback, type StageContext } from '../../../src/filter.js';
import type { MilterObserver } from '../../../src/observer.js';
import type { MilterCommand } from '../../../src/protocol/types.js';
import * as P from '../../../src/protocol/constants.js';
import { C, harness, loggedCodes, recordingFilter, type Harness } from './helpers.js';

/** Negotiate (offer as given) and open a transaction up to `upTo`. */
async function open(h: Harness, offer: MilterCommand = C.optneg()): Promise<void> {
  await h.send(offer);
  await h.send(C.connect());
  await h.send(C.mail());
  await h.send(C.rcpt());
}

test('NR stages: nothing sent when the MTA has the bit; emulated `c` when it lacks it', async () => {
  const f = (calls: string[]): Filter<unknown> =>
    recordingFilter(calls, { header: () => 'reject' as const, noReply: ['header', 'connect', 'envrcpt'] });
  const v6 = harness(f);
  assert.deepEqual(await v6.send(C.optneg()), [
    `O:6/0xff/0x${(0x400 | 0x80 | 0x1000 | 0x8000).toString(16)}`,
  ]);
  assert.deepEqual(await v6.send(C.connect()), []);
  assert.deepEqual(await v6.send(C.mail()), ['c']);
  assert.deepEqual(await v6.send(C.rcpt()), []);
  assert.deepEqual(await v6.send(C.header()), []);
  assert.deepEqual(await v6.send(C.header()), []);
  assert.deepEqual(await v6.send(C.eoh()), ['c']);
  assert.deepEqual(await v6.send(C.eom()), ['c']);
  assert.ok(v6.lines.some((l) => l['level'] === 40 && l['decision'] === 'reject'));
  assert.deepEqual(v6.calls, [
    'connect',
    'envfrom:<a@example.org>',
    'envrcpt:<b@example.net>',
    'header',
    'header',
    'eoh',
    'eom',
  ]);

  const v2 = harness(f);
  assert.deepEqual(await v2.send(C.optneg(2, 0x3f, 0x7f)), ['O:2/0x3f/0x0']);
  assert.deepEqual(await v2.send(C.connect()), ['c']);
  assert.deepEqual(await v2.send(C.mail()), ['c']);
  assert.deepEqual(await v2.send(C.rcpt()), ['c']);
  assert.deepEqual(await v2.send(C.header()), ['c']);
});

test('NR stage without a callback: no reply (or emulated c); failures there are logged, not sent', async () => {
  const h = harness({
    noReply: ['helo', 'envfrom'],
    eom: () => undefined,
    envfrom: () => {
      throw new Error('x');
    },
  });
  await h.send(C.optneg());
  assert.deepEqual(await h.send(C.helo()), []);
  assert.deepEqual(await h.send(C.mail()), []);
  assert.ok(loggedCodes(h.lines).includes('ERR_MILTER_CALLBACK_FAILED'));
});

test('SKIP: from body when negotiated; otherwise continue with a warning', async () => {
  const skipper = (calls: string[]): Filter<unknown> =>
    recordingFilter(calls, {
      body: () => 'skip' as const,
      // A JavaScript filter can still return skip from header: the types refuse it, the session must too.
      header: (() => 'skip') as unknown as HeaderCallback,
    });
  const h = harness(skipper);
  await open(h);
  assert.deepEqual(await h.send(C.header()), ['c']);
  assert.deepEqual(await h.send(C.eoh()), ['c']);
  assert.deepEqual(await h.send(C.body()), ['s']);
  assert.deepEqual(await h.send(C.eom()), ['c']);
  const noSkip = harness(skipper);
  await open(noSkip, C.optneg(6, 0x1ff, 0x1fffff & ~P.SMFIP_SKIP));
  assert.deepEqual(await noSkip.send(C.body()), ['c']);
  assert.equal(noSkip.lines.filter((l) => l['level'] === 40).length, 1);
});

test('DISCARD at connect/helo → continue + warning; elsewhere d', async () => {
  const h = harness((calls) =>
    recordingFilter(calls, {
      connect: () => 'discard' as const,
      helo: () => 'discard' as const,
      data: () => 'discard' as const,
    }),
  );
  await h.send(C.optneg());
  assert.deepEqual(await h.send(C.connect()), ['c']);
  assert.deepEqual(await h.send(C.helo()), ['c']);
  await h.send(C.mail());
  await h.send(C.rcpt());
  assert.deepEqual(await h.send(C.data()), ['d']);
  assert.deepEqual(await h.send(C.abort()), []);
  assert.ok(!h.calls.includes('abort'));
  assert.equal(h.lines.filter((l) => l['level'] === 40).length, 2);
});

test('E with data: body first, then eom, exactly one decision', async () => {
  const chunks: string[] = [];
  const h = harness((calls) =>
    recordingFilter(calls, { body: (_c: unknown, b: unknown) => void chunks.push(String(b)) }),
  );
  await open(h);
  assert.deepEqual(await h.send(C.eom('last\r\n')), ['c']);
  assert.deepEqual(chunks, ['last\r\n']);
  assert.deepEqual(h.calls.slice(-2), ['body', 'eom']);

  const rej = harness((calls) =>
    recordingFilter(calls, { body: () => Decision.reject({ code: 550, text: 'no' }) }),
  );
  await open(rej);
  assert.deepEqual(await rej.send(C.eom('data')), ['y:550 no']);
  assert.ok(!rej.calls.includes('eom'));
  assert.deepEqual(await rej.send(C.abort()), []);
  assert.ok(!rej.calls.includes('abort'));
});

test('callback failures map to the failure decision with coded errors', async () => {
  const errors: string[] = [];
  const observer: MilterObserver = { error: (code) => void errors.push(code) };
  const rows: Array<{
    cb: Filter<unknown>['envrcpt'];
    code: string;
    failure?: 'accept' | 'reject' | 'tempfail' | 'continue';
    out: string[];
  }> = [
    {
      cb: () => {
        throw new Error('boom');
      },
      code: 'ERR_MILTER_CALLBACK_FAILED',
      out: ['t'],
    },
    {
      cb: async () => {
        throw new Error('boom');
      },
      code: 'ERR_MILTER_CALLBACK_FAILED',
      out: ['t'],
    },
    { cb: () => 'bogus' as unknown as 'reject', code: 'ERR_MILTER_ILLEGAL_DECISION', out: ['t'] },
    {
      cb: () => ({ kind: 'nope' }) as unknown as 'reject',
      code: 'ERR_MILTER_ILLEGAL_DECISION',
      out: ['r'],
      failure: 'reject',
    },
    {
      cb: () => 42 as unknown as 'reject',
      code: 'ERR_MILTER_ILLEGAL_DECISION',
      out: ['a'],
      failure: 'accept',
    },
    { cb: () => Decision.reject({ code: 450 }), code: 'ERR_MILTER_INVALID_REPLY', out: ['t'] },
    {
      // Refused by the type (a reply needs reject or tempfail); a JavaScript filter can still return it.
      cb: () => ({ kind: 'accept', reply: { code: 550 } }) as unknown as 'accept',
      code: 'ERR_MILTER_INVALID_REPLY',
      out: ['c'],
      failure: 'continue',
    },
    { cb: () => new Promise<undefined>(() => undefined), code: 'ERR_MILTER_CALLBACK_TIMEOUT', out: ['t'] },
  ];
  for (const row of rows) {
    errors.length = 0;
    const h = harness((calls) => recordingFilter(calls, { envrcpt: row.cb }), {
      callbackTimeoutMs: 20,
      observer,
      ...(row.failure ? { failureDecision: row.failure } : {}),
    });
    await h.send(C.optneg());
    await h.send(C.connect());
    await h.send(C.mail());
    assert.deepEqual(await h.send(C.rcpt()), row.out, row.code);
    assert.deepEqual(errors, [row.code]);
    assert.ok(loggedCodes(h.lines).includes(row.code), row.code);
  }
});

test('a late result after a timeout is ignored and logged', async () => {
  let release: (v: 'reject') => void = () => undefined;
  const h = harness(
    (calls) => recordingFilter(calls, { envfrom: () => new Promise<'reject'>((r) => (release = r)) }),
    {
      callbackTimeoutMs: 20,
    },
  );
  await h.send(C.optneg());
  await h.send(C.connect());
  assert.deepEqual(await h.send(C.mail()), ['t']);
  release('reject');
  await new Promise((r) => setImmediate(r));
  assert.ok(h.lines.some((l) => l['msg'] === 'late callback result ignored'));
  assert.deepEqual(await h.send(C.mail()), ['t']);
});

test('custom replies: decision reply, setReply, class mismatch, clearing, shutdown, % escaping', async () => {
  let thrown = '';
  const h = harness((calls) =>
    recordingFilter(calls, {
      connect: (ctx: StageContext<unknown>) => {
        try {
          ctx.setReply('250', undefined, 'nope');
        } catch (e) {
          thrown = (e as { code: string }).code;
        }
      },
      envfrom: (ctx: StageContext<unknown>, sender: unknown) => {
        if (sender !== '<a@example.org>') return 'continue';
        ctx.setReply(550, '5.7.1', 'first line', '100% second');
        return 'reject';
      },
      envrcpt: (ctx: StageContext<unknown>, rcpt: unknown) => {
        if (rcpt === '<mismatch>') {
          ctx.setReply(550, '5.7.1', 'perm');
          return 'tempfail';
        }
        if (rcpt === '<store>') {
          ctx.setReply(550, '5.7.1', 'kept?');
          return 'continue';
        }
        if (rcpt === '<later>') return 'reject';
        if (rcpt === '<bye>') return Decision.shutdown();
        return Decision.tempfail({ code: 451, xcode: '4.3.0', text: 'try 50% later' });
      },
    }),
  );
  await h.send(C.optneg());
  await h.send(C.connect());
  assert.equal(thrown, 'ERR_MILTER_INVALID_REPLY');
  assert.deepEqual(await h.send(C.mail()), ['y:550-5.7.1 first line\r\n550 5.7.1 100%% second']);
  await h.send(C.mail('<ok@x>'));
  assert.deepEqual(await h.send(C.rcpt('<t>')), ['y:451 4.3.0 try 50%% later']);
  assert.deepEqual(await h.send(C.rcpt('<mismatch>')), ['t']);
  assert.ok(h.lines.some((l) => l['level'] === 40 && l['decision'] === 'tempfail'));
  assert.deepEqual(await h.send(C.rcpt('<store>')), ['c']);
  assert.deepEqual(await h.send(C.rcpt('<later>')), ['r']);
  assert.deepEqual(await h.send(C.rcpt('<bye>')), ['y:421 4.7.0 Closing connection']);
});

test('synchronous callbacks get synchronous, shared continue results; observer sees each callback', async () => {
  const seen: string[] = [];
  const observer: MilterObserver = {
    decision: (stage, kind, secs) => void seen.push(`${stage}:${kind}:${typeof secs}`),
  };
  const h = harness((calls) => recordingFilter(calls, { noReply: ['header'] }), { observer });
  const r0 = h.session.handle(C.optneg());
  assert.ok(!(r0 instanceof Promise));
  h.session.handle(C.connect());
  const a = h.session.handle(C.mail());
  const b = h.session.handle(C.rcpt());
  assert.ok(!(a instanceof Promise) && !(b instanceof Promise));
  assert.equal(a, b);
  assert.ok(Object.isFrozen(a));
  h.session.handle(C.header());
  h.session.handle(C.eoh());
  const e = h.session.handle(C.eom());
  assert.ok(!(e instanceof Promise));
  assert.deepEqual(seen, [
    'connect:continue:number',
    'envfrom:continue:number',
    'envrcpt:continue:number',
    'header:noreply:number',
    'eoh:continue:number',
    'eom:continue:number',
  ]);
  const async = harness((calls) => recordingFilter(calls, { connect: async () => 'accept' as const }));
  async.session.handle(C.optneg());
  const p = async.session.handle(C.connect());
  assert.ok(p instanceof Promise);
  assert.deepEqual((await p).responses, [{ kind: 'accept' }]);
});

test('RCPT_REJ and header leading space are negotiated and values pass through as received', async () => {
  const got: string[] = [];
  const h = harness({
    rejectedRecipients: true,
    headerLeadingSpace: true,
    envrcpt: (ctx) => void got.push(`${ctx.envelope?.recipients.length}:${ctx.macro('rcpt_mailer') ?? ''}`),
    header: (_ctx, name, value) => void got.push(`${name}=[${value}]`),
  });
  // NO bits for every absent callback (all but envrcpt and header), plus the two extensions.
  const proto = 0x357 | P.SMFIP_RCPT_REJ | P.SMFIP_HDR_LEADSPC;
  assert.deepEqual(await h.send(C.optneg()), [`O:6/0x0/0x${proto.toString(16)}`]);
  await h.send(C.mail());
  await h.send(C.macro('R', ['{rcpt_mailer}', 'error']));
  await h.send(C.rcpt('<gone@x>'));
  await h.send(C.header('Subject', '  two'));
  assert.deepEqual(got, ['1:error', 'Subject=[  two]']);
});

test('terminate during a running EOM callback waits for it: no overlap, no abort after eom, close last', async () => {
  let release: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const h = harness((calls) =>
    recordingFilter(calls, {
      eom: async () => {
        await gate;
        calls.push('eom:end');
      },
    }),
  );
  await open(h);
  const eom = h.session.handle(C.eom());
  assert.ok(eom instanceof Promise, 'an async eom callback gives an async result');
  const ended = h.session.terminate('eof');
  // Let every microtask and timer turn run: neither abort nor close may start while eom is running.
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(h.calls.slice(-1), ['eom']);
  release();
  await Promise.all([eom, ended]);
  assert.deepEqual(h.calls.slice(-3), ['eom', 'eom:end', 'close']);
});

test('log lines of a connection carry the client address, and inside a transaction the queue id', async () => {
  const h = harness((calls) =>
    recordingFilter(calls, {
      envrcpt: () => {
        throw new Error('lookup failed');
      },
    }),
  );
  await h.send(C.optneg());
  await h.send(C.connect());
  await h.send(C.macro('M', ['i', 'ABC123']));
  await h.send(C.mail());
  assert.deepEqual(await h.send(C.rcpt()), ['t']);
  const failure = h.lines.find((l) => l['stage'] === 'envrcpt' && l['level'] === 50);
  assert.ok(failure, 'the failure is logged at error level');
  assert.equal(failure['client'], '192.0.2.7');
  assert.equal(failure['txn'], 'ABC123');
  assert.equal((failure['err'] as { code?: string } | undefined)?.code, 'ERR_MILTER_CALLBACK_FAILED');
});

test('accept/discard at UNKNOWN outside a transaction become continue (Postfix 3.7 panics); inside one they pass', async () => {
  for (const decision of ['accept', 'discard'] as const) {
    const h = harness((calls) => recordingFilter(calls, { unknown: () => decision }));
    await h.send(C.optneg());
    await h.send(C.connect());
    assert.deepEqual(await h.send(C.unknown()), ['c'], `${decision} outside a transaction`);
    assert.ok(
      h.lines.some((l) => l['level'] === 40 && String(l['msg']).includes('not defined at this stage')),
    );
    await h.send(C.mail());
    await h.send(C.rcpt());
    assert.deepEqual(await h.send(C.unknown()), [decision === 'accept' ? 'a' : 'd'], `${decision} inside`);
  }
});

/** Timeouts pending in this process (the session's budget timer among them). */
function activeTimeouts(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

test('the budget is per callback: each async callback gets all of it, however late in the timer period it starts', async () => {
  // One timer per session watches every callback (re-armed for the time left): a callback started just
  // before that timer's first expiry must still get its whole budget, and callbacks that together run
  // past the budget are each within it.
  const delays = [0, 45, 45, 45];
  let i = 0;
  const h = harness(
    (calls) =>
      recordingFilter(calls, {
        header: () =>
          new Promise<undefined>((r) => setTimeout(() => r(undefined), delays[i++ % delays.length])),
      }),
    { callbackTimeoutMs: 60 },
  );
  await h.send(C.optneg());
  await h.send(C.connect());
  await h.send(C.mail());
  await h.send(C.rcpt());
  for (let n = 0; n < delays.length * 2; n++) {
    assert.deepEqual(await h.send({ kind: 'header', name: 'X-N', value: String(n) }), ['c'], `header ${n}`);
  }
  assert.deepEqual(loggedCodes(h.lines), []);
  // A callback that never settles is still cut at its budget, after those.
  i = 0;
  const hang = harness(
    (calls) => recordingFilter(calls, { header: () => new Promise<undefined>(() => undefined) }),
    { callbackTimeoutMs: 30 },
  );
  await hang.send(C.optneg());
  await hang.send(C.connect());
  await hang.send(C.mail());
  await hang.send(C.rcpt());
  assert.deepEqual(await hang.send({ kind: 'header', name: 'X-N', value: '1' }), ['t']);
  assert.deepEqual(loggedCodes(hang.lines), ['ERR_MILTER_CALLBACK_TIMEOUT']);
  await h.session.terminate('eof');
  await hang.session.terminate('eof');
});

test('no budget timer outlives a session, and none keeps the process alive between callbacks', async () => {
  const before = activeTimeouts();
  const h = harness(
    (calls) => recordingFilter(calls, { envfrom: async () => undefined, close: async () => undefined }),
    { callbackTimeoutMs: 60_000 },
  );
  await h.send(C.optneg());
  await h.send(C.connect());
  assert.deepEqual(await h.send(C.mail()), ['c']);
  // Armed (lazily, for the session) but not ref'd while no callback runs.
  assert.equal(activeTimeouts(), before, 'an idle session holds no ref on the event loop');
  await h.session.terminate('eof');
  assert.equal(activeTimeouts(), before);
});
