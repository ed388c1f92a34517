/** encode → decode → deepEqual for every command and response kind, and the coded encode errors. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeCommand, decodeResponse } from '../../../src/protocol/decode.js';
import {
  encodeCommand,
  encodeCommands,
  encodeResponse,
  encodeResponses,
} from '../../../src/protocol/encode.js';
import { FrameDecoder } from '../../../src/protocol/frame.js';
import { isMilterError } from '../../../src/errors.js';
import type { Frame, MilterCommand, MilterResponse } from '../../../src/protocol/types.js';

const allCommands: MilterCommand[] = [
  { kind: 'optneg', version: 2, actions: 0, protocol: 0xffffffff },
  {
    kind: 'macro',
    stage: 'R',
    macros: [
      ['{rcpt_addr}', 'b@example.net'],
      ['i', ''],
    ],
  },
  { kind: 'macro', stage: 'U', macros: [] },
  { kind: 'connect', hostname: '[192.0.2.1]', family: 'inet', port: 65535, address: '192.0.2.1' },
  { kind: 'connect', hostname: 'h', family: 'inet6', port: 1, address: '::1' },
  { kind: 'connect', hostname: 'localhost', family: 'unix', port: 0, address: '/tmp/s' },
  { kind: 'connect', hostname: '', family: 'unknown', port: 0, address: '' },
  { kind: 'helo', hostname: 'mx' },
  { kind: 'mail', sender: '<>', args: [] },
  { kind: 'mail', sender: '<a@b>', args: ['SIZE=1', 'BODY=8BITMIME', ''] },
  { kind: 'rcpt', recipient: '<c@d>', args: ['NOTIFY=NEVER'] },
  { kind: 'data' },
  { kind: 'header', name: 'Subject', value: 'line1\n\tline2' },
  { kind: 'header', name: 'X-Empty', value: '' },
  { kind: 'eoh' },
  { kind: 'body', chunk: Buffer.from([0, 1, 2, 0, 255]) },
  { kind: 'body', chunk: Buffer.alloc(65535, 0x61) },
  { kind: 'eom', chunk: Buffer.alloc(0) },
  { kind: 'eom', chunk: Buffer.from('last chunk\r\n') },
  { kind: 'abort' },
  { kind: 'quit' },
  { kind: 'quitNewConnection' },
  { kind: 'unknown', line: 'XFOO bar' },
];

const allResponses: MilterResponse[] = [
  { kind: 'optneg', version: 6, actions: 0x1ff, protocol: 0x1fffff },
  {
    kind: 'optneg',
    version: 6,
    actions: 0x100,
    protocol: 0x400,
    macroLists: { 0: '{client_addr}', 2: 'i {auth_type}', 5: '', 6: '{msg_id}' },
  },
  { kind: 'accept' },
  { kind: 'continue' },
  { kind: 'reject' },
  { kind: 'tempfail' },
  { kind: 'discard' },
  { kind: 'skip' },
  { kind: 'shutdown' },
  { kind: 'progress' },
  { kind: 'connFail' },
  { kind: 'replyCode', text: '451 4.7.1 Try later' },
  { kind: 'addHeader', name: 'X-A', value: '' },
  { kind: 'insertHeader', index: 4294967295, name: 'X-I', value: 'v' },
  { kind: 'changeHeader', index: 2, name: 'Subject', value: 'new' },
  { kind: 'addRecipient', recipient: '<x@y>' },
  { kind: 'addRecipientWithArgs', recipient: '<x@y>' },
  { kind: 'addRecipientWithArgs', recipient: '<x@y>', args: 'NOTIFY=NEVER' },
  { kind: 'deleteRecipient', recipient: '<x@y>' },
  { kind: 'replaceBody', chunk: Buffer.alloc(0) },
  { kind: 'replaceBody', chunk: Buffer.alloc(65535, 0x62) },
  { kind: 'changeFrom', sender: '<n@m>' },
  { kind: 'changeFrom', sender: '<n@m>', args: 'SIZE=5' },
  { kind: 'quarantine', reason: 'hold' },
];

function frameOf(buf: Buffer): Frame {
  assert.equal(buf.readUInt32BE(0), buf.length - 4);
  return { command: buf[4] as number, payload: buf.subarray(5) };
}

test('every command kind round-trips', () => {
  for (const cmd of allCommands) assert.deepEqual(decodeCommand(frameOf(encodeCommand(cmd))), cmd, cmd.kind);
});

test('every response kind round-trips', () => {
  for (const r of allResponses) assert.deepEqual(decodeResponse(frameOf(encodeResponse(r))), r, r.kind);
});

test('encodeCommands/encodeResponses equal the concatenation of single encodings', () => {
  assert.deepEqual(encodeCommands(allCommands), Buffer.concat(allCommands.map((c) => encodeCommand(c))));
  assert.deepEqual(encodeResponses(allResponses), Buffer.concat(allResponses.map((r) => encodeResponse(r))));
  assert.equal(encodeResponses([]).length, 0);
});

test('a batch decodes back to the same list through the FrameDecoder', () => {
  const decoder = new FrameDecoder(65535);
  decoder.push(encodeResponses(allResponses));
  const out: MilterResponse[] = [];
  for (let f = decoder.next(); f !== undefined; f = decoder.next()) out.push(decodeResponse(f));
  assert.deepEqual(out, allResponses);
  assert.equal(decoder.bufferedBytes, 0);
});

test('REPLYCODE carries exactly one NUL', () => {
  const buf = encodeResponse({ kind: 'replyCode', text: '550 5.7.1 no' });
  assert.equal(buf.readUInt32BE(0), 1 + '550 5.7.1 no'.length + 1);
  assert.equal(buf.subarray(5).indexOf(0), buf.length - 6);
});

test('constant frames are preallocated and shared', () => {
  assert.equal(encodeResponse({ kind: 'continue' }), encodeResponse({ kind: 'continue' }));
  assert.equal(encodeCommand({ kind: 'abort' }), encodeCommand({ kind: 'abort' }));
});

function assertCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (err: unknown) => isMilterError(err) && err.code === code);
}

test('oversize chunks and NUL-containing strings are refused with ERR_MILTER_INVALID_ARGUMENT', () => {
  const big = Buffer.alloc(65536);
  assertCode(() => encodeResponse({ kind: 'replaceBody', chunk: big }), 'ERR_MILTER_INVALID_ARGUMENT');
  assertCode(() => encodeResponses([{ kind: 'replaceBody', chunk: big }]), 'ERR_MILTER_INVALID_ARGUMENT');
  assertCode(() => encodeCommand({ kind: 'body', chunk: big }), 'ERR_MILTER_INVALID_ARGUMENT');
  assertCode(
    () => encodeResponse({ kind: 'addHeader', name: 'a\0b', value: '' }),
    'ERR_MILTER_INVALID_ARGUMENT',
  );
  assertCode(() => encodeCommand({ kind: 'macro', stage: 'CC', macros: [] }), 'ERR_MILTER_INVALID_ARGUMENT');
  assertCode(
    () => encodeCommand({ kind: 'connect', hostname: 'h', family: 'inet', port: 70000, address: '1.2.3.4' }),
    'ERR_MILTER_INVALID_ARGUMENT',
  );
  assertCode(
    () => encodeResponse({ kind: 'insertHeader', index: -1, name: 'a', value: 'b' }),
    'ERR_MILTER_INVALID_ARGUMENT',
  );
});
