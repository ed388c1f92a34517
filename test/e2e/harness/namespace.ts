/**
 * A private mount+UTS namespace for the MTAs (see docs in test/e2e/README.md): host name `mta.test` and
 * private /etc/hosts, /etc/nsswitch.conf (`hosts: files`) and /etc/resolv.conf (`nameserver 127.0.0.1`)
 * bind-mounted over the real ones inside the namespace only, so that no MTA ever asks an outside DNS
 * server anything. Nothing under the real /etc is changed. The network namespace is shared, so the MTAs
 * reach the sink and milterd (in the test process) on 127.0.0.1 / ::1.
 *
 * A holder shell keeps the namespace alive (and cleans it up if the test process dies); commands enter it with `nsenter`. `close()` stops,
 * by pid, every process whose mount namespace is this one, then the holder.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { isAlive, pidsInMountNamespace, run, stopPid, waitFor, type RunResult } from './proc.js';

export const MTA_HOSTNAME = 'mta.test';

export interface NamespaceOptions {
  /** Folder for the private /etc files (created). */
  dir: string;
  /** Wrap every command in `strace -f -e trace=connect,sendto,…` writing to files in `dir`. */
  strace?: boolean;
  /** More private bind mounts [source, existing target], inside the namespace only. */
  binds?: ReadonlyArray<readonly [string, string]>;
}

export class MtaNamespace {
  readonly dir: string;
  readonly strace: boolean;
  private holder: ChildProcess | undefined;
  private nsLink = '';
  private straceCount = 0;
  readonly straceFiles: string[] = [];
  private readonly children = new Set<ChildProcess>();

  private readonly binds: ReadonlyArray<readonly [string, string]>;

  private constructor(options: NamespaceOptions) {
    this.dir = options.dir;
    this.binds = options.binds ?? [];
    this.strace = options.strace ?? false;
  }

  static async create(options: NamespaceOptions): Promise<MtaNamespace> {
    const ns = new MtaNamespace(options);
    await ns.start();
    return ns;
  }

  get pid(): number {
    const pid = this.holder?.pid;
    if (pid === undefined) throw new Error('namespace not started');
    return pid;
  }

  private async start(): Promise<void> {
    const etc = path.join(this.dir, 'etc');
    await mkdir(etc, { recursive: true });
    await writeFile(
      path.join(etc, 'hosts'),
      `127.0.0.1\tlocalhost ${MTA_HOSTNAME} mta\n::1\tlocalhost ip6-localhost ip6-loopback ${MTA_HOSTNAME}\n`,
    );
    await writeFile(
      path.join(etc, 'nsswitch.conf'),
      'hosts: files\npasswd: files\ngroup: files\nshadow: files\n',
    );
    await writeFile(path.join(etc, 'resolv.conf'), 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n');
    const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
    const script = [
      'set -e',
      `hostname ${MTA_HOSTNAME}`,
      ...['hosts', 'nsswitch.conf', 'resolv.conf'].map(
        (f) => `mount --bind ${q(path.join(etc, f))} /etc/${f}`,
      ),
      ...this.binds.map(([source, target]) => `mount --bind ${q(source)} ${q(target)}`),
      'echo ready',
      // Watchdog: if the test process dies without cleaning up (or after 2 h at most), stop, by pid,
      // everything left in this namespace. Normally close() stops everything first.
      `i=0; while [ $i -lt 7200 ] && kill -0 ${process.pid} 2>/dev/null; do sleep 1; i=$((i+1)); done`,
      'me=$(readlink /proc/$$/ns/mnt)',
      'for sig in TERM KILL; do',
      '  for p in /proc/[0-9]*; do pid=${p#/proc/}',
      '    [ "$pid" != "$$" ] && [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$me" ] && kill -$sig "$pid" 2>/dev/null',
      '  done; sleep 2',
      'done',
    ].join('\n');
    const holder = spawn(
      'unshare',
      ['--mount', '--uts', '--propagation', 'private', '--', 'sh', '-c', script],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    this.holder = holder;
    let out = '';
    holder.stdout.on('data', (d: Buffer) => (out += d.toString()));
    holder.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const spawnError = new Promise<Error>((resolve) => holder.once('error', resolve));
    const ready = await Promise.race([
      waitFor('the MTA namespace to be ready', () => (out.includes('ready') ? true : undefined), {
        timeoutMs: 10_000,
      }).then(
        () => undefined,
        (e: unknown) => (e instanceof Error ? e : new Error(String(e))),
      ),
      spawnError,
      new Promise<Error>((resolve) =>
        holder.once('exit', (code) => resolve(new Error(`exited with ${code}`))),
      ),
    ]);
    if (ready) {
      throw new Error(
        `cannot create the private mount+UTS namespace for the MTAs (unshare --mount --uts; needs root): ` +
          `${ready.message}\n${out}`,
      );
    }
    this.nsLink = await readlink(`/proc/${this.pid}/ns/mnt`);
    // Check the isolation really is in place before any MTA runs.
    const check = await this.exec('sh', ['-c', 'hostname; getent hosts mta.test; cat /etc/resolv.conf'], {
      strace: false,
    });
    if (!check.stdout.includes(MTA_HOSTNAME) || !check.stdout.includes('nameserver 127.0.0.1')) {
      throw new Error(`the MTA namespace is not isolated as expected:\n${check.stdout}${check.stderr}`);
    }
  }

  private wrap(command: string, args: readonly string[], strace: boolean): string[] {
    const inner = [command, ...args];
    if (strace) {
      const file = path.join(this.dir, `strace-${++this.straceCount}.txt`);
      this.straceFiles.push(file);
      inner.unshift(
        'strace',
        '-f',
        '-qq',
        '-s',
        '256',
        '-o',
        file,
        '-e',
        'trace=connect,sendto,sendmsg,sendmmsg',
      );
    }
    return ['--target', String(this.pid), '--mount', '--uts', '--', ...inner];
  }

  /** Run a command inside the namespace to completion. */
  exec(
    command: string,
    args: readonly string[],
    options: { timeoutMs?: number; strace?: boolean } = {},
  ): Promise<RunResult> {
    return run('nsenter', this.wrap(command, args, options.strace ?? this.strace), {
      timeoutMs: options.timeoutMs ?? 60_000,
    });
  }

  /** Start a long-running command inside the namespace (its pid is the command's own pid). */
  spawn(command: string, args: readonly string[], options: { strace?: boolean } = {}): ChildProcess {
    const child = spawn('nsenter', this.wrap(command, args, options.strace ?? this.strace), {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  /** Stop, by pid, every process still running in this namespace, then the holder. Idempotent. */
  async close(): Promise<void> {
    const holder = this.holder;
    if (!holder?.pid) return;
    // The holder first (a plain SIGTERM does not run its watchdog clean-up), then whatever is left inside.
    await stopPid(holder.pid, 2000);
    for (let round = 0; round < 5; round++) {
      const pids = await pidsInMountNamespace(this.nsLink);
      if (pids.length === 0) break;
      await Promise.all(pids.map((p) => stopPid(p, 2000)));
    }
    const left = await pidsInMountNamespace(this.nsLink);
    if (left.length > 0 || isAlive(holder.pid)) {
      throw new Error(`processes left in the MTA namespace: ${[holder.pid, ...left].join(' ')}`);
    }
    this.holder = undefined;
  }
}
