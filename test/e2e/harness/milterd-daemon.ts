/**
 * A `milterd serve` daemon for the pipeline tests: the built binary (bin/milterd.js) with a config file
 * written here (`filters:` list), listening on a free 127.0.0.1 port and optionally a Unix socket, with an
 * admin endpoint for /metrics. Stopped by pid. Also: its open file descriptors (/proc/PID/fd) and its TCP
 * connections to a given port (/proc/PID/net/tcp through its socket inodes), for the leak checks.
 */
import { readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Daemon, httpGet, parsePrometheus, sampleValue } from '../../cli/helpers.js';
import { freePort, waitFor } from './proc.js';

/** Built fixtures (dist/test/e2e/fixtures/). */
export const BUILT_FIXTURES = fileURLToPath(new URL('../fixtures/', import.meta.url));

export interface MilterdOptions {
  /** Work folder (config file, socket). */
  dir: string;
  /** The `filters:` list as YAML text (indented under `filters:`), e.g. from {@link yamlMembers}. */
  filters: string;
  /** Also listen on this Unix socket (mode 0666: Postfix's smtpd connects as user postfix). */
  unixSocket?: string;
  /** More command-line arguments. */
  args?: string[];
}

/** JSON is YAML: each member one flow mapping, so no indentation rules apply. */
export function yamlMembers(members: ReadonlyArray<Record<string, unknown>>): string {
  return members.map((m) => `  - ${JSON.stringify(m)}`).join('\n');
}

export class MilterdDaemon {
  private constructor(
    readonly daemon: Daemon,
    readonly port: number,
    readonly adminPort: number,
    readonly configFile: string,
  ) {}

  static async start(options: MilterdOptions): Promise<MilterdDaemon> {
    const port = await freePort(false);
    const adminPort = await freePort(false);
    const configFile = path.join(options.dir, 'milterd.yaml');
    await writeFile(configFile, `filters:\n${options.filters}\n`);
    const args = [
      '--config',
      configFile,
      '--listen',
      `inet:${port}@127.0.0.1`,
      ...(options.unixSocket === undefined
        ? []
        : ['--listen', `unix:${options.unixSocket}`, '--socket-mode', '0666']),
      '--admin',
      `inet:${adminPort}@127.0.0.1`,
      '--log-level',
      'debug',
      ...(options.args ?? []),
    ];
    const daemon = new Daemon(args);
    const m = new MilterdDaemon(daemon, port, adminPort, configFile);
    try {
      await daemon.started();
    } catch (error) {
      await daemon.kill();
      throw error;
    }
    return m;
  }

  get pid(): number {
    const pid = this.daemon.child.pid;
    if (pid === undefined) throw new Error('milterd has no pid');
    return pid;
  }

  /** Sum of the samples of `name` matching `labels` on /metrics. */
  async metric(name: string, labels: Record<string, string> = {}): Promise<number> {
    const r = await httpGet(this.adminPort, '/metrics');
    if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
    return sampleValue(parsePrometheus(r.body), name, labels);
  }

  /** Open file descriptors of the daemon (entries of /proc/PID/fd). */
  async fdCount(): Promise<number> {
    return (await readdir(`/proc/${this.pid}/fd`)).length;
  }

  /** ESTABLISHED or closing TCP connections of the daemon's own sockets to 127.0.0.1:`port`. */
  async connectionsTo(port: number): Promise<number> {
    const inodes = new Set<string>();
    for (const fd of await readdir(`/proc/${this.pid}/fd`)) {
      const target = await readlink(`/proc/${this.pid}/fd/${fd}`).catch(() => '');
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m) inodes.add(m[1] as string);
    }
    const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
    let n = 0;
    for (const file of ['tcp', 'tcp6']) {
      const text = await readFile(`/proc/${this.pid}/net/${file}`, 'utf8');
      for (const line of text.split('\n').slice(1)) {
        const cols = line.trim().split(/\s+/);
        // remote address is column 2, state column 3 (0A = LISTEN is never a connection), inode column 9
        if (cols[2]?.endsWith(`:${hexPort}`) && cols[3] !== '0A' && inodes.has(cols[9] ?? '')) n++;
      }
    }
    return n;
  }

  /** Wait (bounded) until the daemon holds no connection to `port` and at most `fds` descriptors. */
  async settled(port: number, fds: number): Promise<{ fds: number; connections: number }> {
    let last = { fds: -1, connections: -1 };
    try {
      return await waitFor(
        `milterd to close its connections to ${port} and fall back to ${fds} fds`,
        async () => {
          last = { fds: await this.fdCount(), connections: await this.connectionsTo(port) };
          return last.connections === 0 && last.fds <= fds ? last : undefined;
        },
      );
    } catch {
      return last;
    }
  }

  logText(): string {
    return this.daemon.lines.map((l) => JSON.stringify(l)).join('\n');
  }

  async stop(): Promise<void> {
    const d = this.daemon;
    if (d.child.exitCode === null && d.child.signalCode === null) {
      d.signal('SIGTERM');
      const done = await Promise.race([
        d.exited.then(() => true),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 10_000)),
      ]);
      if (!done) await d.kill();
    }
  }
}
