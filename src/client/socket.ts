/** Socket opening for the MTA-side client: TCP (with TCP_NODELAY) or Unix, with a connect timeout. */
import net from 'node:net';
import { MilterConnectionError, MilterError } from '../errors.js';
import { parseSocketSpec, type SocketSpec } from '../socket-spec.js';

/** The error every call gets once the connection is gone; `cause` says why when known. */
export function closedError(cause?: unknown): MilterConnectionError {
  return new MilterConnectionError('ERR_MILTER_CONNECTION_CLOSED', 'milter connection closed', { cause });
}

/** Why a connect failed, in words an operator can act on (the errno stays in the message and `cause`). */
const CONNECT_ERRORS: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'connection refused (ECONNREFUSED): nothing listens there (or a milterd is draining)',
  ENOENT: 'no such socket (ENOENT)',
  EACCES: 'permission denied (EACCES)',
  ECONNRESET: 'connection reset (ECONNRESET)',
  ENOTSOCK: 'not a socket (ENOTSOCK)',
};

function connectError(err: NodeJS.ErrnoException): MilterError {
  const known = err.code === undefined ? undefined : CONNECT_ERRORS[err.code];
  return new MilterConnectionError(
    'ERR_MILTER_CONNECTION_CLOSED',
    `cannot connect: ${known ?? err.message}`,
    {
      cause: err,
    },
  );
}

/**
 * Connect to `spec` (a libmilter-style spec string or a parsed SocketSpec). Rejects with ERR_MILTER_TIMEOUT
 * after `timeoutMs`, with ERR_MILTER_CONNECTION_CLOSED (cause: the socket error; the message names the errno: connection
 * refused, no such socket…) when the connect fails; a bad spec
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
      reject(new MilterConnectionError('ERR_MILTER_TIMEOUT', `connecting took more than ${timeoutMs} ms`));
    }, timeoutMs);
    const onError = (err: NodeJS.ErrnoException): void => {
      clearTimeout(timer);
      reject(connectError(err));
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
