/**
 * Observation points for metrics and tracing. Every method is optional and called synchronously on the
 * hot path, so implementations must be cheap (increment a counter, push to a histogram) and never throw.
 */
import type { MilterCommandKind } from './protocol/types.js';
import type { DecisionKind, FilterCallbackName } from './filter.js';
import type { MilterErrorCode } from './errors.js';

/** The stage a decision was taken at: the callbacks that decide (all but `abort` and `close`). */
export type DecisionStage = Exclude<FilterCallbackName, 'abort' | 'close'>;

/**
 * What a callback decided, as observed: a decision, `noreply` (a stage negotiated without reply) or
 * `refused` (the negotiation was refused: no reply, the connection closes, the MTA applies its own
 * failure action).
 */
export type ObservedDecision = DecisionKind | 'noreply' | 'refused';

export interface MilterObserver {
  /** A milter connection was accepted. */
  connectionOpened?(): void;
  /** A milter connection ended (for any reason). */
  connectionClosed?(): void;
  /** A connection was refused because the server is at its connection limit. */
  connectionRefused?(): void;
  /** A command frame was decoded; `bytes` is its full size on the wire (length prefix included). */
  command?(kind: MilterCommandKind, bytes: number): void;
  /** Bytes written to the MTA. */
  bytesWritten?(bytes: number): void;
  /** A callback finished with `decision` after `seconds` (a refused negotiation: since OPTNEG arrived). */
  decision?(stage: DecisionStage, decision: ObservedDecision, seconds: number): void;
  /** A protocol error closed a connection, or a filter error was mapped to the failure decision. */
  error?(code: MilterErrorCode): void;
  /**
   * A listener failed to accept a connection (`listener`: its spec), or closed one at once because the
   * process is out of file descriptors; `code` is the errno name (EMFILE, ENFILE, ENOBUFS…).
   */
  acceptError?(listener: string, code: string): void;
}
