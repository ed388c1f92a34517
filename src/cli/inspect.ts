/**
 * `milterd inspect`: a milter that lets every message through untouched and logs every event the MTA
 * sends, one line each, with the macros that came with it: to see what an MTA really sends (like
 * milter-test-client or log-milter).
 *
 * It works on the protocol layer, not on the session: each packet is logged as it arrived, macro packets
 * attached to the command that follows them (an MTA sends them right before), whatever the session would
 * do with them. It negotiates every step (no SMFIP_NO* / NR* bit), asks for header values with their
 * leading space and for recipients the MTA rejected itself (when offered), and requests every macro
 * Postfix can send and Sendmail's usual ones at every stage (SMFIR_SETSYMLIST); an MTA sends those it has.
 *
 * Safe to point at production mail: it asks for no modification action (only SETSYMLIST), answers
 * `continue` to every event (at end of message that means accept, unchanged), and a packet it cannot
 * decode only closes that milter connection (the MTA then applies its milter default action).
 */
import * as net from 'node:net';
import { Command, InvalidArgumentError, Option } from 'commander';
import { isMilterError } from '../errors.js';
import {
  MILTER_MDS_1M,
  SMFI_PROT_VERSION,
  SMFIF_SETSYMLIST,
  SMFIP_HDR_LEADSPC,
  SMFIP_RCPT_REJ,
} from '../protocol/constants.js';
import { decodeCommand } from '../protocol/decode.js';
import { encodeResponse } from '../protocol/encode.js';
import { FrameDecoder } from '../protocol/frame.js';
import type { MacroLists, MilterCommand, MilterResponse } from '../protocol/types.js';
import { bindListener, type BoundListener, type ListenAddress } from '../server/listen.js';
import { parseSocketSpec } from '../socket-spec.js';
import { EXIT, type ExitCode } from './exit-codes.js';
import { DEFAULT_LISTEN } from './options.js';
import { parseListenSpec, parseSocketMode } from './values.js';
import { unreachable } from '../unreachable.js';

/**
 * The macros requested at every stage: Postfix's (milter.h, S8_MAC_*) and Sendmail's usual ones. 47
 * names: Sendmail takes at most 50 per stage (MAXFILTERMACROS).
 */
export const INSPECT_MACROS: readonly string[] = [
  // Postfix (and Sendmail)
  'i', 'j', '_', 'v', '{daemon_name}', '{daemon_addr}', '{daemon_port}', '{if_name}', '{if_addr}',
  '{client_addr}', '{client_connections}', '{client_name}', '{client_port}', '{client_ptr}',
  '{client_resolve}', '{tls_version}', '{cipher}', '{cipher_bits}', '{cert_subject}', '{cert_issuer}',
  '{auth_type}', '{auth_authen}', '{auth_author}', '{mail_mailer}', '{mail_host}', '{mail_addr}',
  '{rcpt_mailer}', '{rcpt_host}', '{rcpt_addr}',
  // Sendmail only
  's', 'r', 'b', '{auth_ssf}', '{server_name}', '{server_addr}', '{daemon_flags}', '{ntries}', '{nrcpts}',
  '{nbadrcpts}', '{msg_id}', '{msg_size}', '{hdrlen}', '{verify}', '{cn_issuer}', '{cn_subject}',
  '{quarantine}', '{addr_type}',
]; // prettier-ignore

/** One logged event: a command with its macros, or a connection's open/close/error. */
export interface InspectEvent {
  time: string;
  /** Milter connection number (1, 2, … since start). */
  conn: number;
  event: MilterCommand['kind'] | 'open' | 'close' | 'error';
  /** The command's fields (body chunks as their size), the negotiated reply for optneg. */
  fields: Record<string, string | number | string[]>;
  /** Macros sent right before this command, in packet order. */
  macros?: Record<string, string>;
}

const hex = (n: number): string => '0x' + (n >>> 0).toString(16);

