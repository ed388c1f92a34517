/**
 * Issue acceptance: replaying a captured MTA stream into the session produces the captured reply stream
 * for the same filter behaviour.
 *
 * Every `conn-*.mta.bin` under fixtures/captures is fed, command by command, to a session running the
 * TypeScript twin of the libmilter reference filter (./refmilter.ts); what the session writes must equal
 * `conn-*.milter.bin` byte for byte, and each reply must answer the same MTA packet as in the `.hex` log
 * (same packets, same order, nothing early or late). `close` must run exactly once per stream.
 *
 * Deliberate differences from libmilter are listed in DIFFERENCES, each with the reason and the exact
 * expected stream (the captured one, transformed); everything else must match unchanged.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Filter } from '../../../src/filter.js';
import { capturesDir, loadCaptures, type Capture, type HexPacket } from '../../helpers/captures.js';
import { SMFIC_BODYEOB, SMFIC_QUIT, SMFIR_REPLBODY } from '../../../src/protocol/constants.js';
import { capturedSteps, framed, replayStream, type ReplayOutcome } from './harness.js';
import { referenceFilter, type RefLogEntry } from './refmilter.js';

/** Modification packets (SMFIR_*) that may precede the decision of an EOM reply stream. */
const MODIFICATIONS = new Set('h i m e + 2 - q b p'.split(' ').map((c) => c.charCodeAt(0)));

/**
 * §10.10: our session sends body replacement after every other modification (Postfix requires one
 * uninterrupted run of `b`, and the EOM context's contract is "modifications in call order, body
 * replacement last"). libmilter writes packets in call order, so a filter that calls smfi_replacebody
 * before smfi_chgfrom puts `b` before `e`. Expected: the captured EOM stream with its `b` packets moved
 * after the last other modification, just before the decision.
 */
function bodyReplacementLast(packets: readonly HexPacket[]): HexPacket[] {
  const out: HexPacket[] = [];
  let eom = false;
  let mods: HexPacket[] = [];
  let bodies: HexPacket[] = [];
  for (const p of packets) {
    if (p.dir === '>') {
      eom = p.bytes[0] === SMFIC_BODYEOB;
      out.push(p);
      continue;
    }
    if (!eom) {
      out.push(p);
      continue;
    }
    const cmd = p.bytes[0] ?? 0;
    if (cmd === SMFIR_REPLBODY) bodies.push(p);
    else if (MODIFICATIONS.has(cmd)) mods.push(p);
    else {
      out.push(...mods, ...bodies, p);
      mods = [];
      bodies = [];
      eom = false;
    }
  }
  return out;
}

interface Difference {
  why: string;
  expected(packets: readonly HexPacket[]): HexPacket[];
}

/** Captures whose reply stream we deliberately do not reproduce verbatim, and what we produce instead. */
const DIFFERENCES: Readonly<Record<string, Difference>> = {
  // Subject "CHANGE ADDRCPT DELRCPT BODY FROM INSHDR": libmilter wrote h m i + - b e c.
  'postfix/combo/conn-0018': {
    why: 'body replacement is sent after the other modifications (§10.10), libmilter sent b before e',
    expected: bodyReplacementLast,
  },
  'sendmail/combo/conn-0018': {
    why: 'body replacement is sent after the other modifications (§10.10), libmilter sent b before e',
    expected: bodyReplacementLast,
  },
};

const captures = loadCaptures();

function milterBytes(packets: readonly HexPacket[]): Buffer {
  return Buffer.concat(packets.filter((p) => p.dir === '<').map((p) => framed(p.bytes)));
}

function hasQuit(cap: Capture): boolean {
  return cap.packets.some((p) => p.dir === '>' && p.bytes[0] === SMFIC_QUIT);
}

async function replay(
  cap: Capture,
  timing: 'sync' | 'async' = 'sync',
): Promise<{ log: RefLogEntry[]; outcome: ReplayOutcome }> {
  const log: RefLogEntry[] = [];
  const outcome = await replayStream(cap.mta, referenceFilter(log, timing) as Filter<unknown>, cap.name);
  return { log, outcome };
}

