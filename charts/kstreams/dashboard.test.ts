// The Grafana dashboard the chart ships queries only metrics the code exports: a rename in
// operator/src/observability/metrics.ts, operator/src/webhook/server.ts or sidecar/src/agent/metrics.ts
// that the dashboard did not follow fails here, not on a blank panel.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { createMetrics as createOperatorMetrics } from '../../operator/src/observability/metrics.js';
import { metricsIn as createWebhookMetrics } from '../../operator/src/webhook/server.js';
import { createMetrics as createAgentMetrics } from '../../sidecar/src/agent/metrics.js';
import { CHART_DIR } from './generate.js';

const DASHBOARD = join(CHART_DIR, 'files', 'dashboards', 'kstreams.json');

type Panel = { type: string; title: string; targets?: Array<{ expr: string }>; panels?: Panel[] };
type Dashboard = { uid: string; title: string; panels: Panel[]; templating: { list: Array<{ type: string; name: string; query: unknown }> } };

const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan']);

/** The metric names a PromQL expression reads (label_values(selector, label) included). */
function metricNames(expr: string): string[] {
  const labelValues = /^\s*label_values\((.*?)(?:,\s*[a-zA-Z_]\w*)?\)\s*$/.exec(expr);
  let e = labelValues ? labelValues[1]! : expr;
  e = e
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // label values and regexes
    .replace(/\{[^}]*\}/g, '') // label matchers
    .replace(/\[[^\]]*\]/g, '') // ranges
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ''); // grouping labels
  const names = new Set<string>();
  for (const m of e.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const rest = e.slice(m.index + m[0].length);
    if (/^\s*\(/.test(rest)) continue; // a function
    if (KEYWORDS.has(m[0].toLowerCase())) continue;
    if (m.index > 0 && /[0-9.$]/.test(e[m.index - 1]!)) continue; // 1e3, $var
    names.add(m[0]);
  }
  return [...names];
}

/** Every series name the operator (its own, the webhook's, the process metrics) and an agent expose. */
async function exportedNames(): Promise<Set<string>> {
  const operator = createOperatorMetrics(new Registry());
  createWebhookMetrics(operator.registry);
  const agent = createAgentMetrics({ snapshot: async () => [], ready: () => true });
  const names = new Set<string>();
  for (const registry of [operator.registry, agent.registry]) {
    for (const m of await registry.getMetricsAsJSON()) {
      names.add(m.name);
      if (String(m.type) === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(m.name + s);
      if (String(m.type) === 'summary') for (const s of ['_sum', '_count']) names.add(m.name + s);
    }
  }
  return names;
}

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
const panels = (list: Panel[]): Panel[] => list.flatMap((p) => [p, ...panels(p.panels ?? [])]);
const exprs = panels(dashboard.panels).flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })));
const variableQueries = dashboard.templating.list
  .filter((v) => v.type === 'query')
  .map((v) => ({ panel: `variable ${v.name}`, expr: typeof v.query === 'string' ? v.query : (v.query as { query: string }).query }));

describe('metricNames', () => {
  it('finds the metrics of an expression and leaves out functions, labels, ranges and variables', () => {
    expect(metricNames('histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{x="y{z}"}[$__rate_interval])))')).toEqual(['a_seconds_bucket']);
    expect(metricNames('sum by (namespace, target) (rate(b_total{streampath=~"$streampath"}[5m])) / on (target) c_total')).toEqual(['b_total', 'c_total']);
    expect(metricNames('min(d_timestamp_seconds) - time()')).toEqual(['d_timestamp_seconds']);
    expect(metricNames('label_values(e_total{namespace=~"$namespace"}, streampath)')).toEqual(['e_total']);
  });
});

describe('the Grafana dashboard (files/dashboards/kstreams.json)', () => {
  it('queries only metric names the operator, the webhook and the agent export', async () => {
    const exported = await exportedNames();
    const unknown = [...exprs, ...variableQueries].flatMap(({ panel, expr }) =>
      metricNames(expr)
        .filter((n) => !exported.has(n))
        .map((n) => `${panel}: ${n}`),
    );
    expect(exprs.length).toBeGreaterThan(10);
    expect(unknown).toEqual([]);
  });

  it('has the panels operations needs, each on the metric that answers it', () => {
    const reads = (title: string) => {
      const p = panels(dashboard.panels).find((x) => x.title === title);
      expect(p, `panel ${title}`).toBeDefined();
      return [...new Set((p!.targets ?? []).flatMap((t) => metricNames(t.expr)))];
    };
    expect(reads('Connections')).toContain('kstreams_connections_total');
    expect(reads('Bytes mirrored and dropped')).toEqual(expect.arrayContaining(['kstreams_mirrored_bytes_total', 'kstreams_dropped_bytes_total']));
    expect(reads('Mirror cuts')).toContain('kstreams_target_connections_cut_total');
    expect(reads('Transform failures')).toEqual(expect.arrayContaining(['kstreams_transform_failures_total', 'kstreams_target_transform_failures_total']));
    expect(reads('Webhook admission latency')).toEqual(['kstreams_webhook_admission_duration_seconds_bucket']);
  });

  it('has unique panel ids, a stable uid, and a datasource variable instead of a fixed one', () => {
    const ids = panels(dashboard.panels).map((p) => (p as unknown as { id: number }).id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(dashboard.uid).toBe('kstreams');
    expect(dashboard.templating.list.find((v) => v.type === 'datasource')?.name).toBe('datasource');
    expect(JSON.stringify(dashboard.panels)).not.toMatch(/"uid":\s*"(?!\$\{datasource\})/);
  });
});
