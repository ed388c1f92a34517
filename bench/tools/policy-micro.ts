/**
 * The policy's store path without milter sockets: many concurrent one-message connections (the exact
 * Postfix 3.7 byte stream of bench/loadgen/script.ts) through the session and the fleet policy of the
 * benchmark (FLEET_POLICY_YAML), each command in its own event-loop turn as on a socket, on one store:
 *
 *   node dist/bench/tools/policy-micro.js [--store memory|fake|URL] [--connections 128] [--seconds 5]
 *       [--batch-interval MS] [--warmup 1500] [--heap]
 *
 * - `memory`: the in-process store (the baseline).
 * - `fake`: RedisPolicyStore behind GuardedStore, as the daemon has it, on a client that answers each batch
 *   one turn later without a socket: the store path's own JavaScript.
 * - a Redis URL (`redis://127.0.0.1:6379/0`): the same on a real server, with the client library and its
 *   socket; also prints redis-server's CPU per message (INFO cpu, so run nothing else against it).
 *
 * Prints this process's CPU per message (user + system, from process.cpuUsage: time the hypervisor took is
 * not in it, which makes it steadier than msg/s on a VM with steal). `--heap` adds the bytes allocated per
 * message by function, the scavenged ones included (V8's sampling heap profiler), heaviest first.
 */
import type { HeapProfiler } from 'node:inspector';
import { Session } from 'node:inspector/promises';
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';
import { GuardedStore } from '../../src/policy/guarded-store.js';
import { parsePolicy } from '../../src/policy/load.js';
import { createRedisPolicyStore, RedisPolicyStore } from '../../src/policy/redis-store.js';
import type { PolicyStore } from '../../src/policy/store.js';
import { createShutdownPolicy } from '../../src/policy/rules.js';
import { withShutdownPolicy } from '../../src/policy/wrapper.js';
import { FrameDecoder } from '../../src/protocol/frame.js';
import type { Filter } from '../../src/filter.js';
import { FLEET_POLICY_YAML } from '../lib/fleet.js';
import { arg, handleWrite, microSession, MICRO_SHAPE, negotiatedProtocol } from '../lib/micro.js';
import { buildPlan, connectionWrites } from '../loadgen/script.js';
import { benchFilter } from '../servers/bench-filters.js';

/** A client for RedisPolicyStore that answers every batch script one turn later: one per line. */
function fakeClient(): ConstructorParameters<typeof RedisPolicyStore>[0] {
  const client: Record<string, unknown> = {
    defineCommand(name: string): void {
      client[name] = (_numKeys: number, ...keysThenOps: string[]): Promise<number[]> => {
        const ops = keysThenOps[keysThenOps.length - 1] as string;
        let lines = 0;
        for (let i = 0; i < ops.length; i++) if (ops.charCodeAt(i) === 10) lines++;
        return nextTurn().then(() => new Array<number>(lines).fill(1));
      };
    },
  };
  return client as unknown as ConstructorParameters<typeof RedisPolicyStore>[0];
}

interface Store {
  store: PolicyStore | undefined;
  /** Store calls so far (GuardedStore's, as metrics count them). */
  calls: () => number;
  /** redis-server's CPU so far (µs), when the store is a real Redis. */
  serverCpu?: () => Promise<number>;
  close(): Promise<void>;
}

async function openStore(spec: string, batchIntervalMs: number | undefined): Promise<Store> {
  const options = batchIntervalMs === undefined ? {} : { batchIntervalMs };
  if (spec === 'memory') return { store: undefined, calls: () => 0, close: async () => undefined };
  const redis =
    spec === 'fake'
      ? new RedisPolicyStore(fakeClient(), options)
      : await createRedisPolicyStore({ url: spec, ...options });
  let n = 0;
  const guarded = new GuardedStore(redis, { onCall: () => void n++ });
  const calls = (): number => n;
  if (spec === 'fake') return { store: guarded, calls, close: async () => undefined };
  const serverCpu = async (): Promise<number> => {
    const info = String(await redis.client.info('cpu'));
    const seconds = (name: string): number => Number(new RegExp(`${name}:([0-9.]+)`).exec(info)?.[1] ?? NaN);
    return (seconds('used_cpu_sys') + seconds('used_cpu_user')) * 1e6;
  };
  return { store: guarded, calls, serverCpu, close: () => guarded.close() };
}

