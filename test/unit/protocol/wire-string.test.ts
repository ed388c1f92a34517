/**
 * Wire strings (src/protocol/wire-string.ts): every byte string maps to a string and back unchanged
 * ("surrogateescape"), valid UTF-8 stays ordinary text, and the codec's frames keep the bytes too.
 * Randomized parts are seeded and bounded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fromWireBytes, wireBytes } from '../../../src/index.js';
import { decodeCommand, decodeResponse } from '../../../src/protocol/decode.js';
import { encodeCommand, encodeResponse } from '../../../src/protocol/encode.js';
import { PackedMacros } from '../../../src/protocol/packed-macros.js';
import { wireByteLength, writeWireString } from '../../../src/protocol/wire-string.js';
import { prng } from '../../helpers/prng.js';
import { cstr, randomWireBytes, rawFrameOf, u32 } from '../../helpers/bytes.js';

const hex = (h: string): Buffer => Buffer.from(h.replace(/ /g, ''), 'hex');

// Expected values checked against Python 3's bytes.decode('utf-8', 'surrogateescape').
const VECTORS: Array<[bytes: string, text: string]> = [
  ['636166e9', 'caf\udce9'], // latin1 é
  ['636166c3a9', 'café'],
  ['c080', '\udcc0\udc80'], // overlong
  ['e08080', '\udce0\udc80\udc80'], // overlong 3-byte
  ['eda080', '\udced\udca0\udc80'], // encoded surrogate
  ['f4908080', '\udcf4\udc90\udc80\udc80'], // above U+10FFFF
  ['e282', '\udce2\udc82'], // truncated
  ['e28241', '\udce2\udc82A'], // truncated, then ASCII
  ['f09f98', '\udcf0\udc9f\udc98'],
  ['80bf', '\udc80\udcbf'], // lone continuation bytes
  ['f5ff', '\udcf5\udcff'],
  ['efbfbd', '\ufffd'], // a genuine U+FFFD stays text
  ['f09f9880', '\ud83d\ude00'], // 😀
  ['f48fbfbf', '\udbff\udfff'], // U+10FFFF
  ['ed9fbf', '\ud7ff'],
  ['c3a9e9c3a9', 'é\udce9é'],
  ['', ''],
];

test('fromWireBytes: valid UTF-8 is text, every other byte U+DC00 + byte (Python surrogateescape)', () => {
  for (const [h, text] of VECTORS) {
    assert.equal(fromWireBytes(hex(h)), text, h);
    assert.deepEqual(wireBytes(text), hex(h), h);
    assert.equal(wireByteLength(text), hex(h).length, h);
  }
  // A Uint8Array that is not a Buffer, at an offset into its memory.
  const u8 = new Uint8Array([0x41, 0x63, 0x61, 0x66, 0xe9]).subarray(1);
  assert.equal(fromWireBytes(u8), 'caf\udce9');
});

test('wireBytes: lone surrogates outside U+DC80..U+DCFF are U+FFFD as before; a pair is one character', () => {
  assert.deepEqual(wireBytes('a\ud800b'), Buffer.from('a\ufffdb'));
  assert.deepEqual(wireBytes('\udc41'), Buffer.from('\ufffd'));
  assert.deepEqual(wireBytes('\udfff\udce9'), hex('efbfbd e9'));
  // A high surrogate followed by U+DC80..U+DCFF is a surrogate pair (U+100E9), not an escape.
  assert.deepEqual(wireBytes('\ud800\udce9'), Buffer.from('\u{100e9}'));
  assert.equal(wireByteLength('\ud800\udce9'), 4);
  assert.deepEqual(wireBytes('x\udce9\ud800'), hex('78 e9 efbfbd'));
});

test('random bytes: wireBytes(fromWireBytes(b)) is b, and valid UTF-8 decodes like Buffer', () => {
  const rand = prng(0xb17e5);
  for (let i = 0; i < 20_000; i++) {
    const b = randomWireBytes(rand, 24);
    const s = fromWireBytes(b);
    assert.deepEqual(wireBytes(s), b, b.toString('hex'));
    assert.equal(wireByteLength(s), b.length, b.toString('hex'));
    const utf8 = b.toString('utf8');
    if (Buffer.from(utf8, 'utf8').equals(b)) assert.equal(s, utf8, b.toString('hex'));
    else assert.match(s, /[\udc80-\udcff]/, b.toString('hex'));
  }
});

/** Text that is its own canonical form: escapes only of bytes that can never join a valid sequence. */
function randomWireText(rand: () => number): string {
  let s = '';
  const n = Math.floor(rand() * 16);
  for (let i = 0; i < n; i++) {
    const k = rand();
    if (k < 0.3) s += String.fromCharCode(1 + Math.floor(rand() * 0x7f));
    else if (k < 0.45) s += String.fromCharCode(0x80 + Math.floor(rand() * 0x780));
    else if (k < 0.6) {
      const c = 0x800 + Math.floor(rand() * 0xf7ff);
      s += c >= 0xd800 && c <= 0xdfff ? 'x' : String.fromCharCode(c);
    } else if (k < 0.7) s += String.fromCodePoint(0x10000 + Math.floor(rand() * 0xfffff));
    else if (k < 0.85) {
      // Continuation bytes, C0/C1 and F5..FF never start or extend a valid sequence here.
      const bytes = [0xc0, 0xc1, 0xf5, 0xf8, 0xfe, 0xff, 0x80 + Math.floor(rand() * 0x40)];
      s += String.fromCharCode(0xdc00 + (bytes[Math.floor(rand() * bytes.length)] as number));
    } else {
      // A lead byte followed by ASCII is truncated: it stays an escape.
      s += String.fromCharCode(0xdc00 + 0xc2 + Math.floor(rand() * 0x33)) + 'a';
    }
  }
  return s;
}

