/** Errors for failed libuv calls made past net's own wrappers (shared-read.ts, direct-write.ts). */
import util from 'node:util';

/** An Error shaped like Node's own (`accept EMFILE`, with code, errno, syscall) for a negative errno. */
export function errnoError(status: number, syscall: string): NodeJS.ErrnoException {
  const code = status < 0 ? util.getSystemErrorName(status) : 'UNKNOWN';
  const err: NodeJS.ErrnoException = new Error(`${syscall} ${code}`);
  err.code = code;
  err.errno = status;
  err.syscall = syscall;
  return err;
}
