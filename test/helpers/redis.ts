/**
 * Real Redis servers for the tests, the e2e fleet (test/e2e/harness/fleet.ts) and the benchmark: Debian's
 * `redis-server` (scripts/install-test-deps.sh) started in the foreground (its pid is ours) on a free
 * loopback port, optionally also on a Unix socket, in its own directory, without persistence, stopped by
 * pid. The fault tests kill it (-9), pause it (SIGSTOP) and start it again on the same port and socket.
 * A 3-master Cluster is built on loopback with `redis-cli --cluster create`. The `redis-server` and
 * `redis-cli` on PATH are used, so the suites run against another build too (Valkey 8.0 and Redis 6.2 were
 * checked that way; before 7.0 the cluster bus is port + 10000, without `--cluster-port`). With `tls` the server listens
 * on a TLS port only (`rediss://`), with a certificate for 127.0.0.1 from a private CA made at run time
 * with `openssl` ({@link makeTestPki}), optionally requiring client certificates (`tls-auth-clients yes`);
 * Clusters can be built on TLS nodes, and a server can run as a Sentinel of another.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A port free on 127.0.0.1 now (the kernel's choice). */
export async function freeLoopbackPort(): Promise<number> {
  const port = await listenable(0);
  if (port === undefined) throw new Error('no free loopback port');
  return port;
}

/** Whether `port` can be listened on at 127.0.0.1 now (0: any free port): the port, or undefined. */
function listenable(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(undefined));
    srv.listen(port, '127.0.0.1', () => {
      const bound = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(bound));
    });
  });
}

/** PEM files of a private CA, a server certificate for 127.0.0.1 and a client certificate it signed. */
export interface TestPki {
  dir: string;
  /** The CA's certificate (what a client trusts). */
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/**
 * Make a private CA and two leaf certificates it signs in `dir` with `openssl` (P-256 keys, valid 2 days):
 * a server certificate for IP 127.0.0.1 (serverAuth, and clientAuth: Cluster nodes and Sentinels show it
 * to each other) and a client certificate (clientAuth).
 */
export async function makeTestPki(dir: string): Promise<TestPki> {
  await mkdir(dir, { recursive: true });
  const f = (name: string): string => join(dir, name);
  const openssl = (...args: string[]): Promise<unknown> => run('openssl', args, { timeout: 30_000 });
  const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  const caExt = ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign,cRLSign'];
  await openssl(
    ...['req', '-x509', ...key, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '2'],
    ...['-subj', '/CN=milterd test CA', ...caExt.flatMap((e) => ['-addext', e])],
  );
  const leaf = async (name: string, subject: string, ext: string): Promise<void> => {
    await openssl('req', ...key, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', subject);
    await writeFile(f(`${name}.ext`), ext);
    await openssl(
      ...['x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.crt'), '-CAkey', f('ca.key')],
      ...['-set_serial', `0x${Date.now().toString(16)}${name === 'server' ? '1' : '2'}`, '-days', '2'],
      ...['-extfile', f(`${name}.ext`), '-out', f(`${name}.crt`)],
    );
  };
  await leaf(
    'server',
    '/CN=127.0.0.1',
    'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n',
  );
  await leaf('client', '/CN=milterd test client', 'extendedKeyUsage=clientAuth\n');
  return {
    dir,
    ca: f('ca.crt'),
    serverCert: f('server.crt'),
    serverKey: f('server.key'),
    clientCert: f('client.crt'),
    clientKey: f('client.key'),
  };
}

/** Send one inline command and read the first reply line (no client library: the harness must not depend on the code under test). */
export function redisCommand(
  port: number,
  command: string,
  timeoutMs = 1000,
  /** Over TLS with these options (CA, client certificate), to 127.0.0.1. */
  tlsOptions?: tls.ConnectionOptions,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket =
      tlsOptions === undefined
        ? net.connect({ host: '127.0.0.1', port })
        : tls.connect({ ...tlsOptions, host: '127.0.0.1', port });
    let data = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`redis on ${port}: no answer to ${command}`));
    }, timeoutMs);
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on(tlsOptions === undefined ? 'connect' : 'secureConnect', () => socket.write(`${command}\r\n`));
    socket.on('data', (chunk) => {
      data += chunk.toString('latin1');
      if (data.includes('\r\n')) {
        clearTimeout(timer);
        socket.destroy();
        resolve(data.slice(0, data.indexOf('\r\n')));
      }
    });
  });
}

