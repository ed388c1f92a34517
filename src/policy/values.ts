/**
 * Value parsers of the policy file loader and the rule compiler: CIDR blocks, client addresses and the
 * per-network keys of cross-session limits (durations and sizes come from src/values.ts).
 * They throw a plain Error whose message the loader turns into a located MilterConfigError.
 */
import { BlockList, isIP } from 'node:net';
import { MilterConfigError } from '../errors.js';

// Durations and sizes: the one parser of each, shared with the CLI and the config file.
export { parseDuration, parseSize } from '../values.js';

/** One parsed CIDR block. */
export interface Cidr {
  readonly address: string;
  readonly prefix: number;
  readonly type: 'ipv4' | 'ipv6';
}

/** Longest prefix (the address length in bits) per family. */
export const MAX_PREFIX = { ipv4: 32, ipv6: 128 } as const;

/** `192.0.2.0/24`, `2001:db8::/32`, or a single address (`/32` or `/128` implied). */
export function parseCidr(text: unknown): Cidr {
  if (typeof text !== 'string') throw new MilterConfigError('expected a CIDR block such as 192.0.2.0/24');
  const slash = text.indexOf('/');
  const address = (slash < 0 ? text : text.slice(0, slash)).trim();
  const family = isIP(address);
  if (family === 0) throw new MilterConfigError(`"${text}" is not an IP address or CIDR block`);
  const max = family === 4 ? MAX_PREFIX.ipv4 : MAX_PREFIX.ipv6;
  const prefixText = slash < 0 ? String(max) : text.slice(slash + 1).trim();
  const prefix = /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
  if (!(prefix >= 0 && prefix <= max))
    throw new MilterConfigError(`"${text}": prefix length must be 0..${max}`);
  return { address, prefix, type: family === 4 ? 'ipv4' : 'ipv6' };
}

/** An IP address reduced to its bytes: 4 for IPv4, 16 for IPv6. */
export interface IpAddress {
  readonly type: 'ipv4' | 'ipv6';
  readonly bytes: Uint8Array;
}

/**
 * Parse a client address as the MTAs send it: `192.0.2.7`, `2001:db8::5`, Sendmail's `IPv6:2001:db8::5`
 * (also fully expanded), `[...]` brackets, a zone id (`fe80::1%eth0`, dropped). An IPv4-mapped IPv6
 * address (`::ffff:192.0.2.7`, `::ffff:c000:207`) is the IPv4 address: a dual-stack socket reports IPv4
 * clients that way. Undefined for anything that is not an IP address (a Unix socket path, '').
 */
export function parseIpAddress(text: string): IpAddress | undefined {
  let a = text.trim();
  if (a.length > 5 && a.slice(0, 5).toLowerCase() === 'ipv6:') a = a.slice(5);
  if (a.startsWith('[') && a.endsWith(']')) a = a.slice(1, -1);
  const zone = a.indexOf('%');
  if (zone >= 0) a = a.slice(0, zone);
  const family = isIP(a);
  if (family === 4) return { type: 'ipv4', bytes: Uint8Array.from(a.split('.'), Number) };
  if (family !== 6) return undefined;
  const bytes = ipv6Bytes(a);
  const mapped = bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  return mapped ? { type: 'ipv4', bytes: bytes.slice(12) } : { type: 'ipv6', bytes };
}

/** The 16 bytes of an IPv6 address that `isIP` accepted (no zone id). */
function ipv6Bytes(a: string): Uint8Array {
  const bytes = new Uint8Array(16);
  const groups = (part: string): number[] => {
    if (part === '') return [];
    const out: number[] = [];
    for (const g of part.split(':')) {
      if (g.includes('.')) {
        const [b0, b1, b2, b3] = g.split('.').map(Number) as [number, number, number, number];
        out.push((b0 << 8) | b1, (b2 << 8) | b3);
      } else out.push(parseInt(g, 16));
    }
    return out;
  };
  const gap = a.indexOf('::');
  const head = groups(gap < 0 ? a : a.slice(0, gap));
  const tail = gap < 0 ? [] : groups(a.slice(gap + 2));
  const all = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  all.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 0xff;
  });
  return bytes;
}

/** RFC 5952 text of an address: dotted IPv4; lower-case IPv6 with the longest run of 2+ zero groups as `::`. */
export function formatIpAddress(ip: IpAddress): string {
  if (ip.type === 'ipv4') return Array.from(ip.bytes).join('.');
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push(((ip.bytes[i] as number) << 8) | (ip.bytes[i + 1] as number));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = (xs: number[]): string => xs.map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(g) : `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

/** Prefix lengths by which cross-session limits group client addresses. */
export interface ClientPrefix {
  /** 0..32; 32 = each IPv4 address on its own. */
  readonly ipv4: number;
  /** 0..128; 64 = one IPv6 subnet (what one site, or one customer of a provider, usually gets). */
  readonly ipv6: number;
}

/**
 * Default grouping: IPv4 addresses one by one, IPv6 addresses by /64. A host usually holds a whole /64
 * and can send from any of its 2^64 addresses: counted one by one, it escapes every per-client limit.
 */
export const DEFAULT_CLIENT_PREFIX: ClientPrefix = Object.freeze({ ipv4: 32, ipv6: 64 });

/**
 * The key cross-session limits count a client under: its network at `prefix` (`2001:db8:1:2::/64`,
 * `192.0.2.0/24`), or the address itself at full length (`192.0.2.7`). A non-IP address (a Unix socket
 * path) is its own key, lower-cased; '' has none (undefined).
 */
export function clientKey(address: string, prefix: ClientPrefix = DEFAULT_CLIENT_PREFIX): string | undefined {
  const ip = parseIpAddress(address);
  if (ip === undefined) return address === '' ? undefined : address.toLowerCase();
  const bits = ip.type === 'ipv4' ? prefix.ipv4 : prefix.ipv6;
  const max = ip.bytes.length * 8;
  if (bits >= max) return formatIpAddress(ip);
  const net = Uint8Array.from(ip.bytes);
  for (let i = 0; i < net.length; i++) {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    net[i] = (net[i] as number) & ((0xff << (8 - keep)) & 0xff);
  }
  return `${formatIpAddress({ type: ip.type, bytes: net })}/${bits}`;
}

/** A matcher over CIDR blocks (node:net BlockList), IPv4-mapped IPv6 addresses matched as IPv4. */
export class NetworkSet {
  readonly #list = new BlockList();
  readonly blocks: readonly Cidr[];

  constructor(blocks: readonly (string | Cidr)[]) {
    this.blocks = blocks.map((b) => (typeof b === 'string' ? parseCidr(b) : b));
    for (const b of this.blocks) this.#list.addSubnet(b.address, b.prefix, b.type);
  }

  /**
   * Does `address` (as in SMFIC_CONNECT, maybe with an `IPv6:` tag or a zone id) fall in one of the
   * blocks? IPv4-mapped IPv6 addresses are matched as IPv4.
   */
  has(address: string | undefined): boolean {
    const ip = address === undefined ? undefined : parseIpAddress(address);
    if (ip === undefined) return false;
    return this.#list.check(formatIpAddress(ip), ip.type);
  }
}
