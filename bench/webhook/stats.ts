// Numbers for the webhook benchmark: exact percentiles of client-side samples, and quantiles of the
// apiserver's Prometheus histograms (diffed between two scrapes so earlier traffic does not count).

/** Nearest-rank percentile of unsorted samples; NaN when there are none. */
export function percentile(samples: readonly number[], q: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] as number;
}

export interface Histogram {
  /** Cumulative counts by upper bound (le), +Inf included, ascending. */
  buckets: Array<{ le: number; count: number }>;
  sum: number;
  count: number;
}

function parseLabels(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of s.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) out[m[1] as string] = m[2] as string;
  return out;
}

/**
 * Sums every series of histogram `metric` in Prometheus text whose labels include `match`.
 * Returns an empty histogram when there is none.
 */
export function parseHistogram(text: string, metric: string, match: Record<string, string> = {}): Histogram {
  const byLe = new Map<number, number>();
  let sum = 0;
  let count = 0;
  const matches = (labels: Record<string, string>) => Object.entries(match).every(([k, v]) => labels[k] === v);
  for (const line of text.split('\n')) {
    if (!line.startsWith(metric)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const [, name, labelText = '', valueText] = m;
    const labels = parseLabels(labelText);
    if (!matches(labels)) continue;
    const value = Number(valueText);
    if (name === `${metric}_bucket`) {
      const le = labels.le === '+Inf' ? Number.POSITIVE_INFINITY : Number(labels.le);
      byLe.set(le, (byLe.get(le) ?? 0) + value);
    } else if (name === `${metric}_sum`) sum += value;
    else if (name === `${metric}_count`) count += value;
  }
  const buckets = [...byLe.entries()].sort(([a], [b]) => a - b).map(([le, c]) => ({ le, count: c }));
  return { buckets, sum, count };
}

/** after - before, bucket by bucket. */
export function diffHistogram(after: Histogram, before: Histogram): Histogram {
  const prev = new Map(before.buckets.map((b) => [b.le, b.count]));
  return {
    buckets: after.buckets.map((b) => ({ le: b.le, count: b.count - (prev.get(b.le) ?? 0) })),
    sum: after.sum - before.sum,
    count: after.count - before.count,
  };
}

/**
 * Like PromQL histogram_quantile: linear interpolation inside the bucket holding the rank. When the rank
 * falls in the +Inf bucket the highest finite bound is returned (the true value is above it).
 */
export function histogramQuantile(h: Histogram, q: number): number {
  const total = h.buckets[h.buckets.length - 1]?.count ?? 0;
  if (total === 0) return Number.NaN;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const b of h.buckets) {
    if (b.count >= rank) {
      if (!Number.isFinite(b.le)) return prevLe;
      const inBucket = b.count - prevCount;
      return inBucket === 0 ? b.le : prevLe + ((b.le - prevLe) * (rank - prevCount)) / inBucket;
    }
    prevLe = b.le;
    prevCount = b.count;
  }
  return prevLe;
}

/** Fraction of observations at or below `le` (which must be a bucket bound). */
export function fractionWithin(h: Histogram, le: number): number {
  const total = h.buckets[h.buckets.length - 1]?.count ?? 0;
  const b = h.buckets.find((x) => x.le === le);
  return total === 0 || !b ? Number.NaN : b.count / total;
}

/** Sum of every sample of counter `metric` in Prometheus text whose labels include `match` (values may be a RegExp). */
export function counterSum(text: string, metric: string, match: Record<string, string | RegExp> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(metric)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== metric) continue;
    const labels = parseLabels(m[2] ?? '');
    if (Object.entries(match).every(([k, v]) => (typeof v === 'string' ? labels[k] === v : v.test(labels[k] ?? '')))) sum += Number(m[3]);
  }
  return sum;
}
