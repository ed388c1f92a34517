/**
 * Byte-transparency fixtures: random byte strings biased toward tricky UTF-8, milter frames built from raw
 * bytes (no codec involved), and an echo filter that sends every value it received back through an action,
 * with the response frames it must produce computed from the input bytes alone.
 */
import { Decision, type Filter } from '../../src/filter.js';

/** Fragments that stress a UTF-8 decoder: invalid ones first, then valid multi-byte characters. */
const FRAGMENTS: readonly number[][] = [
  [0xc0, 0x80], // overlong NUL
  [0xc1, 0xbf], // overlong
  [0xe0, 0x80, 0x80], // overlong 3-byte
  [0xf0, 0x80, 0x80, 0x80], // overlong 4-byte
  [0xc3], // truncated 2-byte
  [0xe2, 0x82], // truncated 3-byte
  [0xf0, 0x9f, 0x98], // truncated 4-byte
  [0xed, 0xa0, 0x80], // encoded high surrogate
  [0xed, 0xbf, 0xbf], // encoded low surrogate
  [0xf4, 0x90, 0x80, 0x80], // above U+10FFFF
  [0xc3, 0xa9], // é
  [0xe2, 0x82, 0xac], // €
  [0xf0, 0x9f, 0x98, 0x80], // 😀
  [0xef, 0xbf, 0xbd], // a genuine U+FFFD
  [0xed, 0x9f, 0xbf], // last code point before the surrogates
  [0xf4, 0x8f, 0xbf, 0xbf], // U+10FFFF
];

/**
 * A random byte string of `min..max` bytes without NUL: any byte 1..255, lone continuation bytes,
 * F5..FF, and the fragments above (a fragment may run past `max` by up to three bytes).
 */
export function randomWireBytes(rand: () => number, max: number, min = 0): Buffer {
  const len = min + Math.floor(rand() * (max - min + 1));
  const out: number[] = [];
  while (out.length < len) {
    const k = rand();
    if (k < 0.3) out.push(1 + Math.floor(rand() * 255));
    else if (k < 0.45) out.push(0x80 + Math.floor(rand() * 0x40));
    else if (k < 0.5) out.push(0xf5 + Math.floor(rand() * 11));
    else if (k < 0.65) out.push(0x20 + Math.floor(rand() * 0x5f));
    else out.push(...(FRAGMENTS[Math.floor(rand() * FRAGMENTS.length)] as number[]));
  }
  return Buffer.from(out);
}

/** `bytes` + NUL. */
export function cstr(bytes: Buffer | string): Buffer {
  return Buffer.concat([Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes, 'latin1'), Buffer.alloc(1)]);
}

/** A frame: u32 length, command letter, payload. */
export function rawFrameOf(command: string, ...payload: Buffer[]): Buffer {
  const body = Buffer.concat(payload);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length + 1, 0);
  head[4] = command.charCodeAt(0);
  return Buffer.concat([head, body]);
}

/** A big-endian u32. */
export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** A frame read back from raw bytes. */
export interface RawFrame {
  command: string;
  payload: Buffer;
}

/** Split a byte stream into frames by hand (no codec); `rest` is an incomplete tail. */
export function splitRawFrames(stream: Buffer): { frames: RawFrame[]; rest: Buffer } {
  const frames: RawFrame[] = [];
  let o = 0;
  while (stream.length - o >= 5) {
    const len = stream.readUInt32BE(o);
    if (stream.length - o - 4 < len) break;
    frames.push({
      command: String.fromCharCode(stream[o + 4] as number),
      payload: Buffer.from(stream.subarray(o + 5, o + 4 + len)),
    });
    o += 4 + len;
  }
  return { frames, rest: Buffer.from(stream.subarray(o)) };
}

/** One message of raw values, as an MTA would pass them. */
export interface ByteMessage {
  connectHost: Buffer;
  helo: Buffer;
  sender: Buffer;
  senderArg: Buffer;
  recipient: Buffer;
  recipientArg: Buffer;
  headers: Array<[name: Buffer, value: Buffer]>;
  /** Macro packets: stage letter and pairs. Names are unique within the message. */
  macros: Array<[stage: string, pairs: Array<[Buffer, Buffer]>]>;
  /** When set (and the first header is `X-Reply` with these bytes), the filter rejects at EOM with
   * `550 5.7.1 <reply>` and changes nothing. */
  reply?: Buffer;
}

