/**
 * Every real capture (Postfix, Sendmail, miltertest against libmilter) decodes completely, agrees with its
 * `.hex` log, and re-encodes to the exact captured bytes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadCaptures } from '../../helpers/captures.js';
import { decodeCommand, decodeResponse } from '../../../src/protocol/decode.js';
import { encodeCommand, encodeResponse } from '../../../src/protocol/encode.js';
import { FrameDecoder } from '../../../src/protocol/frame.js';
import type { MilterCommand, MilterResponse } from '../../../src/protocol/types.js';

const captures = loadCaptures();

test('fixtures are present in the repository', () => {
  assert.ok(captures.length >= 70, `found ${captures.length} capture sets`);
  assert.ok(captures.some((c) => c.name.startsWith('postfix/')));
  assert.ok(captures.some((c) => c.name.startsWith('sendmail/')));
  assert.ok(captures.some((c) => c.name.startsWith('miltertest/')));
});

interface Decoded<T> {
  values: T[];
  frameBytes: Buffer[];
  total: number;
}

function decodeStream<T>(bin: Buffer, decode: (f: { command: number; payload: Buffer }) => T): Decoded<T> {
  const d = new FrameDecoder(1024 * 1024 - 1);
  d.push(bin);
  const values: T[] = [];
  const frameBytes: Buffer[] = [];
  let total = 0;
  for (let f = d.next(); f !== undefined; f = d.next()) {
    values.push(decode(f));
    const raw = Buffer.alloc(1 + f.payload.length);
    raw[0] = f.command;
    f.payload.copy(raw, 1);
    frameBytes.push(raw);
    total += 5 + f.payload.length;
  }
  assert.equal(d.bufferedBytes, 0, 'no trailing bytes');
  return { values, frameBytes, total };
}

for (const cap of captures) {
  test(`capture ${cap.name}`, () => {
    const mta = decodeStream<MilterCommand>(cap.mta, decodeCommand);
    const milter = decodeStream<MilterResponse>(cap.milter, decodeResponse);
    assert.equal(mta.total, cap.mta.length, 'MTA byte count');
    assert.equal(milter.total, cap.milter.length, 'milter byte count');

    // Cross-check with the .hex log: same packet count and same bytes per direction.
    const hexMta = cap.packets.filter((p) => p.dir === '>');
    const hexMilter = cap.packets.filter((p) => p.dir === '<');
    assert.equal(mta.values.length, hexMta.length, 'MTA packet count vs .hex');
    assert.equal(milter.values.length, hexMilter.length, 'milter packet count vs .hex');
    hexMta.forEach((p, i) => {
      assert.equal(p.len, p.bytes.length);
      assert.deepEqual(mta.frameBytes[i], p.bytes);
    });
    hexMilter.forEach((p, i) => assert.deepEqual(milter.frameBytes[i], p.bytes));

    // decode → encode reproduces every frame exactly.
    const reMta = Buffer.concat(mta.values.map((c) => encodeCommand(c)));
    assert.deepEqual(reMta, cap.mta, 'MTA stream re-encodes byte-exact');
    const reMilter = Buffer.concat(milter.values.map((r) => encodeResponse(r)));
    assert.deepEqual(reMilter, cap.milter, 'milter stream re-encodes byte-exact');
  });
}

test('captures cover every command Postfix/Sendmail sent and the EOM modifications', () => {
  const kinds = new Set<string>();
  for (const cap of captures) {
    decodeStream(cap.mta, decodeCommand).values.forEach((c) => kinds.add(`>${c.kind}`));
    decodeStream(cap.milter, decodeResponse).values.forEach((r) => kinds.add(`<${r.kind}`));
  }
  for (const k of [
    '>optneg',
    '>macro',
    '>connect',
    '>helo',
    '>mail',
    '>rcpt',
    '>data',
    '>header',
    '>eoh',
    '>body',
  ]) {
    assert.ok(kinds.has(k), k);
  }
  for (const k of [
    '<addHeader',
    '<insertHeader',
    '<changeHeader',
    '<replaceBody',
    '<changeFrom',
    '<quarantine',
  ]) {
    assert.ok(kinds.has(k), k);
  }
});
