/**
 * The fleet cells of issue 15: the bench filter under a shutdown policy with `max-concurrent-sessions` and
 * `max-messages-per-client`, counted in the in-process store (`milterd-policy`) or in Redis reached over
 * TCP (`milterd-redis`) or over its Unix socket (`milterd-redis-unix`). The bench starts one private
 * `redis-server` (test/helpers/redis.ts: loopback, nothing persisted) when a Redis candidate is
 * selected, and stops it by pid at the end of the run. The limits are far above the load, so that every
 * message passes and every reply still checks: what is measured is the cost of counting.
 *
 * Target (issue 15), per cell and generator: the Redis store at most 10 % fewer msg/s than the memory
 * store and at most 1 ms more EOM p99.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { RedisServer } from '../../test/helpers/redis.js';
import type { CandidateDef, StoreCalls } from './candidates.js';
import type { Cell, Measurement } from './measure.js';
import { STEAL_WARN_PERCENT } from './proc.js';
import { fmtUs, median, medianInterval } from './stats.js';

export const FLEET_BASELINE = 'milterd-policy';
export const FLEET_REDIS = ['milterd-redis', 'milterd-redis-unix'] as const;

/**
 * Both cross-session rules on every session (no `when`): every connection joins and leaves the
 * concurrency count and every message is added to the rate log. The load generators send one client
 * address (192.0.2.10), so all 128 connections share one client's keys: the hottest case for Redis.
 */
export const FLEET_POLICY_YAML = `version: 1
rules:
  - name: concurrent
    max-concurrent-sessions: 100000
  - name: per-client-rate
    max-messages-per-client: 1000000000
    window: 1m
`;

type NodeCommand = (extra: string[]) => CandidateDef['command'];

export class FleetBench {
  private constructor(
    readonly policyFile: string,
    readonly redis: RedisServer | undefined,
  ) {}

  /** Writes the policy file; starts redis-server when a Redis candidate is among `candidates`. */
  static async start(candidates: readonly string[], resultsDir: string): Promise<FleetBench> {
    const dir = path.join(resultsDir, 'fleet');
    mkdirSync(dir, { recursive: true });
    const policyFile = path.join(dir, 'policy.yaml');
    writeFileSync(policyFile, FLEET_POLICY_YAML);
    // NAME-alt: the same cell on the --alt-server build.
    const needRedis = candidates.some((c) =>
      (FLEET_REDIS as readonly string[]).includes(c.replace(/-alt$/, '')),
    );
    const redis = needRedis
      ? await RedisServer.start({ dir: path.join(dir, `redis-${process.pid}`), unixSocket: true })
      : undefined;
    return new FleetBench(policyFile, redis);
  }

  /** The three candidates (the Redis ones only when redis-server runs). */
  defs(node: NodeCommand): CandidateDef[] {
    const policy = ['--policy', this.policyFile];
    const defs: CandidateDef[] = [
      {
        name: FLEET_BASELINE,
        description: 'milterd under max-concurrent-sessions + max-messages-per-client, in-process store',
        command: node([...policy, '--store', 'memory']),
      },
    ];
    const redis = this.redis;
    if (redis !== undefined) {
      defs.push(
        {
          name: 'milterd-redis',
          description: 'the same policy on the Redis store, redis-server over TCP (127.0.0.1)',
          command: node([...policy, '--store', redis.url]),
        },
        {
          name: 'milterd-redis-unix',
          description: 'the same policy on the Redis store, redis-server over its Unix socket',
          command: node([...policy, '--store', `redis+unix://${redis.socketPath}`]),
        },
      );
    }
    return defs;
  }

  /** Stop redis-server (by pid) and remove its directory (its socket; nothing is persisted). */
  async stop(): Promise<void> {
    const redis = this.redis;
    if (redis === undefined) return;
    await redis.stop();
    rmSync(redis.dir, { recursive: true, force: true });
  }
}

