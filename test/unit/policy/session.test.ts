/**
 * The wrapped filter through the real session layer (createSession, in memory): negotiated protocol
 * bits, and the 421 on the wire at MAIL #3 / at the 4th rejected recipient.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision, type Filter } from '../../../src/filter.js';
import { createShutdownPolicy, type PolicyRule } from '../../../src/policy/rules.js';
import { withShutdownPolicy } from '../../../src/policy/wrapper.js';
import { createSession } from '../../../src/session/session.js';
import type { MilterCommand, MilterResponse } from '../../../src/protocol/types.js';
import * as P from '../../../src/protocol/constants.js';
import { memoryLogger } from '../../helpers/logs.js';

const OFFER = { version: 6, actions: 0x1ff, protocol: 0x1fffff };
const NEVER =
  P.SMFIP_NOCONNECT |
  P.SMFIP_NOHELO |
  P.SMFIP_NOMAIL |
  P.SMFIP_NORCPT |
  P.SMFIP_NODATA |
  P.SMFIP_NOUNKNOWN |
  P.SMFIP_NR_HELO |
  P.SMFIP_NR_MAIL |
  P.SMFIP_NR_RCPT |
  P.SMFIP_NR_DATA |
  P.SMFIP_NR_UNKN;

function session(filter: Filter): { send(cmd: MilterCommand): Promise<readonly MilterResponse[]> } {
  const { logger } = memoryLogger();
  const s = createSession(
    { id: 'c1', filter: filter as Filter<unknown>, logger, callbackTimeoutMs: 0 },
    { sendNow: () => {} },
  );
  return { send: async (cmd) => (await s.handle(cmd)).responses };
}

/** One-letter summary: c, r, t, y:<text>, … */
const sum = (rs: readonly MilterResponse[]): string[] =>
  rs.map((r) => (r.kind === 'replyCode' ? `y:${r.text}` : r.kind));

function rules(...r: PolicyRule[]): ReturnType<typeof createShutdownPolicy> {
  return createShutdownPolicy({ dryRun: false, rules: r });
}

const users: Array<[string, Filter]> = [
  ['empty filter', {}],
  ['eom only', { eom: () => undefined }],
  [
    'noReply on every stage',
    {
      envfrom: () => undefined,
      noReply: ['helo', 'envfrom', 'envrcpt', 'data', 'unknown', 'header', 'body'],
    },
  ],
  [
    'own negotiate asking NO/NR for everything',
    { negotiate: () => ({ actions: 0, protocol: 0x3ff7f & ~P.SMFIP_SKIP }), envrcpt: () => undefined },
  ],
];

for (const [name, user] of users) {
  test(`negotiation through createSession (${name}): no NO/NR bit for connect/helo/mail/rcpt/data/unknown`, async () => {
    const s = session(
      withShutdownPolicy(user, rules({ name: 'm', limit: { kind: 'max-messages', max: 2 } })),
    );
    const [reply] = await s.send({ kind: 'optneg', ...OFFER });
    assert.ok(reply?.kind === 'optneg');
    assert.equal(reply.protocol & NEVER, 0, `protocol 0x${reply.protocol.toString(16)}`);
    assert.notEqual(reply.protocol & P.SMFIP_RCPT_REJ, 0, 'RCPT_REJ requested');
  });
}

const C = {
  connect: (): MilterCommand => ({
    kind: 'connect',
    hostname: 'c.example',
    family: 'inet',
    port: 4000,
    address: '192.0.2.7',
  }),
  helo: (): MilterCommand => ({ kind: 'helo', hostname: 'c.example' }),
  mail: (): MilterCommand => ({ kind: 'mail', sender: '<a@example.org>', args: [] }),
  rcptMacro: (mailer: string): MilterCommand => ({
    kind: 'macro',
    stage: 'R',
    macros: [['{rcpt_mailer}', mailer]],
  }),
  rcpt: (r = '<b@example.net>'): MilterCommand => ({ kind: 'rcpt', recipient: r, args: [] }),
  data: (): MilterCommand => ({ kind: 'data' }),
  header: (): MilterCommand => ({ kind: 'header', name: 'Subject', value: 'hi' }),
  eoh: (): MilterCommand => ({ kind: 'eoh' }),
  body: (): MilterCommand => ({ kind: 'body', chunk: Buffer.from('hello\r\n') }),
  eom: (): MilterCommand => ({ kind: 'eom', chunk: Buffer.alloc(0) }),
  abort: (): MilterCommand => ({ kind: 'abort' }),
};

