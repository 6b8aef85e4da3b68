// How close together the status writes of each StreamPath came, from the times a watch saw them. The bound
// of ADR 0008 is per StreamPath (never two writes of one within the write interval); dividing a window's
// total by the StreamPath count misreads it, since a window can hold a write of a StreamPath at each edge.

export interface WriteSpacing {
  /** StreamPaths seen written at least once. */
  streamPaths: number;
  writes: number;
  /** The most writes of one StreamPath within any span shorter than interval - tolerance. */
  maxWithinInterval: number;
  /** The shortest gap between two writes of one StreamPath (Infinity when none was written twice). */
  minGapMs: number;
  /** StreamPaths with two writes closer than interval - tolerance. */
  tooClose: string[];
}

/**
 * `times` are watch arrival times per StreamPath; `toleranceMs` absorbs the delivery jitter between the
 * operator's clock and the watch (a write at 0 and one at 10 000 can arrive 9 950 ms apart).
 */
export function writeSpacing(times: Map<string, number[]>, intervalMs: number, toleranceMs: number): WriteSpacing {
  const span = intervalMs - toleranceMs;
  let writes = 0;
  let maxWithin = 0;
  let minGap = Infinity;
  const tooClose: string[] = [];
  for (const [name, raw] of times) {
    const t = [...raw].sort((a, b) => a - b);
    writes += t.length;
    let close = false;
    let j = 0;
    for (let i = 0; i < t.length; i++) {
      while (t[i]! - t[j]! >= span) j++;
      maxWithin = Math.max(maxWithin, i - j + 1);
      if (i > 0) {
        const gap = t[i]! - t[i - 1]!;
        minGap = Math.min(minGap, gap);
        if (gap < span) close = true;
      }
    }
    if (close) tooClose.push(name);
  }
  return { streamPaths: times.size, writes, maxWithinInterval: maxWithin, minGapMs: minGap, tooClose };
}
