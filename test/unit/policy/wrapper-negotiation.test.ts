import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision, type Filter } from '../../../src/filter.js';
import { ShutdownPolicy } from '../../../src/policy/chain.js';
import { createShutdownPolicy } from '../../../src/policy/rules.js';
import { withShutdownPolicy } from '../../../src/policy/wrapper.js';
import {
  SMFIP_NOBODY,
  SMFIP_NOCONNECT,
  SMFIP_NOHDRS,
  SMFIP_NOMAIL,
  SMFIP_NORCPT,
  SMFIP_NR_BODY,
  SMFIP_NR_CONN,
  SMFIP_NR_HDR,
  SMFIP_NR_HELO,
  SMFIP_NR_RCPT,
  SMFIP_RCPT_REJ,
} from '../../../src/protocol/constants.js';
import { FakeMta } from './fake-context.js';

const maxTwo = (): ShutdownPolicy =>
  createShutdownPolicy({ dryRun: false, rules: [{ name: 'm', limit: { kind: 'max-messages', max: 2 } }] });

test('the user’s noReply for the firing stages is removed; its decisions there are ignored (NR semantics)', async () => {
  const user: Filter = {
    noReply: ['envfrom', 'helo', 'header', 'connect'],
    connect: () => undefined,
    // Declared "no reply" but returns reject: libmilter would ignore it, so must the wrapper.
    envfrom: () => Decision.reject(),
    header: () => undefined,
  };
  const wrapped = withShutdownPolicy(user, maxTwo());
  assert.deepEqual([...(wrapped.noReply ?? [])].sort(), ['connect', 'header']);
  for (const stage of ['helo', 'envfrom', 'envrcpt', 'data', 'unknown', 'eom', 'abort', 'close'] as const) {
    assert.equal(typeof wrapped[stage], 'function', `${stage} is defined`);
  }
  assert.equal(wrapped.rejectedRecipients, true);
  const mta = new FakeMta(wrapped);
  await mta.connect();
  assert.equal((await mta.message()).final, 'continue');
  assert.equal((await mta.message()).final, 'continue');
  assert.equal((await mta.message()).final, '421', 'the shutdown still fires at MAIL');
});

test('stages added only to watch get NR; actions stay as the user would have negotiated', () => {
  const bare = withShutdownPolicy({}, maxTwo());
  assert.deepEqual(bare.noReply, ['connect']);
  assert.deepEqual(bare.actions, [], 'no eom in the user filter: request no actions');
  const withEom = withShutdownPolicy({ eom: () => undefined }, maxTwo());
  assert.equal(withEom.actions, undefined, 'user eom: default actions, as before');
  const explicit = withShutdownPolicy({ actions: ['addHeader'] }, maxTwo());
  assert.deepEqual(explicit.actions, ['addHeader']);
});

test('macro lists: the policy’s macros are added only to lists the user requested', () => {
  const none = withShutdownPolicy({}, maxTwo());
  assert.equal(none.macros, undefined, 'MTA defaults already carry {auth_authen} and {rcpt_mailer}');
  const some = withShutdownPolicy({ macros: { envfrom: ['i'], envrcpt: [], connect: ['j'] } }, maxTwo());
  assert.deepEqual(some.macros, { envfrom: ['i', '{auth_authen}'], envrcpt: [], connect: ['j'] });
});

