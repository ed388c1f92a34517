/**
 * Root logger construction. The library never creates a global logger: the server takes one by
 * injection and falls back to `silentLogger`, so nothing is printed unless the caller asks for it.
 */
import { pino, type DestinationStream, type Level, type Logger } from 'pino';

/** Options of {@link createLogger}. */
export interface CreateLoggerOptions {
  /** Minimum level; 'silent' disables logging. Default 'info'. */
  level?: Level | 'silent';
  /**
   * Where lines go: a file descriptor, a file path or a stream. Default: file descriptor 2 (stderr), so
   * that stdout stays free for command output (`milterd check` prints its results there).
   */
  destination?: number | string | DestinationStream;
  /** Bound as `name` on every line (useful when several milters log to one place). */
  name?: string;
  /**
   * Write file-descriptor and path destinations synchronously. Default false (buffered, faster); a
   * caller about to exit should then call `logger.flush()` first.
   */
  sync?: boolean;
  /** Extra paths to redact (pino `redact` syntax); values become "[redacted]". */
  redact?: readonly string[];
}

/** A destination that drops everything; used by `silentLogger` so it never opens a file descriptor. */
const nullDestination: DestinationStream = { write: () => undefined };

/**
 * Create a root pino logger with milterd's serializers (`err` through pino's standard error serializer,
 * which keeps `code` and `cause`). Called once at start-up by the CLI or by an embedding application;
 * never throws for a valid level (pino throws on an unknown one).
 */
export function createLogger(options: CreateLoggerOptions = {}): Logger {
  const destination = options.destination ?? 2;
  const stream =
    typeof destination === 'number' || typeof destination === 'string'
      ? pino.destination({ dest: destination, sync: options.sync ?? false })
      : destination;
  return pino(
    {
      level: options.level ?? 'info',
      ...(options.name === undefined ? {} : { name: options.name }),
      serializers: { err: pino.stdSerializers.err },
      ...(options.redact === undefined
        ? {}
        : { redact: { paths: [...options.redact], censor: '[redacted]' } }),
    },
    stream,
  );
}

/** A logger that discards everything: the default of every milterd component that takes a logger. */
export const silentLogger: Logger = pino({ level: 'silent' }, nullDestination);
