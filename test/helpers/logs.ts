/**
 * In-memory pino logger for tests: every line is parsed and kept, so tests can assert on structured
 * fields (`code`, `conn`, `err`) instead of message text.
 */
import { pino, type Logger } from 'pino';

/** One parsed log line. */
export type LogLine = Record<string, unknown> & { level: number; msg?: string };

/** A logger writing to memory, and the lines it wrote. */
export interface MemoryLog {
  logger: Logger;
  lines: LogLine[];
  /** Lines that carry `code` (coded errors), optionally filtered by code. */
  coded(code?: string): LogLine[];
}

/** Create a logger that keeps every line (default level 'debug'). */
export function memoryLogger(level: pino.Level = 'debug'): MemoryLog {
  const lines: LogLine[] = [];
  const logger = pino(
    { level, serializers: { err: pino.stdSerializers.err } },
    { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) },
  );
  return {
    logger,
    lines,
    coded: (code?: string) =>
      lines.filter((l) => typeof l.code === 'string' && (code === undefined || l.code === code)),
  };
}