test('a user negotiate callback is rewritten: firing stages sent and replied, RCPT_REJ when offered', async () => {
  const asked = SMFIP_NOMAIL | SMFIP_NR_RCPT | SMFIP_NR_HELO | SMFIP_NOCONNECT | SMFIP_NOHDRS | SMFIP_NOBODY;
  let envfromCalls = 0;
  const user: Filter = {
    negotiate: () => ({ actions: 0, protocol: asked, macros: { envrcpt: ['{rcpt_addr}'] } }),
    envfrom: () => void envfromCalls++,
    envrcpt: () => Decision.reject(), // NR_RCPT: must be ignored
  };
  const policy = new ShutdownPolicy({ trackBytes: true });
  const wrapped = withShutdownPolicy(user, policy);
  const mta = new FakeMta(wrapped);
  const offer = { version: 6, actions: 0x1ff, protocol: 0x1fffff };
  const r = await wrapped.negotiate?.(mta.ctx, offer);
  assert.ok(r);
  const p = r.protocol;
  for (const [bit, name] of [
    [SMFIP_NOMAIL, 'NOMAIL'],
    [SMFIP_NR_RCPT, 'NR_RCPT'],
    [SMFIP_NR_HELO, 'NR_HELO'],
    [SMFIP_NOCONNECT, 'NOCONNECT'],
    [SMFIP_NOHDRS, 'NOHDRS'],
    [SMFIP_NOBODY, 'NOBODY'],
    [SMFIP_NORCPT, 'NORCPT'],
  ] as const) {
    assert.equal(p & bit, 0, `${name} cleared`);
  }
  for (const [bit, name] of [
    [SMFIP_NR_CONN, 'NR_CONN'],
    [SMFIP_NR_HDR, 'NR_HDR'],
    [SMFIP_NR_BODY, 'NR_BODY'],
    [SMFIP_RCPT_REJ, 'RCPT_REJ'],
  ] as const) {
    assert.notEqual(p & bit, 0, `${name} set`);
  }
  assert.deepEqual(r.macros, { envrcpt: ['{rcpt_addr}', '{rcpt_mailer}'] });
  const noRej = await wrapped.negotiate?.(mta.ctx, { ...offer, protocol: 0x1fffff & ~SMFIP_RCPT_REJ });
  assert.equal((noRej?.protocol ?? 0) & SMFIP_RCPT_REJ, 0, 'never ask for what was not offered');
  await mta.connect();
  const m = await mta.message();
  assert.equal(m.final, 'continue', 'the NR_RCPT reject of the user is ignored');
  assert.equal(envfromCalls, 0, 'the user negotiated NOMAIL: its envfrom is not called');
});

test('a user negotiate that refuses the MTA is passed through', async () => {
  const wrapped = withShutdownPolicy({ negotiate: () => undefined as never }, maxTwo());
  const mta = new FakeMta(wrapped);
  assert.equal(
    await wrapped.negotiate?.(mta.ctx, { version: 6, actions: 0x1ff, protocol: 0x1fffff }),
    undefined,
  );
});

test('ACCEPT at MAIL is sent as CONTINUE, the user is not called again for that message, it counts', async () => {
  const policy = maxTwo();
  let rcptCalls = 0;
  let eomCalls = 0;
  const user: Filter = {
    envfrom: (_c, s) => (s === '<trusted@x.test>' ? Decision.accept : undefined),
    envrcpt: () => void rcptCalls++,
    eom: () => void eomCalls++,
  };
  const mta = new FakeMta(withShutdownPolicy(user, policy));
  await mta.connect();
  const m1 = await mta.message({ from: '<trusted@x.test>' });
  assert.deepEqual(m1.stages[0], ['envfrom', 'continue']);
  assert.equal(m1.final, 'continue');
  assert.deepEqual([rcptCalls, eomCalls], [0, 0]);
  await mta.message({ from: '<other@x.test>' });
  assert.deepEqual([rcptCalls, eomCalls], [1, 1], 'the next message is the user’s again');
  assert.equal((await mta.message()).final, '421', 'the accepted message counted');
});

test('ACCEPT at CONNECT: sent as CONTINUE, only close reaches the user, the policy keeps watching', async () => {
  const calls: string[] = [];
  const user: Filter = {
    connect: () => Decision.accept,
    helo: () => void calls.push('helo'),
    envfrom: () => void calls.push('envfrom'),
    abort: () => void calls.push('abort'),
    close: () => void calls.push('close'),
  };
  const mta = new FakeMta(withShutdownPolicy(user, maxTwo()));
  assert.equal(await mta.connect(), 'continue');
  await mta.helo();
  await mta.message();
  await mta.message({ abortAfterRcpt: true });
  await mta.message();
  assert.equal((await mta.message()).final, '421');
  await mta.close();
  assert.deepEqual(calls, ['close']);
});

test('the user’s priv is untouched and close always reaches the user', async () => {
  const user: Filter<{ n: number }> = {
    connect: (ctx) => void (ctx.priv = { n: 1 }),
    eom: (ctx) => {
      if (ctx.priv) ctx.priv.n++;
    },
    close: (ctx) => assert.deepEqual(ctx.priv, { n: 2 }),
  };
  const mta = new FakeMta(withShutdownPolicy(user, maxTwo()));
  await mta.connect();
  await mta.message();
  await mta.close();
});

test('close without connect (negotiation failed) is harmless', async () => {
  let closed = 0;
  const mta = new FakeMta(withShutdownPolicy({ close: () => void closed++ }, maxTwo()));
  await mta.close();
  assert.equal(closed, 1);
});
