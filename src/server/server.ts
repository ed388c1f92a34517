/**
 * The milter server: owns listeners and the set of live connections, enforces the connection limit and
 * implements graceful shutdown. Everything protocol-related lives in the session; everything per-socket
 * in MilterConnection.
 */
import * as net from 'node:net';
import type { Logger } from 'pino';
import { MilterConfigError, MilterConnectionError } from '../errors.js';
import type { Filter } from '../filter.js';
import { silentLogger } from '../logging/logger.js';
import { LogRateLimiter } from '../logging/rate-limit.js';
import type { MilterObserver } from '../observer.js';
import { MILTER_MDS_64K } from '../protocol/constants.js';
import { DEFAULTS } from '../defaults.js';
import type { FailureDecision } from '../session/types.js';
import { parseSocketSpec, type SocketSpec } from '../socket-spec.js';
import { MilterConnection } from './connection.js';
import { reportFastPathsOnce } from './fast-paths.js';
import { inFdReserve, openFileLimit, socketFd } from './fd-limit.js';
import { acceptWithSharedReads, type SharedReadRelay } from './shared-read.js';
import { adoptServer, bindListener, type BoundListener, type ListenAddress } from './listen.js';

export type { ListenAddress } from './listen.js';

/** Timeouts in milliseconds; 0 disables one. */
export interface MilterServerTimeouts {
  /** From accept to the MTA's OPTNEG. Default 30 s (MTAs send OPTNEG at once; the daemon's is 10 s). */
  negotiateMs?: number;
  /**
   * From the first byte of a frame to its last. Default 10 s: Postfix and Sendmail write each packet at
   * once (Sendmail gives up writing after its own `S:` timeout, 10 s by default), so only a peer that
   * dribbles bytes to hold a connection slot ever needs longer.
   */
  frameMs?: number;
  /** Waiting for the MTA's next command. Default 7210 s, libmilter's I/O timeout (§11.1; the daemon's is 10 min). */
  idleMs?: number;
  /**
   * One filter callback; on expiry the failure decision is sent. Default 30 s, Postfix's
   * milter_command_timeout; `eom` gets the same budget (why: src/defaults.ts, `callbackMs`).
   */
  callbackMs?: number;
}

/** Options of {@link createMilterServer}. Validated at once; the object is never modified. */
export interface MilterServerOptions<P> {
  filter: Filter<P>;
  /**
   * Root pino logger; each connection gets a child `{ conn, peer }` (unless the logger is silent at accept
   * time: then connections log through it directly). Default: silent.
   */
  logger?: Logger;
  /** Live connections allowed; beyond it new ones are accepted and closed at once. Default 1000. */
  maxConnections?: number;
  /**
   * Live connections allowed from one remote address (Unix-socket peers are not counted); beyond it new
   * ones from that address are accepted and closed at once. Default 0: no per-peer limit (an MTA opens
   * one milter connection per SMTP session, and with milterd on loopback the MTA and anybody else share
   * one address). With several MTA hosts, set it well above each one's own concurrency (Postfix: its
   * smtpd process limits) and below `maxConnections`.
   */
  maxConnectionsPerPeer?: number;
  timeouts?: MilterServerTimeouts;
  /** Decision sent when a callback throws or times out. Default 'tempfail'. */
  failureDecision?: FailureDecision;
  /**
   * Largest payload accepted unless the MTA negotiates a bigger one (SMFIP_MDS_256K/1M). Default
   * 64 KiB - 1, libmilter's: Sendmail never sends more without MDS, and Postfix, whose headers go out
   * unsplit, caps header_size_limit at 60000 as soon as milters are configured (cleanup_message.c)
   * so that they fit libmilter's limit; its body chunks are at most 65535 bytes.
   */
  maxDataSize?: number;
  observer?: MilterObserver;
  /** chmod for Unix sockets (e.g. 0o660). */
  socketMode?: number;
  /** Group (name or gid) for Unix sockets. */
  socketGroup?: string | number;
  /** Queued socket bytes per connection above which reading pauses. Default 256 KiB. */
  readBudgetBytes?: number;
  /**
   * listen(2) backlog of the sockets `listen()` binds (not of a net.Server passed in): connections the
   * kernel queues until they are accepted, capped by `net.core.somaxconn`. Default 4096 (Node's is 511,
   * which overflows when hundreds of MTA processes connect at once).
   */
  backlog?: number;
  /**
   * Read all connections into one shared 64 KiB buffer (Node's `onread`) instead of a fresh buffer per
   * read: less CPU and memory per command. It relies on net.Socket internals and falls back to ordinary
   * reads when they are missing or the socket comes from a net.Server passed to listen() without
   * `pauseOnConnect`. Such connections also write their replies straight to the socket's handle
   * (direct-write.ts). Default true; false always uses ordinary stream reads and writes.
   */
  sharedReadBuffer?: boolean;
  /**
   * Descriptors kept free: a connection accepted into one of the process's last `fdReserve` file
   * descriptors is closed at once and reported as an accept error EMFILE (observer `acceptError`, a
   * rate-limited log line), because libuv sheds connections it cannot accept for lack of descriptors
   * without telling anyone (fd-limit.ts). Needs Linux's /proc/self/limits; 0 turns it off. Default 32.
   */
  fdReserve?: number;
  /**
   * Rate limit of the lines peers can cause (protocol errors, refused negotiations, accept errors); pass
   * one to share it with other components of the process. Default: one per server, 10 lines per error
   * code and second.
   */
  logLimiter?: LogRateLimiter;
}

