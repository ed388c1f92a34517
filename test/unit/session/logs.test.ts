/** What the session logs: each command at trace (macros included), each decision at debug, state names. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createSession } from '../../../src/session/session.js';
import { C, memoryLogger, recordingFilter } from './helpers.js';

test('trace: one line per command with its macros; debug: one line per decision; dropped commands name states', async () => {
  const { logger, lines } = memoryLogger('trace');
  const session = createSession(
    { id: 'c1', filter: recordingFilter([], {}), logger, callbackTimeoutMs: 0 },
    { sendNow() {} },
  );
  for (const cmd of [
    C.optneg(),
    C.macro('C', ['j', 'mx.example'], ['{client_addr}', '192.0.2.7']),
    C.connect(),
    C.mail(),
    C.eoh(), // out of sequence after MAIL (no RCPT): dropped
    C.body('abc\r\n'),
  ]) {
    await session.handle(cmd);
  }
  const commands = lines.filter((l) => l['msg'] === 'command');
  assert.deepEqual(
    commands.map((l) => l['command']),
    ['optneg', 'macro', 'connect', 'envfrom', 'eoh', 'body'],
  );
  const macro = commands[1];
  assert.deepEqual(macro?.['macros'], { j: 'mx.example', '{client_addr}': '192.0.2.7' });
  assert.equal(macro?.['stage'], 'connect');
  assert.equal(commands[3]?.['sender'], '<a@example.org>');
  assert.equal(commands[5]?.['bytes'], 5, 'body chunks by size, not content');
  assert.deepEqual(
    lines.filter((l) => l['msg'] === 'decision').map((l) => [l['stage'], l['decision']]),
    [
      ['connect', 'continue'],
      ['envfrom', 'continue'],
    ],
  );
  const dropped = lines.find((l) => l['msg'] === 'out-of-sequence command dropped');
  assert.equal(dropped?.['state'], 'MAIL');
  assert.equal(dropped?.['target'], 'EOHS');
  // Nothing at all at info.
  const quiet = memoryLogger('info');
  const s2 = createSession(
    { id: 'c2', filter: recordingFilter([], {}), logger: quiet.logger, callbackTimeoutMs: 0 },
    { sendNow() {} },
  );
  await s2.handle(C.optneg());
  await s2.handle(C.connect());
  assert.deepEqual(quiet.lines, []);
});
