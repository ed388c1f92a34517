/**
 * Process exit codes of every milterd command (documented in `milterd --help` and the README).
 */
export const EXIT = {
  /** Success; `serve` after a clean drain (SIGTERM/SIGINT). */
  OK: 0,
  /** Unexpected runtime error (a bug or an environment failure); details in the log. `health`: unhealthy
   * (Docker's HEALTHCHECK convention is 1). */
  RUNTIME: 1,
  /** Usage error: unknown option or command, missing or malformed argument. */
  USAGE: 2,
  /** Invalid configuration: config file, policy file, or an invalid setting. */
  CONFIG: 3,
  /** `serve` could not listen: address in use, permission denied, unknown socket group. */
  LISTEN: 4,
  /** `test` could not talk to the milter: connection refused, timeout, protocol error. */
  MILTER: 5,
  /** `test --expect`: the conversation ran, but the milter decided otherwise than expected. */
  EXPECT: 6,
} as const;

/** One of the {@link EXIT} values. */
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** The exit-code table as help text. */
export const EXIT_CODES_HELP = `Exit codes:
  0  success (serve: stopped cleanly after SIGTERM/SIGINT)
  1  runtime error (see the log); health: the daemon did not answer
  2  usage error (unknown option, bad argument)
  3  invalid configuration (config file, policy file or setting; printed as FILE:LINE: field: problem)
  4  serve: cannot listen (address in use, permission denied, unknown socket group)
  5  test: cannot talk to the milter (refused, timeout, protocol error)
  6  test: the milter decided otherwise than an --expect said`;
