/**
 * Listening socket set-up: TCP (v4/v6) and Unix sockets with libmilter's stale-socket rule
 * (smfi_opensocket(true): remove an existing path only if it is a socket nobody listens on), optional
 * mode and group, and removal of our own socket file on close.
 *
 * A Unix socket appears at its path with its final mode and group: it is bound in a fresh private
 * directory next to the path, given its mode and group there, and then hard-linked to the path
 * (see {@link listenPrivately}).
 */
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import { dirname, join } from 'node:path';
import { MilterConfigError, MilterConnectionError } from '../errors.js';
import { formatSocketSpec, type SocketSpec } from '../socket-spec.js';
import { DEFAULTS } from '../defaults.js';

/** Where a server listens, as reported by `MilterServer.addresses`. */
export interface ListenAddress {
  /** Canonical spec with the real port (`inet:40211@127.0.0.1`, `unix:/run/milter.sock`). */
  spec: string;
  kind: 'inet' | 'unix';
  host?: string;
  port?: number;
  path?: string;
}

/** Unix socket options (ignored for TCP). */
export interface UnixSocketOptions {
  /** Mode of the socket file (e.g. 0o660), set before the socket appears at its path. */
  socketMode?: number;
  /** Group (name or gid) the socket file is chowned to, so the MTA's group may connect. */
  socketGroup?: string | number;
}

/** Options of {@link bindListener}. */
export interface BindOptions extends UnixSocketOptions {
  /**
   * listen(2) backlog: connections the kernel queues before we accept them (capped by
   * net.core.somaxconn). Default {@link DEFAULT_BACKLOG}.
   */
  backlog?: number;
}

/**
 * Default listen backlog. Node's own default (511) overflows when hundreds of MTA processes connect at
 * once: on TCP the kernel drops SYNs (the client retries after 1 s), on Unix sockets connect() fails with
 * EAGAIN. 4096 is Linux's default somaxconn since 5.4.
 */
export const DEFAULT_BACKLOG: number = DEFAULTS.backlog;

/** A bound listener and how to release it. */
export interface BoundListener {
  server: net.Server;
  address: ListenAddress;
  /** Stop accepting and remove our socket file; resolves when the listening socket is closed. */
  close(): Promise<void>;
}

/**
 * Bind `server` to `spec`. Unix: a stale socket file (nobody accepts on it) is removed first; a live one,
 * or a path that is not a socket (a symlink included: it is never followed), fails with
 * ERR_MILTER_SOCKET_IN_USE. TCP: EADDRINUSE maps to the same code. A bad `socketGroup` fails with
 * ERR_MILTER_CONFIG before anything is created; a path too long for a Unix socket with
 * ERR_MILTER_LISTEN_SPEC.
 */
export async function bindListener(
  server: net.Server,
  spec: SocketSpec,
  options: BindOptions = {},
): Promise<BoundListener> {
  const backlog = options.backlog ?? DEFAULT_BACKLOG;
  if (spec.kind === 'inet') {
    await listenOn(server, { host: spec.host, port: spec.port, backlog }, formatSocketSpec(spec));
    const bound = server.address() as net.AddressInfo;
    const real: SocketSpec = { ...spec, port: bound.port };
    return {
      server,
      address: { spec: formatSocketSpec(real), kind: 'inet', host: spec.host, port: bound.port },
      close: () => closeServer(server),
    };
  }
  const path = spec.path;
  const where = formatSocketSpec(spec);
  // A bad group fails before any file exists.
  const gid = options.socketGroup === undefined ? undefined : await resolveGroup(options.socketGroup);
  await removeStaleSocket(path);
  const ino = await listenPrivately(server, path, { backlog, mode: options.socketMode, gid }, where);
  return {
    server,
    address: { spec: where, kind: 'unix', path },
    close: async () => {
      // net unlinks the path it bound (the private one, long gone); the socket's real name is ours to remove.
      await closeServer(server);
      await unlinkIfOurs(path, ino);
    },
  };
}

/** Longest Unix socket path: sun_path holds 108 bytes on Linux (104 on BSDs), one of them the NUL. */
const SOCKET_PATH_MAX = 107;
/** The private directory next to the socket path: this prefix and six random characters (mkdtemp). */
const PRIVATE_DIR_PREFIX = '.milterd-';
/** The socket's name inside it (short: the whole path must fit in sun_path too). */
const PRIVATE_SOCKET_NAME = 's';

/**
 * Listen on a Unix socket that appears at `path` with its final mode and group; returns its inode.
 *
 * Setting them by path after listen() left a window in which the socket had the umask's mode, and
 * chmod/chown followed a symlink swapped in at the path. So the socket is bound in a fresh directory
 * next to `path` (mkdtemp: mode 0700, the same filesystem), where nobody else can reach it, gets its mode
 * and group there, and is then hard-linked to `path`. link(2) neither follows nor replaces anything at
 * `path`: whatever appeared there since the stale-socket check (a file, a symlink, another milterd's
 * socket) makes it fail, and nothing is overwritten; rename(2) would replace it. Not umask around
 * listen(): the umask is process-wide (every file other code creates meanwhile) and a worker thread
 * cannot set it. The private directory is gone when this returns; clients always connect by `path`.
 */
