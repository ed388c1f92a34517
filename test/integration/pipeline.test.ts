/**
 * A three-member pipeline behind a real server socket: a Subject rewriter, a submission-only member and a
 * "signer" that hashes what it sees, checked byte for byte on the wire at end of message.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import type { Filter } from '../../src/filter.js';
import { silentLogger } from '../../src/logging/logger.js';
import { messageFilter } from '../../src/message/index.js';
import { parseMemberCondition, pipeline, type MemberEvent } from '../../src/pipeline/index.js';
import { encodeResponses } from '../../src/protocol/encode.js';
import type { MilterCommand, MilterResponse } from '../../src/protocol/types.js';
import { RawMta, endOfMessage, step } from '../helpers/raw-mta.js';
import { startServer } from '../helpers/server.js';

/** Hashes the headers and body it is given, and signs at EOM: it must see what the MTA will deliver. */
function signer(): Filter<unknown, { h: ReturnType<typeof createHash> }> {
  return {
    actions: ['addHeader'],
    envfrom(ctx) {
      ctx.messagePriv = { h: createHash('sha256') };
    },
    header(ctx, name, value) {
      ctx.messagePriv?.h.update(`${name.toLowerCase()}:${value}\r\n`);
    },
    body(ctx, chunk) {
      ctx.messagePriv?.h.update(chunk);
    },
    eom(ctx) {
      ctx.addHeader('X-Signature', ctx.messagePriv?.h.digest('hex') ?? 'none');
    },
  };
}

const expectedSignature = (headers: Array<[string, string]>, body: string): string => {
  const h = createHash('sha256');
  for (const [n, v] of headers) h.update(`${n.toLowerCase()}:${v}\r\n`);
  h.update(body);
  return h.digest('hex');
};

test('pipeline over a socket: later members see earlier changes, conditions follow {daemon_name}, EOM bytes are the minimal diff', async (t) => {
  const events: MemberEvent[] = [];
  const filter = pipeline(
    [
      {
        name: 'rewrite',
        filter: messageFilter({
          message(trx) {
            trx.headers.set('Subject', `[ext] ${trx.headers.get('Subject') ?? ''}`);
          },
        }),
      },
      {
        name: 'submission',
        filter: { actions: ['addHeader'], eom: (ctx) => ctx.addHeader('X-Submission', 'yes') },
        when: parseMemberCondition({ 'daemon-name': ['submission'] }, {}),
      },
      { name: 'sign', filter: signer() as Filter },
    ],
    { onMemberEvent: (e) => void events.push(e) },
  );
  const { address } = await startServer(t, { filter, logger: silentLogger });

  for (const daemon of ['smtpd', 'submission']) {
    const mta = await RawMta.connect(address);
    t.after(() => mta.destroy());
    const neg = await mta.negotiate();
    const sent: Array<
      MilterCommand & { kind: 'connect' | 'helo' | 'mail' | 'rcpt' | 'data' | 'header' | 'eoh' | 'body' }
    > = [
      { kind: 'connect', hostname: 'client.example', family: 'inet', port: 4567, address: '192.0.2.1' },
      { kind: 'helo', hostname: 'client.example' },
      { kind: 'mail', sender: '<a@example.org>', args: [] },
      { kind: 'rcpt', recipient: '<b@example.net>', args: [] },
      { kind: 'data' },
      { kind: 'header', name: 'From', value: 'a@example.org' },
      { kind: 'header', name: 'Subject', value: 'hello' },
      { kind: 'eoh' },
      { kind: 'body', chunk: Buffer.from('Body.\r\n') },
    ];
    mta.send({ kind: 'macro', stage: 'C', macros: [['{daemon_name}', daemon]] });
    for (const command of sent) {
      const reply = await step(mta, neg.protocol, command);
      assert.ok(
        reply === 'skipped' ||
          reply === 'noreply' ||
          (typeof reply === 'object' && reply.kind === 'continue'),
        `${command.kind}: ${JSON.stringify(reply)}`,
      );
    }
    let bytes = Buffer.alloc(0);
    mta.socket.on('data', (chunk: Buffer) => void (bytes = Buffer.concat([bytes, chunk])));
    const eom = await endOfMessage(mta);
    const signature = expectedSignature(
      [
        ['From', 'a@example.org'],
        ['Subject', '[ext] hello'],
        ...(daemon === 'submission' ? ([['X-Submission', 'yes']] as Array<[string, string]>) : []),
      ],
      'Body.\r\n',
    );
    const expected: MilterResponse[] = [
      { kind: 'changeHeader', index: 1, name: 'Subject', value: '[ext] hello' },
      ...(daemon === 'submission'
        ? [{ kind: 'addHeader' as const, name: 'X-Submission', value: 'yes' }]
        : []),
      { kind: 'addHeader', name: 'X-Signature', value: signature },
      { kind: 'continue' },
    ];
    assert.deepEqual([...eom.modifications, eom.final], expected);
    assert.ok(bytes.equals(encodeResponses(expected)), `${daemon}: EOM bytes are exactly the diff`);
    mta.send({ kind: 'quit' });
    await mta.closed;
  }
  const skipped = events.filter((e) => e.type === 'skipped').map((e) => [e.member, e.connectionId !== '']);
  assert.deepEqual(skipped, [['submission', true]]);
  const closes = events.filter((e) => e.type === 'decision' && e.stage === 'close').map((e) => e.member);
  assert.deepEqual(closes, ['rewrite', 'rewrite']);
});

