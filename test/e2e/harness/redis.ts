/**
 * A private Debian `redis-server` for the fleet tests and the benchmark: listens on 127.0.0.1:<free port>
 * and on a Unix socket in its work folder, keeps nothing on disk (no RDB, no AOF), runs in the foreground
 * so its pid is ours. The fault tests kill it (-9), pause it (SIGSTOP) and start it again on the same port
 * and socket. Installed by scripts/install-test-deps.sh (package `redis-server`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdir } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { freePort, isAlive, stopPid, waitExit, waitFor } from './proc.js';

export const REDIS_SERVER = '/usr/bin/redis-server';

export interface RedisStartOptions {
  /** Work folder (created): the Unix socket and the server's working directory. */
  dir: string;
  /** TCP port on 127.0.0.1; default a free one. */
  port?: number;
}

/** One RESP request over a fresh connection: `PING`, `TIME`, ... Resolves with the raw reply text. */
export function redisCommand(
  target: { port: number } | { path: string },
  args: readonly string[],
  timeoutMs = 2000,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket =
      'port' in target ? net.connect({ host: '127.0.0.1', port: target.port }) : net.connect(target.path);
    let reply = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`redis ${args.join(' ')}: no reply within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.on('connect', () => {
      socket.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
    });
    socket.on('data', (d: string) => {
      reply += d;
      // Enough for the simple replies the harness reads (+OK, +PONG, :n, -ERR, one bulk or array of bulks).
      if (reply.endsWith('\r\n') && complete(reply)) {
        clearTimeout(timer);
        socket.destroy();
        resolve(reply);
      }
    });
    socket.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/** Is `reply` one whole RESP2 value (simple types, a bulk string, or an array of those)? */
function complete(reply: string): boolean {
  const lines = reply.split('\r\n');
  let i = 0;
  const value = (): boolean => {
    const line = lines[i++];
    if (line === undefined || line === '') return false;
    const n = Number(line.slice(1));
    switch (line[0]) {
      case '$':
        if (n < 0) return true;
        return lines[i++] !== undefined && i < lines.length;
      case '*':
        for (let k = 0; k < n; k++) if (!value()) return false;
        return true;
      default:
        return true;
    }
  };
  return value();
}

export class RedisServer {
  readonly dir: string;
  readonly socketPath: string;
  port = 0;
  private child: ChildProcess | undefined;
  private output = '';

  private constructor(options: RedisStartOptions) {
    this.dir = options.dir;
    this.socketPath = path.join(options.dir, 'redis.sock');
    this.port = options.port ?? 0;
  }

  static async start(options: RedisStartOptions): Promise<RedisServer> {
    try {
      await access(REDIS_SERVER);
    } catch {
      throw new Error(`${REDIS_SERVER} not found: run scripts/install-test-deps.sh (as root)`);
    }
    await mkdir(options.dir, { recursive: true });
    const server = new RedisServer(options);
    if (server.port === 0) server.port = await freePort(false);
    await server.boot();
    return server;
  }

  /** `redis://127.0.0.1:PORT/DB`. */
  url(db = 0): string {
    return `redis://127.0.0.1:${this.port}/${db}`;
  }

  get pid(): number {
    const pid = this.child?.pid;
    if (pid === undefined) throw new Error('redis-server is not running');
    return pid;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  private async boot(): Promise<void> {
    this.output = '';
    const child = spawn(
      REDIS_SERVER,
      [
        '--port',
        String(this.port),
        '--bind',
        '127.0.0.1',
        '--unixsocket',
        this.socketPath,
        '--unixsocketperm',
        '700',
        '--dir',
        this.dir,
        '--save',
        '',
        '--appendonly',
        'no',
        '--daemonize',
        'no',
        '--logfile',
        '',
        '--loglevel',
        'warning',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    child.stdout.on('data', (d: Buffer) => (this.output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (this.output += d.toString()));
    await waitFor(
      `redis-server to answer PING on 127.0.0.1:${this.port}`,
      async () => {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`redis-server exited (${child.exitCode ?? child.signalCode}):\n${this.output}`);
        }
        const reply = await redisCommand({ port: this.port }, ['PING']).catch(() => '');
        return reply.startsWith('+PONG') ? true : undefined;
      },
      { timeoutMs: 15_000 },
    );
  }

  /** Run one command on the TCP port; the raw RESP reply. */
  command(...args: string[]): Promise<string> {
    return redisCommand({ port: this.port }, args);
  }

  /** SIGSTOP: the server keeps its sockets but answers nothing (store calls reach their deadline). */
  pause(): void {
    process.kill(this.pid, 'SIGSTOP');
  }

  /** SIGCONT after `pause()`. */
  resume(): void {
    process.kill(this.pid, 'SIGCONT');
  }

  /** SIGKILL, and wait until it is gone (its state is lost: nothing is persisted). */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child?.pid || !isAlive(child.pid)) return;
    process.kill(child.pid, 'SIGCONT');
    process.kill(child.pid, 'SIGKILL');
    await waitExit(child, 10_000);
  }

  /** Start again on the same port and socket (after `kill()`). */
  async restart(): Promise<void> {
    if (this.running) throw new Error('redis-server is still running');
    await this.boot();
  }

  /** Stop by pid (also a paused one). Idempotent. */
  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child?.pid) return;
    if (isAlive(child.pid)) process.kill(child.pid, 'SIGCONT');
    await stopPid(child.pid, 3000);
    await waitExit(child, 5000);
  }

  log(): string {
    return this.output;
  }
}
