/** Malformed and unknown frames give the coded MilterProtocolError libmilter-style validation implies. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeCommand, decodeResponse } from '../../../src/protocol/decode.js';
import { MilterProtocolError } from '../../../src/errors.js';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof MilterProtocolError, 'MilterProtocolError expected');
    return err.code;
  }
  assert.fail('expected a throw');
}
const cmd = (command: string, hex: string) => () =>
  decodeCommand({ command: command.charCodeAt(0), payload: Buffer.from(hex, 'hex') });
const rsp = (command: string, hex: string) => () =>
  decodeResponse({ command: command.charCodeAt(0), payload: Buffer.from(hex, 'hex') });
const str = (text: string): string => Buffer.from(text).toString('hex');

test('unknown command and response bytes', () => {
  assert.equal(code(cmd('Z', '')), 'ERR_MILTER_UNKNOWN_COMMAND');
  assert.equal(code(cmd('c', '')), 'ERR_MILTER_UNKNOWN_COMMAND');
  assert.equal(code(rsp('Z', '')), 'ERR_MILTER_UNKNOWN_RESPONSE');
  assert.equal(code(rsp('l', '')), 'ERR_MILTER_UNKNOWN_RESPONSE');
  assert.equal(code(rsp('C', '')), 'ERR_MILTER_UNKNOWN_RESPONSE');
});

test('payload required for D B C H L M O R U', () => {
  for (const c of 'DBCHLMORU') assert.equal(code(cmd(c, '')), 'ERR_MILTER_MALFORMED_PAYLOAD', c);
});

test('payload-less commands ignore stray data like libmilter', () => {
  assert.deepEqual(cmd('A', '00')(), { kind: 'abort' });
  assert.deepEqual(cmd('T', 'ff')(), { kind: 'data' });
});

test('malformed command payloads', () => {
  const M = 'ERR_MILTER_MALFORMED_PAYLOAD';
  assert.equal(code(cmd('O', '00000006000001ff001fff')), M, 'optneg 11 bytes');
  assert.equal(code(cmd('H', '00')), M, 'empty helo');
  assert.equal(code(cmd('H', str('mx'))), M, 'unterminated helo');
  assert.equal(code(cmd('L', str('Subject') + '00')), M, 'header with one string');
  assert.equal(code(cmd('L', str('A') + '00' + str('b') + '00' + '00')), M, 'header with three strings');
  assert.equal(code(cmd('M', str('<a@b>'))), M, 'unterminated mail');
  assert.equal(code(cmd('D', str('C') + str('j') + '00')), M, 'macro with a name and no value');
  assert.equal(code(cmd('C', str('host'))), M, 'connect without terminator');
  assert.equal(code(cmd('C', str('host') + '00')), M, 'connect without family');
  assert.equal(code(cmd('C', str('host') + '00' + '58')), M, 'connect with family X');
  assert.equal(code(cmd('C', str('host') + '00' + '340019')), M, 'inet without address');
  assert.equal(code(cmd('C', str('host') + '00' + '340019' + str('1.2.3.4'))), M, 'address unterminated');
  assert.equal(code(cmd('C', str('host') + '00' + '340019' + str('1.2.3') + '00')), M, 'bad IPv4');
  assert.equal(code(cmd('C', str('host') + '00' + '360019' + str('IPv6:zz::1') + '00')), M, 'bad IPv6');
  assert.equal(
    code(cmd('C', str('host') + '00' + '340019' + str('::1') + '00')),
    M,
    'IPv6 text with family 4',
  );
});

test('responses without payload that carry data', () => {
  for (const c of 'acdrtsp4f') assert.equal(code(rsp(c, '00')), 'ERR_MILTER_MALFORMED_PAYLOAD', c);
});

test('malformed response payloads', () => {
  const M = 'ERR_MILTER_MALFORMED_PAYLOAD';
  assert.equal(code(rsp('O', '000000060000')), M, 'short optneg');
  assert.equal(code(rsp('O', '000000060000000000000000' + '000000')), M, 'truncated macro list');
  assert.equal(code(rsp('O', '000000060000000000000000' + '00000000' + str('i'))), M, 'unterminated list');
  assert.equal(code(rsp('y', str('550 x'))), M, 'unterminated reply');
  assert.equal(code(rsp('y', str('550 x') + '0000')), M, 'reply with two NULs');
  assert.equal(code(rsp('h', str('X') + '00')), M, 'addheader one string');
  assert.equal(code(rsp('i', '000000')), M, 'insheader without full index');
  assert.equal(code(rsp('m', '00000001' + str('X') + '00')), M, 'chgheader without value');
  assert.equal(code(rsp('+', '')), M, 'addrcpt empty');
  assert.equal(code(rsp('+', str('a') + '00' + str('b') + '00')), M, 'addrcpt two strings');
  assert.equal(code(rsp('2', '')), M, 'addrcpt_par empty');
  assert.equal(
    code(rsp('e', str('a') + '00' + str('b') + '00' + str('c') + '00')),
    M,
    'chgfrom three strings',
  );
  assert.equal(code(rsp('q', '')), M, 'quarantine empty');
});

test('unknown macro list stage numbers in an OPTNEG reply are ignored', () => {
  const payload =
    '00000006' + '00000100' + '00000000' + '00000009' + str('x') + '00' + '00000001' + str('y') + '00';
  assert.deepEqual(rsp('O', payload)(), {
    kind: 'optneg',
    version: 6,
    actions: 0x100,
    protocol: 0,
    macroLists: { 1: 'y' },
  });
});
