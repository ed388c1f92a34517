/**
 * The `logstall` extra: the real daemon (`milterd serve`, info level: one log line per message) under
 * load while nobody reads its stdout. Two windows on one daemon: a baseline with stdout read, then a
 * stall of `stallSeconds` with stdout not read at all. In both, a load thread measures EOM latency and
 * this process probes /healthz every 100 ms. Afterwards stdout is read again: the dropped-line count comes
 * from /metrics, and logging must resume (the daemon's "log lines were dropped" warning arrives).
 */
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { freePort } from './candidates.js';
import { Histogram } from './histogram.js';
import type { StallLoadConfig, StallLoadResult } from './log-stall-load.js';
import { percentiles, type Percentiles } from './measure.js';
import { fmtNum, fmtUs, table } from './stats.js';

/** Options of {@link logStall}. */
export interface LogStallOptions {
  stallSeconds: number;
  baselineSeconds: number;
  /** Concurrent milter connections of the load thread. */
  connections: number;
  logFile: string;
  fdLimit: number;
  log: (line: string) => void;
}

/** One window's figures (latencies in ns). */
export interface LogStallWindow {
  seconds: number;
  messages: number;
  messagesPerSecond: number;
  errors: number;
  errorSamples: string[];
  eom: Percentiles;
  healthz: Percentiles;
  healthzFailures: number;
}

/** Result of the extra. */
export interface LogStallResult {
  connections: number;
  baseline: LogStallWindow;
  stalled: LogStallWindow;
  /** milterd_log_lines_dropped_total after the stall. */
  droppedLines: number;
  /** Log lines read from stdout after reading resumed, until 0.5 s after the warning (buffered, then new). */
  linesAfterResume: number;
  /** The daemon's "log lines were dropped" warning arrived after the stall. */
  resumed: boolean;
}

const BIN = fileURLToPath(new URL('../../../bin/milterd.js', import.meta.url));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** GET `path` on loopback with a fresh connection; resolves with status and latency (ns). */
function get(port: number, path: string): Promise<{ status: number; ns: number; body: string }> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ns: (performance.now() - t0) * 1e6, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** Probe /healthz every 100 ms until stopped. */
function probe(port: number): { stop(): Promise<{ h: Histogram; failures: number }> } {
  const h = new Histogram();
  let failures = 0;
  let running = true;
  const done = (async () => {
    while (running) {
      const next = sleep(100);
      try {
        const r = await get(port, '/healthz');
        if (r.status === 200) h.record(r.ns);
        else failures++;
      } catch {
        failures++;
      }
      await next;
    }
  })();
  return {
    async stop() {
      running = false;
      await done;
      return { h, failures };
    },
  };
}

/** Run the load thread for `seconds`. */
async function load(spec: string, connections: number, seconds: number): Promise<StallLoadResult> {
  const config: StallLoadConfig = { spec, connections, messagesPerConnection: 10, timeoutMs: 10_000 };
  const worker = new Worker(new URL('./log-stall-load.js', import.meta.url), { workerData: config });
  const result = new Promise<StallLoadResult>((resolve, reject) => {
    worker.once('message', (r: StallLoadResult) => resolve(r));
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`load thread exited with ${code}`)));
  });
  await sleep(seconds * 1000);
  worker.postMessage({ type: 'stop' });
  try {
    return await result;
  } finally {
    void worker.terminate();
  }
}

async function window(
  spec: string,
  adminPort: number,
  connections: number,
  seconds: number,
): Promise<LogStallWindow> {
  const p = probe(adminPort);
  const t0 = performance.now();
  const r = await load(spec, connections, seconds);
  const elapsed = (performance.now() - t0) / 1000;
  const { h, failures } = await p.stop();
  return {
    seconds: elapsed,
    messages: r.messages,
    messagesPerSecond: r.messages / elapsed,
    errors: r.errors,
    errorSamples: r.errorSamples,
    eom: percentiles(Histogram.fromData(r.eom)),
    healthz: percentiles(h),
    healthzFailures: failures,
  };
}

