/** Byte-exact examples of milter-protocol.md §13 and §3/§5, in both directions. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeCommand, decodeResponse } from '../../../src/protocol/decode.js';
import { encodeCommand, encodeResponse } from '../../../src/protocol/encode.js';
import type { Frame, MilterCommand, MilterResponse } from '../../../src/protocol/types.js';

/** Build bytes from a mix of hex byte groups and quoted ASCII strings, as §13 writes them. */
function bytes(...parts: Array<string | number[]>): Buffer {
  return Buffer.concat(
    parts.map((p) => (typeof p === 'string' ? Buffer.from(p.replace(/\s+/g, ''), 'hex') : Buffer.from(p))),
  );
}
const s = (text: string): number[] => [...Buffer.from(text, 'latin1')];

function frameOf(buf: Buffer): Frame {
  assert.equal(buf.readUInt32BE(0), buf.length - 4, 'length prefix');
  return { command: buf[4] as number, payload: buf.subarray(5) };
}

const commands: Array<[string, Buffer, MilterCommand]> = [
  [
    'OPTNEG v6',
    bytes('0000000d4f00000006000001ff001fffff'),
    { kind: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff },
  ],
  [
    'macros for connect',
    bytes('0000002444 43', s('j'), [0], s('mx.example.net'), [0], s('{daemon_name}'), [0], s('mx'), [0]),
    {
      kind: 'macro',
      stage: 'C',
      macros: [
        ['j', 'mx.example.net'],
        ['{daemon_name}', 'mx'],
      ],
    },
  ],
  [
    'CONNECT IPv4 port 25',
    bytes('0000001f43', s('mail.example.org'), [0], '340019', s('192.0.2.7'), [0]),
    { kind: 'connect', hostname: 'mail.example.org', family: 'inet', port: 25, address: '192.0.2.7' },
  ],
  [
    'CONNECT IPv6 Postfix style',
    bytes('0000001e43', s('[2001:db8::5]'), [0], '36a112', s('2001:db8::5'), [0]),
    { kind: 'connect', hostname: '[2001:db8::5]', family: 'inet6', port: 0xa112, address: '2001:db8::5' },
  ],
  [
    'CONNECT unknown family',
    bytes('0000000a43', s('unknown'), [0], '55'),
    { kind: 'connect', hostname: 'unknown', family: 'unknown', port: 0, address: '' },
  ],
  ['HELO', bytes('0000001048', s('client.example'), [0]), { kind: 'helo', hostname: 'client.example' }],
  [
    'MAIL with SIZE',
    bytes('0000001b4d', s('<a@example.org>'), [0], s('SIZE=1024'), [0]),
    { kind: 'mail', sender: '<a@example.org>', args: ['SIZE=1024'] },
  ],
  [
    'RCPT',
    bytes('0000001152', s('<b@example.net>'), [0]),
    { kind: 'rcpt', recipient: '<b@example.net>', args: [] },
  ],
  [
    'HEADER',
    bytes('0000000f4c', s('Subject'), [0], s('hello'), [0]),
    { kind: 'header', name: 'Subject', value: 'hello' },
  ],
  ['EOH', bytes('000000014e'), { kind: 'eoh' }],
  ['EOB', bytes('0000000145'), { kind: 'eom', chunk: Buffer.alloc(0) }],
  ['ABORT', bytes('0000000141'), { kind: 'abort' }],
  ['QUIT', bytes('0000000151'), { kind: 'quit' }],
  ['QUIT_NC', bytes('000000014b'), { kind: 'quitNewConnection' }],
  ['DATA', bytes('0000000154'), { kind: 'data' }],
  ['BODY hi', bytes('00000005426869 0d0a'), { kind: 'body', chunk: Buffer.from('hi\r\n') }],
];

