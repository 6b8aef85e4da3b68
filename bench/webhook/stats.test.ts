import { describe, expect, it } from 'vitest';
import { counterSum, diffHistogram, fractionWithin, histogramQuantile, parseHistogram, percentile } from './stats.js';

const scrape = (n5: number, n25: number, inf: number, sum: number) => `
# HELP apiserver_admission_webhook_admission_duration_seconds x
# TYPE apiserver_admission_webhook_admission_duration_seconds histogram
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a.kstreams.io",operation="CREATE",rejected="false",type="admit",le="0.005"} ${n5}
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a.kstreams.io",operation="CREATE",rejected="false",type="admit",le="0.025"} ${n25}
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a.kstreams.io",operation="CREATE",rejected="false",type="admit",le="+Inf"} ${inf}
apiserver_admission_webhook_admission_duration_seconds_sum{name="a.kstreams.io",operation="CREATE",rejected="false",type="admit"} ${sum}
apiserver_admission_webhook_admission_duration_seconds_count{name="a.kstreams.io",operation="CREATE",rejected="false",type="admit"} ${inf}
apiserver_admission_webhook_admission_duration_seconds_bucket{name="other.io",operation="CREATE",rejected="false",type="admit",le="0.005"} 1000
`;

describe('webhook bench statistics', () => {
  it('nearest-rank percentiles', () => {
    const s = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(s, 0.5)).toBe(50);
    expect(percentile(s, 0.99)).toBe(99);
    expect(percentile([7], 0.99)).toBe(7);
    expect(percentile([], 0.5)).toBeNaN();
  });

  it('parses one webhook histogram, diffs scrapes and interpolates quantiles like histogram_quantile', () => {
    const name = 'apiserver_admission_webhook_admission_duration_seconds';
    const before = parseHistogram(scrape(10, 10, 10, 0.02), name, { name: 'a.kstreams.io' });
    const after = parseHistogram(scrape(108, 110, 110, 0.3), name, { name: 'a.kstreams.io' });
    expect(after.buckets.map((b) => b.le)).toEqual([0.005, 0.025, Number.POSITIVE_INFINITY]);
    const d = diffHistogram(after, before);
    expect(d.count).toBe(100);
    expect(d.sum).toBeCloseTo(0.28);
    expect(fractionWithin(d, 0.005)).toBeCloseTo(0.98);
    expect(histogramQuantile(d, 0.5)).toBeCloseTo(0.0025);
    expect(histogramQuantile(d, 0.99)).toBeCloseTo(0.005 + 0.02 * 0.5);
  });

  it('returns the highest finite bound when the rank lies in +Inf', () => {
    const h = { buckets: [{ le: 0.005, count: 1 }, { le: Number.POSITIVE_INFINITY, count: 10 }], sum: 0, count: 10 };
    expect(histogramQuantile(h, 0.99)).toBe(0.005);
  });

  it('sums the samples of one counter whose labels match, exactly or by pattern', () => {
    const text = [
      'apiserver_request_total{resource="streampaths",subresource="status",verb="PATCH",code="200"} 7',
      'apiserver_request_total{resource="streampaths",subresource="status",verb="PUT",code="409"} 2',
      'apiserver_request_total{resource="streampaths",subresource="",verb="PATCH",code="200"} 100',
      'apiserver_request_total_other{resource="streampaths",subresource="status",verb="PATCH"} 1000',
    ].join('\n');
    expect(counterSum(text, 'apiserver_request_total', { resource: 'streampaths', subresource: 'status' })).toBe(9);
    expect(counterSum(text, 'apiserver_request_total', { resource: 'streampaths', verb: /^(PATCH|PUT)$/, code: /^2/ })).toBe(107);
    expect(counterSum(text, 'apiserver_request_total', { resource: 'pods' })).toBe(0);
  });
});
