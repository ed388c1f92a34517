/**
 * The one duration parser and the one size parser, for every place a person writes one: command-line
 * options, the config file and the policy file. They throw a MilterConfigError (ERR_MILTER_CONFIG) without
 * a location; the callers turn its message into a located one (file, line, field).
 */
import { MilterConfigError } from './errors.js';

/** Duration units, in milliseconds. */
export const DURATION_UNITS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * A duration in ms. A bare number, or a string without a unit, means seconds (`90`, `"3600"`: as Postfix
 * reads its time parameters); a string may take a unit: `500ms`, `30s`, `5m`, `1h`, `1d` (fractions allowed:
 * `1.5h`). `0` means "no limit" where the setting says so.
 */
export function parseDuration(value: unknown): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw new MilterConfigError('expected a duration >= 0');
    return Math.round(value * 1000);
  }
  const m = typeof value === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/.exec(value) : null;
  const unit = m === null ? undefined : DURATION_UNITS[m[2] === '' ? 's' : (m[2] as string)];
  if (m === null || unit === undefined) {
    throw new MilterConfigError('expected a duration such as 500ms, 30s, 5m, 1h (a bare number is seconds)');
  }
  return Math.round(Number(m[1]) * unit);
}

/** Size units, in bytes: decimal `k`/`kB`, `M`/`MB`, `G`/`GB` (powers of 1000), binary `KiB`, `MiB`, `GiB`. */
export const SIZE_UNITS: Readonly<Record<string, number>> = {
  b: 1,
  k: 1000,
  kb: 1000,
  m: 1000 ** 2,
  mb: 1000 ** 2,
  g: 1000 ** 3,
  gb: 1000 ** 3,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
};

/**
 * A size in bytes. A bare number, or a string without a unit, is bytes; a string may take a unit,
 * case-insensitive (see {@link SIZE_UNITS}): `10MB`, `512KiB`, `1.5G`.
 */
export function parseSize(value: unknown): number {
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 0)
      throw new MilterConfigError('expected a whole number of bytes >= 0');
    return value;
  }
  const m = typeof value === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value) : null;
  const unit = m === null ? undefined : m[2] === '' ? 1 : SIZE_UNITS[(m[2] ?? '').toLowerCase()];
  if (m === null || unit === undefined) {
    throw new MilterConfigError('expected a size such as 10MB, 512KiB or a number of bytes');
  }
  return Math.round(Number(m[1]) * unit);
}