const responses: Array<[string, Buffer, MilterResponse]> = [
  [
    'OPTNEG reply',
    bytes('0000000d4f000000060000001100001340'),
    { kind: 'optneg', version: 6, actions: 0x11, protocol: 0x1340 },
  ],
  [
    'OPTNEG reply with a macro list',
    bytes('0000002d4f 00000006 00000100 00000000 00000000', s('{client_addr} {client_port}'), [0]),
    {
      kind: 'optneg',
      version: 6,
      actions: 0x100,
      protocol: 0,
      macroLists: { 0: '{client_addr} {client_port}' },
    },
  ],
  ['CONTINUE', bytes('0000000163'), { kind: 'continue' }],
  ['ACCEPT', bytes('0000000161'), { kind: 'accept' }],
  ['REJECT', bytes('0000000172'), { kind: 'reject' }],
  ['TEMPFAIL', bytes('0000000174'), { kind: 'tempfail' }],
  ['DISCARD', bytes('0000000164'), { kind: 'discard' }],
  ['SKIP', bytes('0000000173'), { kind: 'skip' }],
  ['SHUTDOWN', bytes('0000000134'), { kind: 'shutdown' }],
  ['PROGRESS', bytes('0000000170'), { kind: 'progress' }],
  ['CONN_FAIL', bytes('0000000166'), { kind: 'connFail' }],
  [
    'REPLYCODE single line',
    bytes('0000001379', s('550 5.7.1 Blocked'), [0]),
    { kind: 'replyCode', text: '550 5.7.1 Blocked' },
  ],
  [
    'REPLYCODE two lines',
    bytes('0000002279', s('421-4.7.0 Closing'), '0d0a', s('421 4.7.0 Bye'), [0]),
    { kind: 'replyCode', text: '421-4.7.0 Closing\r\n421 4.7.0 Bye' },
  ],
  [
    'ADDHEADER',
    bytes('0000001368', s('X-Policy'), [0], s('shutdown'), [0]),
    { kind: 'addHeader', name: 'X-Policy', value: 'shutdown' },
  ],
  [
    'CHGHEADER delete first Subject',
    bytes('0000000e6d00000001', s('Subject'), [0], [0]),
    { kind: 'changeHeader', index: 1, name: 'Subject', value: '' },
  ],
  [
    'INSHEADER at top',
    bytes('0000000f6900000000', s('X-First'), [0], s('v'), [0]),
    { kind: 'insertHeader', index: 0, name: 'X-First', value: 'v' },
  ],
  [
    'CHGFROM with args',
    bytes('0000002165', s('<new@example.org>'), [0], s('BODY=8BITMIME'), [0]),
    { kind: 'changeFrom', sender: '<new@example.org>', args: 'BODY=8BITMIME' },
  ],
  ['QUARANTINE', bytes('0000000d71', s('policy hold'), [0]), { kind: 'quarantine', reason: 'policy hold' }],
];

for (const [name, wire, value] of commands) {
  test(`command ${name}: encodes byte-exact and decodes back`, () => {
    assert.deepEqual(encodeCommand(value), wire);
    assert.deepEqual(decodeCommand(frameOf(wire)), value);
  });
}
for (const [name, wire, value] of responses) {
  test(`response ${name}: encodes byte-exact and decodes back`, () => {
    assert.deepEqual(encodeResponse(value), wire);
    assert.deepEqual(decodeResponse(frameOf(wire)), value);
  });
}

test('CONNECT: Sendmail IPv6 tag is stripped, case-insensitively, compressed or expanded', () => {
  for (const text of ['IPv6:2001:db8::5', 'ipv6:2001:db8::5', 'IPV6:2001:db8:0:0:0:0:0:5']) {
    const payload = bytes(s('h'), [0], '360019', s(text), [0]);
    const cmd = decodeCommand({ command: 0x43, payload });
    assert.deepEqual(cmd, {
      kind: 'connect',
      hostname: 'h',
      family: 'inet6',
      port: 25,
      address: text.slice(5),
    });
  }
});

test('CONNECT: Unix socket family keeps its path and port 0', () => {
  const payload = bytes(s('localhost'), [0], '4c0000', s('/run/smtp.sock'), [0]);
  assert.deepEqual(decodeCommand({ command: 0x43, payload }), {
    kind: 'connect',
    hostname: 'localhost',
    family: 'unix',
    port: 0,
    address: '/run/smtp.sock',
  });
});

test('HEADER with an empty value is two strings (Name\\0\\0)', () => {
  const payload = bytes(s('X-Empty'), [0], [0]);
  assert.deepEqual(decodeCommand({ command: 0x4c, payload }), { kind: 'header', name: 'X-Empty', value: '' });
});

test('MACRO with zero pairs is legal', () => {
  assert.deepEqual(decodeCommand({ command: 0x44, payload: Buffer.from('L') }), {
    kind: 'macro',
    stage: 'L',
    macros: [],
  });
});

test('OPTNEG longer than 12 bytes: extra bytes are ignored', () => {
  const payload = bytes('00000006 000001ff 001fffff deadbeef');
  assert.deepEqual(decodeCommand({ command: 0x4f, payload }), {
    kind: 'optneg',
    version: 6,
    actions: 0x1ff,
    protocol: 0x1fffff,
  });
});

test('strings are UTF-8 both ways', () => {
  const cmd: MilterCommand = { kind: 'rcpt', recipient: '<jörg@exämple.org>', args: ['ORCPT=rfc822;ü'] };
  assert.deepEqual(decodeCommand(frameOf(encodeCommand(cmd))), cmd);
});

test('body and replace-body chunks are views into the frame, not copies', () => {
  const payload = Buffer.from('body bytes');
  const body = decodeCommand({ command: 0x42, payload });
  assert.equal(body.kind, 'body');
  if (body.kind === 'body') assert.equal(body.chunk.buffer, payload.buffer);
  const repl = decodeResponse({ command: 0x62, payload });
  assert.equal(repl.kind, 'replaceBody');
  if (repl.kind === 'replaceBody') assert.equal(repl.chunk.buffer, payload.buffer);
});
