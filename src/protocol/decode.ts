/**
 * Frame payload → typed command (MTA → filter) or response (filter → MTA), validated the way libmilter
 * validates it (milter-protocol.md §3, §4). Pure: throws only MilterProtocolError.
 *
 * Fixed-layout parts use module-level `binary-parser` definitions (compiled once, on first use);
 * NUL-separated strings use cstring.ts. Body, EOM and replace-body chunks are views into the frame.
 */
import { isIPv4, isIPv6 } from 'node:net';
// The package's export map has no "types" condition; its CJS entry ships the declarations.
import { Parser } from 'binary-parser/dist/binary_parser.js';
import { MilterProtocolError } from '../errors.js';
import {
  Command,
  MILTER_LEN_BYTES,
  MILTER_OPTLEN,
  Response,
  SMFIA_INET,
  SMFIA_INET6,
  SMFIA_UNIX,
  SMFIA_UNKNOWN,
} from './constants.js';
import { malformed, readCString, splitCStrings } from './cstring.js';
import { PackedMacros } from './packed-macros.js';
import { wireByteLength } from './wire-string.js';
import type {
  AddressFamily,
  ConnectCommand,
  Frame,
  MacroLists,
  MilterCommand,
  MilterResponse,
  SimpleResponse,
} from './types.js';

interface OptnegWords {
  version: number;
  actions: number;
  protocol: number;
}
interface FamilyPort {
  family: number;
  port: number;
}
interface IndexWord {
  index: number;
}

// binary-parser returns untyped objects; each definition is wrapped by a typed reader below.
const optnegParser = new Parser().uint32be('version').uint32be('actions').uint32be('protocol');
const familyPortParser = new Parser().uint8('family').uint16be('port');
const indexParser = new Parser().uint32be('index');

function readOptnegWords(payload: Buffer): OptnegWords {
  return optnegParser.parse(payload) as OptnegWords;
}

/** Longest Unix socket path libmilter accepts (sizeof(sun_path) - 1 on Linux). */
const MAX_UNIX_PATH = 107;
const IPV6_TAG = /^ipv6:/i;

/**
 * Decode one MTA → filter frame. Throws `ERR_MILTER_UNKNOWN_COMMAND` for a byte not in §2.1 and
 * `ERR_MILTER_MALFORMED_PAYLOAD` for a payload libmilter would refuse (missing payload on D B C H L M O R U,
 * unterminated strings, bad connect address, OPTNEG shorter than 12 bytes, header not exactly two strings).
 * Data on payload-less commands (A K N Q T) is ignored, as libmilter does.
 */
export function decodeCommand(frame: Frame): MilterCommand {
  const decoder = commandDecoders[frame.command];
  if (decoder === undefined) {
    throw new MilterProtocolError(
      'ERR_MILTER_UNKNOWN_COMMAND',
      `unknown command byte 0x${frame.command.toString(16).padStart(2, '0')}`,
    );
  }
  return decoder(frame.payload);
}

/**
 * Decode one filter → MTA frame. Throws `ERR_MILTER_UNKNOWN_RESPONSE` for a byte not in §2.2 (including
 * SMFIR_SETSYMLIST, which is never a packet) and `ERR_MILTER_MALFORMED_PAYLOAD` for a bad payload, including
 * data after a payload-less decision (`a c d r t s p 4 f`), which Postfix treats as a communication error.
 */
export function decodeResponse(frame: Frame): MilterResponse {
  const decoder = responseDecoders[frame.command];
  if (decoder === undefined) {
    throw new MilterProtocolError(
      'ERR_MILTER_UNKNOWN_RESPONSE',
      `unknown response byte 0x${frame.command.toString(16).padStart(2, '0')}`,
    );
  }
  return decoder(frame.payload);
}

type Decoder<T> = (payload: Buffer) => T;

function required(payload: Buffer, what: string): void {
  if (payload.length === 0) throw malformed(`${what}: payload required`);
}

/** Exactly `n` strings, nothing after the last NUL. */
function exactStrings(payload: Buffer, n: number, what: string): string[] {
  const parts = splitCStrings(payload, 0, payload.length, what);
  if (parts.length !== n) throw malformed(`${what}: expected ${n} string(s), got ${parts.length}`);
  return parts;
}

/** One or two strings (address and optional ESMTP args). */
function oneOrTwoStrings(payload: Buffer, what: string): [string, string | undefined] {
  const parts = splitCStrings(payload, 0, payload.length, what);
  if (parts.length < 1 || parts.length > 2) {
    throw malformed(`${what}: expected 1 or 2 strings, got ${parts.length}`);
  }
  return [parts[0] as string, parts[1]];
}