test('random text with escapes: fromWireBytes(wireBytes(s)) is s; sizes match the bytes written', () => {
  const rand = prng(0x5e7a);
  const buf = Buffer.alloc(256, 0xaa);
  for (let i = 0; i < 20_000; i++) {
    const s = randomWireText(rand);
    const bytes = wireBytes(s);
    assert.equal(fromWireBytes(bytes), s, JSON.stringify(s));
    assert.equal(wireByteLength(s), bytes.length);
    buf.fill(0xaa);
    const n = writeWireString(buf, 3, s);
    assert.equal(n, bytes.length);
    assert.deepEqual(buf.subarray(3, 3 + n), bytes);
    assert.equal(buf[3 + n], 0xaa, 'nothing written past the string');
  }
});

test('frames: encode(decode(frame)) gives the same bytes for every string-carrying command and response', () => {
  const rand = prng(0xf2a3e);
  const r = (max: number, min = 0): Buffer => randomWireBytes(rand, max, min);
  for (let i = 0; i < 3_000; i++) {
    const commands = [
      rawFrameOf('C', cstr(r(20)), Buffer.from('U')),
      rawFrameOf('H', cstr(r(20, 1))),
      rawFrameOf('M', cstr(r(20, 1)), cstr(r(10)), cstr(r(10))),
      rawFrameOf('R', cstr(r(20, 1)), cstr(r(10))),
      rawFrameOf('L', cstr(r(10)), cstr(r(40))),
      rawFrameOf('U', cstr(r(30))),
      rawFrameOf('D', Buffer.from('M'), cstr(r(8)), cstr(r(20)), cstr(r(8)), cstr(r(20))),
    ];
    for (const frame of commands) {
      const decoded = decodeCommand({ command: frame[4] as number, payload: frame.subarray(5) });
      assert.deepEqual(encodeCommand(decoded), frame, frame.toString('hex'));
    }
    const responses = [
      rawFrameOf('y', cstr(r(40))),
      rawFrameOf('h', cstr(r(10)), cstr(r(40))),
      rawFrameOf('m', u32(1), cstr(r(10)), cstr(r(40))),
      rawFrameOf('i', u32(0), cstr(r(10)), cstr(r(40))),
      rawFrameOf('+', cstr(r(20))),
      rawFrameOf('2', cstr(r(20)), cstr(r(20))),
      rawFrameOf('-', cstr(r(20))),
      rawFrameOf('e', cstr(r(20)), cstr(r(20))),
      rawFrameOf('q', cstr(r(20))),
    ];
    for (const frame of responses) {
      const decoded = decodeResponse({ command: frame[4] as number, payload: frame.subarray(5) });
      assert.deepEqual(encodeResponse(decoded), frame, frame.toString('hex'));
    }
  }
});

test('packed macros: 8-bit names and values keep their bytes, UTF-8 ones decode as text', () => {
  const payload = Buffer.concat([Buffer.from('C'), cstr('{x\xe9}'), cstr('caf\xe9'), cstr('j'), cstr('ok')]);
  const pairs = PackedMacros.fromPayload(payload).pairs();
  assert.deepEqual(pairs, [
    ['{x\udce9}', 'caf\udce9'],
    ['j', 'ok'],
  ]);
  assert.deepEqual(wireBytes(pairs[0]?.[1] ?? ''), Buffer.from('caf\xe9', 'latin1'));
  const utf8 = Buffer.concat([Buffer.from('C'), cstr(Buffer.from('{v}')), cstr(Buffer.from('Größe €'))]);
  assert.deepEqual(PackedMacros.fromPayload(utf8).pairs(), [['{v}', 'Größe €']]);
});
