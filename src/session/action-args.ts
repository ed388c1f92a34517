/**
 * The checks of the arguments of EOM actions (smfi_addheader and friends), shared by the session's
 * context and a pipeline member's context: what one refuses, the other refuses too, with the same
 * ERR_MILTER_INVALID_ARGUMENT message.
 */
import { MilterUsageError } from '../errors.js';

const MAX_U32 = 0xffffffff;

export function badArg(message: string): MilterUsageError {
  return new MilterUsageError('ERR_MILTER_INVALID_ARGUMENT', message);
}

/** Strings sent as C strings must not carry NUL; names additionally no CR/LF/colon/whitespace. */
export function checkString(what: string, v: unknown, allowEmpty: boolean): string {
  if (typeof v !== 'string') throw badArg(`${what} must be a string`);
  if (!allowEmpty && v.length === 0) throw badArg(`${what} must not be empty`);
  if (v.includes('\0')) throw badArg(`${what} must not contain NUL`);
  return v;
}

export function checkHeaderName(name: unknown): string {
  const n = checkString('header name', name, false);
  if (/[\r\n:\s]/.test(n)) throw badArg('header name must not contain CR, LF, colon or whitespace');
  return n;
}

export function checkIndex(index: unknown): number {
  if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index > MAX_U32) {
    throw badArg('header index must be an integer from 0 to 2^32-1');
  }
  return index;
}
