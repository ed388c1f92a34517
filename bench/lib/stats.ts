/** Small statistics helpers. */
export function median(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

/**
 * A distribution-free 95 % confidence interval for the median of `values` (finite ones): the order
 * statistics x(k) and x(n+1-k) with the largest k for which a Binomial(n, 1/2) falls below k with
 * probability at most 2.5 %. Needs 6 values at least (then it is their range); undefined below.
 */
export function medianInterval(values: readonly number[]): [number, number] | undefined {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  const n = v.length;
  let k = 0;
  if (n > 1000) {
    // 2^-n underflows: the normal approximation, exact enough there.
    k = Math.floor(n / 2 - 0.98 * Math.sqrt(n));
  } else {
    // P(X <= k) for X ~ Binomial(n, 1/2), accumulated term by term: C(n, i) / 2^n.
    let term = 0.5 ** n;
    let below = term;
    while (below <= 0.025) {
      k++;
      term = (term * (n - k + 1)) / k;
      below += term;
    }
  }
  // Now P(X <= k - 1) <= 2.5 % < P(X <= k): the interval is [x(k), x(n+1-k)], 1-based.
  if (k === 0) return undefined;
  return [v[k - 1]!, v[n - k]!];
}

export function fmtUs(ns: number): string {
  if (!Number.isFinite(ns)) return '-';
  const us = ns / 1000;
  if (us >= 10000) return `${(us / 1000).toFixed(0)} ms`;
  if (us >= 1000) return `${(us / 1000).toFixed(1)} ms`;
  return `${us.toFixed(0)} µs`;
}

export function fmtNum(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return '-';
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

/** Render rows as a Markdown table (also readable in a terminal). */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
  const sep =
    '|' +
    widths.map((w, i) => (i === 0 ? ' ' + '-'.repeat(w) + ' ' : ' ' + '-'.repeat(w - 1) + ': ')).join('|') +
    '|';
  return [line(header), sep, ...rows.map(line)].join('\n');
}
