/**
 * One measurement: a fresh candidate process, load generator worker threads, a warm-up, a measured
 * window (bounded in time and in messages), server CPU ticks and peak RSS from /proc.
 */
import { Worker } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { Histogram, type HistogramData } from './histogram.js';
import { machineTicks, stealPercent, treeCpuTicks, treePeakRssKiB, ticksPerSecond } from './proc.js';
import {
  startServer,
  withStoreCalls,
  type CandidateDef,
  type SocketKind,
  type StoreCalls,
} from './candidates.js';
import type { DriverName, FromWorker, LoadConfig, WorkerStats } from '../loadgen/types.js';
import { STAT_NAMES, type MtaName } from '../loadgen/script.js';

/** Which load generator produced a measurement: loadgen/ (this project's) or milterload (independent, C). */
export type GeneratorName = 'node' | 'milterload';

export interface Cell {
  connections: number;
  messagesPerConnection: number;
  recipients: number;
  headers: number;
  bodySize: number;
  socket: SocketKind;
}

export interface MeasureOptions {
  warmupMs: number;
  durationMs: number;
  maxMessages: number;
  loadgenThreads: number;
  driver: DriverName;
  /** Whose packet pattern the node generator plays. */
  mta: MtaName;
  timeoutMs: number;
  logFile: string;
  fdLimit: number;
}

export interface Percentiles {
  count: number;
  p50: number;
  p99: number;
  p999: number;
  mean: number;
  max: number;
}

export interface Measurement {
  candidate: string;
  generator: GeneratorName;
  cell: Cell;
  repetition: number;
  seconds: number;
  messages: number;
  messagesPerSecond: number;
  errors: number;
  warmupErrors: number;
  errorSamples: string[];
  /** ns per command kind (STAT_NAMES), over the measured window. */
  latency: Record<string, Percentiles>;
  /** Server CPU (user + system) per message in µs, from /proc/PID/stat deltas over the window. */
  cpuUsPerMessage: number;
  /** Server CPU use over the window, in cores (1.0 = one core busy). */
  cpuCores: number;
  /** Peak RSS of the server process tree (VmHWM, summed over cluster workers), MiB. */
  peakRssMiB: number;
  connectionsOpened: number;
  connectRetries: number;
  /** Percent of the machine's CPU time stolen by the hypervisor during the measured window (proc.ts). */
  stealPercent: number;
  /** Fleet cells: the policy store's calls over the server's life (warm-up included), and the failed ones. */
  storeCalls?: StoreCalls;
}

export function percentiles(h: Histogram): Percentiles {
  return {
    count: h.count,
    p50: h.quantile(0.5),
    p99: h.quantile(0.99),
    p999: h.quantile(0.999),
    mean: h.mean(),
    max: h.count > 0 ? h.max : Number.NaN,
  };
}

export interface LoadRun {
  workers: Worker[];
  /** Resolves when every worker used its message budget. */
  allLimited: Promise<void>;
  held(): number;
  heldErrors(): number;
  mark(): void;
  stop(): Promise<WorkerStats[]>;
}

