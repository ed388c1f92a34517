/**
 * The daemon's root logger: pino JSON lines on stdout (the default, for log collectors), or a tiny
 * built-in human-readable formatter (`--log-pretty`; pino-pretty is not a dependency). Either way the
 * lines go through a bounded asynchronous buffer, so a stalled stdout never blocks the event loop. With
 * `--log-syslog` every line also goes to syslog, through a buffer of its own (src/logging/syslog.ts).
 *
 * Levels: `fatal` (the daemon cannot go on), `error` (a listener, reload or filter failure), `warn` (limits
 * hit, forced closes, refused reloads), `info` (start, listen, stop, reload, one line per message),
 * `debug` (per-connection life cycle, every decision), `trace` (every command), `silent`.
 */
import type { DestinationStream, Logger } from 'pino';
import { ASYNC_LOG_DEFAULTS, AsyncLogDestination } from '../logging/async-destination.js';
import { createLogger } from '../logging/logger.js';
import type { SyslogOutput } from '../logging/syslog.js';
import type { LogLevel } from './values.js';

const LEVEL_NAMES: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO ',
  40: 'WARN ',
  50: 'ERROR',
  60: 'FATAL',
};

/** Longest wait of pino's `logger.flush(cb)` (as AsyncLogDestination's own flush). */
const FLUSH_MS = ASYNC_LOG_DEFAULTS.flushTimeoutMs;

/** Keys shown as the line prefix, in this order, rather than as `key=value` at the end. */
const PREFIX_KEYS = ['conn', 'peer', 'txn', 'queueId'];
const HIDDEN_KEYS = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name', ...PREFIX_KEYS]);

function show(value: unknown): string {
  if (typeof value === 'string') return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value) ?? String(value);
}

/**
 * Format one pino JSON line as `TIME LEVEL [conn=… peer=…] message key=value …`; an error's stack
 * follows on indented lines. Lines that are not JSON are passed through unchanged.
 */
export function formatPrettyLine(line: string): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.endsWith('\n') ? line : line + '\n';
  }
  const time = typeof rec.time === 'number' ? new Date(rec.time).toISOString() : '';
  const level = LEVEL_NAMES[Number(rec.level)] ?? String(rec.level);
  const { text, stack } = describeRecord(rec);
  return [time, level, ...(text === '' ? [] : [text])].join(' ') + stack + '\n';
}

/** A syslog message's text: the pretty line without time and level (syslog has its own), no stack. */
export function syslogText(rec: Record<string, unknown>): string {
  return describeRecord(rec).text;
}

/** `[conn=… peer=…] message key=value …`, and an error's stack as indented lines (or ''). */
function describeRecord(rec: Record<string, unknown>): { text: string; stack: string } {
  const prefix = PREFIX_KEYS.filter((k) => rec[k] !== undefined).map((k) => `${k}=${show(rec[k])}`);
  const rest: string[] = [];
  let stack = '';
  for (const [k, v] of Object.entries(rec)) {
    if (HIDDEN_KEYS.has(k)) continue;
    if (k === 'err' && typeof v === 'object' && v !== null) {
      const e = v as { message?: unknown; code?: unknown; stack?: unknown };
      rest.push(`err=${show(e.message)}`);
      if (e.code !== undefined) rest.push(`code=${show(e.code)}`);
      if (typeof e.stack === 'string') stack = '\n' + e.stack.replace(/^/gm, '    ');
      continue;
    }
    rest.push(`${k}=${show(v)}`);
  }
  const parts: string[] = [];
  if (prefix.length > 0) parts.push(`[${prefix.join(' ')}]`);
  if (rec.msg !== undefined) parts.push(String(rec.msg));
  parts.push(...rest);
  return { text: parts.join(' '), stack };
}

/** Options of {@link createDaemonLogger}. */
export interface DaemonLoggerOptions {
  level: LogLevel;
  pretty: boolean;
  /** Default 1 (stdout). */
  fd?: number;
  /** Bytes buffered while the descriptor is not read; default 1 MiB (ASYNC_LOG_DEFAULTS). */
  maxBufferBytes?: number;
  /** Lines dropped because the buffer was full (the daemon counts them). */
  onDrop?: (lines: number) => void;
  /** Also send every line to syslog (`--log-syslog`; see openSyslog). */
  syslog?: SyslogOutput;
}

/** The daemon's root logger and the destination behind it (for the flush at exit). */
export interface DaemonLogger {
  logger: Logger;
  destination: AsyncLogDestination;
}

/**
 * Create the daemon's root logger on stdout. Writes are asynchronous through a bounded buffer
 * (AsyncLogDestination): a stalled reader costs log lines (dropped, counted, and reported in a warning
 * once the buffer has room again), never mail. Call `destination.drain(ms)` before exiting.
 */
export function createDaemonLogger(options: DaemonLoggerOptions): DaemonLogger {
  const fd = options.fd ?? 1;
  // Using process.stdout opens fd 1 as a libuv stream, which puts a pipe or socket in non-blocking mode:
  // a write the reader cannot take then fails with EAGAIN (retried on a timer) instead of parking a
  // threadpool thread that process.exit() would wait for. Files and terminals are left as they are.
  if (fd === 1) void process.stdout;
  const destination = new AsyncLogDestination({
    fd,
    ...(options.maxBufferBytes === undefined ? {} : { maxBufferBytes: options.maxBufferBytes }),
    // pino writes one complete JSON line per call.
    ...(options.pretty ? { format: (line: string) => formatPrettyLine(line.trimEnd()) } : {}),
    ...(options.onDrop === undefined ? {} : { onDrop: options.onDrop }),
    // Only called after lines were written, so `logger` exists by then.
    onRecovered: (dropped) =>
      logger.warn({ dropped }, 'log lines were dropped: stdout was not read fast enough'),
  });
  const syslog = options.syslog?.destination;
  // Each output has its own bounded buffer: a stalled syslogd does not hold stdout back, nor the reverse.
  const tee = {
    write(line: string): void {
      destination.write(line);
      syslog?.write(line);
    },
    flush(cb?: (err?: Error) => void): void {
      void Promise.all([destination.drain(FLUSH_MS), syslog?.drain(FLUSH_MS)]).then(() => cb?.());
    },
  };
  const stream: DestinationStream = syslog === undefined ? destination : tee;
  const logger = createLogger({ level: options.level, destination: stream, name: 'milterd' });
  return { logger, destination };
}
