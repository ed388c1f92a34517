/**
 * Typed command/response → ready-to-write bytes (milter-protocol.md §1.2, §3, §4). Pure: throws only
 * MilterUsageError (`ERR_MILTER_INVALID_ARGUMENT` for values that cannot be put on the wire).
 *
 * Every encoder sizes its output first and allocates once; `encodeResponses`/`encodeCommands` put several
 * frames in one buffer (one socket write). The length prefix is backfilled from the bytes actually written.
 * Payload-less frames are preallocated and shared: never mutate a buffer returned by these functions.
 */
import { MilterUsageError } from '../errors.js';
import { Command, MILTER_CHUNK_SIZE, MILTER_LEN_BYTES, MILTER_OPTLEN, Response } from './constants.js';
import { cstringSize, writeCString } from './cstring.js';
import type { AddressFamily, MacroLists, MilterCommand, MilterResponse } from './types.js';

/** Frame header: u32 length + command byte. */
const HEADER = MILTER_LEN_BYTES + 1;

function invalid(what: string): MilterUsageError {
  return new MilterUsageError('ERR_MILTER_INVALID_ARGUMENT', what);
}

/**
 * The end of every switch over a command or response kind: a kind added to the union and not handled
 * fails to compile here (`never`), and a JavaScript caller's unknown kind is refused instead of being
 * sent as a frame without payload.
 */
function unknownKind(value: never, what: 'command' | 'response'): never {
  throw invalid(`unknown ${what} kind ${JSON.stringify((value as { kind?: unknown }).kind)}`);
}

function codeOnly(code: number): Buffer {
  const buf = Buffer.allocUnsafeSlow(HEADER);
  buf.writeUInt32BE(1, 0);
  buf[MILTER_LEN_BYTES] = code;
  return buf;
}

/** Preallocated payload-less responses, by kind. */
const CONSTANT_RESPONSES: Readonly<Record<string, Buffer>> = {
  continue: codeOnly(Response.CONTINUE),
  accept: codeOnly(Response.ACCEPT),
  reject: codeOnly(Response.REJECT),
  tempfail: codeOnly(Response.TEMPFAIL),
  discard: codeOnly(Response.DISCARD),
  skip: codeOnly(Response.SKIP),
  progress: codeOnly(Response.PROGRESS),
  shutdown: codeOnly(Response.SHUTDOWN),
  connFail: codeOnly(Response.CONN_FAIL),
};

/** Preallocated payload-less commands, by kind (`eom` only when it carries no chunk). */
const CONSTANT_COMMANDS: Readonly<Record<string, Buffer>> = {
  data: codeOnly(Command.DATA),
  eoh: codeOnly(Command.EOH),
  abort: codeOnly(Command.ABORT),
  quit: codeOnly(Command.QUIT),
  quitNewConnection: codeOnly(Command.QUIT_NC),
  eom: codeOnly(Command.BODYEOB),
};

const FAMILY_BYTES: Record<AddressFamily, number> = { unknown: 0x55, unix: 0x4c, inet: 0x34, inet6: 0x36 };

function checkChunk(chunk: Buffer, what: string): number {
  // Splitting is the caller's job (session for REPLBODY, client for BODY): a silent split here would hide
  // a bug, and a larger packet would kill a libmilter peer (§1.3).
  if (chunk.length > MILTER_CHUNK_SIZE) {
    throw invalid(`${what} chunk of ${chunk.length} bytes exceeds ${MILTER_CHUNK_SIZE}; split it first`);
  }
  return chunk.length;
}

function checkU32(n: number, what: string): void {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw invalid(`${what} must be a u32, got ${n}`);
}

function stringsSize(values: readonly string[], what: string): number {
  let n = 0;
  for (const v of values) n += cstringSize(v, what);
  return n;
}

