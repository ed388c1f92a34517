/**
 * The fleet targets of issue 15 over the pairs of several bench runs. A run's repetitions stay pairs of
 * their own (each Redis measurement against the memory store's of the same repetition of the same run),
 * and the median and its 95 % interval are taken over the pairs of every run given: one run of 15-21
 * repetitions on a host whose speed drifts by ±25 % gives an interval 20-40 points wide, and runs of one
 * build add up. Steal and the store-call check apply per repetition, as in the bench.
 *
 *   node dist/bench/tools/fleet-pool.js bench/results/bench-A.json bench/results/bench-B.json …
 *
 * Pool only runs of one build and one cell: the tool prints each file's start and arguments.
 */
import { readFileSync } from 'node:fs';
import process from 'node:process';
import { fleetTargets, pooledFleetRows } from '../lib/fleet.js';
import type { Measurement } from '../lib/measure.js';
import { table } from '../lib/stats.js';

interface BenchJson {
  date?: string;
  args?: unknown;
  measurements?: Measurement[];
}

function main(files: readonly string[]): void {
  if (files.length === 0) {
    process.stderr.write('usage: fleet-pool.js BENCH.json…\n');
    process.exitCode = 2;
    return;
  }
  const runs = files.map((file) => {
    const json = JSON.parse(readFileSync(file, 'utf8')) as BenchJson;
    process.stdout.write(`${file}: ${json.date ?? '?'} ${JSON.stringify(json.args ?? {})}\n`);
    return json.measurements ?? [];
  });
  const out: string[][] = [];
  for (const [generator, byRow] of pooledFleetRows(runs)) {
    for (const c of fleetTargets(byRow)) {
      out.push([c.target, generator, c.value, c.ok ? 'yes' : 'NO']);
    }
  }
  process.stdout.write(`\n${table(['target', 'generator', 'measured', 'met'], out)}\n`);
}

main(process.argv.slice(2));