/** A running milter server. */
export interface MilterServer {
  /**
   * Start listening on `inet:PORT@HOST`, `inet6:PORT@HOST`, `unix:/path` / `local:/path`, a parsed spec,
   * or an existing net.Server (which the milter server then owns and closes). May be called several
   * times. Rejects with ERR_MILTER_LISTEN_SPEC (bad spec), ERR_MILTER_SOCKET_IN_USE (address taken, a
   * live or non-socket file at a Unix path), ERR_MILTER_SERVER_CLOSED (after close()).
   */
  listen(spec: string | SocketSpec | net.Server): Promise<ListenAddress>;
  /** Every address listened on, with real ports. */
  readonly addresses: ListenAddress[];
  /** Live connections. */
  readonly connectionCount: number;
  /** True once close() was called. */
  readonly draining: boolean;
  /**
   * Stop accepting at once, let sessions end at SMFIC_QUIT (or close at once those idle after
   * SMFIC_QUIT_NC), and after `deadlineMs` (default 10 s, on an unref'ed timer) destroy the sockets of the
   * others and terminate their sessions with 'shutdown'. Resolves once every listener and connection is
   * closed and, before the deadline, every session finished (close callbacks ran); past the deadline it
   * does not wait for a callback still running. Idempotent: every call returns the same promise.
   */
  close(options?: { deadlineMs?: number }): Promise<void>;
}

/** Connection ids are unique in the process, across servers. */
let connectionSeq = 0;

/** Create a milter server; throws MilterConfigError (ERR_MILTER_CONFIG) for invalid options. */
export function createMilterServer<P>(options: MilterServerOptions<P>): MilterServer {
  return new Server(options as MilterServerOptions<unknown>);
}

/** The peer as logged: `ip:port`, `[ipv6]:port`, or `unix:PATH` (the listening path). */
function peerName(socket: net.Socket, address: ListenAddress): string {
  if (socket.remoteAddress === undefined) return `unix:${address.path ?? ''}`;
  return socket.remoteFamily === 'IPv6'
    ? `[${socket.remoteAddress}]:${socket.remotePort ?? 0}`
    : `${socket.remoteAddress}:${socket.remotePort ?? 0}`;
}

function checkCount(value: number | undefined, field: string, min: number): void {
  if (value === undefined) return;
  if (!Number.isSafeInteger(value) || value < min) {
    throw new MilterConfigError(`${field} must be an integer >= ${min}, got ${String(value)}`, { field });
  }
}

