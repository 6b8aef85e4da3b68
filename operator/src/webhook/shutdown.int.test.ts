// Graceful shutdown of the webhook against the real apiserver: on SIGTERM a real operator process stops
// being ready at once, keeps answering admissions while the webhook Service's Endpoints still list it, and
// exits once they no longer do; the drain is bounded when they never change.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdmissionregistrationV1Api, CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { waitFor } from '../../../e2e/cluster/local/processes.js';
import { KubeRest } from '../../../runtime/src/rest.js';
import { installCrd } from '../testing/kube.js';
import { readyzStatus, startOperator, type OperatorProcess } from '../testing/operator-process.js';
import { WebhookConfigSchema } from './config.js';
import { startWebhook } from './server.js';
import { StaticTls } from './testing/static-tls.js';
import { bestEffort, createNamespace, freshName, isInjected, podBody } from './testing/cluster.js';

const kubeconfig = inject('kubeconfig');
const apiServer = inject('apiServer');
const adminToken = inject('adminToken');
const apiServerCaFile = inject('apiServerCaFile');
// Fixed ports (the apiserver is told them) below the ephemeral range (32768-60999 here), so that no client
// socket of another process can hold one when the webhook binds it.
const WEBHOOK_PORT = 27420;
const HEALTH_PORT = 27421;
const WEBHOOK_PORT_BOUNDED = 27422;
// The pod IP as the Endpoints list it (they refuse loopback). Only a name here: the apiserver reaches the
// webhook by its URL on 127.0.0.1, nothing is ever sent to this address.
const POD_IP = '10.247.40.20';