/** `redis-cli -p PORT ARGS…`, stdout. */
export async function redisCli(port: number, ...args: string[]): Promise<string> {
  const { stdout } = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], {
    timeout: 10_000,
  });
  return stdout;
}

/** Poll `check` (an error counts as false) until true; `fatal` returning an error ends the wait with it. */
async function waitUntil(
  check: () => Promise<boolean>,
  what: string,
  fatal: () => Error | undefined = () => undefined,
  timeoutMs = 15_000,
): Promise<void> {
  const start = Date.now();
  for (;;) {
    const failure = fatal();
    if (failure !== undefined) throw failure;
    if (await check().catch(() => false)) return;
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A process's state letter from /proc/PID/stat (R, S, D, T...), or undefined once it is gone. */
async function processState(pid: number): Promise<string | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (stat === undefined) return undefined;
  // "PID (COMM) STATE ...": COMM may hold spaces and parentheses, the state follows the last ")".
  const state = stat.lastIndexOf(')') + 2;
  return stat.slice(state, state + 1);
}

/** One redis-server process. */
export class RedisServer {
  #child: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  #output = '';

  private constructor(
    readonly port: number,
    readonly dir: string,
    readonly extraArgs: readonly string[],
    /** Whether `stop()` removes `dir` (a temporary one this class made). */
    private readonly ownsDir: boolean,
    /** TLS only: the certificates, and the client options the helper itself connects with. */
    readonly tls: { pki: TestPki; authClients: boolean; client: tls.ConnectionOptions } | undefined,
    /** A Sentinel (`redis-server CONF --sentinel`) monitoring this master. */
    readonly sentinel: { name: string; port: number } | undefined,
  ) {}

  /**
   * Start a server on a free loopback port (or `port`); resolves when it answers PING. `dir` (created)
   * is its working directory, left in place by `stop()`; default a temporary one that `stop()` removes.
   * `unixSocket`: also listen on `socketPath`. `tls`: listen on `port` with TLS only (no plain port),
   * with the certificates of `pki` (default: a fresh private CA in `dir/pki`); `authClients`: clients
   * must show a certificate of that CA.
   */
  static async start(
    options: {
      port?: number;
      args?: readonly string[];
      unixSocket?: boolean;
      dir?: string;
      tls?: { pki?: TestPki; authClients?: boolean };
      /** Run a Sentinel instead, monitoring the master `name` on 127.0.0.1:`port` (over TLS with `tls`). */
      sentinel?: { name: string; port: number };
    } = {},
  ): Promise<RedisServer> {
    let dir = options.dir;
    if (dir !== undefined) await mkdir(dir, { recursive: true });
    else dir = await mkdtemp(join(tmpdir(), 'milterd-redis-'));
    const port = options.port ?? (await freeLoopbackPort());
    const args = [...(options.args ?? [])];
    if (options.unixSocket === true)
      args.push('--unixsocket', join(dir, 'redis.sock'), '--unixsocketperm', '700');
    let tlsSetup: RedisServer['tls'];
    if (options.tls !== undefined) {
      try {
        const pki = options.tls.pki ?? (await makeTestPki(join(dir, 'pki')));
        const [ca, cert, key] = await Promise.all(
          [pki.ca, pki.clientCert, pki.clientKey].map((f) => readFile(f)),
        );
        tlsSetup = { pki, authClients: options.tls.authClients ?? false, client: { ca, cert, key } };
      } catch (err) {
        if (options.dir === undefined) await rm(dir, { recursive: true, force: true });
        throw err;
      }
    }
    const server = new RedisServer(port, dir, args, options.dir === undefined, tlsSetup, options.sentinel);
    try {
      await server.restart();
    } catch (err) {
      await server.stop();
      throw err;
    }
    return server;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get socketPath(): string {
    return join(this.dir, 'redis.sock');
  }

  get url(): string {
    return `${this.tls === undefined ? 'redis' : 'rediss'}://127.0.0.1:${this.port}`;
  }

  get alive(): boolean {
    const c = this.#child;
    return c !== undefined && c.exitCode === null && c.signalCode === null;
  }

  /** What the server printed (warnings and errors) since it was last (re)started. */
  log(): string {
    return this.#output;
  }

  /** (Re)start the process on the same port and directory, with no data; nothing if it is running. */
  async restart(): Promise<void> {
    if (this.alive) return;
    this.#output = '';
    const t = this.tls;
    const ports =
      t === undefined
        ? ['--port', String(this.port)]
        : [
            // TLS only: the plain port is off.
            '--port',
            '0',
            '--tls-port',
            String(this.port),
            '--tls-cert-file',
            t.pki.serverCert,
            '--tls-key-file',
            t.pki.serverKey,
            '--tls-ca-cert-file',
            t.pki.ca,
            '--tls-auth-clients',
            t.authClients ? 'yes' : 'no',
          ];
    const mode: string[] = [];
    if (this.sentinel !== undefined) {
      // Sentinel needs a config file it can rewrite; a fresh one at each start.
      const conf = join(this.dir, 'sentinel.conf');
      const { name, port } = this.sentinel;
      await writeFile(conf, `sentinel monitor ${name} 127.0.0.1 ${port} 1\n`);
      // tls-replication: the Sentinel talks TLS to the master too.
      mode.push(conf, '--sentinel', ...(t === undefined ? [] : ['--tls-replication', 'yes']));
    }
    const child = spawn(
      'redis-server',
      [
        ...mode,
        ...ports,
        '--bind',
        '127.0.0.1',
        '--save',
        '',
        '--appendonly',
        'no',
        '--dir',
        this.dir,
        '--daemonize',
        'no',
        // The log goes to stdout, kept for log() (and the error below).
        '--logfile',
        '',
        '--loglevel',
        'warning',
        ...this.extraArgs,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.#child = child;
    let spawnError: Error | undefined;
    child.once('error', (err) => (spawnError = err));
    child.stdout.on('data', (d: Buffer) => (this.#output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (this.#output += d.toString()));
    this.#exited = new Promise((resolve) => child.once('close', () => resolve()));
    await waitUntil(
      // Up once it answers; with --requirepass the answer is a NOAUTH error.
      async () => /^(\+PONG|-NOAUTH)/.test(await redisCommand(this.port, 'PING', 300, this.tls?.client)),
      `redis-server on ${this.port}`,
      () => {
        if (spawnError !== undefined)
          return new Error(`redis-server: ${spawnError.message} (run scripts/install-test-deps.sh as root)`);
        if (child.exitCode !== null || child.signalCode !== null)
          return new Error(`redis-server exited (${child.exitCode ?? child.signalCode}):\n${this.#output}`);
        return undefined;
      },
    );
  }

  /** `redis-cli` against this server (over TLS with its CA and client certificate), stdout. */
  async cli(...args: string[]): Promise<string> {
    const p = this.tls?.pki;
    const tlsArgs =
      p === undefined ? [] : ['--tls', '--cacert', p.ca, '--cert', p.clientCert, '--key', p.clientKey];
    const { stdout } = await run(
      'redis-cli',
      [...tlsArgs, '-h', '127.0.0.1', '-p', String(this.port), ...args],
      {
        timeout: 10_000,
      },
    );
    return stdout;
  }

  /**
   * Freeze the process (the deadline path: connections stay open, nothing answers). Resolves once the
   * kernel reports it stopped: `kill` returns before the signal is acted on, and a test that goes on at
   * once must not meet a server still answering.
   */
  async pause(): Promise<void> {
    const pid = this.#child?.pid;
    if (pid === undefined || !this.alive) throw new Error('redis-server is not running: nothing to pause');
    process.kill(pid, 'SIGSTOP');
    await waitUntil(
      async () => (await processState(pid)) === 'T',
      `redis-server ${pid} stopped`,
      undefined,
      2000,
    );
  }

  resume(): void {
    if (this.#child?.pid !== undefined && this.alive) process.kill(this.#child.pid, 'SIGCONT');
  }

  /** Kill the process (SIGKILL) and wait for it to be gone. */
  async kill(): Promise<void> {
    const child = this.#child;
    if (child?.pid === undefined || !this.alive) return;
    process.kill(child.pid, 'SIGCONT');
    process.kill(child.pid, 'SIGKILL');
    await this.#exited;
  }

  /** Kill the process and remove its directory (if `start` made it). */
  async stop(): Promise<void> {
    await this.kill();
    if (this.ownsDir) await rm(this.dir, { recursive: true, force: true });
  }
}

/** The major version of the `redis-server` on PATH ("Redis server v=6.2.16 ..." / "Valkey server v=8.0.1 ..."). */
async function serverMajor(): Promise<number> {
  const { stdout } = await run('redis-server', ['--version'], { timeout: 10_000 });
  const m = /v=(\d+)\./.exec(stdout);
  return m === null ? Number.POSITIVE_INFINITY : Number(m[1]);
}

/** A free port P with P + 10000 free too (the fixed cluster bus of Redis < 7), both below 65536. */
async function freeLegacyClusterPort(): Promise<number> {
  for (let tries = 0; tries < 1000; tries++) {
    const port = 20000 + Math.floor(Math.random() * 25000);
    if ((await listenable(port)) !== undefined && (await listenable(port + 10000)) !== undefined) return port;
  }
  throw new Error('no free port pair for a Redis < 7 cluster node');
}

/** A Redis Cluster of `masters` masters (no replicas) on loopback. */
export class RedisCluster {
  private constructor(readonly servers: RedisServer[]) {}

  /** `tls`: every node on a TLS port only, the cluster bus over TLS too, one private CA for all. */
  static async start(masters = 3, options: { tls?: boolean } = {}): Promise<RedisCluster> {
    const servers: RedisServer[] = [];
    try {
      // Redis before 7.0 has no --cluster-port: the bus is always port + 10000 (which must be free).
      const legacyBus = await serverMajor().then((m) => m < 7);
      for (let i = 0; i < masters; i++) {
        const pki = servers[0]?.tls?.pki;
        const port = legacyBus ? await freeLegacyClusterPort() : undefined;
        const bus = legacyBus ? [] : ['--cluster-port', String(await freeLoopbackPort())];
        servers.push(
          await RedisServer.start({
            ...(port === undefined ? {} : { port }),
            args: [
              '--cluster-enabled',
              'yes',
              '--cluster-config-file',
              'nodes.conf',
              ...bus,
              ...(options.tls === true ? ['--tls-cluster', 'yes', '--tls-replication', 'yes'] : []),
            ],
            ...(options.tls === true ? { tls: pki === undefined ? {} : { pki } } : {}),
          }),
        );
      }
      const p = servers[0]?.tls?.pki;
      const tlsArgs =
        p === undefined ? [] : ['--tls', '--cacert', p.ca, '--cert', p.clientCert, '--key', p.clientKey];
      await run(
        'redis-cli',
        [
          ...tlsArgs,
          '--cluster',
          'create',
          ...servers.map((s) => `127.0.0.1:${s.port}`),
          '--cluster-replicas',
          '0',
          '--cluster-yes',
        ],
        { timeout: 30_000 },
      );
      for (const s of servers) {
        await waitUntil(
          async () => (await s.cli('cluster', 'info')).includes('cluster_state:ok'),
          `cluster state ok on ${s.port}`,
        );
      }
      return new RedisCluster(servers);
    } catch (err) {
      await Promise.all(servers.map((s) => s.stop()));
      throw err;
    }
  }

  get url(): string {
    const scheme = this.servers[0]?.tls === undefined ? 'redis' : 'rediss';
    return `${scheme}+cluster://${this.servers.map((s) => `127.0.0.1:${s.port}`).join(',')}`;
  }

  async stop(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.stop()));
  }
}