/** argv-style command (MAIL, RCPT): at least one string. */
function argv(payload: Buffer, what: string): [string, string[]] {
  required(payload, what);
  const parts = splitCStrings(payload, 0, payload.length, what);
  const first = parts.shift();
  if (first === undefined) throw malformed(`${what}: no address`);
  return [first, parts];
}

function decodeConnect(payload: Buffer): ConnectCommand {
  required(payload, 'connect');
  const [hostname, off] = readCString(payload, 0, payload.length, 'connect hostname');
  if (off >= payload.length) throw malformed('connect: family missing');
  const familyByte = payload[off] as number;
  if (familyByte === SMFIA_UNKNOWN) {
    // Family U: no port and no address follow (§2.3); anything after is ignored like libmilter.
    return { kind: 'connect', hostname, family: 'unknown', port: 0, address: '' };
  }
  let family: AddressFamily;
  if (familyByte === SMFIA_INET) family = 'inet';
  else if (familyByte === SMFIA_INET6) family = 'inet6';
  else if (familyByte === SMFIA_UNIX) family = 'unix';
  else throw malformed(`connect: unknown address family 0x${familyByte.toString(16)}`);
  // family(1) + port(2) + at least the address NUL, and the payload must end with NUL (libmilter).
  if (payload.length < off + 4 || payload[payload.length - 1] !== 0) {
    throw malformed('connect: port/address missing or unterminated');
  }
  const { port } = familyPortParser.parse(payload.subarray(off, off + 3)) as FamilyPort;
  let [address] = readCString(payload, off + 3, payload.length, 'connect address');
  if (family === 'inet') {
    if (!isIPv4(address)) throw malformed(`connect: invalid IPv4 address "${address}"`);
  } else if (family === 'inet6') {
    // Sendmail tags IPv6 ("IPv6:2001:db8::5"), possibly fully expanded; Postfix does not (§3.3).
    address = address.replace(IPV6_TAG, '');
    if (!isIPv6(address)) throw malformed(`connect: invalid IPv6 address "${address}"`);
  } else if (wireByteLength(address) > MAX_UNIX_PATH) {
    throw malformed('connect: Unix socket path too long');
  }
  return { kind: 'connect', hostname, family, port, address };
}

function decodeMacro(payload: Buffer): MilterCommand {
  const packet = PackedMacros.fromPayload(payload);
  const macros = packet.pairs() as Array<[string, string]>;
  return { kind: 'macro', stage: packet.stage, macros };
}

const DATA: MilterCommand = Object.freeze({ kind: 'data' });
const EOH: MilterCommand = Object.freeze({ kind: 'eoh' });
const ABORT: MilterCommand = Object.freeze({ kind: 'abort' });
const QUIT: MilterCommand = Object.freeze({ kind: 'quit' });
const QUIT_NC: MilterCommand = Object.freeze({ kind: 'quitNewConnection' });

/** Typed dispatch table keyed by command byte (style rule: never string-built method names). */
const commandDecoders: Partial<Record<number, Decoder<MilterCommand>>> = {
  [Command.OPTNEG]: (p) => {
    if (p.length < MILTER_OPTLEN) throw malformed(`optneg: ${p.length} bytes, need ${MILTER_OPTLEN}`);
    return { kind: 'optneg', ...readOptnegWords(p) };
  },
  [Command.MACRO]: decodeMacro,
  [Command.CONNECT]: decodeConnect,
  [Command.HELO]: (p) => {
    required(p, 'helo');
    const [hostname] = readCString(p, 0, p.length, 'helo');
    if (hostname === '') throw malformed('helo: empty hostname');
    return { kind: 'helo', hostname };
  },
  [Command.MAIL]: (p) => {
    const [sender, args] = argv(p, 'mail');
    return { kind: 'mail', sender, args };
  },
  [Command.RCPT]: (p) => {
    const [recipient, args] = argv(p, 'rcpt');
    return { kind: 'rcpt', recipient, args };
  },
  [Command.DATA]: () => DATA,
  [Command.HEADER]: (p) => {
    required(p, 'header');
    const [name, value] = exactStrings(p, 2, 'header') as [string, string];
    return { kind: 'header', name, value };
  },
  [Command.EOH]: () => EOH,
  [Command.BODY]: (p) => {
    required(p, 'body');
    return { kind: 'body', chunk: p };
  },
  [Command.BODYEOB]: (p) => ({ kind: 'eom', chunk: p }),
  [Command.UNKNOWN]: (p) => {
    required(p, 'unknown');
    const [line] = readCString(p, 0, p.length, 'unknown');
    return { kind: 'unknown', line };
  },
  [Command.ABORT]: () => ABORT,
  [Command.QUIT]: () => QUIT,
  [Command.QUIT_NC]: () => QUIT_NC,
};