function macroListsSize(lists: MacroLists | undefined): number {
  if (lists === undefined) return 0;
  let n = 0;
  for (const [, names] of Object.entries(lists)) {
    if (names !== undefined) n += MILTER_LEN_BYTES + cstringSize(names, 'macro list');
  }
  return n;
}

/** Payload size of a response; also validates it. */
function responsePayloadSize(r: MilterResponse): number {
  switch (r.kind) {
    case 'optneg':
      checkU32(r.version, 'version');
      checkU32(r.actions, 'actions');
      checkU32(r.protocol, 'protocol');
      return MILTER_OPTLEN + macroListsSize(r.macroLists);
    case 'replyCode':
      return cstringSize(r.text, 'reply text');
    case 'addHeader':
      return cstringSize(r.name, 'header name') + cstringSize(r.value, 'header value');
    case 'insertHeader':
    case 'changeHeader':
      checkU32(r.index, 'header index');
      return MILTER_LEN_BYTES + cstringSize(r.name, 'header name') + cstringSize(r.value, 'header value');
    case 'addRecipient':
    case 'deleteRecipient':
      return cstringSize(r.recipient, 'recipient');
    case 'addRecipientWithArgs':
      return cstringSize(r.recipient, 'recipient') + (r.args === undefined ? 0 : cstringSize(r.args, 'args'));
    case 'changeFrom':
      return cstringSize(r.sender, 'sender') + (r.args === undefined ? 0 : cstringSize(r.args, 'args'));
    case 'quarantine':
      return cstringSize(r.reason, 'quarantine reason');
    case 'replaceBody':
      return checkChunk(r.chunk, 'replace-body');
    case 'accept':
    case 'continue':
    case 'reject':
    case 'tempfail':
    case 'discard':
    case 'skip':
    case 'shutdown':
    case 'progress':
    case 'connFail':
      return 0;
    default:
      return unknownKind(r, 'response');
  }
}

function responseCode(r: MilterResponse): number {
  return RESPONSE_CODES[r.kind];
}

const RESPONSE_CODES: Record<MilterResponse['kind'], number> = {
  optneg: Response.OPTNEG,
  accept: Response.ACCEPT,
  continue: Response.CONTINUE,
  reject: Response.REJECT,
  tempfail: Response.TEMPFAIL,
  discard: Response.DISCARD,
  skip: Response.SKIP,
  shutdown: Response.SHUTDOWN,
  progress: Response.PROGRESS,
  connFail: Response.CONN_FAIL,
  replyCode: Response.REPLYCODE,
  addHeader: Response.ADDHEADER,
  insertHeader: Response.INSHEADER,
  changeHeader: Response.CHGHEADER,
  addRecipient: Response.ADDRCPT,
  addRecipientWithArgs: Response.ADDRCPT_PAR,
  deleteRecipient: Response.DELRCPT,
  replaceBody: Response.REPLBODY,
  changeFrom: Response.CHGFROM,
  quarantine: Response.QUARANTINE,
};

/** Write a response's payload at `o`; returns the offset after it. */
function writeResponsePayload(r: MilterResponse, buf: Buffer, o: number): number {
  switch (r.kind) {
    case 'optneg':
      o = buf.writeUInt32BE(r.version, o);
      o = buf.writeUInt32BE(r.actions, o);
      o = buf.writeUInt32BE(r.protocol, o);
      if (r.macroLists !== undefined) {
        for (const [stage, names] of Object.entries(r.macroLists)) {
          if (names === undefined) continue;
          o = buf.writeUInt32BE(Number(stage), o);
          o = writeCString(buf, o, names);
        }
      }
      return o;
    case 'replyCode':
      return writeCString(buf, o, r.text);
    case 'addHeader':
      return writeCString(buf, writeCString(buf, o, r.name), r.value);
    case 'insertHeader':
    case 'changeHeader':
      o = buf.writeUInt32BE(r.index, o);
      return writeCString(buf, writeCString(buf, o, r.name), r.value);
    case 'addRecipient':
    case 'deleteRecipient':
      return writeCString(buf, o, r.recipient);
    case 'addRecipientWithArgs':
      o = writeCString(buf, o, r.recipient);
      return r.args === undefined ? o : writeCString(buf, o, r.args);
    case 'changeFrom':
      o = writeCString(buf, o, r.sender);
      return r.args === undefined ? o : writeCString(buf, o, r.args);
    case 'quarantine':
      return writeCString(buf, o, r.reason);
    case 'replaceBody':
      return o + r.chunk.copy(buf, o);
    case 'accept':
    case 'continue':
    case 'reject':
    case 'tempfail':
    case 'discard':
    case 'skip':
    case 'shutdown':
    case 'progress':
    case 'connFail':
      return o;
    default:
      return unknownKind(r, 'response');
  }
}

