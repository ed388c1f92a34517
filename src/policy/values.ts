/**
 * Value parsers shared by the policy file loader and the rule compiler: durations, sizes, CIDR blocks.
 * They throw a plain Error whose message the loader turns into a located MilterConfigError.
 */
import { BlockList, isIP } from 'node:net';

const DURATION_UNITS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * A duration in ms. A bare number means seconds (`90`); a string takes a unit: `500ms`, `30s`, `5m`,
 * `1h`, `1d` (fractions allowed: `1.5h`).
 */
export function parseDuration(value: unknown): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw new Error('expected a duration >= 0');
    return Math.round(value * 1000);
  }
  const m = typeof value === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/.exec(value) : null;
  const unit = m?.[2] === undefined ? undefined : DURATION_UNITS[m[2]];
  if (m === null || unit === undefined) {
    throw new Error('expected a duration such as 30s, 5m, 1h (a bare number is seconds)');
  }
  return Math.round(Number(m[1]) * unit);
}

const SIZE_UNITS: Readonly<Record<string, number>> = {
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
 * A size in bytes. A bare number is bytes; a string takes a unit, case-insensitive: `B`, decimal
 * `k`/`kB`, `M`/`MB`, `G`/`GB` (powers of 1000), binary `KiB`, `MiB`, `GiB` (powers of 1024).
 */
export function parseSize(value: unknown): number {
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 0) throw new Error('expected a whole number of bytes >= 0');
    return value;
  }
  const m = typeof value === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value) : null;
  const unit = m === null ? undefined : m[2] === '' ? 1 : SIZE_UNITS[(m[2] ?? '').toLowerCase()];
  if (m === null || unit === undefined)
    throw new Error('expected a size such as 10MB, 512KiB or a number of bytes');
  return Math.round(Number(m[1]) * unit);
}

/** One parsed CIDR block. */
export interface Cidr {
  readonly address: string;
  readonly prefix: number;
  readonly type: 'ipv4' | 'ipv6';
}

/** `192.0.2.0/24`, `2001:db8::/32`, or a single address (`/32` or `/128` implied). */
export function parseCidr(text: unknown): Cidr {
  if (typeof text !== 'string') throw new Error('expected a CIDR block such as 192.0.2.0/24');
  const slash = text.indexOf('/');
  const address = (slash < 0 ? text : text.slice(0, slash)).trim();
  const family = isIP(address);
  if (family === 0) throw new Error(`"${text}" is not an IP address or CIDR block`);
  const max = family === 4 ? 32 : 128;
  const prefixText = slash < 0 ? String(max) : text.slice(slash + 1).trim();
  const prefix = /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
  if (!(prefix >= 0 && prefix <= max)) throw new Error(`"${text}": prefix length must be 0..${max}`);
  return { address, prefix, type: family === 4 ? 'ipv4' : 'ipv6' };
}

/** A matcher over CIDR blocks (node:net BlockList), IPv4-mapped IPv6 addresses matched as IPv4. */
export class NetworkSet {
  readonly #list = new BlockList();
  readonly blocks: readonly Cidr[];

  constructor(blocks: readonly (string | Cidr)[]) {
    this.blocks = blocks.map((b) => (typeof b === 'string' ? parseCidr(b) : b));
    for (const b of this.blocks) this.#list.addSubnet(b.address, b.prefix, b.type);
  }

  /** Does `address` (as in SMFIC_CONNECT, maybe with an `IPv6:` tag) fall in one of the blocks? */
  has(address: string | undefined): boolean {
    if (address === undefined || address === '') return false;
    let a = address.replace(/^IPv6:/i, '');
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
    if (mapped?.[1] !== undefined) a = mapped[1];
    const family = isIP(a);
    if (family === 0) return false;
    return this.#list.check(a, family === 4 ? 'ipv4' : 'ipv6');
  }
}