/** One repetition of a row: what the paired comparison needs. */
export interface FleetSample {
  repetition: number;
  messagesPerSecond: number;
  /** ns */
  eomP99: number;
  stealPercent: number;
  /** The store calls of this measurement (the bench server's own count; fleet cells only). */
  storeCalls?: StoreCalls;
}

/** A measurement as a sample of its row; `repetition` renumbered when runs are pooled. */
export function fleetSample(m: Measurement, repetition = m.repetition): FleetSample {
  return {
    repetition,
    messagesPerSecond: m.messagesPerSecond,
    eomP99: m.latency.eom?.p99 ?? Number.NaN,
    stealPercent: m.stealPercent,
    ...(m.storeCalls === undefined ? {} : { storeCalls: m.storeCalls }),
  };
}

/** What the target check needs of a summary row. */
export interface FleetRow {
  candidate: string;
  cell: Cell;
  /** Each repetition's figures. */
  samples: readonly FleetSample[];
}

export interface FleetCheck {
  target: string;
  value: string;
  ok: boolean;
}

function sameCell(a: Cell, b: Cell): boolean {
  return (
    a.connections === b.connections &&
    a.messagesPerConnection === b.messagesPerConnection &&
    a.bodySize === b.bodySize &&
    a.socket === b.socket
  );
}

const THROUGHPUT = "≥ 90 % of the memory store's msg/s";
const LATENCY = "EOM p99 ≤ memory store's + 1 ms";

/** Repetitions a cell needs in which no measurement lost CPU to the hypervisor: 3, and half of them. */
function enoughQuiet(quiet: number, reps: number): boolean {
  return quiet >= 3 && 2 * quiet >= reps;
}

/** `median` with its 95 % interval (or the range, below 6 values) and how many values, for a table cell. */
function spread(values: readonly number[], show: (v: number) => string): string {
  const ci = medianInterval(values);
  const [lo, hi] = ci ?? [Math.min(...values), Math.max(...values)];
  return `${values.length} pair${values.length === 1 ? '' : 's'}, ${ci === undefined ? 'range' : '95 % CI'} ${show(lo)} to ${show(hi)}`;
}

/**
 * A call that timed out or was refused by the open breaker let its message pass uncounted: a figure is
 * only Redis's if every call of its measurement was answered. The repetitions with steal are no pairs
 * (their figures are not used), and a vCPU taken from redis-server for longer than the deadline fails
 * calls there: they are shown, not held against the row.
 */
function answeredCheck(
  what: string,
  samples: readonly FleetSample[],
  quiet: ReadonlySet<number>,
): FleetCheck {
  const target = `${what} answered every store call of its quiet repetitions (no timeout, breaker closed)`;
  const used = samples.filter((s) => quiet.has(s.repetition));
  if (used.length === 0) return { target, value: 'no quiet repetition', ok: false };
  if (used.some((s) => s.storeCalls === undefined)) return { target, value: 'not reported', ok: false };
  const sum = (of: readonly FleetSample[], k: keyof StoreCalls): number =>
    of.reduce((a, s) => a + (s.storeCalls?.[k] ?? 0), 0);
  const total = sum(used, 'total');
  const failed = sum(used, 'failed');
  const elsewhere = sum(
    samples.filter((s) => !quiet.has(s.repetition)),
    'failed',
  );
  const left = elsewhere > 0 ? `; ${elsewhere} more in repetitions with steal, not pairs` : '';
  return { target, value: `${failed} of ${total} failed${left}`, ok: total > 0 && failed === 0 };
}

/**
 * Redis against memory in every cell both were measured in (rows of one generator). Each repetition
 * measures every candidate once, one after the other, so Redis is compared with the memory store of its
 * own repetition (a pair): the host's speed drifts over minutes, and a pair shares its drift. Only the
 * repetitions in which no measurement of the cell lost CPU to the hypervisor (steal) count; the figure is
 * the median over those pairs, with its 95 % confidence interval.
 */