/** Run the extra (see the module comment). */
export async function logStall(options: LogStallOptions): Promise<LogStallResult> {
  const port = await freePort();
  const adminPort = await freePort();
  const spec = `inet:${port}@127.0.0.1`;
  const log = createWriteStream(options.logFile, { flags: 'a' });
  const args = [
    BIN,
    'serve',
    '--listen',
    spec,
    '--admin',
    `inet:${adminPort}@127.0.0.1`,
    '--log-level',
    'info',
  ];
  log.write(
    `\n=== ${new Date().toISOString()} logstall: node ${args.join(' ')} (stdout counted, not kept)\n`,
  );
  const child = spawn(
    'bash',
    ['-c', `ulimit -n ${options.fdLimit} 2>/dev/null; exec "$0" "$@"`, process.execPath, ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stderr.pipe(log, { end: false });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  let lines = 0;
  let text = '';
  let resumedWarning = false;
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    text += d;
    let nl: number;
    while ((nl = text.indexOf('\n')) >= 0) {
      const line = text.slice(0, nl);
      text = text.slice(nl + 1);
      lines++;
      if (line.includes('"milterd started"')) started();
      if (line.includes('log lines were dropped')) resumedWarning = true;
    }
  });
  let started: () => void = () => undefined;
  const ready = new Promise<void>((r) => (started = r));
  try {
    await Promise.race([
      ready,
      exited.then(() => {
        throw new Error(`milterd exited early; see ${options.logFile}`);
      }),
    ]);
    options.log(`  baseline: ${options.baselineSeconds} s, stdout read`);
    const baseline = await window(spec, adminPort, options.connections, options.baselineSeconds);
    options.log(`  stall: ${options.stallSeconds} s, stdout not read`);
    child.stdout.pause();
    const stalled = await window(spec, adminPort, options.connections, options.stallSeconds);
    const metrics = await get(adminPort, '/metrics');
    const m = /^milterd_log_lines_dropped_total (\d+)$/m.exec(metrics.body);
    const droppedLines = m === null ? Number.NaN : Number(m[1]);
    const before = lines;
    child.stdout.resume();
    for (let i = 0; i < 100 && !resumedWarning; i++) await sleep(100);
    await sleep(500);
    return {
      connections: options.connections,
      baseline,
      stalled,
      droppedLines,
      linesAfterResume: lines - before,
      resumed: resumedWarning,
    };
  } finally {
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
    log.end();
  }
}

/** The Markdown block of the bench output. */
export function logStallTable(r: LogStallResult, stallSeconds: number): string {
  const row = (name: string, w: LogStallWindow): string[] => [
    name,
    fmtNum(w.seconds, 1),
    fmtNum(w.messagesPerSecond),
    String(w.errors),
    `${fmtUs(w.eom.p50)} / ${fmtUs(w.eom.p99)} / ${fmtUs(w.eom.max)}`,
    `${fmtUs(w.healthz.p50)} / ${fmtUs(w.healthz.p99)} / ${fmtUs(w.healthz.max)}`,
    `${w.healthz.count} ok, ${w.healthzFailures} failed`,
  ];
  return (
    `### stalled stdout (milterd serve, info level, ${r.connections} connections x 10 messages, ` +
    `stdout not read for ${stallSeconds} s)\n\n` +
    table(
      [
        'window',
        's',
        'msg/s',
        'errors',
        'EOM p50 / p99 / max',
        '/healthz p50 / p99 / max',
        '/healthz probes',
      ],
      [row('stdout read', r.baseline), row('stdout stalled', r.stalled)],
    ) +
    `\n\nlog lines dropped (milterd_log_lines_dropped_total): ${r.droppedLines}; ` +
    `after reading resumed: ${r.linesAfterResume} lines, dropped-lines warning ${r.resumed ? 'seen' : 'NOT seen'}`
  );
}