class Server implements MilterServer {
  private readonly filter: Filter<unknown>;
  private readonly logger: Logger;
  private readonly observer: MilterObserver | undefined;
  private readonly failureDecision: FailureDecision | undefined;
  private readonly maxConnections: number;
  private readonly maxConnectionsPerPeer: number;
  /** Live connections per remote address (only with maxConnectionsPerPeer). */
  private readonly perPeer = new Map<string, number>();
  /** Addresses refused (and logged) since they reached maxConnectionsPerPeer: logged once until below. */
  private readonly peersAtLimit = new Set<string>();
  private readonly timeouts: Required<MilterServerTimeouts>;
  private readonly maxDataSize: number;
  private readonly readBudgetBytes: number;
  private readonly backlog: number;
  private readonly sharedReadBuffer: boolean;
  private readonly socketMode: number | undefined;
  private readonly socketGroup: string | number | undefined;
  private readonly fdReserve: number;
  private readonly logLimiter: LogRateLimiter;
  /** RLIMIT_NOFILE, known once the first listen() read it. */
  private fdLimit: number | undefined;
  private readonly listeners: BoundListener[] = [];
  private readonly connections = new Set<MilterConnection>();
  private closing: Promise<void> | undefined;

  constructor(options: MilterServerOptions<unknown>) {
    if (typeof options.filter !== 'object' || options.filter === null) {
      throw new MilterConfigError('filter must be an object of callbacks', { field: 'filter' });
    }
    checkCount(options.maxConnections, 'maxConnections', 1);
    checkCount(options.maxConnectionsPerPeer, 'maxConnectionsPerPeer', 0);
    checkCount(options.timeouts?.negotiateMs, 'timeouts.negotiateMs', 0);
    checkCount(options.timeouts?.frameMs, 'timeouts.frameMs', 0);
    checkCount(options.timeouts?.idleMs, 'timeouts.idleMs', 0);
    checkCount(options.timeouts?.callbackMs, 'timeouts.callbackMs', 0);
    checkCount(options.maxDataSize, 'maxDataSize', MILTER_MDS_64K);
    checkCount(options.readBudgetBytes, 'readBudgetBytes', 1);
    checkCount(options.backlog, 'backlog', 1);
    checkCount(options.socketMode, 'socketMode', 0);
    checkCount(options.fdReserve, 'fdReserve', 0);
    this.filter = options.filter;
    this.logger = options.logger ?? silentLogger;
    this.observer = options.observer;
    this.failureDecision = options.failureDecision;
    this.maxConnections = options.maxConnections ?? DEFAULTS.maxConnections;
    this.maxConnectionsPerPeer = options.maxConnectionsPerPeer ?? DEFAULTS.maxConnectionsPerPeer;
    this.timeouts = {
      negotiateMs: options.timeouts?.negotiateMs ?? DEFAULTS.negotiateMs,
      frameMs: options.timeouts?.frameMs ?? DEFAULTS.frameMs,
      idleMs: options.timeouts?.idleMs ?? DEFAULTS.idleMs,
      callbackMs: options.timeouts?.callbackMs ?? DEFAULTS.callbackMs,
    };
    this.maxDataSize = options.maxDataSize ?? DEFAULTS.maxDataSize;
    this.readBudgetBytes = options.readBudgetBytes ?? DEFAULTS.readBudgetBytes;
    this.backlog = options.backlog ?? DEFAULTS.backlog;
    this.sharedReadBuffer = options.sharedReadBuffer ?? DEFAULTS.sharedReadBuffer;
    this.socketMode = options.socketMode;
    this.socketGroup = options.socketGroup;
    this.fdReserve = options.fdReserve ?? DEFAULTS.fdReserve;
    this.logLimiter = options.logLimiter ?? new LogRateLimiter({ logger: this.logger });
  }

