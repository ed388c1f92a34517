/** Macro packets kept packed (the server's path) decode exactly like decodeCommand and fail the same way. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MilterProtocolError } from '../../../src/errors.js';
import { decodeCommand } from '../../../src/protocol/decode.js';
import { encodeCommand } from '../../../src/protocol/encode.js';
import { PackedMacros } from '../../../src/protocol/packed-macros.js';
import { SMFIC_MACRO } from '../../../src/protocol/constants.js';
import { MacroStore } from '../../../src/session/macros.js';

/** The payload of a `D` frame (without the length and command byte). */
function payloadOf(stage: string, macros: Array<[string, string]>): Buffer {
  return encodeCommand({ kind: 'macro', stage, macros }).subarray(5);
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof MilterProtocolError);
    return err.code;
  }
  assert.fail('expected a throw');
}

const POSTFIX_CONNECT: Array<[string, string]> = [
  ['j', 'mx.example.net'],
  ['{daemon_name}', 'mx'],
  ['{client_name}', 'müller.example.org'], // non-ASCII: must come back as the same UTF-8 text
  ['{client_addr}', '192.0.2.1'],
  ['_', ''],
];

test('packed pairs equal what decodeCommand decodes, UTF-8 and empty values included', () => {
  const payload = payloadOf('C', POSTFIX_CONNECT);
  const packed = PackedMacros.fromPayload(payload);
  assert.equal(packed.stage, 'C');
  assert.equal(packed.kind, 'macro');
  assert.equal(packed.empty, false);
  const eager = decodeCommand({ command: SMFIC_MACRO, payload });
  assert.deepEqual(eager, { kind: 'macro', stage: 'C', macros: POSTFIX_CONNECT });
  assert.deepEqual(packed.pairs(), POSTFIX_CONNECT);
  assert.equal(packed.pairs(), packed.pairs(), 'decoded once, then cached');
});

test('the packet is copied: the read buffer it came from may be overwritten at once', () => {
  const payload = payloadOf('M', [['{mail_addr}', 'a@example.org']]);
  const packed = PackedMacros.fromPayload(payload);
  payload.fill(0x41);
  assert.deepEqual(packed.pairs(), [['{mail_addr}', 'a@example.org']]);
});

test('a stage letter alone is an empty packet, and the store keeps the stage slot it had', () => {
  const store = new MacroStore();
  store.define('M', PackedMacros.fromPayload(payloadOf('M', [['i', 'Q1']])));
  const empty = PackedMacros.fromPayload(Buffer.from('M'));
  assert.equal(empty.empty, true);
  assert.deepEqual(empty.pairs(), []);
  store.define('M', empty);
  assert.equal(store.get('i'), 'Q1');
  assert.deepEqual(store.all(), { i: 'Q1' });
});

test('malformed packets are refused like decodeCommand refuses them', () => {
  const cases: Array<[string, Buffer]> = [
    ['empty payload', Buffer.alloc(0)],
    ['unterminated value', Buffer.from('Cj\0mx')],
    ['odd number of strings', Buffer.from('Cj\0mx\0i\0')],
  ];
  for (const [what, payload] of cases) {
    assert.equal(
      codeOf(() => PackedMacros.fromPayload(payload)),
      'ERR_MILTER_MALFORMED_PAYLOAD',
      what,
    );
    assert.equal(
      codeOf(() => decodeCommand({ command: SMFIC_MACRO, payload })),
      'ERR_MILTER_MALFORMED_PAYLOAD',
      what,
    );
  }
});
