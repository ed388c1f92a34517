/**
 * A log-linear latency histogram (HdrHistogram-like, 1/64 relative precision), cheap enough to record
 * every command on the hot path and small enough to post between threads (a plain number array).
 * Values are nanoseconds; values above 2^31-1 ns (about 2.1 s) land in the last bucket but `max` stays
 * exact.
 */
const SUB_BITS = 6;
const SUB = 1 << SUB_BITS; // 64 sub-buckets per power of two
const LINEAR = SUB * 2; // values below 128 ns are exact
const MAX_EXP = 31;
export const HISTOGRAM_BUCKETS = LINEAR + (MAX_EXP - SUB_BITS - 1) * SUB;

export interface HistogramData {
  counts: number[];
  count: number;
  sum: number;
  min: number;
  max: number;
}

function bucketOf(ns: number): number {
  if (ns < LINEAR) return ns < 0 ? 0 : ns | 0;
  const v = ns >= 0x7fffffff ? 0x7fffffff : ns | 0;
  const exp = 31 - Math.clz32(v); // >= 7
  const shift = exp - SUB_BITS;
  return LINEAR + (exp - SUB_BITS - 1) * SUB + ((v >>> shift) - SUB);
}

/** Lowest value of a bucket (the middle would bias upwards by up to 1/128; report the bucket's start). */
function valueOf(bucket: number): number {
  if (bucket < LINEAR) return bucket;
  const rel = bucket - LINEAR;
  const exp = Math.floor(rel / SUB) + SUB_BITS + 1;
  const mantissa = (rel % SUB) + SUB;
  const shift = exp - SUB_BITS;
  // Report the middle of the bucket: error within ±1/128.
  return mantissa * 2 ** shift + 2 ** (shift - 1);
}

export class Histogram {
  readonly counts = new Float64Array(HISTOGRAM_BUCKETS);
  count = 0;
  sum = 0;
  min = Number.POSITIVE_INFINITY;
  max = 0;

  record(ns: number): void {
    this.counts[bucketOf(ns)]! += 1;
    this.count++;
    this.sum += ns;
    if (ns < this.min) this.min = ns;
    if (ns > this.max) this.max = ns;
  }

  reset(): void {
    this.counts.fill(0);
    this.count = 0;
    this.sum = 0;
    this.min = Number.POSITIVE_INFINITY;
    this.max = 0;
  }

  toData(): HistogramData {
    return {
      counts: Array.from(this.counts),
      count: this.count,
      sum: this.sum,
      min: this.min,
      max: this.max,
    };
  }

  static fromData(data: HistogramData): Histogram {
    const h = new Histogram();
    h.merge(data);
    return h;
  }

  merge(data: HistogramData): void {
    for (let i = 0; i < data.counts.length && i < HISTOGRAM_BUCKETS; i++)
      this.counts[i]! += data.counts[i] ?? 0;
    this.count += data.count;
    this.sum += data.sum;
    if (data.count > 0) {
      if (data.min < this.min) this.min = data.min;
      if (data.max > this.max) this.max = data.max;
    }
  }

  /** Value at quantile q (0..1), in ns; exact min/max at the ends. */
  quantile(q: number): number {
    if (this.count === 0) return Number.NaN;
    if (q <= 0) return this.min;
    if (q >= 1) return this.max;
    const rank = Math.ceil(q * this.count);
    let seen = 0;
    for (let i = 0; i < HISTOGRAM_BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return Math.min(Math.max(valueOf(i), this.min), this.max);
    }
    return this.max;
  }

  mean(): number {
    return this.count === 0 ? Number.NaN : this.sum / this.count;
  }
}
