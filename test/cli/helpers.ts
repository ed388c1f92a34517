/**
 * Helpers of the CLI tests: run the built `milterd` binary as a child process, follow its JSON log, fetch
 * admin URLs, and parse the Prometheus text format.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import { fileURLToPath } from 'node:url';

/** Repository root (this file runs from dist/test/cli/). */
export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
/** The binary under test. */
export const BIN = `${ROOT}bin/milterd.js`;
/** Source fixtures (not copied to dist). */
export const FIXTURES = `${ROOT}test/cli/fixtures/`;

/** Result of a command that ran to completion. */
export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Environment without any MILTERD_* variable of the developer's shell. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('MILTERD_')) env[k] = v;
  return { ...env, ...extra };
}

/** Run `milterd ARGS` to completion (killed after `timeoutMs`). */
export async function runMilterd(
  args: string[],
  options: { env?: Record<string, string>; input?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: cleanEnv(options.env),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdin.end(options.input ?? '');
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000);
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
  clearTimeout(timer);
  return { code, signal, stdout, stderr };
}

/** One parsed pino line. */
export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

/** A running `milterd serve` and its log. */
export class Daemon {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  /** Non-JSON stdout lines (must stay empty: only pino writes to stdout). */
  readonly strayStdout: string[] = [];
  stderr = '';
  private waiters: Array<() => void> = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  /** `nofile`: run under this RLIMIT_NOFILE (prlimit execs the daemon: the child is the daemon itself). */
  constructor(args: string[], env: Record<string, string> = {}, options: { nofile?: number } = {}) {
    const argv = [process.execPath, BIN, 'serve', ...args];
    if (options.nofile !== undefined) argv.unshift('prlimit', `--nofile=${options.nofile}`);
    this.child = spawn(argv[0] as string, argv.slice(1), {
      env: cleanEnv(env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let buf = '';
    this.child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          this.lines.push(JSON.parse(line) as LogLine);
        } catch {
          this.strayStdout.push(line);
        }
        for (const w of this.waiters.splice(0)) w();
      }
    });
    this.child.stderr?.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.exited = once(this.child, 'exit').then(([code, signal]) => {
      for (const w of this.waiters.splice(0)) w();
      return { code: code as number | null, signal: signal as NodeJS.Signals | null };
    });
  }

  /** Wait for a log line matching `pred` (seen before or later); rejects if the process exits first. */
  async waitFor(pred: (l: LogLine) => boolean, what = 'log line', timeoutMs = 15_000): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.find(pred);
      if (found) return found;
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(
          `milterd exited before ${what}; stderr: ${this.stderr}; log: ${JSON.stringify(this.lines)}`,
        );
      }
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for ${what}; log: ${JSON.stringify(this.lines)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 200);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Wait for the "milterd started" line; returns the milter and admin specs. */
  async started(): Promise<{ milter: string; admin: string | undefined; adminPort: number | undefined }> {
    const line = await this.waitFor((l) => l.msg === 'milterd started', 'start');
    const listen = line.listen as string[];
    const adminLine = this.lines.find((l) => l.msg === 'admin endpoint listening');
    const admin = adminLine?.admin as string | undefined;
    const port = admin === undefined ? undefined : Number(/:(\d+)@/.exec(admin)?.[1]);
    return { milter: listen[0] as string, admin, adminPort: port };
  }

  /** Send a signal. */
  signal(sig: NodeJS.Signals): void {
    this.child.kill(sig);
  }

  /** Kill (SIGKILL) if still running; for t.after cleanups. */
  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }
}

/** GET a URL on loopback; resolves with status and body. */
export function httpGet(port: number, path: string): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body, type: String(res.headers['content-type']) }),
      );
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** One sample of the exposition. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parsed exposition: families by name (type, help) and every sample. */
export interface Exposition {
  families: Map<string, { type: string; help: string }>;
  samples: Sample[];
}

const SAMPLE_RE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$/;

