/**
 * The contract between the session layer (pure state machine + callback dispatch, no sockets) and the
 * server layer (sockets, timers). The server feeds decoded commands one at a time; the session answers
 * with the responses to write, in order, in one write.
 */
import type { Logger } from 'pino';
import type { DecisionKind, Filter } from '../filter.js';
import type { BodyStore } from './body-store.js';
import type { MilterCommand, MilterResponse } from '../protocol/types.js';
import type { MilterObserver } from '../observer.js';
import type { PackedMacros } from '../protocol/packed-macros.js';
import type { LogRateLimiter } from '../logging/rate-limit.js';

/** What the session answers to one command. */
export interface HandleResult {
  /**
   * Responses to write in this order, in one write (EOM: modifications, then the decision). May be empty.
   * Read-only: the session reuses frozen results for the common answers.
   */
  readonly responses: readonly MilterResponse[];
  /**
   * EOM with a body replacement read from a stream: its bytes, streamed out as SMFIR_REPLBODY packets
   * after every response but the last (the modifications) and before the last (the decision), so a large
   * body is never held whole. Disposed by whoever writes it.
   */
  readonly body?: BodyStore;
  /**
   * 'quit': the MTA said SMFIC_QUIT (close was called): write the responses (none), then close the socket.
   * 'fatal': the session cannot go on (negotiation refused, protocol violation): close the socket.
   */
  readonly end?: 'quit' | 'fatal';
}

/** How the session reaches the socket out of band (progress packets while a callback runs). */
export interface SessionIO {
  /** Write one response now, before the current command's own responses. */
  sendNow(response: MilterResponse): void;
}

/** The failure decision used when a callback throws, times out or returns something illegal. */
export type FailureDecision = Extract<DecisionKind, 'tempfail' | 'reject' | 'accept' | 'continue'>;

export interface SessionOptions {
  /** Process-unique connection id. */
  id: string;
  // The session is filter-agnostic: it stores whatever private data the filter sets.
  filter: Filter<unknown>;
  /** The connection's child logger. */
  logger: Logger;
  /** Time budget of one callback; 0 = none. On expiry the failure decision is sent; a late result is ignored. */
  callbackTimeoutMs: number;
  /** Default 'tempfail'. */
  failureDecision?: FailureDecision;
  observer?: MilterObserver;
  /**
   * Largest payload accepted from the MTA unless it negotiates a bigger one (SMFIP_MDS_256K/1M).
   * Default 64 KiB - 1, libmilter's: neither MTA sends more without MDS (MilterServerOptions.maxDataSize).
   */
  maxDataSize?: number;
  /** Process-wide limit on lines a peer can cause (a refused negotiation); default: no limit. */
  logLimiter?: LogRateLimiter;
}

/** Why a connection ended without SMFIC_QUIT. */
export type TerminationReason = 'eof' | 'error' | 'timeout' | 'protocol' | 'shutdown';

/** A decoded command, or a macro packet left packed (the server's path: decoded when looked up). */
export type SessionCommand = MilterCommand | PackedMacros;

/** The per-connection state machine. */
export interface Session {
  /**
   * Handle one decoded command. Never throws for filter misbehaviour (that becomes the failure decision);
   * throws MilterProtocolError only for protocol violations (the server then closes the socket).
   * Synchronous results are returned directly to spare a microtask on the hot path.
   */
  handle(command: SessionCommand): HandleResult | Promise<HandleResult>;
  /**
   * The socket ended without SMFIC_QUIT (EOF, error, timeout, protocol error, server shutdown): call
   * `abort` if a transaction is open, then `close` if it was not called yet. Idempotent, never throws.
   */
  terminate(reason: TerminationReason): Promise<void>;
  /** Largest payload the frame decoder should accept now (grows if the MTA negotiates MDS_256K/1M). */
  readonly maxDataSize: number;
  /** True between SMFIC_QUIT/close and the next SMFIC_CONNECT (safe point for graceful shutdown). */
  readonly idle: boolean;
}
