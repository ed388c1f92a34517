/**
 * The pipeline's semantics, one test per row of the README's "Pipeline" table, each through a real
 * session (testFilter: the production negotiation, state machine and EOM assembly) and asserting what the
 * MTA reads and what each member saw.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MilterConfigError } from '../../../src/errors.js';
import { Decision, type Filter } from '../../../src/filter.js';
import { messageFilter } from '../../../src/message/index.js';
import {
  parseMemberCondition,
  pipeline,
  type MemberEvent,
  type PipelineMember,
} from '../../../src/pipeline/index.js';
import {
  SMFIF_ADDHDRS,
  SMFIF_CHGHDRS,
  SMFIF_SETSYMLIST,
  SMFIP_NOBODY,
  SMFIP_NOCONNECT,
  SMFIP_NOHDRS,
  SMFIP_NOHELO,
  SMFIP_NR_CONN,
  SMFIP_NR_HELO,
  SMFIP_NR_MAIL,
} from '../../../src/protocol/constants.js';
import { testFilter } from '../../../src/testing/index.js';
import { memoryLogger } from '../../helpers/logs.js';

const member = (name: string, filter: Filter, extra: Partial<PipelineMember> = {}): PipelineMember => ({
  name,
  filter,
  ...extra,
});

const MESSAGE = {
  sender: '<alice@example.org>',
  recipients: ['<bob@example.net>'],
  headers: [
    ['From', 'alice@example.org'],
    ['Subject', 'hello'],
  ] as Array<[string, string]>,
  body: 'Hi Bob.\r\n',
};

test('negotiation: the union of what members need, no-reply only where every receiving member is no-reply', async () => {
  const seen: string[] = [];
  const a: Filter = { connect: () => void seen.push('a connect'), noReply: ['connect'] };
  const b: Filter = {
    actions: ['addHeader'],
    macros: { envfrom: ['{auth_authen}'] },
    envfrom: () => void seen.push('b envfrom'),
    eom: () => void seen.push('b eom'),
    noReply: ['envfrom'],
  };
  // An explicit negotiate (as an upstream milter has) asking to skip headers it has a callback for.
  const c: Filter = {
    negotiate: () => ({
      actions: SMFIF_CHGHDRS,
      protocol: SMFIP_NOHDRS | SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOBODY,
    }),
    header: () => void seen.push('c header'),
    envfrom: () => void seen.push('c envfrom'),
    macros: { envfrom: ['i'] },
  };
  const c2: Filter = {
    ...c,
    negotiate: (ctx, offer) => ({ ...c.negotiate!(ctx, offer), macros: { envfrom: ['i'] } }),
  };
  const t = await testFilter(pipeline([member('a', a), member('b', b), member('c', c2)]), {
    messages: [MESSAGE],
  });
  const neg = t.negotiated;
  assert.ok(neg);
  assert.equal(neg.actions, SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_SETSYMLIST);
  assert.equal(neg.protocol & SMFIP_NOHELO, SMFIP_NOHELO, 'nobody takes HELO');
  assert.equal(neg.protocol & SMFIP_NR_CONN, SMFIP_NR_CONN, 'the only member taking CONNECT is no-reply');
  assert.equal(neg.protocol & SMFIP_NR_MAIL, 0, 'c takes MAIL with a reply');
  assert.equal(neg.protocol & SMFIP_NR_HELO, SMFIP_NR_HELO, 'nobody receives HELO: vacuously no-reply');
  assert.equal(neg.protocol & SMFIP_NOHDRS, 0, 'header changes need the MTA headers');
  assert.deepEqual(neg.macroLists, { 2: '{auth_authen} i' });
  // c asked to skip headers: it never gets one, although the MTA sends them (c changes headers).
  assert.deepEqual(seen, ['a connect', 'b envfrom', 'c envfrom', 'b eom']);
  // Nobody takes headers: the MTA sends them (c changes headers) without waiting for a reply.
  assert.equal(t.messages[0]?.headers[0]?.kind, 'noreply');
});

test('negotiation: an action a member did not negotiate is dropped, logged and reported, never sent', async () => {
  const events: MemberEvent[] = [];
  const log = memoryLogger();
  const f: Filter = {
    actions: ['addHeader'],
    eom(ctx) {
      ctx.changeFrom('<evil@example.org>');
      ctx.changeFrom('<again@example.org>');
      ctx.addHeader('X-Ok', 'yes');
    },
  };
  const t = await testFilter(
    pipeline([member('f', f), member('g', { actions: ['changeFrom'], eom: () => undefined })], {
      onMemberEvent: (e) => void events.push(e),
    }),
    { messages: [MESSAGE], session: { logger: log.logger } },
  );
  assert.deepEqual(t.messages[0]?.eom?.modifications, [{ kind: 'addHeader', name: 'X-Ok', value: 'yes' }]);
  assert.deepEqual(
    events.filter((e) => e.type === 'action').map((e) => [e.member, e.action, e.applied, e.reason]),
    [
      ['f', 'changeFrom', false, 'not-negotiated'],
      ['f', 'changeFrom', false, 'not-negotiated'],
      ['f', 'addHeader', true, undefined],
    ],
  );
  const warned = log.lines.filter((l) => l.action === 'changeFrom');
  assert.deepEqual(
    warned.map((l) => [l.level, l.member]),
    [[40, 'f']],
  );
});

test('decisions: a reject ends the stage for all, members inside the message get abort, later ones are not asked', async () => {
  const seen: string[] = [];
  const rec = (name: string): Filter => ({
    envfrom: () => void seen.push(`${name} envfrom`),
    abort: () => void seen.push(`${name} abort`),
  });
  const rejecter: Filter = {
    envfrom: () => Decision.reject({ code: 550, xcode: '5.7.1', text: 'not you' }),
    abort: () => void seen.push('r abort'),
  };
  const t = await testFilter(
    pipeline([member('x', rec('x')), member('r', rejecter), member('y', rec('y'))]),
    {
      messages: [MESSAGE],
    },
  );
  assert.deepEqual(t.messages[0]?.mail, { kind: 'replyCode', text: '550 5.7.1 not you' });
  assert.deepEqual(seen, ['x envfrom', 'x abort']);
});

test('decisions: a reject at RCPT refuses that recipient only; later members do not see it', async () => {
  const seen: string[] = [];
  const first: Filter = {
    envrcpt: (ctx, rcpt) => {
      if (rcpt === '<no@example.net>') {
        ctx.setReply('550', '5.1.1', 'no such user');
        return 'reject';
      }
    },
  };
  const second: Filter = { envrcpt: (_ctx, rcpt) => void seen.push(rcpt), eom: () => void seen.push('eom') };
  const t = await testFilter(pipeline([member('a', first), member('b', second)]), {
    messages: [{ ...MESSAGE, recipients: ['<no@example.net>', '<bob@example.net>'] }],
  });
  assert.deepEqual(t.messages[0]?.rcpt, [
    { kind: 'replyCode', text: '550 5.1.1 no such user' },
    { kind: 'continue' },
  ]);
  assert.deepEqual(seen, ['<bob@example.net>', 'eom']);
});

test('decisions: accept retires only that member, for the message (at CONNECT for the connection)', async () => {
  const seen: string[] = [];
  const rec = (name: string, accept: 'connect' | 'envfrom' | undefined): Filter => ({
    connect: () => (accept === 'connect' ? 'accept' : undefined),
    envfrom: (_c, s) => {
      seen.push(`${name} envfrom ${s}`);
      return accept === 'envfrom' ? 'accept' : undefined;
    },
    envrcpt: () => void seen.push(`${name} rcpt`),
    eom: () => void seen.push(`${name} eom`),
  });
  const t = await testFilter(
    pipeline([
      member('c', rec('c', 'connect')),
      member('m', rec('m', 'envfrom')),
      member('k', rec('k', undefined)),
    ]),
    { messages: [MESSAGE, { ...MESSAGE, sender: '<second@example.org>' }] },
  );
  assert.equal(t.connect?.kind, 'continue');
  assert.deepEqual(seen, [
    'm envfrom <alice@example.org>',
    'k envfrom <alice@example.org>',
    'k rcpt',
    'k eom',
    'm envfrom <second@example.org>',
    'k envfrom <second@example.org>',
    'k rcpt',
    'k eom',
  ]);
  // When every member accepted, the MTA is told accept (it stops asking for this message).
  const all = await testFilter(pipeline([member('m', rec('m', 'envfrom'))]), { messages: [MESSAGE] });
  assert.equal(all.messages[0]?.mail?.kind, 'accept');
});

test('decisions: body skip reaches the MTA only when every member reading the body skipped', async () => {
  const chunks: string[] = [];
  const skipAt = (name: string, n: number): Filter => {
    let i = 0;
    return {
      body: () => {
        chunks.push(`${name}${++i}`);
        return i >= n ? 'skip' : undefined;
      },
    };
  };
  const body = Buffer.alloc(65535 * 3, 0x61);
  const t = await testFilter(pipeline([member('a', skipAt('a', 1)), member('b', skipAt('b', 2))]), {
    messages: [{ ...MESSAGE, body }],
  });
  const replies = t.steps.filter((s) => s.command.kind === 'body').map((s) => s.responses.map((r) => r.kind));
  assert.deepEqual(replies, [['continue'], ['skip']]);
  assert.deepEqual(chunks, ['a1', 'b1', 'b2']);
});

test('end of message: a later member sees the message as earlier members left it; the MTA gets the minimal diff', async () => {
  const order: string[] = [];
  const watcher: Filter = { header: (_c, n) => void order.push(`watch header ${n}`) };
  const rewriter = messageFilter({
    message(trx) {
      order.push('rewrite eom');
      trx.headers.set('Subject', `[ext] ${trx.headers.get('Subject') ?? ''}`);
      trx.headers.add('X-Rewritten', 'yes');
      trx.headers.delete('From');
      trx.recipients.add('<archive@example.net>');
      trx.setSender('<bounce@example.org>');
      trx.replaceBody(Buffer.from('New body.\r\n'));
    },
  });
  const saw: Record<string, unknown> = {};
  const signer: Filter = {
    actions: ['addHeader'],
    header: (_c, n, v) => void order.push(`sign header ${n}: ${v}`),
    body: (_c, chunk) => void (saw.body = chunk.toString('latin1')),
    eom(ctx) {
      order.push('sign eom');
      saw.envelope = ctx.envelope;
      ctx.addHeader('X-Signed', 'over [ext] hello');
    },
  };
  const t = await testFilter(
    pipeline([member('watch', watcher), member('rewrite', rewriter), member('sign', signer)]),
    { messages: [MESSAGE] },
  );
  assert.deepEqual(order, [
    'watch header From',
    'watch header Subject',
    'rewrite eom',
    // replayed from the working copy, after the rewriter changed it
    'sign header Subject: [ext] hello',
    'sign header X-Rewritten: yes',
    'sign eom',
  ]);
  assert.equal(saw.body, 'New body.\r\n');
  assert.deepEqual(saw.envelope, {
    sender: '<bounce@example.org>',
    senderArgs: [],
    recipients: [
      { address: '<bob@example.net>', args: [] },
      { address: '<archive@example.net>', args: [] },
    ],
  });
  assert.deepEqual(t.messages[0]?.eom?.modifications, [
    { kind: 'changeFrom', sender: '<bounce@example.org>' },
    { kind: 'addRecipient', recipient: '<archive@example.net>' },
    { kind: 'changeHeader', index: 1, name: 'Subject', value: '[ext] hello' },
    { kind: 'changeHeader', index: 1, name: 'From', value: '' },
    { kind: 'addHeader', name: 'X-Rewritten', value: 'yes' },
    { kind: 'addHeader', name: 'X-Signed', value: 'over [ext] hello' },
    { kind: 'replaceBody', chunk: Buffer.from('New body.\r\n') },
  ]);
  assert.deepEqual(t.messages[0]?.eom?.reply, { kind: 'continue' });
});

test('end of message: a replayed member reads a body spilled to disk, byte for byte', async () => {
  const body = Buffer.alloc(200_000);
  for (let i = 0; i < body.length; i++) body[i] = (i * 7) % 256;
  let got = Buffer.alloc(0);
  const modifier: Filter = { actions: ['addHeader'], eom: (ctx) => ctx.addHeader('X-A', '1') };
  const reader: Filter = {
    body: (_c, chunk) => void (got = Buffer.concat([got, chunk])),
    eom: () => undefined,
  };
  const t = await testFilter(
    pipeline([member('m', modifier), member('r', reader)], { bodyMemoryLimit: 1024 }),
    {
      messages: [{ ...MESSAGE, body }],
    },
  );
  assert.ok(got.equals(body));
  assert.deepEqual(t.messages[0]?.eom?.modifications, [{ kind: 'addHeader', name: 'X-A', value: '1' }]);
});

test('end of message: a failed member changes nothing; a reject at EOM sends no change; members keep the MTA waiting', async () => {
  const first: Filter = { actions: ['addHeader'], eom: (ctx) => ctx.addHeader('X-First', '1') };
  const broken: Filter = {
    actions: ['addHeader'],
    eom(ctx) {
      ctx.progress();
      ctx.addHeader('X-Half', 'edit');
      throw new Error('boom');
    },
  };
  const t = await testFilter(
    pipeline([member('first', first), member('broken', broken)], { failureDecision: 'continue' }),
    {
      messages: [MESSAGE],
    },
  );
  assert.deepEqual(t.messages[0]?.eom?.modifications, [{ kind: 'addHeader', name: 'X-First', value: '1' }]);
  assert.equal(t.messages[0]?.eom?.progress, 1);
  const r = await testFilter(
    pipeline([
      member('first', first),
      member('no', { eom: () => Decision.reject({ code: 554, text: 'spam' }) }),
    ]),
    { messages: [MESSAGE] },
  );
  assert.deepEqual(r.messages[0]?.eom?.modifications, []);
  assert.deepEqual(r.messages[0]?.eom?.reply, { kind: 'replyCode', text: '554 spam' });
});

test('conditions: {daemon_name}, sender and recipient domains; facts not known yet keep a member in', async () => {
  const seen: string[] = [];
  const rec = (name: string): Filter => ({
    connect: () => void seen.push(`${name} connect`),
    envfrom: () => void seen.push(`${name} envfrom`),
    eom: () => void seen.push(`${name} eom`),
    abort: () => void seen.push(`${name} abort`),
  });
  const events: MemberEvent[] = [];
  const f = pipeline(
    [
      member('submission', rec('submission'), {
        when: parseMemberCondition({ 'daemon-name': 'submission' }, {}),
      }),
      member('ours', rec('ours'), { when: parseMemberCondition({ 'sender-domain': ['example.org'] }, {}) }),
      member('to-net', rec('to-net'), {
        when: parseMemberCondition({ 'recipient-domain': 'example.net' }, {}),
      }),
    ],
    { onMemberEvent: (e) => void events.push(e) },
  );
  await testFilter(f, {
    macros: { connect: { daemon_name: 'smtpd' } },
    messages: [
      { ...MESSAGE, sender: '<x@other.org>' },
      { ...MESSAGE, recipients: ['<carol@example.com>'] },
    ],
  });
  assert.deepEqual(seen, [
    'ours connect',
    'to-net connect',
    // message 1: the sender is not ours
    'to-net envfrom',
    'to-net eom',
    // message 2: the recipient is not in example.net: judged after the last RCPT, so to-net gets abort
    'ours envfrom',
    'to-net envfrom',
    'to-net abort',
    'ours eom',
  ]);
  assert.deepEqual(
    events.filter((e) => e.type === 'skipped').map((e) => [e.member, e.stage, e.scope]),
    [
      ['submission', 'connect', 'connection'],
      ['ours', 'envfrom', 'message'],
      ['to-net', 'header', 'message'],
    ],
  );
  seen.length = 0;
  await testFilter(f, { macros: { connect: { daemon_name: 'submission' } }, messages: [] });
  assert.deepEqual(seen, ['submission connect', 'ours connect', 'to-net connect']);
});

test('conditions: parseMemberCondition locates its errors and reuses the policy vocabulary', () => {
  assert.deepEqual(
    parseMemberCondition(
      { client: ['192.0.2.0/24'], authenticated: true, helo: '^mx', 'daemon-port': [587, '465'] },
      { file: 'milterd.yaml', field: 'filters[1].when' },
    ),
    {
      client: [{ address: '192.0.2.0', prefix: 24, type: 'ipv4' }],
      authenticated: true,
      helo: '^mx',
      daemonPort: [587, 465],
    },
  );
  assert.throws(
    () => parseMemberCondition({ 'sender-domian': 'x' }, { file: 'milterd.yaml', field: 'filters[1].when' }),
    (err: unknown) =>
      err instanceof MilterConfigError &&
      err.field === 'filters[1].when.sender-domian' &&
      err.file === 'milterd.yaml' &&
      /did you mean sender-domain/.test(err.message),
  );
  assert.throws(
    () => parseMemberCondition({ client: ['300.1.1.1'] }, { field: 'when' }),
    (err: unknown) => err instanceof MilterConfigError && err.field === 'when.client[0]',
  );
  assert.throws(
    () => parseMemberCondition({ helo: '(a)\\1' }, { field: 'when' }),
    (err: unknown) => err instanceof MilterConfigError && /invalid regular expression/.test(err.message),
  );
});

test('dry-run: decisions and changes are reported, not applied', async () => {
  const events: MemberEvent[] = [];
  const strict: Filter = {
    actions: ['addHeader'],
    envfrom: () => 'reject',
    eom: (ctx) => {
      ctx.addHeader('X-Dry', 'run');
      return 'discard';
    },
  };
  const t = await testFilter(
    pipeline([member('strict', strict, { dryRun: true })], { onMemberEvent: (e) => void events.push(e) }),
    { messages: [MESSAGE] },
  );
  assert.equal(t.messages[0]?.mail?.kind, 'continue');
  assert.deepEqual(t.messages[0]?.eom?.modifications, []);
  assert.deepEqual(t.messages[0]?.eom?.reply, { kind: 'continue' });
  assert.deepEqual(
    events
      .filter((e) => e.type !== 'decision' || e.stage !== 'negotiate')
      .map((e) =>
        e.type === 'decision'
          ? [e.stage, e.decision, e.applied]
          : e.type === 'action'
            ? [e.action, e.reason]
            : [e.type],
      ),
    [
      ['envfrom', 'reject', false],
      ['addHeader', 'dry-run'],
      ['eom', 'discard', false],
    ],
  );
});

test('close runs exactly once per member per connection, failed members included; priv is per member', async () => {
  const closed: string[] = [];
  const privs: string[] = [];
  const mk = (name: string, extra: Partial<Filter> = {}): Filter => ({
    connect(ctx) {
      privs.push(`${name} sees ${String(ctx.priv)}`);
      ctx.priv = name;
    },
    envfrom(ctx) {
      privs.push(`${name} has ${String(ctx.priv)} msg ${String(ctx.messagePriv)}`);
      ctx.messagePriv = `${name}-msg`;
    },
    close: () => void closed.push(name),
    ...extra,
  });
  const t = await testFilter(
    pipeline(
      [mk('a'), mk('b', { connect: () => Promise.reject(new Error('down')) }), mk('c')].map((f, i) =>
        member(String(i), f),
      ),
    ),
    { messages: [MESSAGE, MESSAGE] },
  );
  assert.equal(t.connect?.kind, 'tempfail');
  assert.deepEqual(closed, ['a', 'b', 'c']);
  assert.deepEqual(privs, ['a sees undefined']);

  closed.length = 0;
  privs.length = 0;
  const u = await testFilter(pipeline([mk('a'), mk('c')].map((f, i) => member(String(i), f))), {
    messages: [MESSAGE, MESSAGE],
  });
  assert.equal(u.messages.length, 2);
  assert.deepEqual(privs, [
    'a sees undefined',
    'c sees undefined',
    'a has a msg undefined',
    'c has c msg undefined',
    'a has a msg undefined',
    'c has c msg undefined',
  ]);
  assert.deepEqual(closed, ['a', 'c']);

  // A member whose negotiation fails refuses the MTA; every member is still closed once.
  closed.length = 0;
  const refused = await testFilter(
    pipeline(
      [mk('a'), mk('b', { negotiate: () => Promise.reject(new Error('upstream down')) }), mk('c')].map(
        (f, i) => member(String(i), f),
      ),
    ),
  );
  assert.equal(refused.end, 'refused');
  assert.deepEqual(closed, ['a', 'b', 'c']);
});

test('negotiation: header values keep their leading space only for members that asked; new values get one', async () => {
  const seen: string[] = [];
  const spaced: Filter = {
    headerLeadingSpace: true,
    header: (_c, n, v) => void seen.push(`spaced ${n}:${v}`),
  };
  const plain: Filter = {
    actions: ['addHeader', 'changeHeader'],
    header: (_c, n, v) => void seen.push(`plain ${n}:${v}`),
    eom(ctx) {
      ctx.addHeader('X-New', 'v');
      ctx.changeHeader('Subject', 1, 'changed');
    },
  };
  const t = await testFilter(pipeline([member('spaced', spaced), member('plain', plain)]), {
    messages: [{ ...MESSAGE, headers: [['Subject', ' hello']] }],
  });
  assert.deepEqual(seen, ['spaced Subject: hello', 'plain Subject:hello']);
  // The MTA negotiated HDR_LEADSPC for the pipeline: every value it gets carries its leading space.
  assert.deepEqual(t.messages[0]?.eom?.modifications, [
    { kind: 'changeHeader', index: 1, name: 'Subject', value: ' changed' },
    { kind: 'addHeader', name: 'X-New', value: ' v' },
  ]);
});

test('decisions: a failure passed over (failureDecision continue) retires only the failed member, for the message', async () => {
  const seen: string[] = [];
  const events: MemberEvent[] = [];
  let calls = 0;
  const flaky: Filter = {
    envfrom: () => {
      if (++calls === 1) throw new Error('first message fails');
      seen.push('flaky envfrom');
    },
    eom: () => void seen.push('flaky eom'),
  };
  const steady: Filter = {
    envfrom: () => void seen.push('steady envfrom'),
    eom: () => void seen.push('steady eom'),
  };
  const t = await testFilter(
    pipeline([member('flaky', flaky), member('steady', steady)], {
      failureDecision: 'continue',
      onMemberEvent: (e) => void events.push(e),
    }),
    { messages: [MESSAGE, MESSAGE] },
  );
  assert.deepEqual(
    t.messages.map((m) => m.reply.kind),
    ['continue', 'continue'],
  );
  assert.deepEqual(seen, [
    'steady envfrom',
    'steady eom',
    'flaky envfrom',
    'steady envfrom',
    'flaky eom',
    'steady eom',
  ]);
  const errors = events.filter((e) => e.type === 'error');
  assert.deepEqual(
    errors.map((e) => [e.member, e.stage, e.code, e.timeout, e.decision]),
    [['flaky', 'envfrom', 'ERR_MILTER_CALLBACK_FAILED', false, 'continue']],
  );
});

test('end of message: SMFIR_PROGRESS keeps the MTA waiting while a slow member works', async () => {
  const slow: Filter = {
    actions: ['addHeader'],
    async eom(ctx) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      ctx.addHeader('X-Slow', 'done');
    },
  };
  const t = await testFilter(pipeline([member('slow', slow)], { progressIntervalMs: 1 }), {
    messages: [MESSAGE],
  });
  const eom = t.messages[0]?.eom;
  assert.ok((eom?.progress ?? 0) >= 1, `progress packets: ${eom?.progress}`);
  assert.deepEqual(eom?.modifications, [{ kind: 'addHeader', name: 'X-Slow', value: 'done' }]);
});

test("end of message: an EOM that outlives the session's callback budget does not end the next message", async () => {
  const seen: string[] = [];
  let open: (() => void) | undefined;
  const gate = new Promise<void>((resolve) => (open = resolve));
  let n = 0;
  const slow: Filter = {
    envfrom() {
      n++;
      seen.push(`envfrom ${n}`);
      if (n === 2) {
        open?.(); // the first message's EOM finishes now, late, during the second message
        return 'accept';
      }
    },
    envrcpt: () => void seen.push(`envrcpt ${n}`),
    async eom() {
      seen.push(`eom ${n}`);
      if (n === 1) await gate;
    },
  };
  const other: Filter = { eom: () => void seen.push(`other eom ${n}`) };
  const t = await testFilter(pipeline([member('slow', slow), member('other', other)]), {
    messages: [MESSAGE, MESSAGE],
    session: { callbackTimeoutMs: 20 },
  });
  assert.deepEqual(
    t.messages.map((m) => m.reply.kind),
    ['tempfail', 'continue'],
  );
  // `slow` accepted message 2 at MAIL: it stays retired for it although message 1's EOM ended meanwhile.
  assert.deepEqual(seen, ['envfrom 1', 'envrcpt 1', 'eom 1', 'envfrom 2', 'other eom 2']);
});
