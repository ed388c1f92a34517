/**
 * The daemon's root logger: pino JSON lines on stdout (the default, for log collectors), or a tiny
 * built-in human-readable formatter (`--log-pretty`; pino-pretty is not a dependency).
 *
 * Levels: `fatal` (the daemon cannot go on), `error` (a listener, reload or filter failure), `warn` (limits
 * hit, forced closes, refused reloads), `info` (start, listen, stop, reload, one line per message),
 * `debug` (per-connection life cycle, every decision), `trace` (every command), `silent`.
 */
import { writeSync } from 'node:fs';
import { pino, type DestinationStream, type Logger } from 'pino';
import { createLogger } from '../logging/logger.js';
import type { LogLevel } from './values.js';

const LEVEL_NAMES: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO ',
  40: 'WARN ',
  50: 'ERROR',
  60: 'FATAL',
};

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
  const parts = [time, level];
  if (prefix.length > 0) parts.push(`[${prefix.join(' ')}]`);
  if (rec.msg !== undefined) parts.push(String(rec.msg));
  parts.push(...rest);
  return parts.join(' ') + stack + '\n';
}

/** A synchronous pino destination writing pretty lines to a file descriptor. */
export function prettyDestination(fd = 1): DestinationStream {
  return {
    write(chunk: string): void {
      // pino writes one complete JSON line per call.
      writeSync(fd, formatPrettyLine(chunk.trimEnd()));
    },
  };
}

/**
 * Create the daemon's root logger on stdout. Writes are synchronous (pino's default for stdout), so no
 * line is lost when the process exits right after logging.
 */
export function createDaemonLogger(options: { level: LogLevel; pretty: boolean; fd?: number }): Logger {
  const fd = options.fd ?? 1;
  const destination = options.pretty ? prettyDestination(fd) : pino.destination({ dest: fd, sync: true });
  return createLogger({ level: options.level, destination, name: 'milterd' });
}
