/**
 * File-descriptor headroom for listeners.
 *
 * When accept(2) fails with EMFILE or ENFILE, libuv closes a spare descriptor it keeps for the purpose,
 * accepts and closes every pending connection, and reopens the spare (its "EMFILE trick"). Node is never
 * told: no 'error' event, no callback. A process out of descriptors therefore refuses every new
 * connection with nothing logged or counted.
 *
 * To make that visible, a listener closes a connection accepted into one of the process's last `reserve`
 * descriptors and reports it as EMFILE. The kernel hands out the lowest free descriptor, so such a
 * connection means every lower one is taken: the process is about to run out. The reserve also keeps
 * logging, reloads and the admin endpoint working while the milter listeners are saturated.
 */
import { readFile } from 'node:fs/promises';
import type net from 'node:net';

let limit: Promise<number | undefined> | undefined;

/**
 * The process's soft RLIMIT_NOFILE (Node raises it to the hard limit at start), read once from
 * /proc/self/limits. Undefined where that file does not exist (not Linux) or says "unlimited": the
 * headroom check is then off and libuv's silent behaviour stays.
 */
export function openFileLimit(): Promise<number | undefined> {
  limit ??= readFile('/proc/self/limits', 'utf8').then(
    (text) => {
      const m = /^Max open files\s+(\d+)\s/m.exec(text);
      return m === null ? undefined : Number(m[1]);
    },
    () => undefined,
  );
  return limit;
}

/** The descriptor of an accepted socket, when the runtime exposes it (net's `_handle.fd`); else undefined. */
export function socketFd(socket: net.Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/**
 * True when `socket` was accepted into the last `reserve` descriptors below `limit` (see the module
 * comment). False when either is unknown or the reserve is 0.
 */
export function inFdReserve(socket: net.Socket, limit: number | undefined, reserve: number): boolean {
  if (limit === undefined || reserve <= 0) return false;
  const fd = socketFd(socket);
  return fd !== undefined && fd >= limit - reserve;
}