export function fleetTargets(rows: readonly FleetRow[]): FleetCheck[] {
  const out: FleetCheck[] = [];
  for (const base of rows.filter((r) => r.candidate === FLEET_BASELINE)) {
    const c = base.cell;
    const where = `${c.connections}×${c.messagesPerConnection} ${c.socket}`;
    // Steal slows whichever measurement it falls on: a pair with it measures the host, not the store.
    const cell = rows.filter((r) => sameCell(r.cell, c));
    const reps = [...new Set(cell.flatMap((r) => r.samples.map((s) => s.repetition)))];
    const quiet = new Set(
      reps.filter((rep) =>
        cell.every((r) =>
          r.samples.every((s) => s.repetition !== rep || s.stealPercent <= STEAL_WARN_PERCENT),
        ),
      ),
    );
    out.push({
      target: `${where}: host quiet (no steal > ${STEAL_WARN_PERCENT} % in 3 repetitions and half of them)`,
      value: `${quiet.size} of ${reps.length} quiet`,
      ok: enoughQuiet(quiet.size, reps.length),
    });
    for (const name of FLEET_REDIS) {
      const r = rows.find((x) => x.candidate === name && sameCell(x.cell, c));
      if (r === undefined) continue;
      out.push(answeredCheck(`${where}: ${name}`, r.samples, quiet));
      const pairs = r.samples.flatMap((s) => {
        const b = base.samples.find((x) => x.repetition === s.repetition);
        return b !== undefined && quiet.has(s.repetition) ? [[s, b] as const] : [];
      });
      if (pairs.length === 0) {
        for (const what of [THROUGHPUT, LATENCY])
          out.push({ target: `${where}: ${name} ${what}`, value: 'no quiet pair', ok: false });
        continue;
      }
      const ratios = pairs.map(([s, b]) => s.messagesPerSecond / b.messagesPerSecond);
      const ratio = median(ratios);
      const percent = (v: number): string => `${(100 * v).toFixed(1)} %`;
      out.push({
        target: `${where}: ${name} ${THROUGHPUT}`,
        value: `${percent(ratio)} (${spread(ratios, percent)})`,
        ok: ratio >= 0.9,
      });
      const extras = pairs.map(([s, b]) => s.eomP99 - b.eomP99);
      const extra = median(extras);
      const signed = (ns: number): string => (ns < 0 ? `-${fmtUs(-ns)}` : `+${fmtUs(ns)}`);
      out.push({
        target: `${where}: ${name} ${LATENCY}`,
        value: `${signed(extra)} (${spread(extras, signed)})`,
        ok: extra <= 1_000_000,
      });
    }
  }
  return out;
}

/** Repetition numbers of run `i` start at `i * RUN_STRIDE`, so that no two runs share one. */
const RUN_STRIDE = 100_000;

/**
 * The fleet rows of several bench runs' measurements, per generator, for `fleetTargets` over all of them
 * (bench/tools/fleet-pool.ts): a run's repetitions stay pairs of their own (renumbered, so that a Redis
 * measurement is never paired with another run's memory store), every run's pairs count.
 */
export function pooledFleetRows(runs: readonly (readonly Measurement[])[]): Map<string, FleetRow[]> {
  const fleet = new Set<string>([FLEET_BASELINE, ...FLEET_REDIS]);
  // generator -> candidate and cell -> samples
  const rows = new Map<string, Map<string, { candidate: string; cell: Cell; samples: FleetSample[] }>>();
  runs.forEach((measurements, run) => {
    for (const m of measurements) {
      if (!fleet.has(m.candidate)) continue;
      let byRow = rows.get(m.generator);
      if (byRow === undefined) rows.set(m.generator, (byRow = new Map()));
      const key = `${m.candidate} ${JSON.stringify(m.cell)}`;
      let row = byRow.get(key);
      if (row === undefined) byRow.set(key, (row = { candidate: m.candidate, cell: m.cell, samples: [] }));
      row.samples.push(fleetSample(m, run * RUN_STRIDE + m.repetition));
    }
  });
  return new Map([...rows].map(([generator, byRow]) => [generator, [...byRow.values()]]));
}
