/**
 * The single catalogue of milterd errors. Every error has a stable `code` (tests assert on it, never on
 * the message) and may carry a `cause`. Protocol errors are fatal to one connection; filter errors become
 * decisions; configuration errors fail at start-up.
 */

export type MilterErrorCode =
  // protocol (fatal for the connection)
  | 'ERR_MILTER_FRAME_EMPTY'
  | 'ERR_MILTER_FRAME_TOO_LARGE'
  | 'ERR_MILTER_UNKNOWN_COMMAND'
  | 'ERR_MILTER_MALFORMED_PAYLOAD'
  | 'ERR_MILTER_UNKNOWN_RESPONSE'
  | 'ERR_MILTER_NEGOTIATION'
  | 'ERR_MILTER_TRUNCATED'
  // session / filter
  | 'ERR_MILTER_CALLBACK_FAILED'
  | 'ERR_MILTER_CALLBACK_TIMEOUT'
  | 'ERR_MILTER_ILLEGAL_DECISION'
  | 'ERR_MILTER_INVALID_REPLY'
  | 'ERR_MILTER_ACTION_NOT_NEGOTIATED'
  | 'ERR_MILTER_WRONG_STAGE'
  | 'ERR_MILTER_INVALID_ARGUMENT'
  // server / client / lifecycle
  | 'ERR_MILTER_TIMEOUT'
  | 'ERR_MILTER_CONNECTION_CLOSED'
  | 'ERR_MILTER_TOO_MANY_CONNECTIONS'
  | 'ERR_MILTER_LISTEN_SPEC'
  | 'ERR_MILTER_SOCKET_IN_USE'
  | 'ERR_MILTER_SERVER_CLOSED'
  | 'ERR_MILTER_UNEXPECTED_RESPONSE'
  // policy / configuration
  | 'ERR_MILTER_HOOK_FAILED'
  | 'ERR_MILTER_HOOK_TIMEOUT'
  | 'ERR_MILTER_HOOK_INVALID'
  // policy store (a shared store failed, was too slow, or its circuit breaker is open)
  | 'ERR_MILTER_STORE_FAILED'
  | 'ERR_MILTER_STORE_TIMEOUT'
  | 'ERR_MILTER_STORE_UNAVAILABLE'
  | 'ERR_MILTER_CONFIG';

/** Base class of every error milterd throws. */
export class MilterError extends Error {
  readonly code: MilterErrorCode;
  constructor(code: MilterErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MilterError';
    this.code = code;
  }
}

/** The byte stream broke the protocol: the connection is closed, no reply is sent. */
export class MilterProtocolError extends MilterError {
  constructor(code: MilterErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'MilterProtocolError';
  }
}

/** User filter code misbehaved (threw, timed out, returned an illegal decision or reply). */
export class MilterFilterError extends MilterError {
  constructor(code: MilterErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'MilterFilterError';
  }
}

/** A configuration, policy file or listen spec is invalid. `file`, `line` and `field` locate it when known. */
export class MilterConfigError extends MilterError {
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
    options?: { cause?: unknown; code?: MilterErrorCode; problems?: readonly MilterConfigError[] },
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
