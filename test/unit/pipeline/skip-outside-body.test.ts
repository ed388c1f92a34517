/**
 * `skip` is a body decision only. Where a body decision can reach another stage (a pipeline's answer, an
 * upstream milter's reply) one mapping, `outsideBody` (session/decision.ts), answers it as continue:
 * silently, not as an illegal skip the session would turn into continue with a warning. Both places are
 * played through a real session (testFilter), the upstream over a real loopback socket.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import type { BodyDecision, Filter } from '../../../src/filter.js';
import { pipeline } from '../../../src/pipeline/index.js';
import { upstreamFilter } from '../../../src/pipeline/upstream.js';
import { SMFIP_SKIP } from '../../../src/protocol/constants.js';
import { outsideBody } from '../../../src/session/decision.js';
import { testFilter } from '../../../src/testing/index.js';
import { memoryLogger, type MemoryLog } from '../../helpers/logs.js';
import { startFakeFilter } from '../client/fake-filter.js';

const MESSAGE = {
  sender: '<alice@example.org>',
  recipients: ['<bob@example.net>'],
  headers: [['Subject', 'hello']] as Array<[string, string]>,
  body: 'Hi Bob.\r\n',
};

/** What the MTA read at each stage of the transcript, in order. */
function replies(t: Awaited<ReturnType<typeof testFilter>>): Array<[string, string[]]> {
  return t.steps
    .filter((s) => s.command.kind !== 'macro' && s.command.kind !== 'optneg' && s.command.kind !== 'quit')
    .map((s) => [s.command.kind, s.responses.map((r) => r.kind)]);
}

/** The session's warning for an illegal skip: it never saw one. */
function illegalSkipWarnings(log: MemoryLog): unknown[] {
  return log.lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('skip is only valid'));
}

test('outsideBody: skip (bare or as an object) is continue, every other decision passes as it is, a value stays synchronous', async () => {
  assert.equal(outsideBody('skip'), undefined);
  assert.equal(outsideBody({ kind: 'skip' }), undefined);
  assert.equal(outsideBody(undefined), undefined);
  for (const d of ['continue', 'accept', 'reject', 'tempfail', 'discard'] as const) {
    assert.equal(outsideBody(d), d);
  }
  const reply: BodyDecision = { kind: 'reject', reply: { code: 550, text: 'no' } };
  assert.equal(outsideBody(reply), reply);
  assert.equal(await outsideBody(Promise.resolve('skip')), undefined);
  assert.equal(await outsideBody(Promise.resolve('tempfail')), 'tempfail');
});

test('pipeline: a member answering skip outside the body (a JavaScript caller) is continue; the next member is still asked', async () => {
  const log = memoryLogger();
  const seen: string[] = [];
  // Typed filters cannot return skip here; JavaScript ones can.
  const skipper = {
    envrcpt: () => 'skip',
    header: () => 'skip',
    eoh: () => 'skip',
  } as unknown as Filter;
  const after: Filter = {
    envrcpt: () => void seen.push('envrcpt'),
    header: () => void seen.push('header'),
    eoh: () => void seen.push('eoh'),
    body: () => void seen.push('body'),
  };
  const t = await testFilter(
    pipeline([
      { name: 'skipper', filter: skipper },
      { name: 'after', filter: after },
    ]),
    { messages: [MESSAGE], session: { logger: log.logger } },
  );
  assert.deepEqual(replies(t), [
    ['rcpt', ['continue']],
    ['header', ['continue']],
    ['eoh', ['continue']],
    ['body', ['continue']],
    ['eom', ['continue']],
  ]);
  assert.deepEqual(seen, ['envrcpt', 'header', 'eoh', 'body']);
  assert.deepEqual(illegalSkipWarnings(log), []);
});

/** An upstream milter that answers SMFIR_SKIP to every command but EOM; closed after the test. */
async function skippingUpstream(t: TestContext): Promise<string> {
  const fake = await startFakeFilter(
    { kind: 'optneg', version: 6, actions: 0, protocol: 0 },
    (cmd, fallback) => {
      // Every step, a reply to each, and SKIP (when offered) for the body.
      if (cmd.kind === 'optneg') {
        return [{ kind: 'optneg', version: 6, actions: 0, protocol: cmd.protocol & SMFIP_SKIP }];
      }
      const own = cmd.kind === 'eom' || cmd.kind === 'quit' || cmd.kind === 'macro' || cmd.kind === 'abort';
      return own || cmd.kind === 'quitNewConnection' ? fallback() : [{ kind: 'skip' }];
    },
  );
  t.after(() => fake.close());
  return fake.spec;
}

test('upstream: a milter answering SMFIR_SKIP outside the body is continue to the MTA; at body its skip stays skip', async (t) => {
  const log = memoryLogger();
  const address = await skippingUpstream(t);
  const tr = await testFilter(upstreamFilter({ address, logger: log.logger }), {
    messages: [MESSAGE],
    session: { logger: log.logger },
  });
  assert.deepEqual(replies(tr), [
    ['connect', ['continue']],
    ['helo', ['continue']],
    ['mail', ['continue']],
    ['rcpt', ['continue']],
    ['data', ['continue']],
    ['header', ['continue']],
    ['eoh', ['continue']],
    ['body', ['skip']],
    ['eom', ['continue']],
  ]);
  assert.deepEqual(illegalSkipWarnings(log), []);
});