function simple(kind: SimpleResponse['kind']): Decoder<MilterResponse> {
  const value: MilterResponse = Object.freeze({ kind });
  return (p) => {
    if (p.length !== 0) throw malformed(`${kind}: followed by ${p.length} data bytes`);
    return value;
  };
}

/** `u32 index, str name, str value` (INSHEADER, CHGHEADER). */
function indexedHeader(p: Buffer, what: string): [number, string, string] {
  if (p.length < MILTER_LEN_BYTES) throw malformed(`${what}: index missing`);
  const { index } = indexParser.parse(p) as IndexWord;
  const parts = splitCStrings(p, MILTER_LEN_BYTES, p.length, what);
  if (parts.length !== 2) throw malformed(`${what}: expected name and value`);
  return [index, parts[0] as string, parts[1] as string];
}

function decodeOptnegReply(p: Buffer): MilterResponse {
  if (p.length < MILTER_OPTLEN) throw malformed(`optneg reply: ${p.length} bytes, need ${MILTER_OPTLEN}`);
  const words = readOptnegWords(p);
  let off = MILTER_OPTLEN;
  let macroLists: MacroLists | undefined;
  // Bounded: every list consumes at least 5 bytes.
  while (off < p.length) {
    if (p.length - off < MILTER_LEN_BYTES + 1) throw malformed('optneg reply: truncated macro list');
    const stage = p.readUInt32BE(off);
    const [names, after] = readCString(p, off + MILTER_LEN_BYTES, p.length, 'optneg macro list');
    off = after;
    // Unknown stage numbers are ignored, like Postfix and Sendmail do.
    if (stage <= 6) (macroLists ??= {})[stage as keyof MacroLists] = names;
  }
  return macroLists === undefined ? { kind: 'optneg', ...words } : { kind: 'optneg', ...words, macroLists };
}

const responseDecoders: Partial<Record<number, Decoder<MilterResponse>>> = {
  [Response.OPTNEG]: decodeOptnegReply,
  [Response.ACCEPT]: simple('accept'),
  [Response.CONTINUE]: simple('continue'),
  [Response.DISCARD]: simple('discard'),
  [Response.REJECT]: simple('reject'),
  [Response.TEMPFAIL]: simple('tempfail'),
  [Response.SKIP]: simple('skip'),
  [Response.PROGRESS]: simple('progress'),
  [Response.SHUTDOWN]: simple('shutdown'),
  [Response.CONN_FAIL]: simple('connFail'),
  [Response.REPLYCODE]: (p) => {
    // Sendmail insists on exactly one terminated string (payload length = strlen + 1).
    const [text] = exactStrings(p, 1, 'replycode') as [string];
    return { kind: 'replyCode', text };
  },
  [Response.ADDHEADER]: (p) => {
    const [name, value] = exactStrings(p, 2, 'addheader') as [string, string];
    return { kind: 'addHeader', name, value };
  },
  [Response.INSHEADER]: (p) => {
    const [index, name, value] = indexedHeader(p, 'insheader');
    return { kind: 'insertHeader', index, name, value };
  },
  [Response.CHGHEADER]: (p) => {
    const [index, name, value] = indexedHeader(p, 'chgheader');
    return { kind: 'changeHeader', index, name, value };
  },
  [Response.ADDRCPT]: (p) => {
    const [recipient] = exactStrings(p, 1, 'addrcpt') as [string];
    return { kind: 'addRecipient', recipient };
  },
  [Response.ADDRCPT_PAR]: (p) => {
    const [recipient, args] = oneOrTwoStrings(p, 'addrcpt_par');
    return args === undefined
      ? { kind: 'addRecipientWithArgs', recipient }
      : { kind: 'addRecipientWithArgs', recipient, args };
  },
  [Response.DELRCPT]: (p) => {
    const [recipient] = exactStrings(p, 1, 'delrcpt') as [string];
    return { kind: 'deleteRecipient', recipient };
  },
  [Response.CHGFROM]: (p) => {
    const [sender, args] = oneOrTwoStrings(p, 'chgfrom');
    return args === undefined ? { kind: 'changeFrom', sender } : { kind: 'changeFrom', sender, args };
  },
  [Response.REPLBODY]: (p) => ({ kind: 'replaceBody', chunk: p }),
  [Response.QUARANTINE]: (p) => {
    const [reason] = exactStrings(p, 1, 'quarantine') as [string];
    return { kind: 'quarantine', reason };
  },
};
