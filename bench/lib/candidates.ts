/**
 * Starting and stopping candidate servers. Each measurement gets a fresh process (so VmHWM is the peak
 * of that measurement alone), listening on one socket: TCP 127.0.0.1 on a free port, or a Unix socket
 * under the OS temp directory. The process is started through `bash -c 'ulimit -n HARD; exec …'`, which
 * raises the fd limit for the server only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, rmSync } from 'node:fs';
import net from 'node:net';
import type { Readable } from 'node:stream';
import os from 'node:os';
import path from 'node:path';
import { descendants } from './proc.js';

export type SocketKind = 'tcp' | 'unix';

export interface CandidateDef {
  name: string;
  /** One line for the docs and the table. */
  description: string;
  command(spec: string): { cmd: string; args: string[]; env?: NodeJS.ProcessEnv };
}

export interface RunningServer {
  name: string;
  spec: string;
  pid: number;
  /** The server's own pid plus its workers (cluster mode). */
  pids(): number[];
  stop(): Promise<void>;
  /** After stop(): the policy store's calls over the server's life, when it has a store (fleet cells). */
  storeCalls(): StoreCalls | undefined;
}

/** A fleet cell's store calls (the bench server prints them when it stops): all, and those that failed. */
export interface StoreCalls {
  total: number;
  failed: number;
}

/** The store calls the server printed when it stopped, onto the measurement taken before. */
export function withStoreCalls(
  m: { storeCalls?: StoreCalls } | undefined,
  calls: StoreCalls | undefined,
): void {
  if (m !== undefined && calls !== undefined) m.storeCalls = calls;
}

/** `store URL: N calls, failed: none` or `…, failed: CODE n, CODE n` (bench/servers/milterd-server.ts). */
export function parseStoreCalls(line: string): StoreCalls | undefined {
  const m = /^store \S+: (\d+) calls, failed: (.*)$/.exec(line);
  if (m === null) return undefined;
  const failed = [...(m[2] as string).matchAll(/\b[A-Z_]+ (\d+)/g)].reduce((a, f) => a + Number(f[1]), 0);
  return { total: Number(m[1]), failed };
}

/** Each whole line of a child's output stream, as it comes. */
function eachLine(stream: Readable | null, onLine: (line: string) => void): void {
  let buf = '';
  stream?.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  });
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen({ host: '127.0.0.1', port: 0 }, () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

let seq = 0;

export async function makeSpec(kind: SocketKind, name: string): Promise<string> {
  if (kind === 'tcp') return `inet:${await freePort()}@127.0.0.1`;
  const p = path.join(os.tmpdir(), `milterd-bench-${process.pid}-${name}-${seq++}.sock`);
  rmSync(p, { force: true });
  return `unix:${p}`;
}

function canConnect(spec: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = spec.startsWith('unix:')
      ? net.createConnection({ path: spec.slice(5) })
      : net.createConnection({ host: '127.0.0.1', port: Number(spec.slice(5, spec.indexOf('@'))) });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * Start `def` on `kind` and wait until it prints READY and accepts a connection (the probe connection is
 * closed at once, before negotiation). Output goes to `logFile`.
 */
export async function startServer(
  def: CandidateDef,
  kind: SocketKind,
  logFile: string,
  fdLimit: number,
): Promise<RunningServer> {
  const spec = await makeSpec(kind, def.name);
  const { cmd, args, env } = def.command(spec);
  const log = createWriteStream(logFile, { flags: 'a' });
  log.write(`\n=== ${new Date().toISOString()} ${def.name} ${spec}: ${cmd} ${args.join(' ')}\n`);
  const child: ChildProcess = spawn(
    'bash',
    ['-c', `ulimit -n ${fdLimit} 2>/dev/null; exec "$0" "$@"`, cmd, ...args],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    },
  );
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${def.name}: spawn failed`);
  let exited = false;
  child.once('exit', () => {
    exited = true;
  });
  child.stderr?.pipe(log, { end: false });
  let storeCalls: StoreCalls | undefined;
  const errEnded = new Promise<void>((r) => child.stderr?.once('end', r) ?? r());
  eachLine(child.stderr, (line) => (storeCalls = parseStoreCalls(line) ?? storeCalls));
  const workerPids: number[] = [];
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => log.write(d));
    eachLine(child.stdout, (line) => {
      if (line.startsWith('PIDS ')) workerPids.push(...line.slice(5).split(',').map(Number));
      if (line.startsWith('READY')) resolve();
    });
    child.once('exit', (code, signal) =>
      reject(new Error(`${def.name} exited early (${String(code ?? signal)}); see ${logFile}`)),
    );
  });
  const stop = async (): Promise<void> => {
    const all = [pid, ...workerPids, ...descendants(pid)];
    if (!exited) {
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // already gone
      }
      const timer = setTimeout(() => {
        for (const p of all) {
          try {
            process.kill(p, 'SIGKILL');
          } catch {
            // already gone
          }
        }
      }, 1500);
      await gone;
      clearTimeout(timer);
      // The store line comes last on stderr: read to its end (bounded: a worker may still hold the pipe).
      await Promise.race([errEnded, new Promise((r) => setTimeout(r, 500))]);
    }
    for (const p of workerPids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (spec.startsWith('unix:')) rmSync(spec.slice(5), { force: true });
    log.end();
  };
  try {
    await Promise.race([
      ready,
      new Promise((_, reject) =>
        setTimeout(() => reject(new Error(`${def.name}: not ready after 15 s`)), 15000),
      ),
    ]);
    let ok = false;
    for (let i = 0; i < 100 && !ok; i++) {
      ok = await canConnect(spec);
      if (!ok) await new Promise((r) => setTimeout(r, 50));
    }
    if (!ok) throw new Error(`${def.name}: ${spec} does not accept connections`);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    name: def.name,
    spec,
    pid,
    pids: () => (workerPids.length > 0 ? [pid, ...workerPids] : [pid]),
    stop,
    storeCalls: () => storeCalls,
  };
}