/** The fields of a command worth logging. */
function fieldsOf(cmd: MilterCommand): InspectEvent['fields'] {
  switch (cmd.kind) {
    case 'optneg':
      return { version: cmd.version, actions: hex(cmd.actions), protocol: hex(cmd.protocol) };
    case 'connect':
      return { hostname: cmd.hostname, family: cmd.family, address: cmd.address, port: cmd.port };
    case 'helo':
      return { hostname: cmd.hostname };
    case 'mail':
      return { sender: cmd.sender, args: cmd.args };
    case 'rcpt':
      return { recipient: cmd.recipient, args: cmd.args };
    case 'header':
      return { name: cmd.name, value: cmd.value };
    case 'body':
    case 'eom':
      return { bytes: cmd.chunk.length };
    case 'unknown':
      return { line: cmd.line };
    default:
      return {};
  }
}

/**
 * The reply to a command: the OPTNEG answer (every step, the offered extension bits we want, every macro
 * at every stage for v6), `continue` to every event, nothing to macro/abort/quit packets.
 */
export function inspectReply(cmd: MilterCommand): MilterResponse | undefined {
  switch (cmd.kind) {
    case 'optneg': {
      const version = Math.min(cmd.version, SMFI_PROT_VERSION);
      if (version < SMFI_PROT_VERSION) return { kind: 'optneg', version, actions: 0, protocol: 0 };
      const list = INSPECT_MACROS.join(' ');
      const macroLists: MacroLists = { 0: list, 1: list, 2: list, 3: list, 4: list, 5: list, 6: list };
      return {
        kind: 'optneg',
        version,
        actions: cmd.actions & SMFIF_SETSYMLIST,
        protocol: cmd.protocol & (SMFIP_HDR_LEADSPC | SMFIP_RCPT_REJ),
        macroLists: (cmd.actions & SMFIF_SETSYMLIST) !== 0 ? macroLists : undefined,
      };
    }
    case 'macro':
    case 'abort':
    case 'quit':
    case 'quitNewConnection':
      return undefined;
    case 'connect':
    case 'helo':
    case 'mail':
    case 'rcpt':
    case 'data':
    case 'header':
    case 'eoh':
    case 'body':
    case 'eom':
    case 'unknown':
      return { kind: 'continue' };
    default:
      return unreachable(cmd, 'command');
  }
}

/** A value as a readable token: bare when plain printable ASCII, JSON-quoted otherwise. */
function token(v: string | number | string[]): string {
  if (typeof v === 'number') return String(v);
  if (Array.isArray(v)) return v.length === 0 ? '[]' : v.map(token).join(',');
  return /^[\x21-\x7e]+$/.test(v) && !v.includes('"') ? v : JSON.stringify(v);
}

/** One event as a text line (no newline): time, connection, event, fields, then `| macros`. */
export function formatInspectEvent(e: InspectEvent): string {
  const parts = [e.time, `#${e.conn}`, e.event];
  for (const [k, v] of Object.entries(e.fields)) parts.push(`${k}=${token(v)}`);
  const macros = Object.entries(e.macros ?? {});
  if (macros.length > 0) parts.push('|', ...macros.map(([k, v]) => `${k}=${token(v)}`));
  return parts.join(' ');
}

/** A running inspector. */
export interface Inspector {
  readonly addresses: ListenAddress[];
  /** Stop listening and close every milter connection. */
  close(): Promise<void>;
}

/** Options of {@link startInspector}. */
export interface InspectorOptions {
  listen: readonly string[];
  /** Mode of Unix sockets (e.g. 0o660). */
  socketMode?: number;
  /** Called once per event, in order. */
  onEvent: (event: InspectEvent) => void;
}

