/** wrapFilter: the one way milterd wraps a filter, checked through a real session (testFilter). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Decision, type Filter } from '../../../src/filter.js';
import { testFilter, type TestMessage } from '../../../src/testing/index.js';
import { wrapFilter } from '../../../src/wrap-filter.js';

const message: TestMessage = {
  sender: '<a@example.org>',
  recipients: ['<b@example.net>'],
  headers: [['Subject', 'hi']],
  body: 'hello\r\n',
};

interface Priv {
  connections: number;
}
interface MessagePriv {
  sender: string;
}

/** A filter that keeps state in priv and messagePriv and decides from it at EOM. */
function statefulFilter(): Filter<Priv, MessagePriv> {
  return {
    actions: ['addHeader'],
    noReply: ['header'],
    connect(ctx) {
      ctx.priv = { connections: 1 };
    },
    envfrom(ctx, sender) {
      ctx.messagePriv = { sender };
    },
    header() {},
    eom(ctx) {
      ctx.addHeader('X-Seen', `${ctx.priv?.connections ?? 0} ${ctx.messagePriv?.sender ?? 'none'}`);
      return Decision.accept;
    },
  };
}

test('a bare wrap negotiates and behaves exactly like the inner filter; priv and messagePriv are its own', async () => {
  const plain = await testFilter(statefulFilter(), { messages: [message, message] });
  const wrapped = await testFilter(wrapFilter(statefulFilter()), { messages: [message, message] });
  assert.deepEqual(
    wrapped.negotiated,
    plain.negotiated,
    'same OPTNEG reply (fields and callbacks passed through)',
  );
  assert.deepEqual(wrapped.decisions, plain.decisions);
  assert.deepEqual(
    wrapped.messages.map((m) => m.eom?.modifications),
    [
      [{ kind: 'addHeader', name: 'X-Seen', value: '1 <a@example.org>' }],
      [{ kind: 'addHeader', name: 'X-Seen', value: '1 <a@example.org>' }],
    ],
  );
  const w = wrapFilter(statefulFilter());
  for (const absent of ['helo', 'envrcpt', 'data', 'unknown', 'eoh', 'body', 'abort', 'close'] as const)
    assert.equal(
      w[absent],
      undefined,
      `${absent}: absent in the inner, absent in the wrapper (negotiated away)`,
    );
});

test('hooks: replaced fields, own callbacks, around() sees every forwarded call with the session context', async () => {
  const seen: string[] = [];
  const inner = statefulFilter();
  const wrapped = wrapFilter(inner, {
    fields: { noReply: [] },
    callbacks: {
      // The wrapper's own helo, though the inner has none: HELO is now sent and answered.
      helo: (_ctx, hostname) => (hostname === 'bad.example' ? Decision.reject() : undefined),
    },
    around(name, ctx, _args, call) {
      seen.push(`${name}:${ctx.id}`);
      return call();
    },
  });
  assert.equal(wrapped.noReply?.length, 0);
  assert.deepEqual(wrapped.actions, ['addHeader'], 'the other fields pass through');
  const t = await testFilter(wrapped, { helo: 'bad.example', messages: [message] });
  assert.deepEqual(t.helo, { kind: 'reject' });
  assert.deepEqual(t.messages, [], 'a reject at HELO ends the conversation');
  assert.deepEqual(seen, ['connect:test-1']);
  const ok = await testFilter(wrapped, { messages: [message] });
  assert.deepEqual(ok.messages[0]?.headers, [{ kind: 'continue' }], 'header is replied to: noReply replaced');
  assert.deepEqual(seen.slice(1), ['connect:test-1', 'envfrom:test-1', 'header:test-1', 'eom:test-1']);
});

test('a live inner: fields and callbacks follow the current filter, calls go to target()', async () => {
  let current: Filter = { envfrom: () => Decision.reject() };
  const other: Filter = { envfrom: () => Decision.tempfail() };
  const wrapped = wrapFilter(() => current, { target: (name) => (name === 'envfrom' ? other : current) });
  assert.equal(typeof wrapped.header, 'undefined');
  const first = await testFilter(wrapped, { messages: [message] });
  assert.equal(first.messages[0]?.stoppedAt, 'envfrom');
  assert.deepEqual(first.messages[0]?.envfrom, { kind: 'tempfail' }, 'target() chose the filter that ran');
  current = { header: () => Decision.discard };
  assert.equal(typeof wrapped.envfrom, 'undefined', 'the current filter has no envfrom any more');
  const second = await testFilter(wrapped, { messages: [message] });
  assert.deepEqual(second.messages[0]?.envfrom, { kind: 'skipped' });
  assert.equal(second.messages[0]?.stoppedAt, 'header');
});
