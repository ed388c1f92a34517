/** Socket opening for the MTA-side client: TCP (with TCP_NODELAY) or Unix, with a connect timeout. */
import net from 'node:net';
import { MilterError } from '../errors.js';
import { parseSocketSpec, type SocketSpec } from '../socket-spec.js';

/** The error every call gets once the connection is gone; `cause` says why when known. */
export function closedError(cause?: unknown): MilterError {
  return new MilterError('ERR_MILTER_CONNECTION_CLOSED', 'milter connection closed', { cause });
}

/**
 * Connect to `spec` (a libmilter-style spec string or a parsed SocketSpec). Rejects with ERR_MILTER_TIMEOUT
 * after `timeoutMs`, with ERR_MILTER_CONNECTION_CLOSED (cause: the socket error) when refused; a bad spec
 * throws MilterConfigError (ERR_MILTER_LISTEN_SPEC).
 */
export async function openSocket(spec: string | SocketSpec, timeoutMs: number): Promise<net.Socket> {
  const target = typeof spec === 'string' ? parseSocketSpec(spec) : spec;
  const socket =
    target.kind === 'unix'
      ? net.connect({ path: target.path })
      : net.connect({ host: target.host, port: target.port });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new MilterError('ERR_MILTER_TIMEOUT', `connecting took more than ${timeoutMs} ms`));
    }, timeoutMs);
    const onError = (err: Error): void => {
      clearTimeout(timer);
      reject(closedError(err));
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      resolve();
    });
  });
  // Milter packets are small and strictly request/response: Nagle would add a delay to every exchange.
  if (target.kind === 'inet') socket.setNoDelay(true);
  return socket;
}