function parseLabels(text: string, lineNo: number): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const m = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(text.slice(i));
    if (!m) throw new Error(`line ${lineNo}: bad label at "${text.slice(i)}"`);
    i += m[0].length;
    let value = '';
    for (;;) {
      const c = text[i];
      if (c === undefined) throw new Error(`line ${lineNo}: unterminated label value`);
      if (c === '"') break;
      if (c === '\\') {
        const e = text[i + 1];
        if (e === 'n') value += '\n';
        else if (e === '\\' || e === '"') value += e;
        else throw new Error(`line ${lineNo}: bad escape \\${String(e)}`);
        i += 2;
      } else {
        value += c;
        i += 1;
      }
    }
    i += 1;
    if ((m[1] as string) in labels) throw new Error(`line ${lineNo}: duplicate label ${m[1] as string}`);
    labels[m[1] as string] = value;
    if (text[i] === ',') i += 1;
    else if (i < text.length) throw new Error(`line ${lineNo}: expected , after label`);
  }
  return labels;
}

function familyOf(name: string, families: Map<string, { type: string }>): string | undefined {
  if (families.has(name)) return name;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    const base = name.endsWith(suffix) ? name.slice(0, -suffix.length) : undefined;
    if (base !== undefined && families.get(base)?.type === 'histogram') return base;
  }
  return undefined;
}

/**
 * Parse Prometheus text format 0.0.4 strictly: HELP/TYPE before samples, known types, valid names, label
 * escapes, float values; histogram buckets cumulative with `+Inf` equal to `_count`. Throws on any error.
 */
export function parsePrometheus(text: string): Exposition {
  if (!text.endsWith('\n')) throw new Error('exposition must end with a newline');
  const families = new Map<string, { type: string; help: string }>();
  const samples: Sample[] = [];
  text
    .slice(0, -1)
    .split('\n')
    .forEach((line, idx) => {
      const lineNo = idx + 1;
      if (line.startsWith('# HELP ')) {
        const m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
        if (!m) throw new Error(`line ${lineNo}: bad HELP`);
        const f = families.get(m[1] as string) ?? { type: 'untyped', help: '' };
        f.help = m[2] as string;
        families.set(m[1] as string, f);
        return;
      }
      if (line.startsWith('# TYPE ')) {
        const m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
        if (!m) throw new Error(`line ${lineNo}: bad TYPE`);
        if (samples.some((s) => familyOf(s.name, families) === m[1]))
          throw new Error(`line ${lineNo}: TYPE after samples`);
        const f = families.get(m[1] as string) ?? { type: 'untyped', help: '' };
        f.type = m[2] as string;
        families.set(m[1] as string, f);
        return;
      }
      if (line.startsWith('#') || line.trim() === '') return;
      const m = SAMPLE_RE.exec(line);
      if (!m) throw new Error(`line ${lineNo}: bad sample "${line}"`);
      const name = m[1] as string;
      if (familyOf(name, families) === undefined)
        throw new Error(`line ${lineNo}: sample ${name} without TYPE`);
      const raw = m[4] as string;
      const value =
        raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : raw === 'NaN' ? NaN : Number(raw);
      if (Number.isNaN(value) && raw !== 'NaN') throw new Error(`line ${lineNo}: bad value ${raw}`);
      samples.push({ name, labels: m[3] === undefined ? {} : parseLabels(m[3], lineNo), value });
    });
  // Histogram consistency.
  for (const [name, f] of families) {
    if (f.type !== 'histogram') continue;
    const series = new Map<string, Sample[]>();
    for (const s of samples.filter((x) => x.name === `${name}_bucket`)) {
      const { le: _le, ...rest } = s.labels;
      const key = JSON.stringify(rest);
      series.set(key, [...(series.get(key) ?? []), s]);
    }
    for (const [key, buckets] of series) {
      let prev = -1;
      for (const b of buckets) {
        if (b.value < prev) throw new Error(`${name}${key}: buckets not cumulative`);
        prev = b.value;
      }
      const inf = buckets.find((b) => b.labels.le === '+Inf');
      const count = samples.find((s) => s.name === `${name}_count` && JSON.stringify(s.labels) === key);
      if (!inf || !count || inf.value !== count.value)
        throw new Error(`${name}${key}: +Inf bucket != _count`);
    }
  }
  return { families, samples };
}

/** Value of one sample (0 when absent), matching every given label. */
export function sampleValue(exp: Exposition, name: string, labels: Record<string, string> = {}): number {
  const found = exp.samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  return found.reduce((sum, s) => sum + s.value, 0);
}
