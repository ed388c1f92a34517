/**
 * The standard process and Node.js runtime series, under the names Prometheus' client libraries use
 * (process_*, nodejs_*), so existing dashboards and alerts work unchanged.
 *
 * Nothing here runs per milter command: CPU and memory are read when scraped, descriptors are counted
 * asynchronously just before a scrape is rendered ({@link ProcessMetrics.refresh}), event-loop delay is
 * sampled by libuv's own timer (perf_hooks.monitorEventLoopDelay) and GC pauses arrive from V8 through a
 * PerformanceObserver.
 */
import { readdir } from 'node:fs/promises';
import {
  constants,
  monitorEventLoopDelay,
  PerformanceObserver,
  type IntervalHistogram,
} from 'node:perf_hooks';
import { openFileLimit } from '../server/fd-limit.js';
import type { Gauge, Registry } from './metrics.js';

/** Names of the process and runtime series (documented in the README next to METRIC_NAMES). */
export const PROCESS_METRIC_NAMES = {
  cpuUser: 'process_cpu_user_seconds_total',
  cpuSystem: 'process_cpu_system_seconds_total',
  cpu: 'process_cpu_seconds_total',
  residentMemory: 'process_resident_memory_bytes',
  heapUsed: 'nodejs_heap_size_used_bytes',
  heapTotal: 'nodejs_heap_size_total_bytes',
  openFds: 'process_open_fds',
  maxFds: 'process_max_fds',
  startTime: 'process_start_time_seconds',
  eventLoopLag: 'nodejs_eventloop_lag_seconds',
  eventLoopLagP99: 'nodejs_eventloop_lag_p99_seconds',
  eventLoopLagMax: 'nodejs_eventloop_lag_max_seconds',
  gcSeconds: 'nodejs_gc_duration_seconds',
} as const;

/** GC pause buckets in seconds (those of prom-client, so dashboards built for it fit). */
const GC_BUCKETS: readonly number[] = [0.001, 0.01, 0.1, 1, 2, 5];

/** V8 GC kinds as PerformanceEntry.detail.kind reports them. */
const GC_KINDS: Readonly<Record<number, string>> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};

/** Sampling resolution of the event-loop delay monitor, ms (libuv timer; Node's default is 10). */
const EVENT_LOOP_RESOLUTION_MS = 20;

export class ProcessMetrics {
  private readonly openFds: Gauge;
  private readonly maxFds: Gauge;
  private readonly loop: IntervalHistogram;
  private readonly gcObserver: PerformanceObserver | undefined;

  constructor(r: Registry) {
    const n = PROCESS_METRIC_NAMES;
    const sec = (micros: number): number => micros / 1e6;
    r.counter({
      name: n.cpuUser,
      help: 'User CPU time spent, in seconds.',
      collect: () => sec(process.cpuUsage().user),
    });
    r.counter({
      name: n.cpuSystem,
      help: 'System CPU time spent, in seconds.',
      collect: () => sec(process.cpuUsage().system),
    });
    r.counter({
      name: n.cpu,
      help: 'User and system CPU time spent, in seconds.',
      collect: () => {
        const u = process.cpuUsage();
        return sec(u.user + u.system);
      },
    });
    r.gauge({
      name: n.residentMemory,
      help: 'Resident memory size, in bytes.',
      collect: () => process.memoryUsage.rss(),
    });
    r.gauge({
      name: n.heapUsed,
      help: 'V8 heap in use, in bytes.',
      collect: () => process.memoryUsage().heapUsed,
    });
    r.gauge({
      name: n.heapTotal,
      help: 'V8 heap allocated, in bytes.',
      collect: () => process.memoryUsage().heapTotal,
    });
    this.openFds = r.gauge({ name: n.openFds, help: 'Open file descriptors (Linux: /proc/self/fd).' });
    this.maxFds = r.gauge({
      name: n.maxFds,
      help: 'Maximum number of open file descriptors (soft RLIMIT_NOFILE).',
    });
    r.gauge({
      name: n.startTime,
      help: 'Start time of the process, in seconds since the Unix epoch.',
    }).set(Math.round(Date.now() / 1000 - process.uptime()));

    // The delay histogram is reset at each scrape: the gauges describe the interval since the last one.
    this.loop = monitorEventLoopDelay({ resolution: EVENT_LOOP_RESOLUTION_MS });
    this.loop.enable();
    const lag = (read: (h: IntervalHistogram) => number) => () => {
      // Nanoseconds; NaN/0 before the first sample. The timer's own resolution is subtracted by Node.
      const v = read(this.loop);
      return Number.isFinite(v) ? v / 1e9 : 0;
    };
    r.gauge({
      name: n.eventLoopLag,
      help: 'Mean event-loop delay since the previous scrape, in seconds.',
      collect: lag((h) => h.mean),
    });
    r.gauge({
      name: n.eventLoopLagP99,
      help: '99th percentile of the event-loop delay since the previous scrape, in seconds.',
      collect: lag((h) => h.percentile(99)),
    });
    r.gauge({
      name: n.eventLoopLagMax,
      help: 'Longest event-loop delay since the previous scrape, in seconds.',
      collect: lag((h) => h.max),
    });

    // 'gc' entries need Node's perf_hooks support for them; without it the series is simply absent.
    const supported = (PerformanceObserver as unknown as { supportedEntryTypes?: readonly string[] })
      .supportedEntryTypes;
    if (supported?.includes('gc') === true) {
      const gc = r.histogram({
        name: n.gcSeconds,
        help: 'Garbage collection pauses, by kind (minor, major, incremental, weakcb), in seconds.',
        labelNames: ['kind'],
        buckets: GC_BUCKETS,
      });
      for (const kind of Object.values(GC_KINDS)) gc.count({ kind });
      this.gcObserver = new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) {
          const kind =
            GC_KINDS[(entry as { detail?: { kind?: number } | null }).detail?.kind ?? 0] ?? 'other';
          gc.observe(entry.duration / 1000, { kind });
        }
      });
      this.gcObserver.observe({ entryTypes: ['gc'] });
    }
  }

  /** Read what needs I/O (descriptor count and limit) without blocking the event loop; call before rendering. */
  async refresh(): Promise<void> {
    const [fds, limit] = await Promise.all([
      readdir('/proc/self/fd').then(
        (entries) => entries.length,
        () => undefined,
      ),
      openFileLimit(),
    ]);
    if (fds !== undefined) this.openFds.set(fds);
    if (limit !== undefined) this.maxFds.set(limit);
  }

  /** Called after rendering: start a new event-loop delay interval. */
  afterRender(): void {
    this.loop.reset();
  }

  /** Stop sampling (the monitor and the GC observer); the series keep their last values. */
  stop(): void {
    this.loop.disable();
    this.gcObserver?.disconnect();
  }
}