  get addresses(): ListenAddress[] {
    return this.listeners.map((l) => ({ ...l.address }));
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  get draining(): boolean {
    return this.closing !== undefined;
  }

  async listen(spec: string | SocketSpec | net.Server): Promise<ListenAddress> {
    if (this.closing)
      throw new MilterConnectionError('ERR_MILTER_SERVER_CLOSED', 'the milter server is closed');
    if (this.fdReserve > 0) this.fdLimit ??= await openFileLimit();
    let bound: BoundListener;
    if (spec instanceof net.Server) {
      bound = await adoptServer(spec);
    } else {
      const parsed = typeof spec === 'string' ? parseSocketSpec(spec) : spec;
      // allowHalfOpen: an MTA may send its last frames and FIN together; we still handle those frames.
      // pauseOnConnect: nothing is read before the connection decides how to read (shared-read.ts).
      const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
      bound = await bindListener(server, parsed, {
        backlog: this.backlog,
        ...(this.socketMode === undefined ? {} : { socketMode: this.socketMode }),
        ...(this.socketGroup === undefined ? {} : { socketGroup: this.socketGroup }),
      });
    }
    if (this.closing) {
      await bound.close();
      throw new MilterConnectionError(
        'ERR_MILTER_SERVER_CLOSED',
        'the milter server was closed while binding',
      );
    }
    const address = bound.address;
    // A listener milterd created has no other audience: its connections skip net's paused socket.
    const direct =
      !(spec instanceof net.Server) &&
      this.sharedReadBuffer &&
      acceptWithSharedReads(bound.server, (socket, relay) => this.accept(socket, address, relay));
    if (!direct) bound.server.on('connection', (socket: net.Socket) => this.accept(socket, address));
    if (this.sharedReadBuffer)
      reportFastPathsOnce(this.logger, spec instanceof net.Server ? undefined : direct);
    // Accept failures (ENOBUFS…) are emitted on the server; without a handler they would crash the process.
    bound.server.on('error', (err: NodeJS.ErrnoException) =>
      this.acceptFailed(address.spec, err.code ?? 'UNKNOWN', err.message),
    );
    this.listeners.push(bound);
    this.logger.info({ listen: address.spec }, 'listening');
    return { ...address };
  }

  /** Count an accept failure and log it (rate-limited: a flood of them is one line a second or so). */
  private acceptFailed(listen: string, code: string, reason: string, fd?: number): void {
    this.observer?.acceptError?.(listen, code);
    if (this.logLimiter.allow(`accept ${code}`)) {
      this.logger.error(
        { listen, code, reason, ...(fd === undefined ? {} : { fd, fdLimit: this.fdLimit }) },
        'accept failed; the connection was closed',
      );
    }
  }

  private accept(socket: net.Socket, address: ListenAddress, relay?: SharedReadRelay): void {
    if (inFdReserve(socket, this.fdLimit, this.fdReserve)) {
      // About to run out of descriptors (fd-limit.ts): refuse visibly rather than let libuv do it silently.
      const fd = socketFd(socket);
      socket.on('error', () => undefined);
      socket.destroy();
      this.acceptFailed(address.spec, 'EMFILE', 'out of file descriptors (reserve reached)', fd);
      return;
    }
    // With a silent logger (the library default) the per-connection child logger and the peer lookup
    // (a getpeername(2)) would only feed log lines that are never written.
    const silent = this.logger.level === 'silent';
    const peer = silent ? '' : peerName(socket, address);
    if (this.closing !== undefined || this.connections.size >= this.maxConnections) {
      // Fail fast: the MTA sees EOF at once and applies its default action instead of waiting.
      socket.on('error', () => undefined);
      socket.destroy();
      if (this.closing === undefined) {
        if (this.logLimiter.allow('connection limit')) {
          this.logger.warn({ peer, limit: this.maxConnections }, 'connection limit reached; refusing');
        }
        this.observer?.connectionRefused?.();
      }
      return;
    }
    // Unix-socket peers have no address: not counted (the socket's mode and group decide who connects).
    const remote = this.maxConnectionsPerPeer > 0 ? socket.remoteAddress : undefined;
    if (remote !== undefined && !this.admitPeer(remote, socket, peer)) return;
    const id = String(++connectionSeq);
    let connection: MilterConnection;
    try {
      connection = new MilterConnection({
        id,
        socket,
        logger: silent ? this.logger : this.logger.child({ conn: id, peer }),
        filter: this.filter,
        observer: this.observer,
        failureDecision: this.failureDecision,
        maxDataSize: this.maxDataSize,
        negotiateTimeoutMs: this.timeouts.negotiateMs,
        frameTimeoutMs: this.timeouts.frameMs,
        idleTimeoutMs: this.timeouts.idleMs,
        callbackTimeoutMs: this.timeouts.callbackMs,
        readBudgetBytes: this.readBudgetBytes,
        sharedReadBuffer: this.sharedReadBuffer,
        logLimiter: this.logLimiter,
        ...(relay === undefined ? {} : { sharedReadRelay: relay }),
      });
    } catch (err) {
      // Setting up one connection must never take the listener (or the process) down.
      this.logger.error({ err, conn: id, peer }, 'could not set up the connection');
      socket.on('error', () => undefined);
      socket.destroy();
      if (remote !== undefined) this.releasePeer(remote);
      return;
    }
    this.connections.add(connection);
    this.observer?.connectionOpened?.();
    void connection.closed.then(() => {
      this.connections.delete(connection);
      if (remote !== undefined) this.releasePeer(remote);
      this.observer?.connectionClosed?.();
    });
    connection.logger.debug('connection accepted');
    connection.start();
  }

  /** Count a connection from `remote`, or refuse it (closed at once) when that address is at its limit. */
  private admitPeer(remote: string, socket: net.Socket, peer: string): boolean {
    const live = this.perPeer.get(remote) ?? 0;
    if (live < this.maxConnectionsPerPeer) {
      this.perPeer.set(remote, live + 1);
      return true;
    }
    socket.on('error', () => undefined);
    socket.destroy();
    // Once per episode: a peer hammering at its limit must not flood the log.
    if (!this.peersAtLimit.has(remote)) {
      this.peersAtLimit.add(remote);
      this.logger.warn(
        { peer, limit: this.maxConnectionsPerPeer },
        'per-peer connection limit reached; refusing (logged again once the peer is under the limit)',
      );
    }
    this.observer?.connectionRefused?.();
    return false;
  }

  private releasePeer(remote: string): void {
    const live = (this.perPeer.get(remote) ?? 1) - 1;
    if (live > 0) this.perPeer.set(remote, live);
    else this.perPeer.delete(remote);
    this.peersAtLimit.delete(remote);
  }

  close(options: { deadlineMs?: number } = {}): Promise<void> {
    this.closing ??= this.shutdown(options.deadlineMs ?? DEFAULTS.deadlineMs);
    return this.closing;
  }

  private async shutdown(deadlineMs: number): Promise<void> {
    this.logger.info({ connections: this.connections.size, deadlineMs }, 'closing');
    const listenersClosed = Promise.all(this.listeners.map((l) => l.close()));
    const connections = [...this.connections]; // no new ones are accepted from here on
    for (const connection of connections) connection.drain();
    let timer: NodeJS.Timeout | undefined;
    // unref: a pending deadline alone must not keep the process alive once every socket is gone.
    const forced = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        for (const connection of connections) connection.forceClose();
        resolve();
      }, deadlineMs);
      timer.unref();
    });
    try {
      await listenersClosed;
      // Normally every session finishes (QUIT, close callback). Past the deadline, closed sockets are
      // enough: a callback still running is bounded by callbackMs, and close() must not outwait it.
      await Promise.race([
        Promise.all(connections.map((c) => c.closed)),
        forced.then(() => Promise.all(connections.map((c) => c.socketClosed))),
      ]);
    } finally {
      clearTimeout(timer);
    }
    this.logger.info('closed');
  }
}
