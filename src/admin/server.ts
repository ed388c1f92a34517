/**
 * The admin HTTP endpoint (node:http, off by default):
 * - `GET /healthz`: 200 while the process runs its event loop (liveness);
 * - `GET /readyz`: 200 when listening, below the connection limit and not draining, else 503 (readiness);
 * - `GET /metrics`: the Prometheus text exposition.
 * Bodies of /healthz and /readyz are small JSON documents for humans and probes.
 */
import http from 'node:http';
import type { Logger } from 'pino';
import { MilterConfigError } from '../errors.js';
import { parseSocketSpec } from '../socket-spec.js';
import { PROMETHEUS_CONTENT_TYPE } from './metrics.js';

/** What readiness is computed from; read at each request. */
export interface ReadinessState {
  /** The milter listeners are bound. */
  listening: boolean;
  draining: boolean;
  connections: number;
  maxConnections: number;
}

/** Options of {@link startAdminServer}. */
export interface AdminServerOptions {
  /** `inet:PORT@HOST` or `inet6:PORT@HOST` (port 0 picks a free one). */
  listen: string;
  /** Current readiness inputs. */
  readiness: () => ReadinessState;
  /** The metrics text. */
  metrics: () => string;
  logger: Logger;
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
      const ready = s.listening && !s.draining && s.connections < s.maxConnections;
      send(res, ready ? 200 : 503, json, JSON.stringify({ ready, ...s }) + '\n');
      return;
    }
    case '/metrics':
      send(res, 200, PROMETHEUS_CONTENT_TYPE, options.metrics());
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
  const spec = parseSocketSpec(options.listen);
  if (spec.kind !== 'inet') {
    throw new MilterConfigError('the admin endpoint needs an inet: or inet6: spec', { field: 'admin' });
  }
  const server = http.createServer((req, res) => {
    try {
      handleAdminRequest(req, res, options);
    } catch (err) {
      options.logger.error({ err }, 'admin request failed');
      if (!res.headersSent) send(res, 500, 'text/plain', 'internal error\n');
      else res.destroy();
    }
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: spec.port, host: spec.host }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => options.logger.error({ err }, 'admin endpoint error'));
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