test('through createSession: max-messages 2 — two EOM accepted, 421 at MAIL #3 (Postfix command order)', async () => {
  const s = session(
    withShutdownPolicy(
      { eom: () => undefined },
      rules({ name: 'm', limit: { kind: 'max-messages', max: 2 } }),
    ),
  );
  await s.send({ kind: 'optneg', ...OFFER });
  await s.send(C.connect());
  assert.deepEqual(sum(await s.send(C.helo())), ['continue']);
  for (let i = 0; i < 2; i++) {
    assert.deepEqual(sum(await s.send(C.mail())), ['continue']);
    await s.send(C.rcptMacro('smtp'));
    assert.deepEqual(sum(await s.send(C.rcpt())), ['continue']);
    assert.deepEqual(sum(await s.send(C.data())), ['continue']);
    for (const c of [C.header(), C.eoh(), C.body()]) await s.send(c);
    assert.deepEqual(sum(await s.send(C.eom())), ['continue'], `message ${i + 1} accepted`);
    await s.send(C.abort());
    await s.send(C.abort());
  }
  const third = sum(await s.send(C.mail()));
  assert.equal(third.length, 1);
  assert.match(third[0] ?? '', /^y:421 4\.7\.0 Too many messages/);
});

test('through createSession: max-rejected-recipients 3 — the 4th rejected recipient gets 421', async () => {
  const user: Filter = {
    envrcpt: (_c, r) =>
      r.startsWith('<bad') ? Decision.reject({ code: 550, xcode: '5.1.1', text: 'unknown' }) : undefined,
  };
  const s = session(
    withShutdownPolicy(user, rules({ name: 'd', limit: { kind: 'max-rejected-recipients', max: 3 } })),
  );
  await s.send({ kind: 'optneg', ...OFFER });
  await s.send(C.connect());
  await s.send(C.mail());
  const replies: string[] = [];
  for (let i = 1; i <= 4; i++) {
    await s.send(C.rcptMacro('smtp'));
    replies.push(...sum(await s.send(C.rcpt(`<bad${i}@example.net>`))));
  }
  assert.deepEqual(replies.slice(0, 3), [
    'y:550 5.1.1 unknown',
    'y:550 5.1.1 unknown',
    'y:550 5.1.1 unknown',
  ]);
  assert.match(replies[3] ?? '', /^y:421 4\.7\.0 /);
});

test('through createSession: the user’s own negotiation still routes callbacks after QUIT_NC', async () => {
  const calls: string[] = [];
  const user: Filter = {
    // NOMAIL: the user never wants envfrom, even though it has the callback.
    negotiate: () => ({ actions: 0, protocol: P.SMFIP_NOMAIL }),
    envfrom: () => void calls.push('envfrom'),
    envrcpt: () => void calls.push('envrcpt'),
  };
  const s = session(withShutdownPolicy(user, rules()));
  await s.send({ kind: 'optneg', ...OFFER });
  for (let round = 0; round < 2; round++) {
    await s.send(C.connect());
    assert.deepEqual(sum(await s.send(C.mail())), ['continue']);
    await s.send(C.rcptMacro('smtp'));
    await s.send(C.rcpt());
    await s.send({ kind: 'quitNewConnection' });
  }
  assert.deepEqual(calls, ['envrcpt', 'envrcpt']);
});
