/**
 * The milterd candidate of the benchmark, in its own process: the benchmark filter (continue at every
 * stage, add one header at EOM) on `createMilterServer`.
 *
 *   node dist/bench/servers/milterd-server.js --listen inet:0@127.0.0.1 [--listen unix:/tmp/x.sock]
 *        [--cluster N] [--max-connections N] [--async] [--pipeline N]
 *
 * Prints `READY <json addresses>` on stdout once every socket listens. With `--cluster N` the primary
 * forks N workers sharing the listening sockets (Node cluster); the primary prints READY when all
 * workers listen, and `PIDS <pid,...>` with the worker pids (for CPU and RSS accounting).
 *
 * `--pipeline N` runs the filter as the last member of an in-process `pipeline()` of N members (the N - 1
 * before it continue at every stage and change nothing), to measure what the pipeline layer costs.
 *
 * Every callback is defined on purpose: milterd negotiates absent callbacks away (SMFIP_NO*), which
 * would make it do less work than libmilter and go-milter, where every callback is registered.
 */
import cluster from 'node:cluster';
import net from 'node:net';
import process from 'node:process';
import { createMilterServer } from '../../src/server/server.js';
import { parseSocketSpec } from '../../src/socket-spec.js';
import { benchFilter, benchFilterAsync, benchPipeline } from './bench-filters.js';

interface ServerArgs {
  listen: string[];
  cluster: number;
  maxConnections: number;
  async: boolean;
  clusterPolicy: 'rr' | 'none';
  /** Run the filter inside a pipeline of this many members (0: no pipeline). */
  pipeline: number;
  /** Listen backlog; when set, the bench creates the net.Server itself and hands it to milterd. */
  backlog: number | undefined;
}

function parseArgs(argv: readonly string[]): ServerArgs {
  const args: ServerArgs = {
    listen: [],
    cluster: 0,
    maxConnections: 20000,
    async: false,
    clusterPolicy: 'none',
    pipeline: 0,
    backlog: undefined,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--listen') args.listen.push(value());
    else if (a === '--cluster') args.cluster = Number(value());
    else if (a === '--max-connections') args.maxConnections = Number(value());
    else if (a === '--async') args.async = true;
    else if (a === '--pipeline') args.pipeline = Number(value());
    else if (a === '--backlog') args.backlog = Number(value());
    else if (a === '--cluster-policy') args.clusterPolicy = value() === 'rr' ? 'rr' : 'none';
    else throw new Error(`unknown argument ${String(a)}`);
  }
  if (args.listen.length === 0) throw new Error('at least one --listen SPEC is needed');
  return args;
}

async function serve(args: ServerArgs, shared: boolean): Promise<string[]> {
  const filter = args.async ? benchFilterAsync : benchFilter;
  const server = createMilterServer({
    filter: args.pipeline > 0 ? benchPipeline(filter, args.pipeline) : filter,
    maxConnections: args.maxConnections,
  });
  const specs: string[] = [];
  for (const spec of args.listen) {
    if (!shared && args.backlog === undefined) {
      const addr = await server.listen(spec);
      specs.push(addr.spec);
      continue;
    }
    // Cluster worker (or --backlog): listen through Node's cluster handle sharing, then hand the net.Server to milterd
    // (milterd's own unix bind would see the primary's live socket and refuse it as in use).
    const parsed = parseSocketSpec(spec);
    // pauseOnConnect, as milterd's own listeners: lets the connections read into the shared buffer.
    const netServer = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
    await new Promise<void>((resolve, reject) => {
      netServer.once('error', reject);
      const backlog = args.backlog ?? 511;
      if (parsed.kind === 'unix') netServer.listen({ path: parsed.path, backlog }, resolve);
      else netServer.listen({ host: parsed.host, port: parsed.port, backlog }, resolve);
    });
    const addr = await server.listen(netServer);
    specs.push(addr.spec);
  }
  const stop = (): void => {
    void server.close({ deadlineMs: 200 }).finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  return specs;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.cluster > 0 && cluster.isPrimary) {
    cluster.schedulingPolicy = args.clusterPolicy === 'rr' ? cluster.SCHED_RR : cluster.SCHED_NONE;
    // Unix sockets: remove a stale file once, here, before the workers bind through the primary.
    for (const spec of args.listen) {
      const parsed = parseSocketSpec(spec);
      if (parsed.kind === 'unix') {
        const { rm } = await import('node:fs/promises');
        await rm(parsed.path, { force: true });
      }
    }
    const pids: number[] = [];
    let ready = 0;
    let specs: string[] = [];
    for (let i = 0; i < args.cluster; i++) {
      const worker = cluster.fork();
      if (worker.process.pid !== undefined) pids.push(worker.process.pid);
      worker.on('message', (msg: unknown) => {
        if (typeof msg === 'object' && msg !== null && 'ready' in msg) {
          specs = (msg as { ready: string[] }).ready;
          if (++ready === args.cluster) {
            process.stdout.write(`PIDS ${pids.join(',')}\n`);
            process.stdout.write(`READY ${JSON.stringify(specs)}\n`);
          }
        }
      });
      worker.on('exit', (code) => {
        if (code !== 0) process.stderr.write(`cluster worker exited with ${String(code)}\n`);
      });
    }
    const stop = (): void => {
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
      setTimeout(() => process.exit(0), 500).unref();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    return;
  }
  const specs = await serve(args, args.cluster > 0);
  if (cluster.isWorker) process.send?.({ ready: specs });
  else process.stdout.write(`READY ${JSON.stringify(specs)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(
    `milterd-server: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exit(1);
});
