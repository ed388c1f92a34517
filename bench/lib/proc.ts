/** Server accounting from /proc: CPU ticks (utime + stime) and peak RSS (VmHWM) of a process tree. */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

let clkTck: number | undefined;

/** Clock ticks per second (`getconf CLK_TCK`, usually 100). */
export function ticksPerSecond(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** utime + stime of one process in ticks, or 0 when it is gone. */
export function cpuTicks(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(rest[11]) + Number(rest[12]);
  } catch {
    return 0;
  }
}

function statusField(pid: number, field: string): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Peak resident set size (VmHWM) in KiB. */
export function peakRssKiB(pid: number): number {
  return statusField(pid, 'VmHWM');
}

/** Current resident set size (VmRSS) in KiB. */
export function rssKiB(pid: number): number {
  return statusField(pid, 'VmRSS');
}

/** Every live descendant of `pid` (children of children included). */
export function descendants(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      parentOf.set(Number(entry), Number(rest[1]));
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.pop()!;
    for (const [child, parent] of parentOf) {
      if (parent === p) {
        out.push(child);
        queue.push(child);
      }
    }
  }
  return out;
}

export function treeCpuTicks(pids: readonly number[]): number {
  let sum = 0;
  for (const p of pids) sum += cpuTicks(p);
  return sum;
}

export function treePeakRssKiB(pids: readonly number[]): number {
  let sum = 0;
  for (const p of pids) sum += peakRssKiB(p);
  return sum;
}

/**
 * Steal (percent of the machine's CPU time) above which a measurement is flagged: on this project's VMs
 * quiet runs show 0–1 %, and with 20–25 % the same build ran at 60 % of its speed (docs/benchmark.md).
 */
export const STEAL_WARN_PERCENT = 2;

/** The machine's CPU time in ticks (/proc/stat, all CPUs): in all, and stolen by the hypervisor. */
export interface MachineTicks {
  total: number;
  steal: number;
}

export function machineTicks(): MachineTicks {
  try {
    // cpu  user nice system idle iowait irq softirq steal guest guest_nice (guest time is in user already)
    const f = readFileSync('/proc/stat', 'utf8')
      .split('\n', 1)[0]!
      .trim()
      .split(/\s+/)
      .slice(1, 9)
      .map(Number);
    return { total: f.reduce((a, n) => a + n, 0), steal: f[7] ?? 0 };
  } catch {
    return { total: 0, steal: 0 };
  }
}

/**
 * Percent of the machine's CPU time the hypervisor gave to other guests between two readings. On a VM it
 * changes every figure, and run to run: a measurement with steal is not comparable with one without.
 */
export function stealPercent(a: MachineTicks, b: MachineTicks): number {
  const total = b.total - a.total;
  return total > 0 ? (100 * (b.steal - a.steal)) / total : 0;
}
