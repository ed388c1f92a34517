/**
 * The independent load generator: milterload, a C program written outside this project that plays
 * Postfix 3.7's packet pattern (../shared/bench/milterload.c and its README). `npm run bench --
 * --generator milterload|both` builds it from that source (never copied into this repository) and drives
 * the same candidates with it, as a cross-check of the project's own generator (loadgen/).
 *
 * A measurement: fresh candidate process, one milterload run for the warm-up, then one for the measured
 * window; server CPU and peak RSS from /proc over the second run, throughput and latency from
 * milterload's JSON line. milterload reports command latency as p50/p99 only (no p99.9 per command).
 */
import { execFileSync, spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { STAT_NAMES } from '../loadgen/script.js';
import { startServer, withStoreCalls, type CandidateDef } from './candidates.js';
import type { Cell, Measurement, MeasureOptions, Percentiles } from './measure.js';
import { machineTicks, stealPercent, treeCpuTicks, treePeakRssKiB, ticksPerSecond } from './proc.js';

/** The JSON line milterload prints (the fields used here). */
interface MilterloadResult {
  elapsed_s: number;
  messages: number;
  msgs_per_s: number;
  connections: number;
  eom_us: { p50: number; p99: number; p999: number; max: number };
  callbacks_us: Record<string, { n: number; p50: number; p99: number }>;
  errors: number;
  unfinished: number;
}

/**
 * Build `source` with `cc -O2` into `buildDir` unless the binary is newer. Returns the binary, or a
 * reason why there is none.
 */
export function buildMilterload(
  source: string,
  buildDir: string,
  log: (s: string) => void,
): { binary: string } | { missing: string } {
  if (!existsSync(source)) return { missing: `milterload: no source at ${source} (see --milterload-src)` };
  const binary = path.join(buildDir, 'milterload');
  try {
    if (!existsSync(binary) || statSync(binary).mtimeMs < statSync(source).mtimeMs) {
      mkdirSync(buildDir, { recursive: true });
      log(`setup: building milterload from ${source}`);
      execFileSync('cc', ['-O2', '-Wall', '-o', binary, source], { stdio: ['ignore', 'ignore', 'pipe'] });
    }
    return { binary };
  } catch (err) {
    return { missing: `milterload: build failed: ${err instanceof Error ? err.message.split('\n')[0] : ''}` };
  }
}

function run(binary: string, args: string[], logFile: string): Promise<MilterloadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.once('error', reject);
    child.once('close', (code) => {
      if (err !== '') appendFileSync(logFile, `[milterload ${args.join(' ')}]\n${err}`);
      // Exit 2 = the run finished and counted protocol errors: a result, reported in the errors column.
      const line = out.trim().split('\n').pop() ?? '';
      if ((code === 0 || code === 2) && line.startsWith('{')) {
        resolve(JSON.parse(line) as MilterloadResult);
      } else {
        reject(new Error(`milterload exited with ${code}: ${err.trim().split('\n').slice(-3).join(' / ')}`));
      }
    });
  });
}

const NONE: Percentiles = {
  count: 0,
  p50: Number.NaN,
  p99: Number.NaN,
  p999: Number.NaN,
  mean: Number.NaN,
  max: Number.NaN,
};

export async function measureWithMilterload(
  binary: string,
  def: CandidateDef,
  cell: Cell,
  repetition: number,
  opts: MeasureOptions,
): Promise<Measurement> {
  const server = await startServer(def, cell.socket, opts.logFile, opts.fdLimit);
  let measured: Measurement | undefined;
  try {
    const args = (seconds: number): string[] => [
      '--target',
      server.spec,
      '--concurrency',
      String(cell.connections),
      '--messages',
      String(cell.messagesPerConnection),
      '--rcpts',
      String(cell.recipients),
      '--headers',
      String(cell.headers),
      '--body-bytes',
      String(cell.bodySize),
      '--timeout',
      String(opts.timeoutMs / 1000),
      '--duration',
      String(seconds),
      '--label',
      def.name,
    ];
    if (opts.warmupMs > 0) await run(binary, args(opts.warmupMs / 1000), opts.logFile);
    const pids = server.pids();
    const cpu0 = treeCpuTicks(pids);
    const machine0 = machineTicks();
    const t0 = performance.now();
    const r = await run(binary, args(opts.durationMs / 1000), opts.logFile);
    const cpu1 = treeCpuTicks(pids);
    const steal = stealPercent(machine0, machineTicks());
    const wall = (performance.now() - t0) / 1000;
    const rss = treePeakRssKiB(pids);
    const cpuSeconds = (cpu1 - cpu0) / ticksPerSecond();
    const latency: Record<string, Percentiles> = {};
    for (const name of STAT_NAMES) {
      const c = r.callbacks_us[name];
      latency[name] = c === undefined ? NONE : { ...NONE, count: c.n, p50: c.p50 * 1000, p99: c.p99 * 1000 };
    }
    // The EOM round trip (send to final reply) with its full percentiles, ns like the node generator.
    latency.eom = {
      count: r.messages,
      p50: r.eom_us.p50 * 1000,
      p99: r.eom_us.p99 * 1000,
      p999: r.eom_us.p999 * 1000,
      mean: Number.NaN,
      max: r.eom_us.max * 1000,
    };
    const errors = r.errors + r.unfinished;
    measured = {
      candidate: def.name,
      generator: 'milterload',
      cell,
      repetition,
      seconds: r.elapsed_s,
      messages: r.messages,
      messagesPerSecond: r.msgs_per_s,
      errors,
      warmupErrors: 0,
      errorSamples: errors > 0 ? [`milterload: ${errors} errors (stderr in ${opts.logFile})`] : [],
      latency,
      // Server CPU over milterload's whole process lifetime (connect … drain), per message it completed.
      cpuUsPerMessage: r.messages > 0 ? (cpuSeconds * 1e6) / r.messages : Number.NaN,
      cpuCores: cpuSeconds / wall,
      peakRssMiB: rss / 1024,
      connectionsOpened: r.connections,
      connectRetries: 0,
      stealPercent: steal,
    };
    return measured;
  } finally {
    await server.stop();
    withStoreCalls(measured, server.storeCalls());
  }
}
