import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatReply, replyDecisionOf } from '../../../src/session/reply.js';
import { MacroStore } from '../../../src/session/macros.js';
import { isMilterError } from '../../../src/errors.js';
import { State, skippableStates, transitionAllowed } from '../../../src/session/stages.js';
import { SMFIP_NOHELO, SMFIP_NOMAIL, SMFIP_NORCPT } from '../../../src/protocol/constants.js';

const invalidReply = (err: unknown): boolean => isMilterError(err, 'ERR_MILTER_INVALID_REPLY');

test('formatReply: valid replies', () => {
  const rows: Array<[Parameters<typeof formatReply>[0], 'reject' | 'tempfail', string]> = [
    [{ code: 550, xcode: '5.7.1', text: 'Blocked' }, 'reject', '550 5.7.1 Blocked'],
    [{ code: '451', text: 'later' }, 'tempfail', '451 later'],
    [{ code: 550 }, 'reject', '550 '],
    [{ code: 550, xcode: '5.7.1' }, 'reject', '550 5.7.1'],
    [{ code: 550, text: '100% spam' }, 'reject', '550 100%% spam'],
    [
      { code: 421, xcode: '4.7.0', text: ['Closing', 'Bye'] },
      'tempfail',
      '421-4.7.0 Closing\r\n421 4.7.0 Bye',
    ],
    [{ code: 550, text: ['a', 'b%', 'c'] }, 'reject', '550-5.0.0 a\r\n550-5.0.0 b%%\r\n550 5.0.0 c'],
    [{ code: 450, text: ['only'] }, 'tempfail', '450 4.0.0 only'],
  ];
  for (const [reply, decision, expected] of rows) assert.equal(formatReply(reply, decision), expected);
});

test('formatReply: malformed replies throw ERR_MILTER_INVALID_REPLY', () => {
  const rows: Array<[Parameters<typeof formatReply>[0], 'reject' | 'tempfail']> = [
    [{ code: 450 }, 'reject'], // class mismatch
    [{ code: 550 }, 'tempfail'],
    [{ code: 250 }, 'reject'],
    [{ code: '55' }, 'reject'],
    [{ code: '5500' }, 'reject'],
    [{ code: 550, xcode: '4.7.1' }, 'reject'], // xcode class mismatch
    [{ code: 550, xcode: '5.7' }, 'reject'],
    [{ code: 550, text: 'a\r\nb' }, 'reject'],
    [{ code: 550, text: ['ok', 'bad\nline'] }, 'reject'],
    [{ code: 550, text: [] }, 'reject'],
    [{ code: 550, text: new Array<string>(33).fill('x') }, 'reject'],
    [{ code: 550, text: 'x'.repeat(981) }, 'reject'],
    // 600 bytes as given, 1,200 once every % is doubled for Sendmail: counted as sent.
    [{ code: 550, text: '%'.repeat(600) }, 'reject'],
    [{ code: 550, text: ['ok', '%'.repeat(491)] }, 'reject'],
  ];
  for (const [reply, decision] of rows) assert.throws(() => formatReply(reply, decision), invalidReply);
  assert.equal(
    formatReply({ code: 550, text: new Array<string>(32).fill('x') }, 'reject').split('\r\n').length,
    32,
  );
  assert.equal(formatReply({ code: 550, text: 'x'.repeat(980) }, 'reject').length, 984);
  assert.equal(formatReply({ code: 550, text: '%'.repeat(490) }, 'reject').length, 984);
  assert.equal(replyDecisionOf(421), 'tempfail');
  assert.equal(replyDecisionOf('554'), 'reject');
});

test('macros: stage slots, clearing, lookup order and name forms', () => {
  const m = new MacroStore();
  m.define('C', [
    ['j', 'mx.example.net'],
    ['{daemon_name}', 'mx'],
    ['{client_addr}', '192.0.2.7'],
  ]);
  m.define('M', [['{i}', 'QID1']]);
  assert.equal(m.get('j'), 'mx.example.net');
  assert.equal(m.get('{j}'), 'mx.example.net');
  assert.equal(m.get('i'), 'QID1');
  assert.equal(m.get('{i}'), 'QID1');
  assert.equal(m.get('client_addr'), '192.0.2.7');
  assert.equal(m.get('{client_addr}'), '192.0.2.7');
  assert.equal(m.get('missing'), undefined);
  // Latest stage shadows earlier ones.
  m.define('R', [['j', 'rcpt-j']]);
  assert.equal(m.get('j'), 'rcpt-j');
  // L/B/U and zero-pair packets are ignored.
  m.define('L', [['j', 'header']]);
  m.define('B', [['j', 'body']]);
  m.define('U', [['j', 'unknown']]);
  m.define('R', []);
  assert.equal(m.get('j'), 'rcpt-j');
  // A new D for a stage replaces the slot entirely.
  m.define('M', [['{mail_addr}', 'a@example.org']]);
  assert.equal(m.get('i'), undefined);
  assert.deepEqual(m.all(), {
    j: 'rcpt-j',
    '{daemon_name}': 'mx',
    '{client_addr}': '192.0.2.7',
    '{mail_addr}': 'a@example.org',
  });
  // MAIL clears RCPT onwards; CONNECT clears HELO onwards.
  m.define('T', [['x', '1']]);
  m.clearAfter('M');
  assert.equal(m.get('j'), 'mx.example.net');
  assert.equal(m.get('x'), undefined);
  assert.equal(m.get('mail_addr'), 'a@example.org');
  m.clearAfter('C');
  assert.equal(m.get('mail_addr'), undefined);
  assert.equal(m.get('daemon_name'), 'mx');
  m.clear();
  assert.deepEqual(m.all(), {});
  m.define('C', [['__proto__', 'x']]);
  assert.equal(Object.getPrototypeOf(m.all()), Object.prototype);
});

test('stages: libmilter transitions and skippable stages', () => {
  const rows: Array<[State, State, number, boolean]> = [
    [State.INIT, State.OPTS, 0, true],
    [State.OPTS, State.CONN, 0, true],
    [State.OPTS, State.HELO, 0, false],
    [State.CONN, State.MAIL, 0, true],
    [State.HELO, State.RCPT, 0, false],
    [State.HELO, State.RCPT, skippableStates(SMFIP_NOMAIL), true],
    [State.MAIL, State.DATA, skippableStates(SMFIP_NORCPT), true],
    [State.CONN, State.RCPT, skippableStates(SMFIP_NOHELO | SMFIP_NOMAIL), true],
    [State.RCPT, State.ENDM, 0, true],
    [State.DATA, State.ENDM, 0, false],
    [State.ENDM, State.MAIL, 0, true],
    [State.ENDM, State.ABRT, 0, false],
    [State.ENDM, State.HELO, 0, false],
    [State.ABRT, State.MAIL, 0, false],
    [State.UNKN, State.MAIL, 0, true],
    [State.UNKN, State.HDRS, 0, false],
    [State.Q_NC, State.CONN, 0, true],
    [State.QUIT, State.CONN, 0, false],
  ];
  for (const [from, to, skip, ok] of rows)
    assert.equal(transitionAllowed(from, to, skip), ok, `${from}->${to}`);
});