const CR = 0x0d;
const LF = 0x0a;
const COLON = 0x3a;
/** Header names the filter can echo: ASCII bytes that checkHeaderName refuses stay out. */
function headerName(rand: () => number, i: number): Buffer {
  const raw = randomWireBytes(rand, 8);
  const kept = [...raw].filter((b) => b > 0x20 && b !== COLON && b !== 0x7f);
  // Valid UTF-8 can still spell a Unicode space (U+00A0 C2 A0, U+2028 E2 80 A8, ...): escape such bytes
  // out of reach by keeping only bytes >= 0x80 that do not start one of those sequences.
  const safe = kept.filter(
    (b) => b < 0x80 || (b !== 0xc2 && b !== 0xe1 && b !== 0xe2 && b !== 0xe3 && b !== 0xef),
  );
  return Buffer.concat([Buffer.from(`X-${i}-`), Buffer.from(safe)]);
}

/** A random message; `withReply` makes it the reject-with-text kind. */
export function randomByteMessage(rand: () => number, withReply: boolean): ByteMessage {
  const nonEmpty = (max: number): Buffer => randomWireBytes(rand, max, 1);
  const headers: Array<[Buffer, Buffer]> = [];
  const n = 1 + Math.floor(rand() * 3);
  for (let i = 0; i < n; i++) headers.push([headerName(rand, i), randomWireBytes(rand, 40)]);
  const macros: Array<[string, Array<[Buffer, Buffer]>]> = [];
  let m = 0;
  for (const stage of ['C', 'H', 'M', 'R', 'E']) {
    const pairs: Array<[Buffer, Buffer]> = [];
    const count = Math.floor(rand() * 3);
    for (let i = 0; i < count; i++) {
      // A letter first: integer-like names would be reordered by ctx.macros()'s object.
      pairs.push([
        Buffer.concat([Buffer.from(`m${m++}`), randomWireBytes(rand, 6)]),
        randomWireBytes(rand, 20),
      ]);
    }
    macros.push([stage, pairs]);
  }
  const message: ByteMessage = {
    connectHost: randomWireBytes(rand, 20),
    helo: nonEmpty(20),
    sender: nonEmpty(30),
    senderArg: nonEmpty(20),
    recipient: nonEmpty(30),
    recipientArg: nonEmpty(20),
    headers,
    macros,
  };
  if (withReply) {
    // One reply line: no CR, LF (the filter API refuses them); % is doubled on the wire.
    const reply = Buffer.from([...randomWireBytes(rand, 60)].filter((b) => b !== CR && b !== LF));
    message.reply = reply;
    headers.unshift([Buffer.from('X-Reply'), reply]);
  }
  return message;
}

function macroFrame(stage: string, pairs: Array<[Buffer, Buffer]>): Buffer {
  return rawFrameOf('D', Buffer.from(stage), ...pairs.flatMap(([k, v]) => [cstr(k), cstr(v)]));
}

/**
 * The frames an MTA sends for `m` after OPTNEG, each paired with whether it owes a reply (macros do not),
 * CONNECT (family U: no address) through EOM.
 */
export function messageFrames(m: ByteMessage): Array<[frame: Buffer, replies: boolean]> {
  const macros = new Map(m.macros);
  const withMacros = (stage: string, frame: Buffer): Array<[Buffer, boolean]> => {
    const pairs = macros.get(stage) ?? [];
    return pairs.length === 0
      ? [[frame, true]]
      : [
          [macroFrame(stage, pairs), false],
          [frame, true],
        ];
  };
  return [
    ...withMacros('C', rawFrameOf('C', cstr(m.connectHost), Buffer.from('U'))),
    ...withMacros('H', rawFrameOf('H', cstr(m.helo))),
    ...withMacros('M', rawFrameOf('M', cstr(m.sender), cstr(m.senderArg))),
    ...withMacros('R', rawFrameOf('R', cstr(m.recipient), cstr(m.recipientArg))),
    [rawFrameOf('T'), true],
    ...m.headers.map(([n, v]): [Buffer, boolean] => [rawFrameOf('L', cstr(n), cstr(v)), true]),
    [rawFrameOf('N'), true],
    ...withMacros('E', rawFrameOf('E')),
  ];
}

