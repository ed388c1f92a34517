/**
 * Summarise a V8 .cpuprofile (from `node --cpu-prof`, e.g. `npm run bench -- --cpu-prof`): self time
 * per function and per file, heaviest first.
 *   node dist/bench/tools/profile-summary.js FILE.cpuprofile [top=40]
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

function main(): void {
  const file = process.argv[2];
  if (file === undefined) throw new Error('usage: profile-summary FILE.cpuprofile [top]');
  const top = Number(process.argv[3] ?? 40);
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  // Self time from samples and time deltas (more precise than hitCount × interval).
  const self = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) {
    const id = samples[i]!;
    const dt = deltas[i + 1] ?? 0;
    self.set(id, (self.get(id) ?? 0) + dt);
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const fnTime = new Map<string, number>();
  const fileTime = new Map<string, number>();
  const cwd = process.cwd();
  for (const [id, t] of self) {
    const n = byId.get(id);
    if (!n) continue;
    const url = n.callFrame.url.replace('file://', '');
    const rel = url === '' ? '(native)' : url.startsWith(cwd) ? path.relative(cwd, url) : url;
    const fn = `${n.callFrame.functionName || '(anonymous)'}  ${rel}:${n.callFrame.lineNumber + 1}`;
    fnTime.set(fn, (fnTime.get(fn) ?? 0) + t);
    const group = rel.startsWith('node:') ? 'node: internals' : rel;
    fileTime.set(group, (fileTime.get(group) ?? 0) + t);
  }
  // Inclusive time per function: self time of the node and its subtree, counted once per function per path.
  const parentOf = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parentOf.set(c, n.id);
  const inclusive = new Map<string, number>();
  const label = (n: ProfileNode): string => {
    const url = n.callFrame.url.replace('file://', '');
    const rel = url === '' ? '(native)' : url.startsWith(cwd) ? path.relative(cwd, url) : url;
    return `${n.callFrame.functionName || '(anonymous)'}  ${rel}:${n.callFrame.lineNumber + 1}`;
  };
  for (const [id, t] of self) {
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parentOf.get(cur)) {
      const n = byId.get(cur);
      if (!n) break;
      const l = label(n);
      if (seen.has(l)) continue;
      seen.add(l);
      inclusive.set(l, (inclusive.get(l) ?? 0) + t);
    }
  }
  const pct = (t: number): string => ((100 * t) / total).toFixed(1).padStart(5) + ' %';
  process.stdout.write(`total sampled: ${(total / 1000).toFixed(0)} ms\n\nby file:\n`);
  for (const [f, t] of [...fileTime].sort((a, b) => b[1] - a[1]).slice(0, 25))
    process.stdout.write(`${pct(t)}  ${f}\n`);
  process.stdout.write('\nby function (inclusive, project code):\n');
  for (const [f, t] of [...inclusive]
    .filter(([f]) => f.includes('dist/src/') || f.includes('dist/bench/'))
    .sort((a, b) => b[1] - a[1])
    .slice(0, top))
    process.stdout.write(`${pct(t)}  ${f}\n`);
  process.stdout.write('\nby function (self):\n');
  for (const [f, t] of [...fnTime].sort((a, b) => b[1] - a[1]).slice(0, top))
    process.stdout.write(`${pct(t)}  ${f}\n`);
}

main();
