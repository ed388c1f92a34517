/**
 * The admin HTTP endpoint (node:http, off by default):
 * - `GET /healthz`: 200 while the process runs its event loop (liveness);
 * - `GET /readyz`: 200 when listening, below the connection limit and not draining, else 503 (readiness);
 * - `GET /metrics`: the Prometheus text exposition.
 * Bodies of /healthz and /readyz are small JSON documents for humans and probes.
 *
 * It shares the process's file descriptors and event loop with the milter listeners, so it is bounded:
 * a connection cap, short header/request/keep-alive/idle timeouts, and the same descriptor reserve as the
 * milter listeners (server/fd-limit.ts, with a smaller reserve so it still answers when they are full).
 */
import http from 'node:http';
import type net from 'node:net';
import type { Logger } from 'pino';
import { MilterConfigError } from '../errors.js';
import { LogRateLimiter } from '../logging/rate-limit.js';
import { inFdReserve, openFileLimit } from '../server/fd-limit.js';
import { parseSocketSpec } from '../socket-spec.js';
import { PROMETHEUS_CONTENT_TYPE } from './metrics.js';

/** Limits of the admin endpoint. */
export const ADMIN_DEFAULTS = {
  /** Connections at once; more are closed at accept (a probe or a scraper needs one or two). */
  maxConnections: 64,
  /** From connect to the end of the request headers. */
  headersTimeoutMs: 5_000,
  /** From connect to the end of the request. */
  requestTimeoutMs: 10_000,
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: 5_000,
  /** A connection with no traffic at all (not even a request started) is closed after this. */
  idleTimeoutMs: 10_000,
  /** How often the request timeouts are checked (Node's default is 30 s). */
  timeoutCheckMs: 1_000,
  /** Descriptors left free below RLIMIT_NOFILE (fd-limit.ts); smaller than the milter listeners' 32. */
  fdReserve: 8,
} as const;

/** The `listener` label of the admin endpoint's accept errors. */
export const ADMIN_LISTENER = 'admin';

/** What readiness is computed from; read at each request. */
export interface ReadinessState {
  /** The milter listeners are bound. */
  listening: boolean;
  draining: boolean;
  connections: number;
  maxConnections: number;
  /** Present only with `store.readyz`: false while the policy store's circuit breaker is open. */
  store?: boolean;
}

/** Options of {@link startAdminServer}. */
export interface AdminServerOptions {
  /** `inet:PORT@HOST` or `inet6:PORT@HOST` (port 0 picks a free one). */
  listen: string;
  /** Current readiness inputs. */
  readiness: () => ReadinessState;
  /** The metrics text (a promise when some series are read asynchronously at scrape time). */
  metrics: () => string | Promise<string>;
  logger: Logger;
  /** Connections served at once; more are closed at accept. Default {@link ADMIN_DEFAULTS}.maxConnections. */
  maxConnections?: number;
  /** An accept failure (errno code, e.g. EMFILE): the daemon counts it. */
  onAcceptError?: (code: string) => void;
  /** Rate limit of the accept-failure and connection-limit lines. Default: a new limiter. */
  logLimiter?: LogRateLimiter;
}

/** A running admin endpoint. */
export interface AdminServer {
  /** `inet:PORT@HOST` with the real port. */
  readonly address: string;
  readonly port: number;
  /** Stop listening and close idle keep-alive sockets; idempotent. */
  close(): Promise<void>;
}