/** Listen on every spec and log every milter conversation. Rejects with a MilterError when it cannot listen. */
export async function startInspector(options: InspectorOptions): Promise<Inspector> {
  const sockets = new Set<net.Socket>();
  let connSeq = 0;
  const emit = (
    conn: number,
    event: InspectEvent['event'],
    fields: InspectEvent['fields'],
    macros?: Record<string, string>,
  ): void => {
    const e: InspectEvent = { time: new Date().toISOString(), conn, event, fields };
    if (macros !== undefined) e.macros = macros;
    options.onEvent(e);
  };
  const onConnection = (socket: net.Socket): void => {
    const conn = ++connSeq;
    sockets.add(socket);
    const decoder = new FrameDecoder(MILTER_MDS_1M);
    let pending: Record<string, string> | undefined;
    emit(
      conn,
      'open',
      socket.remoteAddress === undefined ? {} : { peer: `${socket.remoteAddress}:${socket.remotePort ?? 0}` },
    );
    socket.on('data', (chunk: Buffer) => {
      try {
        decoder.push(chunk);
        for (let frame = decoder.next(); frame !== undefined; frame = decoder.next()) {
          const cmd = decodeCommand(frame);
          if (cmd.kind === 'macro') {
            pending = { ...pending, ...Object.fromEntries(cmd.macros) };
            continue;
          }
          const reply = inspectReply(cmd);
          const fields = fieldsOf(cmd);
          if (cmd.kind === 'optneg' && reply?.kind === 'optneg')
            Object.assign(fields, {
              agreed: `version=${reply.version} actions=${hex(reply.actions)} protocol=${hex(reply.protocol)}`,
            });
          emit(conn, cmd.kind, fields, pending);
          pending = undefined;
          if (reply !== undefined) socket.write(encodeResponse(reply));
          if (cmd.kind === 'quit') socket.end();
        }
      } catch (err) {
        // A broken packet ends this milter connection only; the MTA applies its default action.
        const code = isMilterError(err) ? err.code : 'ERR_MILTER_PROTOCOL';
        emit(conn, 'error', { code, message: err instanceof Error ? err.message : String(err) });
        socket.destroy();
      }
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      sockets.delete(socket);
      emit(conn, 'close', {}, pending);
    });
  };
  const bound: BoundListener[] = [];
  try {
    for (const spec of options.listen) {
      const server = net.createServer(onConnection);
      bound.push(await bindListener(server, parseSocketSpec(spec), { socketMode: options.socketMode }));
    }
  } catch (err) {
    await Promise.all(bound.map((b) => b.close()));
    throw err;
  }
  return {
    addresses: bound.map((b) => b.address),
    async close(): Promise<void> {
      for (const s of sockets) s.destroy();
      await Promise.all(bound.map((b) => b.close()));
    },
  };
}

/** A value parser's error as commander's usage error. */
function checked<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new InvalidArgumentError(err instanceof Error ? err.message : String(err));
  }
}

/** Options of `milterd inspect`, as commander hands them over. */
export interface InspectCommandOptions {
  listen?: string[];
  socketMode?: number;
  json?: boolean;
}

/** Add the `inspect` command (options only; `program` attaches the action that calls {@link runInspect}). */
export function addInspectCommand(program: Command): Command {
  return program
    .command('inspect')
    .description(
      'run a milter that lets everything through unchanged and prints every event the MTA sends, with ' +
        'its macros (every step negotiated, every macro requested): what does my MTA really send?',
    )
    .addOption(
      new Option(
        '-l, --listen <spec>',
        `socket to listen on: inet:PORT@HOST, inet6:PORT@[HOST] or unix:/path; repeatable (default: ${DEFAULT_LISTEN})`,
      ).argParser((v: string, prev: string[] | undefined) => [
        ...(prev ?? []),
        checked(() => parseListenSpec(v)),
      ]),
    )
    .addOption(
      new Option('--socket-mode <mode>', 'mode of a Unix socket, octal (e.g. 0660)').argParser((v) =>
        checked(() => parseSocketMode(v)),
      ),
    )
    .option('--json', 'one JSON object per event instead of text');
}

/**
 * Run `milterd inspect` until SIGTERM/SIGINT: one line per event on `write`, start and stop notes on
 * `warn`. Resolves with 0; rejects with a MilterError when it cannot listen.
 */
export async function runInspect(
  o: InspectCommandOptions,
  write: (text: string) => void,
  warn: (text: string) => void,
): Promise<ExitCode> {
  const inspector = await startInspector({
    listen: o.listen ?? [DEFAULT_LISTEN],
    socketMode: o.socketMode,
    onEvent: (e) => write((o.json === true ? JSON.stringify(e) : formatInspectEvent(e)) + '\n'),
  });
  warn(
    `milterd inspect: listening on ${inspector.addresses.map((a) => a.spec).join(', ')} (Ctrl-C to stop)\n`,
  );
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGTERM', stop).off('SIGINT', stop);
      resolve();
    };
    process.on('SIGTERM', stop).on('SIGINT', stop);
  });
  await inspector.close();
  return EXIT.OK;
}
