import { describe, expect, it } from 'vitest';
import { createMetrics } from './metrics.js';

describe('operator metrics', () => {
  it('exports the process metrics without a prefix, next to its own kstreams_operator_* metrics', async () => {
    const m = createMetrics();
    m.reconcileTotal.inc({ result: 'changed' });
    const text = await m.registry.metrics();
    expect(text).toMatch(/^# TYPE process_cpu_seconds_total counter$/m);
    expect(text).toMatch(/^# TYPE nodejs_heap_size_used_bytes gauge$/m);
    expect(text).toContain('kstreams_operator_reconcile_total{result="changed"} 1');
    expect(text).not.toContain('kstreams_operator_process_');
  });

  it('names counters *_total and every metric kstreams_operator_*', async () => {
    const m = createMetrics(undefined, { defaultMetrics: false });
    const metrics = await m.registry.getMetricsAsJSON();
    expect(metrics.length).toBeGreaterThan(10);
    for (const { name, type } of metrics) {
      expect(name).toMatch(/^kstreams_operator_[a-z_]+$/);
      if (String(type) === 'counter') expect(name).toMatch(/_total$/);
      else expect(name).not.toMatch(/_total$/);
    }
  });
});