/** Write one frame whose payload is produced by `write`, backfilling the length prefix. */
function writeFrame<T>(
  buf: Buffer,
  o: number,
  code: number,
  value: T,
  write: (value: T, buf: Buffer, o: number) => number,
): number {
  buf[o + MILTER_LEN_BYTES] = code;
  const end = write(value, buf, o + HEADER);
  buf.writeUInt32BE(end - o - MILTER_LEN_BYTES, o);
  return end;
}

/**
 * Encode one filter → MTA response as a complete frame. Payload-less decisions return a shared,
 * preallocated buffer. Throws `ERR_MILTER_INVALID_ARGUMENT` for a replace-body chunk above 65535 bytes,
 * a string containing NUL, or a non-u32 number.
 */
export function encodeResponse(response: MilterResponse): Buffer {
  const constant = CONSTANT_RESPONSES[response.kind];
  if (constant !== undefined) return constant;
  const buf = Buffer.allocUnsafe(HEADER + responsePayloadSize(response));
  writeFrame(buf, 0, responseCode(response), response, writeResponsePayload);
  return buf;
}

/** Encode several responses into one buffer (one allocation, one socket write), in order. */
export function encodeResponses(responses: readonly MilterResponse[]): Buffer {
  let total = 0;
  for (const r of responses) total += HEADER + responsePayloadSize(r);
  const buf = Buffer.allocUnsafe(total);
  let o = 0;
  for (const r of responses) o = writeFrame(buf, o, responseCode(r), r, writeResponsePayload);
  return buf;
}

/** Payload size of a command; also validates it. */
function commandPayloadSize(c: MilterCommand): number {
  switch (c.kind) {
    case 'optneg':
      checkU32(c.version, 'version');
      checkU32(c.actions, 'actions');
      checkU32(c.protocol, 'protocol');
      return MILTER_OPTLEN;
    case 'macro': {
      if (c.stage.length !== 1 || c.stage.charCodeAt(0) > 0x7f) {
        throw invalid(`macro stage must be one ASCII letter, got "${c.stage}"`);
      }
      let n = 1;
      for (const [name, value] of c.macros)
        n += cstringSize(name, 'macro name') + cstringSize(value, 'macro value');
      return n;
    }
    case 'connect':
      if (c.family === 'unknown') return cstringSize(c.hostname, 'hostname') + 1;
      if (!Number.isInteger(c.port) || c.port < 0 || c.port > 0xffff) throw invalid(`invalid port ${c.port}`);
      return cstringSize(c.hostname, 'hostname') + 3 + cstringSize(c.address, 'address');
    case 'helo':
      return cstringSize(c.hostname, 'helo hostname');
    case 'mail':
      return cstringSize(c.sender, 'sender') + stringsSize(c.args, 'esmtp argument');
    case 'rcpt':
      return cstringSize(c.recipient, 'recipient') + stringsSize(c.args, 'esmtp argument');
    case 'header':
      return cstringSize(c.name, 'header name') + cstringSize(c.value, 'header value');
    case 'body':
      return checkChunk(c.chunk, 'body');
    case 'eom':
      return checkChunk(c.chunk, 'eom');
    case 'unknown':
      return cstringSize(c.line, 'unknown command line');
    case 'data':
    case 'eoh':
    case 'abort':
    case 'quit':
    case 'quitNewConnection':
      return 0;
    default:
      return unknownKind(c, 'command');
  }
}