async function listenPrivately(
  server: net.Server,
  path: string,
  options: { backlog: number; mode: number | undefined; gid: number | undefined },
  where: string,
): Promise<number> {
  const dir = dirname(path);
  const shape = join(dir, `${PRIVATE_DIR_PREFIX}XXXXXX`, PRIVATE_SOCKET_NAME);
  const longest = Math.max(Buffer.byteLength(path), Buffer.byteLength(shape));
  if (longest > SOCKET_PATH_MAX) {
    throw new MilterConfigError(
      `${where}: path too long: the socket is bound as ${shape} first (${longest} bytes; a Unix socket path has at most ${SOCKET_PATH_MAX})`,
      { field: 'listen' },
      { code: 'ERR_MILTER_LISTEN_SPEC' },
    );
  }
  const privateDir = await fs.mkdtemp(join(dir, PRIVATE_DIR_PREFIX));
  const bound = join(privateDir, PRIVATE_SOCKET_NAME);
  try {
    await listenOn(server, { path: bound, backlog: options.backlog }, where);
    try {
      if (options.mode !== undefined) await fs.chmod(bound, options.mode);
      // uid -1 leaves the owner unchanged (chown(2) semantics).
      if (options.gid !== undefined) await fs.chown(bound, -1, options.gid);
      const { ino } = await fs.lstat(bound);
      await fs.link(bound, path);
      return ino;
    } catch (err) {
      await closeServer(server);
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      throw new MilterConnectionError(
        'ERR_MILTER_SOCKET_IN_USE',
        `${path} appeared while binding; not replaced`,
        {
          cause: err,
        },
      );
    }
  } finally {
    // Only what this created: the private name (net unlinks it too when the server closes) and the directory.
    await fs.rm(bound, { force: true });
    await fs.rmdir(privateDir);
  }
}

/** Wait until an externally created server listens, then describe its address. */
export async function adoptServer(server: net.Server): Promise<BoundListener> {
  if (!server.listening) {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => {
        server.off('listening', onListening);
        reject(err);
      };
      const onListening = (): void => {
        server.off('error', onError);
        resolve();
      };
      server.once('error', onError);
      server.once('listening', onListening);
    });
  }
  const bound = server.address();
  let address: ListenAddress;
  if (typeof bound === 'string') address = { spec: `unix:${bound}`, kind: 'unix', path: bound };
  else if (bound === null) address = { spec: 'unknown', kind: 'unix' };
  else {
    const family = bound.family === 'IPv6' ? 6 : 4;
    const spec = formatSocketSpec({ kind: 'inet', host: bound.address, port: bound.port, family });
    address = { spec, kind: 'inet', host: bound.address, port: bound.port };
  }
  return { server, address, close: () => closeServer(server) };
}

function listenOn(server: net.Server, options: net.ListenOptions, spec: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      server.off('listening', onListening);
      if (err.code === 'EADDRINUSE') {
        reject(
          new MilterConnectionError('ERR_MILTER_SOCKET_IN_USE', `${spec}: address already in use`, {
            cause: err,
          }),
        );
      } else reject(err);
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(options);
  });
}

async function closeServer(server: net.Server): Promise<void> {
  // net.Server.close() calls back only once every accepted socket is gone; the caller tracks its own
  // connections, so "no longer accepting" is enough here, and that happens synchronously.
  if (server.listening) server.close(() => undefined);
}

/**
 * libmilter's rule: a non-socket at the path is an error (never delete a user's file); a socket is
 * removed only when connecting to it fails with ECONNREFUSED (no process behind it). libmilter itself
 * unlinks any socket; probing first keeps a second milterd from stealing a running one's address.
 */
async function removeStaleSocket(path: string): Promise<void> {
  let stat;
  try {
    stat = await fs.lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!stat.isSocket()) {
    throw new MilterConnectionError(
      'ERR_MILTER_SOCKET_IN_USE',
      `${path} exists and is not a socket; refusing to remove it`,
    );
  }
  const probe = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
    const socket = net.connect({ path });
    socket.once('connect', () => {
      socket.destroy();
      resolve(undefined);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err));
  });
  if (probe === undefined) {
    throw new MilterConnectionError(
      'ERR_MILTER_SOCKET_IN_USE',
      `${path}: another process is listening on this socket`,
    );
  }
  if (probe.code === 'ENOENT') return; // removed meanwhile
  if (probe.code !== 'ECONNREFUSED') {
    // EACCES and the like: we cannot tell whether it is alive, so we must not remove it.
    throw new MilterConnectionError('ERR_MILTER_SOCKET_IN_USE', `${path}: cannot probe the existing socket`, {
      cause: probe,
    });
  }
  await fs.rm(path, { force: true });
}

/** Remove the socket file unless someone replaced it since we bound (inode changed). */
async function unlinkIfOurs(path: string, ino: number | undefined): Promise<void> {
  try {
    const stat = await fs.lstat(path);
    if (!stat.isSocket() || (ino !== undefined && stat.ino !== ino)) return;
    await fs.rm(path, { force: true });
  } catch {
    // Already gone (removed by someone else): nothing to do.
  }
}

/** Resolve a group name through /etc/group (Node has no getgrnam); numbers are used as they are. */
export async function resolveGroup(group: string | number): Promise<number> {
  if (typeof group === 'number') return group;
  if (/^\d+$/.test(group)) return Number(group);
  const text = await fs.readFile('/etc/group', 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new MilterConfigError(`unknown group "${group}" for the socket`, { field: 'socketGroup' });
}
