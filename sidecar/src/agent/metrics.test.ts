import { describe, expect, it } from 'vitest';
import type { AgentStreamPathReport } from '../../../operator/src/api/agent.js';
import { createMetrics } from './metrics.js';

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
    let reports: AgentStreamPathReport[] = [
      report({
        name: 'shadow',
        generation: 3,
        connections: 4,
        bytesPrimary: 1000,
        bytesMirrored: 900,
        bytesDropped: 100,
        targets: [{ name: 'staging', connectionsMirrored: 4, connectionsCut: 1, connectFailures: 0, bytesMirrored: 900, bytesDropped: 100 }],
      }),
      report({ name: 'clash', attached: false, problem: { reason: 'PortConflict', message: 'port 8080 taken' } }),
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
    expect(text).toContain('# TYPE kstreams_agent_bytes_mirrored_total counter');
    expect(text).toContain('kstreams_agent_connections_total{streampath="shadow"} 4');
    expect(text).toContain('kstreams_agent_bytes_primary_total{streampath="shadow"} 1000');
    expect(text).toContain('kstreams_agent_bytes_dropped_total{streampath="shadow"} 100');
    expect(text).toContain('kstreams_agent_target_connections_cut_total{streampath="shadow",target="staging"} 1');
    expect(text).toContain('kstreams_agent_target_bytes_mirrored_total{streampath="shadow",target="staging"} 900');
    expect(text).toContain('kstreams_agent_streampath_attached{streampath="clash"} 0');
    expect(text).toContain('kstreams_agent_streampath_generation{streampath="shadow"} 3');
    expect(text).toContain('kstreams_agent_streampath_problem{streampath="clash",reason="PortConflict"} 1');
    expect(text).toContain('kstreams_agent_ready 1');

    // A StreamPath that went away disappears from the next scrape instead of freezing at its last value.
    reports = [];
    await new Promise((r) => setImmediate(r));
    const after = await m.registry.metrics();
    expect(snapshots).toBe(2);
    expect(after).not.toContain('streampath="shadow"');
  });

  it('counts watch lifecycle events and converges', async () => {
    const m = createMetrics({ snapshot: async () => [], ready: () => false, defaultMetrics: false });
    m.watchEvent('pods', 'error');
    m.watchEvent('pods', 'error');
    m.convergeDone('ok', 0.25);
    const text = await m.registry.metrics();
    expect(text).toContain('kstreams_agent_watch_events_total{resource="pods",event="error"} 2');
    expect(text).toContain('kstreams_agent_converge_total{result="ok"} 1');
    expect(text).toContain('kstreams_agent_converge_seconds_total 0.25');
    expect(text).toContain('kstreams_agent_ready 0');
  });
});