test('pipeline over a socket: after QUIT_NC members start a fresh SMTP session on the same negotiation (close once each, priv reset)', async (t) => {
  const seen: string[] = [];
  const mk = (name: string): Filter<string> => ({
    actions: ['addHeader'],
    connect(ctx, info) {
      seen.push(`${name} connect ${info.hostname} priv=${String(ctx.priv)}`);
      ctx.priv = `${name}@${info.hostname}`;
    },
    eom(ctx) {
      ctx.addHeader(`X-${name}`, String(ctx.priv));
    },
    close(ctx) {
      seen.push(`${name} close priv=${String(ctx.priv)}`);
    },
  });
  const filter = pipeline([
    { name: 'a', filter: mk('a') as Filter },
    { name: 'b', filter: mk('b') as Filter },
  ]);
  const { address } = await startServer(t, { filter, logger: silentLogger });
  const mta = await RawMta.connect(address);
  t.after(() => mta.destroy());
  const neg = await mta.negotiate();
  for (const host of ['one.example', 'two.example']) {
    const commands: Array<MilterCommand & { kind: 'connect' | 'mail' | 'rcpt' }> = [
      { kind: 'connect', hostname: host, family: 'inet', port: 4567, address: '192.0.2.1' },
      { kind: 'mail', sender: '<a@example.org>', args: [] },
      { kind: 'rcpt', recipient: '<b@example.net>', args: [] },
    ];
    for (const c of commands) await step(mta, neg.protocol, c);
    const eom = await endOfMessage(mta);
    assert.deepEqual(eom.modifications, [
      { kind: 'addHeader', name: 'X-a', value: `a@${host}` },
      { kind: 'addHeader', name: 'X-b', value: `b@${host}` },
    ]);
    assert.deepEqual(eom.final, { kind: 'continue' });
    if (host === 'one.example') mta.send({ kind: 'quitNewConnection' });
  }
  mta.send({ kind: 'quit' });
  await mta.closed;
  assert.deepEqual(seen, [
    'a connect one.example priv=undefined',
    'b connect one.example priv=undefined',
    'a close priv=a@one.example',
    'b close priv=b@one.example',
    'a connect two.example priv=undefined',
    'b connect two.example priv=undefined',
    'a close priv=a@two.example',
    'b close priv=b@two.example',
  ]);
});
