/**
 * Optional syslog output of the daemon's log (`--log-syslog`), so mail administrators find milterd's lines
 * in the mail log next to Postfix's. Each pino line becomes one syslog message `<PRI>text`: PRI from the
 * facility (default mail) and the line's level, text the same fields as the pretty format without time
 * and level (syslog adds its own).
 *
 * Transport: Node has no Unix datagram sockets, and /dev/log is one (rsyslog, syslog-ng, journald). The
 * messages are therefore handed to util-linux's `logger` (Debian: bsdutils, always installed), one long-
 * lived child reading them on its stdin (`--prio-prefix`): it talks to the local socket (datagram or
 * stream) or to a UDP server, and writes the header as the chosen format wants it: RFC 3164
 * (`<PRI>Mmm dd hh:mm:ss HOST milterd[PID]: text`, what local syslogds expect) or RFC 5424, with
 * milterd's pid. Its stdin is fed through an AsyncLogDestination: a stalled syslogd costs log lines
 * (dropped and counted), never mail.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { AsyncLogDestination, type WriteFn } from './async-destination.js';

/** Syslog facilities by name (RFC 5424 table 1; the names of syslog.conf). */
export const SYSLOG_FACILITIES = {
  kern: 0,
  user: 1,
  mail: 2,
  daemon: 3,
  auth: 4,
  syslog: 5,
  lpr: 6,
  news: 7,
  uucp: 8,
  cron: 9,
  authpriv: 10,
  ftp: 11,
  local0: 16,
  local1: 17,
  local2: 18,
  local3: 19,
  local4: 20,
  local5: 21,
  local6: 22,
  local7: 23,
} as const;

/** A facility name. */
export type SyslogFacility = keyof typeof SYSLOG_FACILITIES;

/** Message formats: RFC 3164 (BSD, what syslogd expects on /dev/log) and RFC 5424. */
export const SYSLOG_FORMATS = ['rfc3164', 'rfc5424'] as const;
/** One of {@link SYSLOG_FORMATS}. */
export type SyslogFormat = (typeof SYSLOG_FORMATS)[number];

/** Where messages go: a local socket, or a UDP server. */
export type SyslogTarget = { kind: 'unix'; path: string } | { kind: 'udp'; host: string; port: number };

/** The default target of a bare `--log-syslog`: the local syslog daemon. */
export const DEFAULT_SYSLOG_SOCKET = 'unix:/dev/log';

/** `unix:/path` (or `/path`) or `udp:HOST:PORT` (`udp:[IPv6]:PORT`); throws a plain Error otherwise. */
export function parseSyslogTarget(text: string): SyslogTarget {
  const t = text.trim();
  const path = t.startsWith('/') ? t : t.startsWith('unix:') ? t.slice(5) : undefined;
  if (path !== undefined) {
    if (!path.startsWith('/') || path.includes('\0')) throw new Error('expected unix:/absolute/path');
    return { kind: 'unix', path };
  }
  const m = /^udp:(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(t);
  const port = Number(m?.[3]);
  if (m === null || !(port >= 1 && port <= 65535)) {
    throw new Error('expected unix:/path (e.g. unix:/dev/log), udp:HOST:PORT or off');
  }
  const host = m[1] ?? (m[2] as string);
  if (m[1] !== undefined && isIP(host) !== 6) throw new Error(`"${host}" is not an IPv6 address`);
  return { kind: 'udp', host, port };
}

/** Canonical text of a target (`unix:/dev/log`, `udp:[::1]:514`). */
export function formatSyslogTarget(target: SyslogTarget): string {
  if (target.kind === 'unix') return `unix:${target.path}`;
  return `udp:${isIP(target.host) === 6 ? `[${target.host}]` : target.host}:${target.port}`;
}

/** Syslog severity of a pino level: fatal→crit(2), error→err(3), warn→warning(4), info→info(6), else debug(7). */
export function syslogSeverity(level: number): number {
  if (level >= 60) return 2;
  if (level >= 50) return 3;
  if (level >= 40) return 4;
  if (level >= 30) return 6;
  return 7;
}

/** PRI = facility × 8 + severity. */
export function syslogPri(facility: SyslogFacility, level: number): number {
  return SYSLOG_FACILITIES[facility] * 8 + syslogSeverity(level);
}

/**
 * One pino JSON line as `<PRI>text\n` for `logger --prio-prefix`: `text` is what `describe` makes of the
 * record, on one line (control characters, line breaks included, become spaces). A line that is not JSON
 * is sent as it is, at level info.
 */
export function toSyslogLine(
  line: string,
  facility: SyslogFacility,
  describe: (record: Record<string, unknown>) => string,
): string {
  let level = 30;
  let text: string;
  try {
    const record = JSON.parse(line) as Record<string, unknown>;
    if (typeof record.level === 'number') level = record.level;
    text = describe(record);
  } catch {
    text = line;
  }
  // eslint-disable-next-line no-control-regex
  return `<${syslogPri(facility, level)}>${text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim()}\n`;
}

/** Arguments of `logger` for a target and format; `pid` is milterd's, shown in the tag. */
export function loggerArgs(target: SyslogTarget, format: SyslogFormat, pid: number): string[] {
  const where =
    target.kind === 'unix'
      ? [`--socket=${target.path}`]
      : ['--udp', `--server=${target.host}`, `--port=${target.port}`];
  // rsyslog's default maximum message size; logger's own default (1 KiB) would split longer lines.
  return [
    ...where,
    `--${format}`,
    '--socket-errors=on',
    '--prio-prefix',
    '--size=8192',
    '--tag=milterd',
    `--id=${pid}`,
  ];
}

/** Options of {@link openSyslog}. */
export interface SyslogOptions {
  target: SyslogTarget;
  facility: SyslogFacility;
  format: SyslogFormat;
  /** Turns a pino record into the message text (the pretty format without time and level). */
  describe: (record: Record<string, unknown>) => string;
  /** Bytes buffered while syslog does not keep up; beyond them lines are dropped. */
  maxBufferBytes?: number;
  /** Lines dropped (the daemon counts them). */
  onDrop?: (lines: number) => void;
  /** Lines were dropped and there is room again. */
  onRecovered?: (dropped: number) => void;
  /** `logger` stopped before close(): from now on every line is dropped. */
  onExit?: (code: number | null, stderr: string) => void;
  /** The `logger` command; default `logger` from PATH. */
  command?: string;
}

/** A running syslog output: a pino destination, and close() for the exit path. */
export interface SyslogOutput {
  readonly destination: AsyncLogDestination;
  /** Write what is buffered (at most `timeoutMs`), then stop `logger` and wait for it. */
  close(timeoutMs: number): Promise<void>;
}

/** Why syslog output cannot start: a missing socket, or no `logger` command. */
export class SyslogUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SyslogUnavailableError';
  }
}