function send(res: http.ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, {
    'content-type': type,
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(body);
}

/** Answer one request. Exported for in-process tests. */
export function handleAdminRequest(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  options: Pick<AdminServerOptions, 'readiness' | 'metrics'>,
): void {
  const json = 'application/json; charset=utf-8';
  const pathname = new URL(req.url ?? '/', 'http://admin').pathname;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('allow', 'GET, HEAD');
    send(res, 405, json, JSON.stringify({ error: 'method not allowed' }) + '\n');
    return;
  }
  switch (pathname) {
    case '/healthz':
      send(res, 200, json, JSON.stringify({ status: 'ok' }) + '\n');
      return;
    case '/readyz': {
      const s = options.readiness();
      const ready = s.listening && !s.draining && s.connections < s.maxConnections && s.store !== false;
      send(res, ready ? 200 : 503, json, JSON.stringify({ ready, ...s }) + '\n');
      return;
    }
    case '/metrics':
      Promise.resolve()
        .then(() => options.metrics())
        .then(
          (text) => send(res, 200, PROMETHEUS_CONTENT_TYPE, text),
          (err: unknown) => send(res, 500, json, JSON.stringify({ error: String(err) }) + '\n'),
        );
      return;
    default:
      send(
        res,
        404,
        json,
        JSON.stringify({ error: 'not found', paths: ['/healthz', '/readyz', '/metrics'] }) + '\n',
      );
  }
}

/**
 * Start the admin endpoint. Rejects with MilterConfigError for a non-TCP spec and with the listen error
 * (EADDRINUSE…) when the port cannot be bound.
 */
export async function startAdminServer(options: AdminServerOptions): Promise<AdminServer> {
  // `inet:PORT` alone means loopback here: the endpoint is never exposed by accident.
  const spec = parseSocketSpec(options.listen, { defaultHost: 'loopback' });
  if (spec.kind !== 'inet') {
    throw new MilterConfigError('the admin endpoint needs an inet: or inet6: spec', { field: 'admin' });
  }
  const logger = options.logger;
  const limiter = options.logLimiter ?? new LogRateLimiter({ logger });
  const maxConnections = options.maxConnections ?? ADMIN_DEFAULTS.maxConnections;
  const fdLimit = await openFileLimit();
  const acceptFailed = (code: string, reason: string): void => {
    options.onAcceptError?.(code);
    if (limiter.allow(`accept ${code}`)) {
      logger.error({ listen: ADMIN_LISTENER, code, reason }, 'accept failed; the connection was closed');
    }
  };
  const server = http.createServer(
    {
      headersTimeout: ADMIN_DEFAULTS.headersTimeoutMs,
      requestTimeout: ADMIN_DEFAULTS.requestTimeoutMs,
      keepAliveTimeout: ADMIN_DEFAULTS.keepAliveTimeoutMs,
      connectionsCheckingInterval: ADMIN_DEFAULTS.timeoutCheckMs,
    },
    (req, res) => {
      try {
        handleAdminRequest(req, res, options);
      } catch (err) {
        logger.error({ err }, 'admin request failed');
        if (!res.headersSent) send(res, 500, 'text/plain', 'internal error\n');
        else res.destroy();
      }
    },
  );
  // A socket with no traffic at all is not covered by the request timeouts: closed on idleness.
  server.setTimeout(ADMIN_DEFAULTS.idleTimeoutMs, (socket: net.Socket) => socket.destroy());
  server.maxConnections = maxConnections;
  server.on('drop', () => {
    if (limiter.allow('admin connection limit')) {
      logger.warn({ limit: maxConnections }, 'admin connection limit reached; refusing');
    }
  });
  server.on('connection', (socket: net.Socket) => {
    if (inFdReserve(socket, fdLimit, ADMIN_DEFAULTS.fdReserve)) {
      socket.destroy();
      acceptFailed('EMFILE', 'out of file descriptors (reserve reached)');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: spec.port, host: spec.host }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // After listen, errors are accept failures (ENOBUFS…); unhandled they would crash the process.
  server.on('error', (err: NodeJS.ErrnoException) => acceptFailed(err.code ?? 'UNKNOWN', err.message));
  const port = (server.address() as { port: number }).port;
  const host = spec.family === 6 && spec.host.includes(':') ? `[${spec.host}]` : spec.host;
  const address = `${spec.family === 6 ? 'inet6' : 'inet'}:${port}@${host}`;
  let closing: Promise<void> | undefined;
  return {
    address,
    port,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
      return closing;
    },
  };
}
