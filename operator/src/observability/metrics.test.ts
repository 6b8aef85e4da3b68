import { describe, expect, it } from 'vitest';
import { InformerLifecycle } from '../../../runtime/src/informer.js';
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

  it('reads the feed connections by TLS kind from the running feed at each scrape, and none without one', async () => {
    const m = createMetrics(undefined, { defaultMetrics: false });
    const text = () => m.registry.getSingleMetricAsString('kstreams_operator_feed_connections');
    expect(await text()).not.toContain('kstreams_operator_feed_connections{');
    let st = { handshakes: 2, records: 9998, openssl: 1 };
    m.setFeedConnectionSource(() => st);
    expect(await text()).toContain('kstreams_operator_feed_connections{tls="records"} 9998');
    expect(await text()).toContain('kstreams_operator_feed_connections{tls="openssl"} 1');
    st = { handshakes: 0, records: 10_001, openssl: 0 };
    expect(await text()).toContain('kstreams_operator_feed_connections{tls="handshake"} 0');
    expect(await text()).toContain('kstreams_operator_feed_connections{tls="records"} 10001');
    m.setFeedConnectionSource(undefined);
    expect(await text()).not.toContain('kstreams_operator_feed_connections{');
  });

  it('counts each list of an informer once, under the reason that caused it', async () => {
    const m = createMetrics(undefined, { defaultMetrics: false });
    // The order in which an informer reports them: first list, a 410, a silent watch, a failed list retried.
    const L = InformerLifecycle;
    for (const e of [L.ListStarted, L.Listed, L.WatchStarted, L.Expired, L.ListStarted, L.Listed, L.WatchStarted, L.IdleTimeout, L.ListStarted, L.Failed, L.ListStarted, L.Listed])
      m.recordLifecycle('pods', e);
    m.recordLifecycle('streampaths', L.ListStarted);
    const text = await m.registry.metrics();
    const relists = text.split('\n').filter((l) => l.startsWith('kstreams_operator_informer_relists_total{'));
    expect(relists.sort()).toEqual([
      'kstreams_operator_informer_relists_total{resource="pods",reason="expired"} 1',
      'kstreams_operator_informer_relists_total{resource="pods",reason="failed"} 1',
      'kstreams_operator_informer_relists_total{resource="pods",reason="idle_timeout"} 1',
      'kstreams_operator_informer_relists_total{resource="pods",reason="initial"} 1',
      'kstreams_operator_informer_relists_total{resource="streampaths",reason="initial"} 1',
    ]);
  });
});
