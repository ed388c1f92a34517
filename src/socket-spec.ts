/**
 * Milter socket specs as libmilter's smfi_setconn and Sendmail's `S=` accept them:
 * `inet:PORT@HOST`, `inet:PORT` (all IPv4 addresses, unless the caller asks for loopback), `inet:PORT@[1.2.3.4]`, `inet6:PORT@HOST`,
 * `inet6:PORT@[::1]`, `unix:/path`, `local:/path`, bare `/path`. Protocol names are case-insensitive.
 * Used by the server (listen) and the client (connect).
 */
import { isIP } from 'node:net';
import { MilterConfigError } from './errors.js';

export type SocketSpec =
  { kind: 'inet'; port: number; host: string; family: 4 | 6 } | { kind: 'unix'; path: string };

const SERVICE_PORTS: Record<string, number> = { smtp: 25, submission: 587, milter: 8891 };

/** Options of {@link parseSocketSpec}. */
export interface ParseSocketSpecOptions {
  /**
   * The host of `inet:PORT` / `inet6:PORT` without `@HOST`: `any` (0.0.0.0 / ::, libmilter's reading,
   * the default) or `loopback` (127.0.0.1 / ::1: the admin endpoint, which must not be reachable from
   * the network unless asked for).
   */
  defaultHost?: 'any' | 'loopback';
}

/** Parse a socket spec; throws MilterConfigError (ERR_MILTER_LISTEN_SPEC) naming the problem. */
export function parseSocketSpec(spec: string, options: ParseSocketSpecOptions = {}): SocketSpec {
  const fail = (why: string): never => {
    throw new MilterConfigError(
      `invalid socket spec "${spec}": ${why}`,
      { field: 'listen' },
      {
        code: 'ERR_MILTER_LISTEN_SPEC',
      },
    );
  };
  const text = spec.trim();
  if (text.startsWith('/')) return { kind: 'unix', path: text };
  const colon = text.indexOf(':');
  if (colon < 0) return fail('expected inet:PORT@HOST, inet6:PORT@HOST, unix:/path or local:/path');
  const proto = text.slice(0, colon).toLowerCase();
  const rest = text.slice(colon + 1);
  if (proto === '' && rest.startsWith('/')) return { kind: 'unix', path: rest };
  if (proto === 'unix' || proto === 'local') {
    if (rest === '') return fail('missing socket path');
    return { kind: 'unix', path: rest };
  }
  if (proto !== 'inet' && proto !== 'inet6') return fail(`unknown protocol "${proto}"`);
  const family = proto === 'inet6' ? 6 : 4;
  const at = rest.indexOf('@');
  const portText = at < 0 ? rest : rest.slice(0, at);
  const loopback = options.defaultHost === 'loopback';
  const defaultHost = family === 6 ? (loopback ? '::1' : '::') : loopback ? '127.0.0.1' : '0.0.0.0';
  let host = at < 0 ? defaultHost : rest.slice(at + 1);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (host === '') return fail('missing host after "@"');
  let port: number;
  if (/^\d+$/.test(portText)) port = Number(portText);
  else if (portText in SERVICE_PORTS) port = SERVICE_PORTS[portText] as number;
  else return fail(`invalid port "${portText}"`);
  if (port > 65535) return fail(`port ${port} out of range`);
  const ipVersion = isIP(host);
  if (ipVersion !== 0 && ipVersion !== family) {
    return fail(`${proto} needs an IPv${family} address, got "${host}"`);
  }
  return { kind: 'inet', port, host, family };
}

/** Render a spec back to its canonical text (for logs and the readiness endpoint). */
export function formatSocketSpec(spec: SocketSpec): string {
  if (spec.kind === 'unix') return `unix:${spec.path}`;
  const host = spec.family === 6 && spec.host.includes(':') ? `[${spec.host}]` : spec.host;
  return `${spec.family === 6 ? 'inet6' : 'inet'}:${spec.port}@${host}`;
}