let sessions = 0;

/** One connection: each write of the MTA in its own turn, as reads from a socket come. */
async function connection(filter: Filter, writes: readonly Buffer[]): Promise<void> {
  const session = microSession(`c${sessions++}`, filter);
  const decoder = new FrameDecoder();
  for (const w of writes) {
    await handleWrite(session, decoder, w);
    await nextTurn();
  }
  await session.terminate('eof');
}

/** Bytes allocated per message by function (scavenged objects included), heaviest first. */
function allocationTable(head: HeapProfiler.SamplingHeapProfileNode, messages: number, top: number): string {
  const bytes = new Map<string, number>();
  const walk = (n: HeapProfiler.SamplingHeapProfileNode): void => {
    const f = n.callFrame;
    const key = `${f.functionName || '(anonymous)'} ${f.url.split('/').pop() ?? ''}:${f.lineNumber + 1}`;
    bytes.set(key, (bytes.get(key) ?? 0) + n.selfSize);
    for (const c of n.children) walk(c);
  };
  walk(head);
  const total = [...bytes.values()].reduce((a, b) => a + b, 0);
  const rows = [...bytes].sort((a, b) => b[1] - a[1]).slice(0, top);
  return [
    `allocated: ${(total / messages / 1024).toFixed(1)} KiB per message`,
    ...rows.map(([key, n]) => `${(n / messages).toFixed(0).padStart(7)} B  ${key}`),
  ].join('\n');
}

async function main(): Promise<void> {
  const spec = arg('--store', 'memory');
  const connections = Number(arg('--connections', '128'));
  const seconds = Number(arg('--seconds', '5'));
  const interval = process.argv.includes('--batch-interval')
    ? Number(arg('--batch-interval', '10'))
    : undefined;
  const heap = process.argv.includes('--heap');
  const warmupMs = Number(arg('--warmup', '1500'));
  const opened = await openStore(spec, interval);
  const policy = createShutdownPolicy(
    parsePolicy(FLEET_POLICY_YAML),
    opened.store ? { store: opened.store } : {},
  );
  const filter = withShutdownPolicy(benchFilter, policy) as Filter;
  const writes = connectionWrites(buildPlan(MICRO_SHAPE, negotiatedProtocol(filter), false, 'postfix'), 1);

  let messages = 0;
  let stop = false;
  const worker = async (): Promise<void> => {
    while (!stop) {
      await connection(filter, writes);
      messages++;
    }
  };
  const workers = Array.from({ length: connections }, worker);
  await sleep(warmupMs);

  const inspector = heap ? new Session() : undefined;
  if (inspector !== undefined) {
    inspector.connect();
    await inspector.post('HeapProfiler.enable');
    await inspector.post('HeapProfiler.startSampling', {
      samplingInterval: 1024,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
  }
  const server0 = await opened.serverCpu?.();
  const m0 = messages;
  const calls0 = opened.calls();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await sleep(seconds * 1000);
  const cpu = process.cpuUsage(cpu0);
  const elapsed = (performance.now() - t0) / 1000;
  const counted = messages - m0;
  const calls = opened.calls() - calls0;
  const server1 = await opened.serverCpu?.();
  const profile = inspector === undefined ? undefined : await inspector.post('HeapProfiler.stopSampling');
  stop = true;
  await Promise.all(workers);
  await opened.close();

  const perMessage = (cpu.user + cpu.system) / counted;
  const storeCalls =
    opened.store === undefined ? '' : `, ${(calls / counted).toFixed(2)} store calls per message`;
  const server =
    server0 === undefined || server1 === undefined
      ? ''
      : `, redis-server ${((server1 - server0) / counted).toFixed(1)} µs per message`;
  console.log(
    `${spec}: ${perMessage.toFixed(1)} µs CPU per message (${counted} messages, ${(counted / elapsed).toFixed(0)}/s, ${connections} connections)${storeCalls}${server}`,
  );
  if (profile !== undefined) console.log(allocationTable(profile.profile.head, counted, 30));
  process.exit(0);
}

void main();
