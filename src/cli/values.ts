/**
 * Value parsers shared by the command line, the environment and the config file. Each takes the raw
 * value (a string from argv/env, or any YAML value from the file) and returns the typed value, or throws
 * a plain `Error` whose message says what is wrong; callers turn it into a usage error (CLI/env) or a
 * located MilterConfigError (file).
 */
import { parseDuration, parseSize } from '../values.js';
import {
  formatSyslogTarget,
  parseSyslogTarget,
  SYSLOG_FACILITIES,
  SYSLOG_FORMATS,
  type SyslogFacility,
  type SyslogFormat,
} from '../logging/syslog.js';
import { formatSocketSpec, parseSocketSpec, type ParseSocketSpecOptions } from '../socket-spec.js';
import type { FailureDecision } from '../session/types.js';

/** Log levels, most to least severe; `silent` turns logging off. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
/** One of {@link LOG_LEVELS}. */
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Failure decisions accepted by `--failure-decision`. */
export const FAILURE_DECISIONS: readonly FailureDecision[] = ['tempfail', 'reject', 'accept', 'continue'];

/** Validate one socket spec and return its canonical text (`inet:8890@127.0.0.1`). */
export function parseListenSpec(value: unknown, options?: ParseSocketSpecOptions): string {
  if (typeof value !== 'string' || value.trim() === '') throw new Error('expected a socket spec string');
  try {
    return formatSocketSpec(parseSocketSpec(value, options));
  } catch (err) {
    throw new Error(err instanceof Error ? err.message : String(err), { cause: err });
  }
}

/** A list of socket specs: a YAML list, or one string with specs separated by commas or spaces. */
export function parseListenList(value: unknown): string[] {
  const items = Array.isArray(value)
    ? (value as unknown[])
    : typeof value === 'string'
      ? value.split(/[\s,]+/).filter((s) => s !== '')
      : undefined;
  if (items === undefined || items.length === 0) throw new Error('expected one or more socket specs');
  return items.map((item) => parseListenSpec(item));
}

/**
 * `--admin`: a TCP socket spec, or `off` (also `false`, null, '') to disable the admin endpoint. Without
 * `@HOST` it binds loopback, never every interface.
 */
export function parseAdmin(value: unknown): string {
  if (value === null || value === false || value === 'off' || value === 'false' || value === '') {
    return 'off';
  }
  const spec = parseListenSpec(value, { defaultHost: 'loopback' });
  if (!spec.startsWith('inet')) throw new Error('the admin endpoint needs an inet: or inet6: spec');
  return spec;
}

/**
 * A Unix file mode in octal: `"0660"`, `"660"`, `"0o660"`. A YAML number like `660` is read as its
 * octal digits too (YAML 1.2 reads `0660` as decimal 660, which would otherwise surprise).
 */
export function parseSocketMode(value: unknown): number {
  const text = typeof value === 'number' && Number.isInteger(value) ? String(value) : value;
  if (typeof text !== 'string' || !/^(0o?)?[0-7]{1,4}$/i.test(text.trim())) {
    throw new Error('expected an octal file mode such as 0660');
  }
  return parseInt(text.trim().replace(/^0o/i, ''), 8);
}

/** Render a mode as `0660`. */
export function formatSocketMode(mode: number): string {
  return '0' + mode.toString(8).padStart(3, '0');
}

/** A group name or numeric gid. */
export function parseGroup(value: unknown): string | number {
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0) return value;
  if (typeof value === 'string' && /^\d+$/.test(value)) return Number(value);
  if (typeof value === 'string' && /^[A-Za-z_][A-Za-z0-9_.-]*\$?$/.test(value)) return value;
  throw new Error('expected a group name or a numeric gid');
}

/**
 * `--log-syslog`: `unix:/path` (`/dev/log`), `udp:HOST:PORT`, or `off` (also `false`, null, '');
 * returns the canonical spec or `off`.
 */
export function parseSyslog(value: unknown): string {
  if (value === null || value === false || value === 'off' || value === 'false' || value === '') {
    return 'off';
  }
  if (typeof value !== 'string') throw new Error('expected unix:/path, udp:HOST:PORT or off');
  return formatSyslogTarget(parseSyslogTarget(value));
}

/** A syslog facility name (mail, daemon, local0…). */
export function parseSyslogFacility(value: unknown): SyslogFacility {
  if (typeof value === 'string' && Object.hasOwn(SYSLOG_FACILITIES, value)) return value as SyslogFacility;
  throw new Error(`expected one of ${Object.keys(SYSLOG_FACILITIES).join(', ')}`);
}

/** One of {@link SYSLOG_FORMATS}. */
export function parseSyslogFormat(value: unknown): SyslogFormat {
  const found = SYSLOG_FORMATS.find((f) => f === value);
  if (found === undefined) throw new Error(`expected one of ${SYSLOG_FORMATS.join(', ')}`);
  return found;
}

/** One of {@link LOG_LEVELS}. */
export function parseLogLevel(value: unknown): LogLevel {
  const found = LOG_LEVELS.find((l) => l === value);
  if (found === undefined) throw new Error(`expected one of ${LOG_LEVELS.join(', ')}`);
  return found;
}

/** One of {@link FAILURE_DECISIONS}. */
export function parseFailureDecision(value: unknown): FailureDecision {
  const found = FAILURE_DECISIONS.find((l) => l === value);
  if (found === undefined) throw new Error(`expected one of ${FAILURE_DECISIONS.join(', ')}`);
  return found;
}

/** A boolean: YAML true/false, or `1/0`, `true/false`, `yes/no`, `on/off` as text. */
export function parseBoolean(value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  if (typeof value === 'string') {
    const t = value.trim().toLowerCase();
    if (['1', 'true', 'yes', 'on'].includes(t)) return true;
    if (['0', 'false', 'no', 'off', ''].includes(t)) return false;
  }
  throw new Error('expected true or false');
}

/** A whole number >= `min`. */
export function parseInteger(value: unknown, min = 1): number {
  const n = typeof value === 'string' && /^\s*\d+\s*$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < min) {
    throw new Error(`expected a whole number >= ${min}`);
  }
  return n;
}

/** A buffer size in bytes, at least 4 KiB: a number, or `256KiB`, `1MiB`, `1MB` (see parseSize). */
export function parseByteSize(value: unknown): number {
  let n: number;
  try {
    n = parseSize(value);
  } catch {
    n = NaN;
  }
  if (!Number.isSafeInteger(n) || n < 4096) throw new Error('expected a size of at least 4KiB, such as 1MiB');
  return n;
}

export { parseDuration };

/** Render milliseconds as the shortest exact duration text (`30s`, `1500ms`). */
export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms !== 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms !== 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