const COMMAND_CODES: Record<MilterCommand['kind'], number> = {
  optneg: Command.OPTNEG,
  macro: Command.MACRO,
  connect: Command.CONNECT,
  helo: Command.HELO,
  mail: Command.MAIL,
  rcpt: Command.RCPT,
  data: Command.DATA,
  header: Command.HEADER,
  eoh: Command.EOH,
  body: Command.BODY,
  eom: Command.BODYEOB,
  abort: Command.ABORT,
  quit: Command.QUIT,
  quitNewConnection: Command.QUIT_NC,
  unknown: Command.UNKNOWN,
};

function writeStrings(buf: Buffer, o: number, values: readonly string[]): number {
  for (const v of values) o = writeCString(buf, o, v);
  return o;
}

function writeCommandPayload(c: MilterCommand, buf: Buffer, o: number): number {
  switch (c.kind) {
    case 'optneg':
      o = buf.writeUInt32BE(c.version, o);
      o = buf.writeUInt32BE(c.actions, o);
      return buf.writeUInt32BE(c.protocol, o);
    case 'macro':
      buf[o++] = c.stage.charCodeAt(0);
      for (const [name, value] of c.macros) o = writeCString(buf, writeCString(buf, o, name), value);
      return o;
    case 'connect':
      o = writeCString(buf, o, c.hostname);
      buf[o++] = FAMILY_BYTES[c.family];
      if (c.family === 'unknown') return o;
      o = buf.writeUInt16BE(c.port, o);
      return writeCString(buf, o, c.address);
    case 'helo':
      return writeCString(buf, o, c.hostname);
    case 'mail':
      return writeStrings(buf, writeCString(buf, o, c.sender), c.args);
    case 'rcpt':
      return writeStrings(buf, writeCString(buf, o, c.recipient), c.args);
    case 'header':
      return writeCString(buf, writeCString(buf, o, c.name), c.value);
    case 'body':
    case 'eom':
      return o + c.chunk.copy(buf, o);
    case 'unknown':
      return writeCString(buf, o, c.line);
    case 'data':
    case 'eoh':
    case 'abort':
    case 'quit':
    case 'quitNewConnection':
      return o;
    default:
      return unknownKind(c, 'command');
  }
}

function constantCommand(c: MilterCommand): Buffer | undefined {
  if (c.kind === 'eom') return c.chunk.length === 0 ? CONSTANT_COMMANDS.eom : undefined;
  return CONSTANT_COMMANDS[c.kind];
}

/**
 * Encode one MTA → filter command as a complete frame. Payload-less commands return a shared,
 * preallocated buffer. Throws `ERR_MILTER_INVALID_ARGUMENT` for a body/EOM chunk above 65535 bytes, a string
 * containing NUL, a bad port or a macro stage that is not one ASCII letter.
 */
export function encodeCommand(command: MilterCommand): Buffer {
  const constant = constantCommand(command);
  if (constant !== undefined) return constant;
  const buf = Buffer.allocUnsafe(HEADER + commandPayloadSize(command));
  writeFrame(buf, 0, COMMAND_CODES[command.kind], command, writeCommandPayload);
  return buf;
}

/** Encode several commands into one buffer (one allocation, one socket write), in order. */
export function encodeCommands(commands: readonly MilterCommand[]): Buffer {
  let total = 0;
  for (const c of commands) total += HEADER + commandPayloadSize(c);
  const buf = Buffer.allocUnsafe(total);
  let o = 0;
  for (const c of commands) o = writeFrame(buf, o, COMMAND_CODES[c.kind], c, writeCommandPayload);
  return buf;
}
