// The chart's optional monitoring objects, rendered by the real helm binary (scripts/install-helm.sh): the
// ServiceMonitor of the operator replicas, the PodMonitor of the injected agents and the Grafana dashboard's
// ConfigMap, each checked against what it has to find (the metrics Service, the sidecar's port, the file).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { WebhookConfigSchema } from '../../operator/src/webhook/config.js';
import { computePodPatch, sidecarContainer } from '../../operator/src/webhook/patch.js';
import { applyJsonPatch } from '../../operator/src/webhook/testing/json-patch.js';
import { INJECTED_POD_LABEL } from '../../api/src/agent.js';
import { CHART_DIR, findObject, helmBinary, renderChart, run, type K8sObject } from './testing/helm.js';

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const helmHome = mkdtempSync(join(tmpdir(), 'kstreams-helm-'));
const helmEnv: NodeJS.ProcessEnv = {
  ...process.env,
  HELM_CACHE_HOME: join(helmHome, 'cache'),
  HELM_CONFIG_HOME: join(helmHome, 'config'),
  HELM_DATA_HOME: join(helmHome, 'data'),
};
afterAll(() => rmSync(helmHome, { recursive: true, force: true }));

const render = (values: Record<string, unknown> = {}) => renderChart(values, { namespace: 'obs', env: helmEnv });
const monitoringKinds = (objects: K8sObject[]) =>
  objects.filter((o) => o.apiVersion === 'monitoring.coreos.com/v1' || (o.kind === 'ConfigMap' && o.metadata.name.endsWith('-dashboard')));

describe('the chart monitoring objects', () => {
  it('renders none of them by default', async () => {
    expect(monitoringKinds(await render())).toEqual([]);
  });

  it('metrics.serviceMonitor: a ServiceMonitor that selects the metrics Service and scrapes its metrics port, with the interval and labels given', async () => {
    const objects = await render({ 'metrics.serviceMonitor': { enabled: true, interval: '15s', labels: { release: 'prom' } }, 'operator.metricsPort': 9100 });
    const sm = findObject(objects, 'ServiceMonitor') as Obj;
    expect(sm.apiVersion).toBe('monitoring.coreos.com/v1');
    expect(sm.metadata).toMatchObject({ name: 'kstreams', namespace: 'obs', labels: { release: 'prom', 'app.kubernetes.io/instance': 'kstreams' } });
    expect(sm.spec.namespaceSelector).toEqual({ matchNames: ['obs'] });
    expect(sm.spec.endpoints).toEqual([{ port: 'http-metrics', path: '/metrics', scheme: 'http', interval: '15s' }]);

    // The selector picks Services by their own labels; the endpoint's port name leaves out every one without it.
    const services = objects.filter((o) => o.kind === 'Service') as Obj[];
    const selected = services.filter((s) => Object.entries(sm.spec.selector.matchLabels).every(([k, v]) => s.metadata.labels?.[k] === v));
    const scraped = selected.filter((s) => s.spec.ports.some((p: Obj) => p.name === 'http-metrics'));
    expect(selected.length).toBeGreaterThanOrEqual(1);
    expect(scraped.map((s) => s.metadata.name)).toEqual(['kstreams-metrics']);
    // ...and that port reaches the operator's /metrics.
    const container = (findObject(objects, 'Deployment') as Obj).spec.template.spec.containers[0];
    const target = scraped[0]!.spec.ports.find((p: Obj) => p.name === 'http-metrics').targetPort;
    expect(container.ports.find((p: Obj) => p.name === target)?.containerPort).toBe(9100);
  });

  it('metrics.podMonitor: a PodMonitor over every namespace that selects the pods the webhook labels and scrapes the port it gives the sidecar', async () => {
    const objects = await render({ 'metrics.podMonitor': { enabled: true, interval: '1m', labels: { team: 'net' } } });
    const pm = findObject(objects, 'PodMonitor') as Obj;
    expect(pm.metadata).toMatchObject({ name: 'kstreams-agents', namespace: 'obs', labels: { team: 'net' } });
    expect(pm.spec.namespaceSelector).toEqual({ any: true });
    // The label the webhook puts on every pod it injects: the PodMonitor selects those pods and no other.
    const injected = applyJsonPatch(
      { metadata: { name: 'p', labels: { app: 'a' } }, spec: { containers: [{ name: 'app', image: 'app:1' }] } },
      computePodPatch({ metadata: { name: 'p', labels: { app: 'a' } }, spec: { containers: [{ name: 'app', image: 'app:1' }] } }, { name: 'shop' }, WebhookConfigSchema.parse({ namespace: 'obs' })).patch,
    ) as Obj;
    expect(pm.spec.selector).toEqual({ matchLabels: { [INJECTED_POD_LABEL]: 'true' } });
    expect(injected.metadata.labels).toMatchObject(pm.spec.selector.matchLabels);
    const sidecar = sidecarContainer(WebhookConfigSchema.parse({}).sidecar, false) as Obj;
    expect(pm.spec.podMetricsEndpoints).toEqual([{ port: sidecar.ports[0].name, path: '/metrics', scheme: 'http', interval: '1m' }]);
    expect(objects.filter((o) => o.kind === 'ServiceMonitor')).toEqual([]);
  });

  it('metrics.grafanaDashboard: a ConfigMap labelled for the Grafana sidecar holding the dashboard file as it is', async () => {
    const objects = await render({ 'metrics.grafanaDashboard': { enabled: true, labels: { grafana_dashboard: '1' }, namespace: 'monitoring' } });
    const cm = findObject(objects, 'ConfigMap', 'kstreams-dashboard') as Obj;
    expect(cm.metadata.namespace).toBe('monitoring');
    expect(cm.metadata.labels).toMatchObject({ grafana_dashboard: '1', 'app.kubernetes.io/instance': 'kstreams' });
    const file = readFileSync(join(CHART_DIR, 'files', 'dashboards', 'kstreams.json'), 'utf8');
    expect(JSON.parse(cm.data['kstreams.json'])).toEqual(JSON.parse(file));
    // Without a namespace it goes into the release's.
    const here = await render({ 'metrics.grafanaDashboard.enabled': true });
    expect((findObject(here, 'ConfigMap', 'kstreams-dashboard') as Obj).metadata).toMatchObject({ namespace: 'obs', labels: { grafana_dashboard: '1' } });
  });

  it.each([
    [['--set', 'metrics.serviceMonitor.interval=30'], "at '/metrics/serviceMonitor/interval': got number, want string"],
    [['--set', 'metrics.podMonitor.interval=half-a-minute'], '/metrics/podMonitor/interval'],
    [['--set', 'metrics.serviceMonitor.enable=true'], "additional properties 'enable' not allowed"],
    [['--set', 'metrics.grafanaDashboard.namespace=Not_A_Namespace'], '/metrics/grafanaDashboard/namespace'],
  ])('values.schema.json refuses %j naming the value (%s)', async (args, message) => {
    const r = await run(helmBinary(), ['template', 'kstreams', CHART_DIR, ...args], helmEnv);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("values don't meet the specifications of the schema");
    expect(r.stderr).toContain(message);
  });
});