function checkLifecycle(cap: Capture, log: readonly RefLogEntry[], end: string, unread: number): void {
  assert.equal(end, hasQuit(cap) ? 'quit' : 'eof', 'stream end');
  assert.equal(unread, 0, 'nothing left unread');
  const closes = log.filter((e) => e.cb === 'close');
  assert.equal(closes.length, 1, 'close runs exactly once');
  assert.equal(log[log.length - 1]?.cb, 'close', 'close is the last callback');
  assert.equal(log[0]?.cb, 'negotiate', 'negotiate is the first callback');
  // abort only ever runs inside a transaction, never after the message ended (Postfix's trailing ABORTs).
  const names = log.map((e) => e.cb);
  for (let i = 0; i < names.length; i++) {
    if (names[i] !== 'abort') continue;
    const before = names.slice(0, i);
    const lastMail = before.lastIndexOf('envfrom');
    assert.ok(lastMail >= 0, 'abort after a MAIL');
    assert.ok(!before.slice(lastMail).includes('eom'), 'no abort after eom');
    assert.ok(!before.slice(lastMail).includes('abort'), 'one abort per transaction');
  }
}

for (const cap of captures) {
  const diff = DIFFERENCES[cap.name];
  for (const timing of ['sync', 'async'] as const) {
    test(`replay ${cap.name} (${timing} filter)${diff ? ' (expected difference)' : ''}`, async () => {
      assert.deepEqual(milterBytes(cap.packets), cap.milter, '.hex and .milter.bin agree');
      const { log, outcome } = await replay(cap, timing);
      const packets = diff ? diff.expected(cap.packets) : cap.packets;
      if (diff) assert.notDeepEqual(milterBytes(packets), cap.milter, `the difference exists: ${diff.why}`);

      assert.deepEqual(outcome.bytes, milterBytes(packets), 'reply stream');
      const want = capturedSteps(packets);
      assert.equal(outcome.steps.length, want.length, 'one step per MTA packet');
      outcome.steps.forEach((step, i) => {
        assert.deepEqual(step.reply, want[i], `reply to packet ${i} (${step.kind})`);
      });
      checkLifecycle(cap, log, outcome.end, outcome.unread);
    });
  }
}

test('every Postfix and Sendmail capture replays; only the listed differences are excluded', () => {
  const byMta = (mta: string): Capture[] => captures.filter((c) => c.name.startsWith(`${mta}/`));
  assert.equal(byMta('postfix').length, 38);
  assert.equal(byMta('sendmail').length, 37);
  assert.equal(byMta('miltertest').length, 2);
  for (const name of Object.keys(DIFFERENCES)) {
    assert.ok(
      captures.some((c) => c.name === name),
      `${name} exists`,
    );
  }
  assert.equal(Object.keys(DIFFERENCES).length, 2);
});

test('sendmail disconnect in DATA: EOF without QUIT runs abort, then close once', async () => {
  const cap = captures.find((c) => c.name.startsWith('sendmail/disconnect_in_data/'));
  assert.ok(cap);
  const { log, outcome } = await replay(cap);
  assert.equal(outcome.end, 'eof');
  assert.deepEqual(
    log.slice(-2).map((e) => e.cb),
    ['abort', 'close'],
  );
});

test('postfix HELO rejection: the MTA just closes; close runs once on EOF with priv set', async () => {
  const cap = captures.find((c) => c.name.startsWith('postfix/helo_reject/'));
  assert.ok(cap);
  const { log, outcome } = await replay(cap);
  assert.equal(outcome.end, 'eof');
  assert.deepEqual(
    log.map((e) => e.cb),
    ['negotiate', 'connect', 'helo', 'close'],
  );
  assert.equal(log[3]?.privSet, true);
});

/** `refmilter.log` of the miltertest run, one callback sequence per milter connection. */
function miltertestLog(): string[][] {
  const text = readFileSync(join(capturesDir(), 'miltertest', 'refmilter.log'), 'utf8');
  const conns: string[][] = [];
  for (const line of text.split('\n')) {
    const m = /\bcb=(\S+)(?:.*?\bpriv=(\S+))?/.exec(line);
    if (!m || m[1] === 'start' || m[1] === 'eom-result') continue;
    if (m[1] === 'negotiate') conns.push([]);
    conns[conns.length - 1]?.push(m[2] === undefined ? m[1]! : `${m[1]} priv=${m[2]}`);
  }
  return conns;
}

test('miltertest: the callback sequence matches the C reference filter log, close priv=NULL included', async () => {
  const logs = miltertestLog();
  const caps = captures.filter((c) => c.name.startsWith('miltertest/'));
  assert.equal(logs.length, caps.length);
  for (const [i, cap] of caps.entries()) {
    const { log } = await replay(cap);
    const ours = log.map((e) => (e.cb === 'close' ? `close priv=${e.privSet ? 'set' : 'NULL'}` : e.cb));
    assert.deepEqual(ours, logs[i], cap.name);
  }
});
