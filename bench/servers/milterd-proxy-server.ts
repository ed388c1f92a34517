/**
 * The proxy candidate of the benchmark (issue 14): milterd proxying to the libmilter benchmark filter, in
 * its own process, on `createMilterServer`:
 *
 *   node dist/bench/servers/milterd-proxy-server.js --listen SPEC --upstream /path/to/libmilter-filter
 *
 * The libmilter filter is started here as a child on a Unix socket, and the pipeline's only member is
 * `upstreamFilter` pointed at it (one upstream connection per MTA connection, as `milterd serve
 * --upstream`). `PIDS <child>` is printed so that the child's CPU and RSS count for this candidate too.
 * Prints `READY <json addresses>` once listening, as bench/servers/milterd-server.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import process from 'node:process';
import { setTimeout as sleep } from 'node:timers/promises';
import { createMilterServer } from '../../src/server/server.js';
import { pipeline } from '../../src/pipeline/index.js';
import { upstreamFilter } from '../../src/pipeline/upstream.js';

interface Args {
  listen: string[];
  upstream: string;
  maxConnections: number;
}

function parseArgs(argv: readonly string[]): Args {
  const args: Args = { listen: [], upstream: '', maxConnections: 20000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--listen') args.listen.push(value());
    else if (a === '--upstream') args.upstream = value();
    else if (a === '--max-connections') args.maxConnections = Number(value());
    else throw new Error(`unknown argument ${String(a)}`);
  }
  if (args.listen.length === 0) throw new Error('at least one --listen SPEC is needed');
  if (args.upstream === '') throw new Error('--upstream BINARY (the libmilter filter) is needed');
  return args;
}

/** Start the libmilter filter on a Unix socket; resolves when the socket exists (bounded). */
async function startUpstream(binary: string): Promise<{ child: ChildProcess; spec: string }> {
  const socket = path.join(os.tmpdir(), `milterd-bench-upstream-${process.pid}.sock`);
  rmSync(socket, { force: true });
  const spec = `unix:${socket}`;
  const child = spawn(binary, [spec], { stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 200 && !existsSync(socket); i++) {
    if (child.exitCode !== null) throw new Error(`${binary} exited with ${String(child.exitCode)}`);
    await sleep(25);
  }
  if (!existsSync(socket)) throw new Error(`${binary} did not create ${socket}`);
  return { child, spec };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const upstream = await startUpstream(args.upstream);
  const filter = pipeline([{ name: 'libmilter', filter: upstreamFilter({ address: upstream.spec }) }]);
  const server = createMilterServer({ filter, maxConnections: args.maxConnections });
  const specs: string[] = [];
  for (const spec of args.listen) specs.push((await server.listen(spec)).spec);
  const stop = (): void => {
    upstream.child.kill('SIGTERM');
    void server.close({ deadlineMs: 200 }).finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  if (upstream.child.pid !== undefined) process.stdout.write(`PIDS ${upstream.child.pid}\n`);
  process.stdout.write(`READY ${JSON.stringify(specs)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(
    `milterd-proxy-server: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exit(1);
});