/**
 * Start the syslog output. Rejects with SyslogUnavailableError when the local socket does not exist or
 * is not a socket, or when the `logger` command cannot be run.
 */
export async function openSyslog(options: SyslogOptions): Promise<SyslogOutput> {
  const { target } = options;
  const spec = formatSyslogTarget(target);
  if (target.kind === 'unix') {
    let isSocket: boolean;
    try {
      isSocket = (await stat(target.path)).isSocket();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      const hint = code === 'ENOENT' ? ': is a syslog daemon (rsyslog, syslog-ng, journald) running?' : '';
      throw new SyslogUnavailableError(`${spec}: no such socket (${code})${hint}`, { cause: err });
    }
    if (!isSocket) throw new SyslogUnavailableError(`${spec}: not a socket`);
  }
  const child = spawn(options.command ?? 'logger', loggerArgs(target, options.format, process.pid), {
    stdio: ['pipe', 'ignore', 'pipe'],
    // Its own process group: Ctrl-C in a terminal must not stop it before milterd's last lines are sent.
    // It ends when its stdin does (close(), or milterd's exit, however abrupt).
    detached: true,
  });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new SyslogUnavailableError(
          `${spec}: cannot run the logger command (${err.code ?? err.message}); ` +
            '--log-syslog needs logger from util-linux (Debian: bsdutils)',
          { cause: err },
        ),
      ),
    );
  });
  return new LoggerProcess(child, options);
}

class LoggerProcess implements SyslogOutput {
  readonly destination: AsyncLogDestination;
  private closing = false;
  private stderr = '';
  private readonly exited: Promise<void>;

  constructor(
    private readonly child: ChildProcess,
    options: SyslogOptions,
  ) {
    const stdin = child.stdin as NonNullable<ChildProcess['stdin']>;
    // EPIPE once logger is gone: reported through the write callback below, never thrown.
    stdin.on('error', () => undefined);
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      if (this.stderr.length < 4096) this.stderr += d;
    });
    this.exited = new Promise((resolve) => {
      child.once('exit', (code) => {
        if (!this.closing) options.onExit?.(code, this.stderr.trim());
        resolve();
      });
    });
    const write: WriteFn = (_fd, buffer, callback) => {
      if (stdin.destroyed || !stdin.writable) {
        const err: NodeJS.ErrnoException = new Error('logger is not running');
        err.code = 'EPIPE';
        callback(err, 0);
        return;
      }
      stdin.write(buffer, (err) => {
        if (err) {
          const e = err as NodeJS.ErrnoException;
          e.code ??= 'EPIPE';
          callback(e, 0);
        } else callback(null, buffer.length);
      });
    };
    this.destination = new AsyncLogDestination({
      fd: -1,
      write,
      format: (line) => toSyslogLine(line, options.facility, options.describe),
      ...(options.maxBufferBytes === undefined ? {} : { maxBufferBytes: options.maxBufferBytes }),
      ...(options.onDrop === undefined ? {} : { onDrop: options.onDrop }),
      ...(options.onRecovered === undefined ? {} : { onRecovered: options.onRecovered }),
    });
  }

  async close(timeoutMs: number): Promise<void> {
    await this.destination.drain(timeoutMs);
    this.closing = true;
    // End of input: logger sends what it read and exits. A stuck one is stopped by its pid.
    this.child.stdin?.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }
}