/** Start load generator threads against `spec`, splitting connections and the message budget. */
export function startLoad(base: Omit<LoadConfig, 'workerIndex'>, threads: number): LoadRun {
  const n = Math.max(1, Math.min(threads, base.connections));
  const workers: Worker[] = [];
  const results: Promise<WorkerStats>[] = [];
  const limited: Promise<void>[] = [];
  const heldBy = new Array<number>(n).fill(0);
  const heldErrorsBy = new Array<number>(n).fill(0);
  for (let i = 0; i < n; i++) {
    const config: LoadConfig = {
      ...base,
      connections: Math.floor(base.connections / n) + (i < base.connections % n ? 1 : 0),
      maxMessages: Math.floor(base.maxMessages / n) + (i < base.maxMessages % n ? 1 : 0),
      workerIndex: i,
    };
    const worker = new Worker(new URL('../loadgen/worker.js', import.meta.url), { workerData: config });
    workers.push(worker);
    let onLimit: () => void = () => {};
    limited.push(new Promise<void>((r) => (onLimit = r)));
    results.push(
      new Promise<WorkerStats>((resolve, reject) => {
        worker.on('message', (msg: FromWorker) => {
          if (msg.type === 'limit') onLimit();
          else if (msg.type === 'held') {
            heldBy[i] = msg.held;
            heldErrorsBy[i] = msg.errors;
          } else if (msg.type === 'result') resolve(msg.stats);
          else if (msg.type === 'fatal') reject(new Error(`load generator: ${msg.error}`));
        });
        worker.once('error', reject);
        worker.once('exit', (code) => {
          if (code !== 0) reject(new Error(`load generator thread exited with ${code}`));
        });
      }),
    );
  }
  // Avoid unhandled rejections before stop() is awaited.
  for (const r of results) r.catch(() => {});
  return {
    workers,
    allLimited: Promise.all(limited).then(() => {}),
    held: () => heldBy.reduce((a, b) => a + b, 0),
    heldErrors: () => heldErrorsBy.reduce((a, b) => a + b, 0),
    mark: () => {
      for (const w of workers) w.postMessage({ type: 'mark' });
    },
    stop: async () => {
      for (const w of workers) w.postMessage({ type: 'stop' });
      const timeout = new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error('load generator did not stop within 15 s')), 15000).unref(),
      );
      try {
        return await Promise.race([Promise.all(results), timeout]);
      } finally {
        for (const w of workers) void w.terminate();
      }
    },
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Merge worker stats into one Measurement. */
export function combine(stats: readonly WorkerStats[]): {
  messages: number;
  errors: number;
  warmupErrors: number;
  errorSamples: string[];
  latency: Record<string, Percentiles>;
  connectionsOpened: number;
  connectRetries: number;
} {
  const hists = STAT_NAMES.map(() => new Histogram());
  let messages = 0;
  let errors = 0;
  let warmupErrors = 0;
  let connectionsOpened = 0;
  let connectRetries = 0;
  const errorSamples: string[] = [];
  for (const s of stats) {
    messages += s.messages;
    errors += s.errors;
    warmupErrors += s.warmupErrors;
    connectionsOpened += s.connectionsOpened;
    connectRetries += s.connectRetries;
    errorSamples.push(...s.errorSamples);
    s.latency.forEach((d: HistogramData, i) => hists[i]?.merge(d));
  }
  const latency: Record<string, Percentiles> = {};
  STAT_NAMES.forEach((name, i) => {
    latency[name] = percentiles(hists[i]!);
  });
  return {
    messages,
    errors,
    warmupErrors,
    errorSamples: errorSamples.slice(0, 20),
    latency,
    connectionsOpened,
    connectRetries,
  };
}

export async function measure(
  def: CandidateDef,
  cell: Cell,
  repetition: number,
  opts: MeasureOptions,
): Promise<Measurement> {
  const server = await startServer(def, cell.socket, opts.logFile, opts.fdLimit);
  let load: LoadRun | undefined;
  let measured: Measurement | undefined;
  try {
    load = startLoad(
      {
        spec: server.spec,
        connections: cell.connections,
        messagesPerConnection: cell.messagesPerConnection,
        recipients: cell.recipients,
        headers: cell.headers,
        bodySize: cell.bodySize,
        maxMessages: opts.maxMessages,
        timeoutMs: opts.timeoutMs,
        driver: opts.driver,
        mta: opts.mta,
        idle: false,
        rampMs: cell.connections >= 256 ? 500 : 0,
      },
      opts.loadgenThreads,
    );
    const limited = load.allLimited.then(() => true);
    await Promise.race([sleep(opts.warmupMs), limited]);
    const pids = server.pids();
    const cpu0 = treeCpuTicks(pids);
    const machine0 = machineTicks();
    const t0 = performance.now();
    load.mark();
    await Promise.race([sleep(opts.durationMs), limited]);
    const t1 = performance.now();
    const cpu1 = treeCpuTicks(pids);
    const steal = stealPercent(machine0, machineTicks());
    const rss = treePeakRssKiB(pids);
    const stats = await load.stop();
    load = undefined;
    const c = combine(stats);
    const seconds = (t1 - t0) / 1000;
    const cpuSeconds = (cpu1 - cpu0) / ticksPerSecond();
    measured = {
      candidate: def.name,
      generator: 'node',
      cell,
      repetition,
      seconds,
      messages: c.messages,
      messagesPerSecond: c.messages / seconds,
      errors: c.errors,
      warmupErrors: c.warmupErrors,
      errorSamples: c.errorSamples,
      latency: c.latency,
      cpuUsPerMessage: c.messages > 0 ? (cpuSeconds * 1e6) / c.messages : Number.NaN,
      cpuCores: cpuSeconds / seconds,
      peakRssMiB: rss / 1024,
      connectionsOpened: c.connectionsOpened,
      connectRetries: c.connectRetries,
      stealPercent: steal,
    };
    return measured;
  } finally {
    if (load) await load.stop().catch(() => []);
    await server.stop();
    withStoreCalls(measured, server.storeCalls());
  }
}
