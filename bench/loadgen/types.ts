/** Messages between the benchmark orchestrator and its load generator workers. */
import type { HistogramData } from '../lib/histogram.js';
import type { MtaName } from './script.js';

export type DriverName = 'lean' | 'client';

export interface LoadConfig {
  /** Socket spec of the candidate (`inet:PORT@127.0.0.1`, `unix:/path`). */
  spec: string;
  /** Concurrent milter connections driven by this worker. */
  connections: number;
  messagesPerConnection: number;
  recipients: number;
  headers: number;
  bodySize: number;
  /** This worker's message bound (warm-up included); the run also ends at the orchestrator's deadline. */
  maxMessages: number;
  /** Per-reply timeout. */
  timeoutMs: number;
  driver: DriverName;
  /** Whose packet pattern to play (script.ts). */
  mta: MtaName;
  /** Idle mode: negotiate, CONNECT, HELO, then hold the connection until told to stop. */
  idle: boolean;
  /** Spread connection opening over this many ms (avoids a SYN storm at 1000 connections). */
  rampMs: number;
  workerIndex: number;
}

export interface WorkerStats {
  /** Messages whose EOM answer arrived (and validated) since the last mark. */
  messages: number;
  /** Replies that were wrong, connections that failed or closed early, timeouts (since the last mark). */
  errors: number;
  /** Errors before the mark (warm-up). */
  warmupErrors: number;
  errorSamples: string[];
  /** One histogram per STAT_NAMES entry, ns. */
  latency: HistogramData[];
  connectionsOpened: number;
  /** Unix-socket connects refused with EAGAIN (backlog full) and retried; not errors. */
  connectRetries: number;
  /** Idle mode: connections negotiated and held right now. */
  held: number;
}

export type ToWorker = { type: 'mark' } | { type: 'stop' };

export type FromWorker =
  | { type: 'limit' }
  | { type: 'held'; held: number; errors: number }
  | { type: 'result'; stats: WorkerStats }
  | { type: 'fatal'; error: string };
