/**
 * The single catalogue of milterd errors. Every error has a stable `code` (tests assert on it, never on
 * the message) and may carry a `cause`. Protocol errors are fatal to one connection; filter errors become
 * decisions; configuration errors fail at start-up.
 */

/** The byte stream broke the protocol (codes of {@link MilterProtocolError}). */
export type ProtocolErrorCode =
  | 'ERR_MILTER_FRAME_EMPTY'
  | 'ERR_MILTER_FRAME_TOO_LARGE'
  | 'ERR_MILTER_UNKNOWN_COMMAND'
  | 'ERR_MILTER_MALFORMED_PAYLOAD'
  | 'ERR_MILTER_UNKNOWN_RESPONSE'
  | 'ERR_MILTER_UNEXPECTED_RESPONSE'
  | 'ERR_MILTER_NEGOTIATION';

/** A filter callback or a policy hook misbehaved (codes of {@link MilterFilterError}). */
export type FilterErrorCode =
  | 'ERR_MILTER_CALLBACK_FAILED'
  | 'ERR_MILTER_CALLBACK_TIMEOUT'
  | 'ERR_MILTER_ILLEGAL_DECISION'
  | 'ERR_MILTER_INVALID_REPLY'
  | 'ERR_MILTER_HOOK_FAILED'
  | 'ERR_MILTER_HOOK_TIMEOUT';

/** An API was called with a value, or at a time, it refuses (codes of {@link MilterUsageError}). */
export type UsageErrorCode =
  'ERR_MILTER_INVALID_ARGUMENT' | 'ERR_MILTER_WRONG_STAGE' | 'ERR_MILTER_ACTION_NOT_NEGOTIATED';

/** A socket or the server's lifecycle failed (codes of {@link MilterConnectionError}). */
export type ConnectionErrorCode =
  | 'ERR_MILTER_TIMEOUT'
  | 'ERR_MILTER_CONNECTION_CLOSED'
  | 'ERR_MILTER_SOCKET_IN_USE'
  | 'ERR_MILTER_SERVER_CLOSED';

/** A configuration, policy, value or listen spec is invalid (codes of {@link MilterConfigError}). */
export type ConfigErrorCode = 'ERR_MILTER_CONFIG' | 'ERR_MILTER_LISTEN_SPEC' | 'ERR_MILTER_HOOK_INVALID';

/** A shared policy store failed, was too slow, or its circuit breaker is open (codes of {@link MilterStoreError}). */
export type StoreErrorCode =
  'ERR_MILTER_STORE_FAILED' | 'ERR_MILTER_STORE_TIMEOUT' | 'ERR_MILTER_STORE_UNAVAILABLE';

/** Every code; each belongs to exactly one error class (its family's type above says which). */
export type MilterErrorCode =
  | ProtocolErrorCode
  | FilterErrorCode
  | UsageErrorCode
  | ConnectionErrorCode
  | ConfigErrorCode
  | StoreErrorCode;

/**
 * Base class of every error milterd throws; never thrown itself: each code is thrown by the one subclass
 * of its family, so `instanceof` and `code` always agree.
 */
export abstract class MilterError extends Error {
  readonly code: MilterErrorCode;
  protected constructor(code: MilterErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MilterError';
    this.code = code;
  }
}

/** The byte stream broke the protocol: the connection is closed, no reply is sent. */
export class MilterProtocolError extends MilterError {
  declare readonly code: ProtocolErrorCode;
  constructor(code: ProtocolErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'MilterProtocolError';
  }
}

/** User filter code or a policy hook misbehaved (threw, timed out, returned an illegal decision or reply). */
export class MilterFilterError extends MilterError {
  declare readonly code: FilterErrorCode;
  constructor(code: FilterErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'MilterFilterError';
  }
}

/**
 * An API was called with a value it cannot use (a header name with a colon, a string with NUL for the
 * wire, a bad macro stage) or at a time it refuses (an action after `eom` returned, one not negotiated,
 * overlapping client calls): the caller's bug. Inside a callback it becomes ERR_MILTER_CALLBACK_FAILED.
 */
export class MilterUsageError extends MilterError {
  declare readonly code: UsageErrorCode;
  constructor(code: UsageErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'MilterUsageError';
  }
}

/** A socket failed or timed out, or the server's lifecycle refused the call (closed, address in use). */
export class MilterConnectionError extends MilterError {
  declare readonly code: ConnectionErrorCode;
  constructor(code: ConnectionErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'MilterConnectionError';
  }
}

/** A shared policy store failed, took too long, or was not asked because its circuit breaker is open. */
export class MilterStoreError extends MilterError {
  declare readonly code: StoreErrorCode;
  constructor(code: StoreErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'MilterStoreError';
  }
}

/**
 * A configuration, policy file, value (duration, size, CIDR…) or listen spec is invalid. `file`, `line`
 * and `field` locate it when known.
 */
export class MilterConfigError extends MilterError {
  declare readonly code: ConfigErrorCode;
  readonly file: string | undefined;
  readonly line: number | undefined;
  /** 1-based column, when known. */
  readonly column: number | undefined;
  readonly field: string | undefined;
  /**
   * Every problem this error stands for (a file is checked as a whole): `[this]` for a single problem;
   * for several, the message holds one line per problem and file/line/field are the first one's.
   */
  readonly problems: readonly MilterConfigError[];
  constructor(
    message: string,
    where: { file?: string; line?: number; column?: number; field?: string } = {},
    options?: { cause?: unknown; code?: ConfigErrorCode; problems?: readonly MilterConfigError[] },
  ) {
    super(options?.code ?? 'ERR_MILTER_CONFIG', message, options);
    this.name = 'MilterConfigError';
    this.file = where.file;
    this.line = where.line;
    this.column = where.column;
    this.field = where.field;
    this.problems = options?.problems ?? [this];
  }

  /**
   * One error for a non-empty list of problems: the problem itself when there is one (and `format`
   * leaves its message as it is), else an error whose message has one line per problem (each rendered
   * by `format`), located by the first.
   */
  static of(
    problems: readonly MilterConfigError[],
    format: (p: MilterConfigError) => string = (p) => p.message,
  ): MilterConfigError {
    const first = problems[0];
    if (first === undefined) throw new RangeError('MilterConfigError.of: no problems');
    if (problems.length === 1 && format(first) === first.message) return first;
    const where = {
      ...(first.file === undefined ? {} : { file: first.file }),
      ...(first.line === undefined ? {} : { line: first.line }),
      ...(first.column === undefined ? {} : { column: first.column }),
      ...(first.field === undefined ? {} : { field: first.field }),
    };
    return new MilterConfigError(problems.map(format).join('\n'), where, {
      problems: problems.flatMap((p) => p.problems),
    });
  }
}

/** True when `err` is a MilterError with the given code. */
export function isMilterError(err: unknown, code?: MilterErrorCode): err is MilterError {
  return err instanceof MilterError && (code === undefined || err.code === code);
}
