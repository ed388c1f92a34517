/** `milterd/testing`: testFilter drives a real session with a scripted MTA and reports a typed transcript. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision, type Filter } from '../../../src/filter.js';
import * as testing from '../../../src/testing/index.js';
import { testFilter, type TestMessage } from '../../../src/testing/index.js';
import { MilterClient, playMessage } from '../../../src/client/index.js';
import { referenceFilter, type RefLogEntry } from '../replay/refmilter.js';
import {
  SMFIF_ADDHDRS,
  SMFIP_NOHELO,
  SMFIP_NR_HDR,
  SMFI_CURR_ACTS,
  SMFI_CURR_PROT,
} from '../../../src/protocol/constants.js';

const message: TestMessage = {
  sender: '<alice@example.org>',
  recipients: [
    '<bob@example.net>',
    '<spam@example.net>',
    { address: '<carol@example.net>', args: ['NOTIFY=NEVER'] },
  ],
  headers: [
    ['From', 'alice@example.org'],
    ['Subject', 'hello'],
  ],
  body: 'Hi Bob.\r\n',
};

test('reject at RCPT: only that recipient fails, the message goes on to EOM', async () => {
  const filter: Filter = {
    envrcpt(_ctx, rcpt) {
      if (rcpt === '<spam@example.net>')
        return Decision.reject({ code: 550, xcode: '5.1.1', text: 'No such user' });
      return undefined;
    },
  };
  const t = await testFilter(filter, { messages: [message] });
  const m = t.messages[0];
  assert.ok(m);
  assert.deepEqual(m.envrcpt, [
    { kind: 'continue' },
    { kind: 'replyCode', text: '550 5.1.1 No such user' },
    { kind: 'continue' },
  ]);
  assert.deepEqual(m.acceptedRecipients, ['<bob@example.net>', '<carol@example.net>']);
  assert.equal(m.stoppedAt, 'eom');
  assert.deepEqual(m.eom?.reply, { kind: 'continue' });
  const rcpt = t.decisions.filter((d) => d.stage === 'envrcpt');
  assert.deepEqual(
    rcpt.map((d) => [d.verdict, d.code]),
    [
      ['continue', undefined],
      ['reject', 550],
      ['continue', undefined],
    ],
  );
  // Only envrcpt exists: every other step is negotiated away and never sent.
  assert.equal(m.envfrom?.kind, 'skipped');
  assert.equal(m.data?.kind, 'skipped');
  assert.deepEqual(
    t.callbacks.map((c) => [c.callback, ...c.args]),
    [
      ['envrcpt', '<bob@example.net>', []],
      ['envrcpt', '<spam@example.net>', []],
      ['envrcpt', '<carol@example.net>', ['NOTIFY=NEVER']],
    ],
  );
  assert.equal(t.end, 'quit');
});

test('add a header at EOM: the modification comes before the decision, only the requested action is negotiated', async () => {
  const filter: Filter<{ seen: number }> = {
    actions: ['addHeader'],
    connect(ctx) {
      ctx.priv = { seen: 0 };
    },
    header(ctx) {
      if (ctx.priv) ctx.priv.seen++;
    },
    async eom(ctx) {
      ctx.progress();
      ctx.addHeader('X-Seen-Headers', String(ctx.priv?.seen));
      return Decision.accept;
    },
  };
  const t = await testFilter(filter, { messages: [message, { ...message, headers: [] }] });
  assert.equal(t.negotiated?.actions, SMFIF_ADDHDRS);
  const [first, second] = t.messages;
  assert.deepEqual(first?.eom, {
    reply: { kind: 'accept' },
    modifications: [{ kind: 'addHeader', name: 'X-Seen-Headers', value: '2' }],
    progress: 1,
  });
  // priv is per connection: the counter keeps going in the second message.
  assert.deepEqual(second?.eom?.modifications, [{ kind: 'addHeader', name: 'X-Seen-Headers', value: '2' }]);
  // Wire order of the EOM step: progress (sent while the callback ran), modification, decision.
  const eomStep = t.steps.find((s) => s.command.kind === 'eom');
  assert.deepEqual(
    eomStep?.responses.map((r) => r.kind),
    ['progress', 'addHeader', 'accept'],
  );
  assert.deepEqual(
    t.decisions.filter((d) => d.stage === 'eom').map((d) => d.verdict),
    ['accept', 'accept'],
  );
});

test('close before connect: the MTA quits right after OPTNEG, close sees priv undefined', async () => {
  const filter: Filter<string> = {
    connect(ctx) {
      ctx.priv = 'set in connect';
    },
    close(ctx) {
      ctx.priv = undefined;
    },
  };
  const t = await testFilter(filter, { connect: null, messages: [message] });
  assert.deepEqual(
    t.callbacks.map((c) => c.callback),
    ['close'],
  );
  assert.equal(t.callbacks[0]?.priv, undefined);
  assert.equal(t.connect, undefined);
  assert.deepEqual(t.messages, []);
  assert.deepEqual(
    t.steps.map((s) => s.command.kind),
    ['optneg', 'quit'],
  );

  // The same connection vanishing without QUIT: close still runs once.
  const eof = await testFilter(filter, { connect: null, end: 'eof' });
  assert.equal(eof.end, 'eof');
  assert.deepEqual(
    eof.callbacks.map((c) => [c.callback, c.priv]),
    [['close', undefined]],
  );
});

test('the default offer is Postfix 3.x: version 6, 0x1FF, 0x1FFFFF; NO and NR bits shape what is sent', async () => {
  const filter: Filter = { noReply: ['header'], header: () => undefined, eom: () => 'continue' };
  const t = await testFilter(filter, { messages: [message] });
  assert.deepEqual(t.steps[0]?.command, {
    kind: 'optneg',
    version: 6,
    actions: SMFI_CURR_ACTS,
    protocol: SMFI_CURR_PROT,
  });
  assert.ok(((t.negotiated?.protocol ?? 0) & SMFIP_NOHELO) !== 0);
  assert.ok(((t.negotiated?.protocol ?? 0) & SMFIP_NR_HDR) !== 0);
  assert.deepEqual(t.helo, { kind: 'skipped' });
  assert.deepEqual(t.messages[0]?.headers, [{ kind: 'noreply' }, { kind: 'noreply' }]);
  for (const s of t.steps.filter((x) => x.command.kind === 'header')) assert.deepEqual(s.responses, []);
});

test('a 421 at MAIL ends the SMTP session: later messages are not played', async () => {
  const filter: Filter = { envfrom: () => Decision.shutdown('Too busy') };
  const t = await testFilter(filter, { messages: [message, message], abortAfterMessage: true });
  assert.equal(t.messages.length, 1);
  assert.equal(t.messages[0]?.stoppedAt, 'envfrom');
  assert.deepEqual(t.messages[0]?.reply, { kind: 'replyCode', text: '421 4.7.0 Too busy' });
  assert.deepEqual(
    t.decisions.map((d) => [d.stage, d.verdict, d.code]),
    [
      ['connect', 'skipped', undefined],
      ['helo', 'skipped', undefined],
      ['envfrom', 'tempfail', 421],
    ],
  );
  assert.deepEqual(
    t.steps.map((s) => s.command.kind),
    ['optneg', 'mail', 'abort', 'quit'],
  );
});

test('abortAfter and skip: RSET after RCPT calls abort; SKIP from body jumps to EOM', async () => {
  let bodyCalls = 0;
  const filter: Filter = {
    envrcpt: () => undefined,
    abort: () => undefined,
    body() {
      bodyCalls++;
      return 'skip';
    },
    eom: () => 'continue',
  };
  const big = Buffer.alloc(70000, 0x61);
  const t = await testFilter(filter, {
    messages: [
      { ...message, abortAfter: 'envrcpt' },
      { ...message, body: big },
    ],
  });
  assert.equal(t.messages[0]?.aborted, true);
  assert.equal(t.messages[0]?.stoppedAt, 'envrcpt');
  assert.equal(bodyCalls, 1, 'the second body packet is not sent after SKIP');
  assert.equal(t.messages[1]?.stoppedAt, 'eom');
  assert.deepEqual(
    t.callbacks.map((c) => c.callback),
    ['envrcpt', 'envrcpt', 'envrcpt', 'abort', 'envrcpt', 'envrcpt', 'envrcpt', 'body', 'eom'],
  );
  // The callback log copies Buffers: the recorded chunk is the first 65535-byte packet.
  const body = t.callbacks.find((c) => c.callback === 'body');
  assert.ok(Buffer.isBuffer(body?.args[0]));
  assert.equal((body?.args[0] as Buffer).length, 65535);
});

test('a refused negotiation ends the conversation; close runs once, connect never', async () => {
  const filter: Filter = {
    negotiate() {
      throw new Error('not this MTA');
    },
    connect: () => undefined,
    close: () => undefined,
  };
  const t = await testFilter(filter, { messages: [message] });
  assert.equal(t.end, 'refused');
  assert.equal(t.negotiated, undefined);
  assert.deepEqual(
    t.callbacks.map((c) => c.callback),
    ['negotiate', 'close'],
  );
  assert.ok(t.callbacks[0]?.error instanceof Error);
});

test('a throwing callback shows as the failure decision, not as a rejected promise', async () => {
  const filter: Filter = {
    envfrom() {
      throw new Error('boom');
    },
  };
  const t = await testFilter(filter, { messages: [message], session: { failureDecision: 'reject' } });
  assert.deepEqual(t.messages[0]?.envfrom, { kind: 'reject' });
  assert.equal(t.messages[0]?.stoppedAt, 'envfrom');
  assert.ok(t.callbacks[0]?.error instanceof Error);
});

test('milterd/testing re-exports the MTA client as the fake MTA for socket-level tests', () => {
  assert.equal(testing.MilterClient, MilterClient);
  assert.equal(testing.playMessage, playMessage);
});

test('the reference filter through testFilter: EOM modifications in call order, body replacement last', async () => {
  const log: RefLogEntry[] = [];
  const t = await testFilter(referenceFilter(log), {
    abortAfterMessage: true,
    messages: [
      {
        sender: '<sender@example.com>',
        recipients: ['<first@example.net>', '<reject@example.net>', '<second@example.net>'],
        headers: [['Subject', 'CHANGE ADDRCPT DELRCPT BODY FROM INSHDR']],
        body: 'Hello.\r\n',
      },
      { sender: '<sender@example.com>', recipients: ['<user@example.net>'], body: 'x\r\n' },
      { sender: '<sender@example.com>', recipients: ['<user@example.net>'] },
      { sender: '<sender@example.com>', recipients: ['<user@example.net>'] },
    ],
  });
  const [combo, plain, third] = t.messages;
  assert.deepEqual(combo?.envrcpt[1], {
    kind: 'replyCode',
    text: '550 5.7.1 Recipient rejected by refmilter',
  });
  assert.deepEqual(
    combo?.eom?.modifications.map((m) => m.kind),
    [
      'addHeader',
      'changeHeader',
      'insertHeader',
      'addRecipient',
      'deleteRecipient',
      'changeFrom',
      'replaceBody',
    ],
  );
  assert.deepEqual(plain?.eom?.modifications, [{ kind: 'addHeader', name: 'X-Ref-Milter', value: 'seen' }]);
  // The third MAIL of the connection gets the 421, and the MTA plays no fourth message.
  assert.deepEqual(third?.reply, { kind: 'replyCode', text: '421 4.7.0 refmilter closing connection' });
  assert.equal(t.messages.length, 3);
  assert.deepEqual(
    t.callbacks.filter((c) => c.callback === 'close').map((c) => c.priv?.msgs),
    [3],
  );
});