describe('webhook graceful shutdown', () => {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfig);
  const core = kc.makeApiClient(CoreV1Api);
  const admission = kc.makeApiClient(AdmissionregistrationV1Api);
  const namespaces: string[] = [];
  const webhookConfigs: string[] = [];
  let operator: OperatorProcess | undefined;
  let dir: string;
  let rest: KubeRest;

  beforeAll(async () => {
    rest = await KubeRest.create(kubeconfig);
    await installCrd(rest);
    dir = mkdtempSync(join(tmpdir(), 'ksh3-drain-'));
  });

  afterAll(async () => {
    await operator?.kill();
    rest?.close();
    for (const name of webhookConfigs) await bestEffort(() => admission.deleteMutatingWebhookConfiguration({ name }));
    for (const ns of namespaces) await bestEffort(() => core.deleteNamespace({ name: ns }));
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A Service without selector and Endpoints listing POD_IP, as the endpoints controller would keep them. */
  async function serviceWithEndpoints(namespace: string, port: number): Promise<void> {
    await core.createNamespacedService({ namespace, body: { metadata: { name: 'kstreams-webhook' }, spec: { ports: [{ port: 443, targetPort: port }] } } });
    await core.createNamespacedEndpoints({
      namespace,
      body: { metadata: { name: 'kstreams-webhook' }, subsets: [{ addresses: [{ ip: POD_IP }], ports: [{ port }] }] },
    });
  }

  it('SIGTERM: not ready at once, admissions injected while the Endpoints list the pod, exit 0 once they do not', async () => {
    const opNs = await createNamespace(core, 'ksh3-op');
    const shop = await createNamespace(core, 'ksh3-shop', { inject: true });
    namespaces.push(opNs, shop);
    await serviceWithEndpoints(opNs, WEBHOOK_PORT);
    const mwc = freshName('ksh3-injector');
    webhookConfigs.push(mwc);
    const configFile = join(dir, 'config.yaml');
    writeFileSync(
      configFile,
      JSON.stringify({
        namespace: opNs,
        identity: 'ksh3-drain',
        kubeconfig,
        leaderElection: { enabled: false },
        server: { host: '127.0.0.1', port: HEALTH_PORT },
        shutdownTimeoutMs: 20_000,
        webhook: {
          port: WEBHOOK_PORT,
          host: '127.0.0.1',
          url: `https://127.0.0.1:${WEBHOOK_PORT}/mutate-pods`,
          webhookConfigurationName: mwc,
          tls: { mode: 'self-managed', extraSANs: ['127.0.0.1'] },
          shutdown: { podIP: POD_IP, drainTimeoutMs: 15_000, pollMs: 100, endpointsGraceMs: 300 },
        },
      }),
    );
    operator = startOperator('ksh3-drain', { KSTREAMS_OPERATOR_CONFIG: configFile, KUBECONFIG: kubeconfig });
    const { child, lines } = operator;

    const admit = async () => isInjected(await core.createNamespacedPod({ namespace: shop, body: podBody(freshName('pod')), dryRun: 'All' }));
    await waitFor('the operator to be ready', async () => (await readyzStatus(HEALTH_PORT)) === 200, { timeoutMs: 30_000, intervalMs: 100 });
    await waitFor('the apiserver to call the webhook', admit, { timeoutMs: 15_000, intervalMs: 100 });

    child.kill('SIGTERM');
    await waitFor('readyz to fail once shutting down', async () => (await readyzStatus(HEALTH_PORT)) === 503, { timeoutMs: 2_000, intervalMs: 20 });
    // The Endpoints still list the pod: it goes on serving, and every pod is injected.
    const during: boolean[] = [];
    const until = performance.now() + 1_500;
    while (performance.now() < until) during.push(await admit());
    expect(child.exitCode).toBeNull();
    expect(during.length).toBeGreaterThan(5);
    expect(during.every(Boolean)).toBe(true);

    // The endpoints controller drops the terminating pod: now it may go.
    const removedAt = performance.now();
    await core.replaceNamespacedEndpoints({ name: 'kstreams-webhook', namespace: opNs, body: { metadata: { name: 'kstreams-webhook' }, subsets: [] } });
    const { code, at } = await operator.exit;
    console.log(`[drain] ${during.length} admissions injected while draining; exit ${code} ${Math.round(at - removedAt)} ms after the Endpoints dropped the pod`);
    expect(code, operator.stderr()).toBe(0);
    expect(at - removedAt).toBeLessThan(5_000);
    expect(at - removedAt).toBeGreaterThanOrEqual(300); // the grace for the apiserver's view of the Endpoints
    expect(lines.some((l) => l.msg === 'webhook drain: no longer in the Endpoints')).toBe(true);
    expect(lines.find((l) => l.msg === 'webhook drained')?.outcome).toBe('endpoints-gone');
  });

  it('the drain is bounded: Endpoints that never drop the pod hold it only for drainTimeoutMs', async () => {
    const opNs = await createNamespace(core, 'ksh3-op');
    namespaces.push(opNs);
    await serviceWithEndpoints(opNs, WEBHOOK_PORT_BOUNDED);
    const config = WebhookConfigSchema.parse({
      port: WEBHOOK_PORT_BOUNDED,
      host: '127.0.0.1',
      namespace: opNs,
      url: `https://127.0.0.1:${WEBHOOK_PORT_BOUNDED}/mutate-pods`,
      webhookConfigurationName: freshName('ksh3-injector'),
      manageWebhookConfiguration: false,
      tls: { mode: 'self-managed', extraSANs: ['127.0.0.1'] },
      shutdown: { podIP: POD_IP, drainTimeoutMs: 1_000, pollMs: 100 },
    });
    const hook = await startWebhook({ config, kube: rest, logger: pino({ level: 'silent' }), registry: new Registry(), serverVersion: { major: 1, minor: 20 } });
    try {
      const t0 = performance.now();
      expect(await hook.drain()).toBe('timeout');
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(1_000);
      expect(took).toBeLessThan(2_000);
    } finally {
      await hook.close();
    }
  });

  it('Endpoints it may not read (RBAC already gone, as during an uninstall) hold it only for blindDrainMs', async () => {
    const opNs = await createNamespace(core, 'ksh3-op');
    namespaces.push(opNs);
    await serviceWithEndpoints(opNs, WEBHOOK_PORT_BOUNDED);
    // The same credentials impersonating a user without any rights: every read is a real 403.
    const nobody = KubeRest.fromCredentials({
      server: apiServer,
      tls: { ca: readFileSync(apiServerCaFile) },
      headers: async () => ({ Authorization: `Bearer ${adminToken}`, 'Impersonate-User': 'ksh3-nobody' }),
    });
    const config = WebhookConfigSchema.parse({
      port: WEBHOOK_PORT_BOUNDED,
      host: '127.0.0.1',
      namespace: opNs,
      url: `https://127.0.0.1:${WEBHOOK_PORT_BOUNDED}/mutate-pods`,
      manageWebhookConfiguration: false,
      shutdown: { podIP: POD_IP, drainTimeoutMs: 10_000, blindDrainMs: 800, pollMs: 100 },
    });
    const hook = await startWebhook({ config, kube: nobody, logger: pino({ level: 'silent' }), registry: new Registry(), serverVersion: { major: 1, minor: 20 }, tlsSource: await StaticTls.create() });
    try {
      const t0 = performance.now();
      expect(await hook.drain()).toBe('timeout');
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(800);
      expect(took).toBeLessThan(2_000);
    } finally {
      await hook.close();
      nobody.close();
    }
  });
});
