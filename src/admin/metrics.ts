/**
 * A small Prometheus metrics registry: counters, gauges and histograms with labels, rendered in the
 * text exposition format 0.0.4 (`# HELP`, `# TYPE`, escaped label values, `_bucket`/`_sum`/`_count`).
 *
 * Updates are synchronous and cheap (a Map lookup keyed by the joined label values), so they can be
 * called from the milter hot path through a {@link MilterObserver}.
 */
import type { BreakerState } from '../breaker.js';

/** Label values by label name. Every declared label must be given; extra ones are an error. */
export type Labels = Readonly<Record<string, string | number>>;

/** Content type of the text exposition format. */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Escape a label value: backslash, double quote and line feed. */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Escape HELP text: backslash and line feed. */
function escapeHelp(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

/** Render a sample value the way Prometheus parses it (`+Inf`, `-Inf`, `NaN`). */
function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

/** Name, help text and label names of a metric. */
export interface MetricOptions {
  name: string;
  help: string;
  labelNames?: readonly string[];
}

/** Common parts of every metric: name, help, label names and a series map keyed by label values. */
abstract class Metric<S> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  protected readonly series = new Map<string, { labels: string[]; state: S }>();
  abstract readonly type: 'counter' | 'gauge' | 'histogram';

  constructor(options: MetricOptions) {
    if (!NAME_RE.test(options.name)) throw new TypeError(`invalid metric name "${options.name}"`);
    for (const l of options.labelNames ?? []) {
      if (!LABEL_RE.test(l) || l.startsWith('__') || l === 'le') {
        throw new TypeError(`invalid label name "${l}" for ${options.name}`);
      }
    }
    this.name = options.name;
    this.help = options.help;
    this.labelNames = options.labelNames ?? [];
  }

  protected abstract initial(): S;

  /** Find or create the series for these labels. */
  protected state(labels: Labels | undefined): S {
    const values = this.labelNames.map((n) => {
      const v = labels?.[n];
      if (v === undefined) throw new TypeError(`${this.name}: missing label "${n}"`);
      return String(v);
    });
    if (labels && Object.keys(labels).length !== this.labelNames.length) {
      throw new TypeError(`${this.name}: unexpected labels ${JSON.stringify(labels)}`);
    }
    const key = values.join('\u0000');
    let entry = this.series.get(key);
    if (entry === undefined) {
      entry = { labels: values, state: this.initial() };
      this.series.set(key, entry);
    }
    return entry.state;
  }

  /** `{a="x",b="y"}` for a series, with extra pairs appended (used for `le`). */
  protected labelText(values: readonly string[], extra?: [string, string]): string {
    const pairs = values.map((v, i) => `${this.labelNames[i]}="${escapeLabelValue(v)}"`);
    if (extra) pairs.push(`${extra[0]}="${escapeLabelValue(extra[1])}"`);
    return pairs.length === 0 ? '' : `{${pairs.join(',')}}`;
  }

  /** The sample lines of this metric (without HELP/TYPE). */
  protected abstract samples(): string[];

  /** HELP, TYPE and samples, newline-terminated. */
  render(): string {
    const lines = [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`];
    lines.push(...this.samples());
    return lines.join('\n') + '\n';
  }
}

/** A monotonically increasing counter. By convention its name ends in `_total`. */
export class Counter extends Metric<{ value: number }> {
  readonly type = 'counter';
  private readonly collect: (() => number) | undefined;
  /** `collect`, when given, supplies the value of the unlabelled series at each scrape (a running total). */
  constructor(options: MetricOptions & { collect?: () => number }) {
    super(options);
    this.collect = options.collect;
  }
  protected initial(): { value: number } {
    return { value: 0 };
  }
  /** Add `amount` (default 1, must be >= 0) to the series with `labels`. */
  inc(labels?: Labels, amount = 1): void {
    if (!(amount >= 0)) throw new RangeError(`${this.name}: counters only go up`);
    this.state(labels).value += amount;
  }
  /** Create the series with value 0 so it is exported before its first increment. */
  init(labels?: Labels): void {
    this.state(labels);
  }
  /** Current value of one series (0 when absent); for tests and readiness logic. */
  get(labels?: Labels): number {
    return this.state(labels).value;
  }
  protected samples(): string[] {
    if (this.collect) this.state(undefined).value = this.collect();
    return [...this.series.values()].map(
      (s) => `${this.name}${this.labelText(s.labels)} ${formatValue(s.state.value)}`,
    );
  }
}

/** A value that goes up and down, or is computed when scraped (`collect`). */
export class Gauge extends Metric<{ value: number }> {
  readonly type = 'gauge';
  private readonly collect: (() => number) | undefined;
  /** `collect`, when given, supplies the value of the unlabelled series at each scrape. */
  constructor(options: MetricOptions & { collect?: () => number }) {
    super(options);
    this.collect = options.collect;
  }
  protected initial(): { value: number } {
    return { value: 0 };
  }
  /** Set the series with `labels` to `value`. */
  set(value: number, labels?: Labels): void {
    this.state(labels).value = value;
  }
  /** Add `amount` (default 1). */
  inc(labels?: Labels, amount = 1): void {
    this.state(labels).value += amount;
  }
  /** Subtract `amount` (default 1). */
  dec(labels?: Labels, amount = 1): void {
    this.state(labels).value -= amount;
  }
  /** Current value of one series. */
  get(labels?: Labels): number {
    return this.state(labels).value;
  }
  protected samples(): string[] {
    if (this.collect) this.set(this.collect());
    return [...this.series.values()].map(
      (s) => `${this.name}${this.labelText(s.labels)} ${formatValue(s.state.value)}`,
    );
  }
}

interface HistogramState {
  counts: number[];
  sum: number;
  count: number;
}

/** Default latency buckets in seconds: 0.5 ms … 10 s. */
export const DEFAULT_SECONDS_BUCKETS: readonly number[] = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** A histogram with fixed, cumulative buckets (`le`), plus `_sum` and `_count`. */
export class Histogram extends Metric<HistogramState> {
  readonly type = 'histogram';
  readonly buckets: readonly number[];
  constructor(options: MetricOptions & { buckets?: readonly number[] }) {
    super(options);
    const buckets = [...(options.buckets ?? DEFAULT_SECONDS_BUCKETS)].filter((b) => b !== Infinity);
    for (let i = 1; i < buckets.length; i++) {
      if (!((buckets[i] as number) > (buckets[i - 1] as number))) {
        throw new TypeError(`${this.name}: buckets must be strictly increasing`);
      }
    }
    this.buckets = buckets;
  }
  protected initial(): HistogramState {
    return { counts: new Array<number>(this.buckets.length).fill(0), sum: 0, count: 0 };
  }
  /** Record one observation. */
  observe(value: number, labels?: Labels): void {
    const s = this.state(labels);
    s.sum += value;
    s.count += 1;
    // Buckets are stored non-cumulative; cumulated at render time.
    for (let i = 0; i < this.buckets.length; i++) {
      if (value <= (this.buckets[i] as number)) {
        (s.counts[i] as number) += 1;
        break;
      }
    }
  }
  /** Number of observations of one series. */
  count(labels?: Labels): number {
    return this.state(labels).count;
  }
  protected samples(): string[] {
    const out: string[] = [];
    for (const { labels, state } of this.series.values()) {
      let cumulative = 0;
      this.buckets.forEach((b, i) => {
        cumulative += state.counts[i] as number;
        out.push(`${this.name}_bucket${this.labelText(labels, ['le', formatValue(b)])} ${cumulative}`);
      });
      out.push(`${this.name}_bucket${this.labelText(labels, ['le', '+Inf'])} ${state.count}`);
      out.push(`${this.name}_sum${this.labelText(labels)} ${formatValue(state.sum)}`);
      out.push(`${this.name}_count${this.labelText(labels)} ${state.count}`);
    }
    return out;
  }
}

/** The set of metrics exported on `/metrics`, in registration order. */
export class Registry {
  private readonly metrics = new Map<string, Counter | Gauge | Histogram>();

  private add<M extends Counter | Gauge | Histogram>(metric: M): M {
    if (this.metrics.has(metric.name)) throw new TypeError(`metric "${metric.name}" registered twice`);
    this.metrics.set(metric.name, metric);
    return metric;
  }
  /** Register a counter; throws TypeError for an invalid or duplicate name. */
  counter(options: MetricOptions & { collect?: () => number }): Counter {
    return this.add(new Counter(options));
  }
  /** Register a gauge; throws TypeError for an invalid or duplicate name. */
  gauge(options: MetricOptions & { collect?: () => number }): Gauge {
    return this.add(new Gauge(options));
  }
  /** Register a histogram (default buckets: {@link DEFAULT_SECONDS_BUCKETS}); throws TypeError when invalid. */
  histogram(options: MetricOptions & { buckets?: readonly number[] }): Histogram {
    return this.add(new Histogram(options));
  }
  /** The metric registered under `name`, if any. */
  find(name: string): Counter | Gauge | Histogram | undefined {
    return this.metrics.get(name);
  }
  /** Name, type and label names of every metric, in registration order (what the docs must list). */
  describe(): Array<{
    name: string;
    type: 'counter' | 'gauge' | 'histogram';
    labelNames: readonly string[];
  }> {
    return [...this.metrics.values()].map((m) => ({ name: m.name, type: m.type, labelNames: m.labelNames }));
  }
  /** The whole exposition, one metric family after the other. */
  render(): string {
    return [...this.metrics.values()].map((m) => m.render()).join('');
  }
}

/** Names of the policy store series (documented in docs/internals.md with METRIC_NAMES). */
export const STORE_METRIC_NAMES = {
  callSeconds: 'milterd_store_call_duration_seconds',
  errors: 'milterd_store_errors_total',
  breakerState: 'milterd_store_breaker_state',
} as const;

/** Store calls take a fraction of a millisecond on a LAN: buckets from 0.1 ms to the 50 ms deadline and past it. */
export const STORE_SECONDS_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
] as const;

/** Every state of a CircuitBreaker: a Record, so a new BreakerState does not compile until it is listed. */
const BREAKER_STATE_SET: Readonly<Record<BreakerState, null>> = {
  closed: null,
  open: null,
  'half-open': null,
};
const BREAKER_STATES = Object.keys(BREAKER_STATE_SET) as readonly BreakerState[];

/**
 * The one encoding of a circuit breaker's state in a gauge, for the store's breaker and every upstream
 * member's: one series per state (label `state`), 1 for the current one and 0 for the others (OpenMetrics'
 * StateSet, the client libraries' Enum). An alert reads `{state="open"} == 1`, `avg_over_time` of it is the share
 * of time open, and `sum by (state)` counts a fleet's instances in each state; a number (0 closed, 2 open)
 * would need the table to read and orders states that have no order.
 */
export function setBreakerState(gauge: Gauge, state: BreakerState, labels: Labels = {}): void {
  for (const s of BREAKER_STATES) gauge.set(s === state ? 1 : 0, { ...labels, state: s });
}

/**
 * The policy store's series: call latency by operation, errors by code, circuit breaker state. Registered
 * with every daemon (the in-process store never fails: its breaker stays closed, it has no calls).
 */
export class StoreMetrics {
  readonly callSeconds: Histogram;
  readonly errors: Counter;
  readonly breakerState: Gauge;

  constructor(r: Registry) {
    const n = STORE_METRIC_NAMES;
    this.callSeconds = r.histogram({
      name: n.callSeconds,
      help: 'Calls to a shared policy store (Redis), by operation, failed ones included.',
      labelNames: ['op'],
      buckets: STORE_SECONDS_BUCKETS,
    });
    this.errors = r.counter({
      name: n.errors,
      help: 'Policy store calls that failed, by code: ERR_MILTER_STORE_FAILED, _TIMEOUT (deadline), _UNAVAILABLE (breaker open).',
      labelNames: ['code'],
    });
    this.breakerState = r.gauge({
      name: n.breakerState,
      help: 'Circuit breaker of the policy store: 1 for its current state (closed, open, half-open).',
      labelNames: ['state'],
    });
    setBreakerState(this.breakerState, 'closed');
  }

  /** One store call (GuardedStore's onCall). */
  call(event: { op: string; seconds: number; code?: string }): void {
    this.callSeconds.observe(event.seconds, { op: event.op });
    if (event.code !== undefined) this.errors.inc({ code: event.code });
  }

  /** The store's breaker changed state (GuardedStore's breaker onChange). */
  breaker(state: BreakerState): void {
    setBreakerState(this.breakerState, state);
  }
}

/**
 * The registry as a filter module sees it (its factory's `metrics`): registering a name the modules
 * registered before returns that metric when type and label names match, so a module re-evaluated on
 * SIGHUP keeps its series; a clash with another type, other labels or one of the daemon's own metrics
 * throws a TypeError (the module's factory fails, which refuses the start or the reload).
 */
export class ModuleRegistry {
  /** Names registered through any ModuleRegistry on the same registry. */
  static readonly #ownedBy = new WeakMap<Registry, Set<string>>();
  readonly #registry: Registry;
  readonly #owned: Set<string>;

  constructor(registry: Registry) {
    this.#registry = registry;
    let owned = ModuleRegistry.#ownedBy.get(registry);
    if (owned === undefined) ModuleRegistry.#ownedBy.set(registry, (owned = new Set()));
    this.#owned = owned;
  }

  #reuse<M extends Counter | Gauge | Histogram>(type: M['type'], options: MetricOptions, create: () => M): M {
    const existing = this.#registry.find(options.name);
    if (existing === undefined) {
      const metric = create();
      this.#owned.add(options.name);
      return metric;
    }
    const labels = (l: readonly string[] | undefined): string => [...(l ?? [])].sort().join(',');
    if (!this.#owned.has(options.name)) {
      throw new TypeError(`metric "${options.name}" is one of the daemon's own`);
    }
    if (existing.type !== type || labels(existing.labelNames) !== labels(options.labelNames)) {
      throw new TypeError(`metric "${options.name}" is already registered with another type or labels`);
    }
    return existing as M;
  }
  counter(options: MetricOptions): Counter {
    return this.#reuse('counter', options, () => this.#registry.counter(options));
  }
  gauge(options: MetricOptions): Gauge {
    return this.#reuse('gauge', options, () => this.#registry.gauge(options));
  }
  histogram(options: MetricOptions & { buckets?: readonly number[] }): Histogram {
    return this.#reuse('histogram', options, () => this.#registry.histogram(options));
  }
}
