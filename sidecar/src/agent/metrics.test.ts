import { describe, expect, it } from 'vitest';
import type { AgentStreamPathReport } from '../../../api/src/agent.js';
import { createMetrics, type MetricsEntry } from './metrics.js';

const report = (over: Partial<AgentStreamPathReport>): AgentStreamPathReport => ({
  name: 'a',
  generation: 1,
  attached: true,
  connections: 0,
  bytesPrimary: 0,
  bytesMirrored: 0,
  bytesDropped: 0,
  targets: [],
  ...over,
});

describe('agent metrics', () => {
  it('exposes per-StreamPath and per-target counters from one snapshot per scrape', async () => {
    let snapshots = 0;
    let reports: MetricsEntry[] = [
      {
        report: report({
          name: 'shadow',
          generation: 3,
          connections: 4,
          bytesPrimary: 1000,
          bytesMirrored: 900,
          bytesDropped: 100,
          connectionsReset: 2,
          targets: [{ name: 'staging', connectionsMirrored: 4, connectionsCut: 1, connectFailures: 0, bytesMirrored: 900, bytesDropped: 100, turnWaitsExpired: 6 }],
        }),
        local: {
          connectionsActive: 1,
          setupFailures: 3,
          memory: {
            pipesInUse: 3,
            pipesPooled: 1,
            pipeBytesInUse: 196608,
            pipeBytesPooled: 65536,
            mirrorBufferInUse: 4096,
            mirrorBufferBudget: 67108864,
            mirrorBufferDenied: 5,
          },
          transformFailures: 7,
          targetTransformFailures: { staging: 2 },
        },
      },
      { report: report({ name: 'clash', attached: false, problem: { reason: 'PortConflict', message: 'port 8080 taken' } }), local: {} },
    ];
    const m = createMetrics({
      snapshot: async () => {
        snapshots++;
        return reports;
      },
      ready: () => true,
      defaultMetrics: false,
    });
    const text = await m.registry.metrics();
    expect(snapshots).toBe(1);
    expect(text).toContain('# TYPE kstreams_mirrored_bytes_total counter');
    expect(text).toContain('kstreams_connections_total{streampath="shadow"} 4');
    expect(text).toContain('kstreams_primary_bytes_total{streampath="shadow"} 1000');
    expect(text).toContain('kstreams_dropped_bytes_total{streampath="shadow"} 100');
    expect(text).toContain('kstreams_target_connections_cut_total{streampath="shadow",target="staging"} 1');
    expect(text).toContain('kstreams_target_mirrored_bytes_total{streampath="shadow",target="staging"} 900');
    expect(text).toContain('kstreams_agent_streampath_attached{streampath="clash"} 0');
    expect(text).toContain('kstreams_agent_streampath_generation{streampath="shadow"} 3');
    expect(text).toContain('kstreams_agent_streampath_problem{streampath="clash",reason="PortConflict"} 1');
    expect(text).toContain('kstreams_agent_ready 1');
    expect(text).toContain('kstreams_connections_reset_total{streampath="shadow"} 2');
    expect(text).toContain('kstreams_connections_reset_total{streampath="clash"} 0');
    expect(text).toContain('kstreams_target_turn_waits_expired_total{streampath="shadow",target="staging"} 6');
    expect(text).toContain('kstreams_setup_failures_total{streampath="shadow"} 3');
    expect(text).toContain('kstreams_connections_active{streampath="shadow"} 1');
    expect(text).toContain('kstreams_pipes_in_use{streampath="shadow"} 3');
    expect(text).toContain('kstreams_pipe_pooled_bytes{streampath="shadow"} 65536');
    expect(text).toContain('kstreams_mirror_buffer_in_use_bytes{streampath="shadow"} 4096');
    expect(text).toContain('kstreams_mirror_buffer_budget_bytes{streampath="shadow"} 67108864');
    expect(text).toContain('kstreams_mirror_buffer_denied_total{streampath="shadow"} 5');
    expect(text).toContain('kstreams_transform_failures_total{streampath="shadow"} 7');
    expect(text).toContain('kstreams_target_transform_failures_total{streampath="shadow",target="staging"} 2');
    expect(text).not.toContain('kstreams_pipes_in_use{streampath="clash"}');
    expect(text).not.toContain('kstreams_transform_failures_total{streampath="clash"}');

    // A StreamPath that went away disappears from the next scrape instead of freezing at its last value.
    reports = [];
    await new Promise((r) => setImmediate(r));
    const after = await m.registry.metrics();
    expect(snapshots).toBe(2);
    expect(after).not.toContain('streampath="shadow"');
  });

  it('exports the process metrics without a prefix', async () => {
    const m = createMetrics({ snapshot: async () => [], ready: () => true });
    const text = await m.registry.metrics();
    expect(text).toMatch(/^# TYPE process_cpu_seconds_total counter$/m);
    expect(text).toMatch(/^# TYPE nodejs_eventloop_lag_seconds gauge$/m);
    expect(text).not.toContain('kstreams_agent_process_');
  });

  it('names counters *_total, byte figures *_bytes(_total), and the agent\'s own workings kstreams_agent_*', async () => {
    const m = createMetrics({ snapshot: async () => [], ready: () => true, defaultMetrics: false });
    const metrics = await m.registry.getMetricsAsJSON();
    expect(metrics.length).toBeGreaterThan(20);
    for (const { name, type } of metrics) {
      expect(name).toMatch(/^kstreams_[a-z_]+$/);
      if (String(type) === 'counter') expect(name).toMatch(/_total$/);
      else expect(name).not.toMatch(/_total$/);
      if (/bytes/.test(name)) expect(name).toMatch(/_bytes(_total)?$/);
    }
  });

  it('counts feed events, converges and drained or reset connections', async () => {
    let draining = 2;
    const m = createMetrics({ snapshot: async () => [], ready: () => false, drainsInProgress: () => draining, defaultMetrics: false });
    m.feedEvent('error');
    m.feedEvent('error');
    m.convergeDone('ok', 0.25);
    m.drainDone({ timeoutMs: 20_000, drained: 3, reset: 1, ms: 20_000, cutShort: false });
    m.drainDone({ timeoutMs: 20_000, drained: 1, reset: 0, ms: 10, cutShort: false });
    expect(await m.registry.metrics()).toContain('kstreams_agent_drains_in_progress 2');
    draining = 0;
    const text = await m.registry.metrics();
    expect(text).toContain('kstreams_agent_feed_events_total{event="error"} 2');
    expect(text).toContain('kstreams_agent_converge_total{result="ok"} 1');
    expect(text).toContain('kstreams_agent_converge_seconds_total 0.25');
    expect(text).toContain('kstreams_agent_ready 0');
    expect(text).toContain('kstreams_agent_drains_in_progress 0');
    expect(text).toContain('kstreams_agent_drain_connections_total{result="drained"} 4');
    expect(text).toContain('kstreams_agent_drain_connections_total{result="reset"} 1');
  });
});