/** What the echo filter must answer to EOM, computed from the input bytes only. */
export function expectedEom(m: ByteMessage): RawFrame[] {
  const f = (command: string, ...payload: Buffer[]): RawFrame => ({
    command,
    payload: Buffer.concat(payload),
  });
  if (m.reply !== undefined) {
    const escaped = Buffer.from([...m.reply].flatMap((b) => (b === 0x25 ? [b, b] : [b])));
    return [f('y', Buffer.from('550 5.7.1 '), cstr(escaped))];
  }
  const out: RawFrame[] = [
    f('h', cstr('X-Connect'), cstr(m.connectHost)),
    f('h', cstr('X-Helo'), cstr(m.helo)),
  ];
  for (const [, pairs] of m.macros) {
    for (const [k, v] of pairs)
      out.push(f('h', cstr('X-Macro-Name'), cstr(k)), f('h', cstr('X-Macro'), cstr(v)));
  }
  for (const [n, v] of m.headers) {
    out.push(f('h', cstr(n), cstr(v)), f('m', u32(1), cstr(n), cstr(v)), f('i', u32(0), cstr(n), cstr(v)));
  }
  out.push(
    f('e', cstr(m.sender), cstr(m.senderArg)),
    f('+', cstr(m.recipient)),
    f('2', cstr(m.recipient), cstr(m.recipientArg)),
    f('-', cstr(m.recipient)),
    f('c'),
  );
  return out;
}

interface Seen {
  connectHost: string;
  helo: string;
  sender: string;
  senderArg: string;
  recipient: string;
  recipientArg: string;
  headers: Array<[string, string]>;
}

/**
 * A filter that sends back, at EOM, every string it received (CONNECT host, HELO, macros, headers,
 * envelope) through addHeader/changeHeader/insertHeader/changeFrom/addRecipient/deleteRecipient, or
 * rejects with a header's value as reply text when the first header is `X-Reply`. `async` makes every
 * callback answer through a promise.
 */
export function echoFilter(async = false): Filter<Seen> {
  const answer = <T>(v: T): T | Promise<T> => (async ? Promise.resolve(v) : v);
  return {
    connect: (ctx, info) => {
      ctx.priv = {
        connectHost: info.hostname,
        helo: '',
        sender: '',
        senderArg: '',
        recipient: '',
        recipientArg: '',
        headers: [],
      };
      return answer(undefined);
    },
    helo: (ctx, hostname) => {
      if (ctx.priv) ctx.priv.helo = hostname;
      return answer(undefined);
    },
    envfrom: (ctx, sender, args) => {
      if (ctx.priv) Object.assign(ctx.priv, { sender, senderArg: args[0] ?? '', headers: [] });
      return answer(undefined);
    },
    envrcpt: (ctx, recipient, args) => {
      if (ctx.priv) Object.assign(ctx.priv, { recipient, recipientArg: args[0] ?? '' });
      return answer(undefined);
    },
    header: (ctx, name, value) => {
      ctx.priv?.headers.push([name, value]);
      return answer(undefined);
    },
    eom: (ctx) => {
      const p = ctx.priv;
      if (p === undefined) return answer(Decision.tempfail());
      const first = p.headers[0];
      if (first?.[0] === 'X-Reply') {
        return answer(Decision.reject({ code: 550, xcode: '5.7.1', text: first[1] }));
      }
      ctx.addHeader('X-Connect', p.connectHost);
      ctx.addHeader('X-Helo', p.helo);
      for (const [k, v] of Object.entries(ctx.macros())) {
        ctx.addHeader('X-Macro-Name', k);
        ctx.addHeader('X-Macro', v);
      }
      for (const [n, v] of p.headers) {
        ctx.addHeader(n, v);
        ctx.changeHeader(n, 1, v);
        ctx.insertHeader(0, n, v);
      }
      ctx.changeFrom(p.sender, p.senderArg);
      ctx.addRecipient(p.recipient);
      ctx.addRecipient(p.recipient, p.recipientArg);
      ctx.deleteRecipient(p.recipient);
      return answer(undefined);
    },
  };
}
