// The webhook's worker thread inside a real operator against the real apiserver: the apiserver's admissions
// are answered by the worker with what the main thread posted (the feed settings, the CA), /readyz fails
// while a dead worker is being started again and passes once it listens, and /metrics keeps the webhook's
// series (counted in the worker) beside the restart counter.
import { request } from 'node:http';
import { AdmissionregistrationV1Api, CoreV1Api, KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { systemClock } from '../../../runtime/src/clock.js';
import { KubeRest } from '../../../runtime/src/rest.js';
import { parseConfig } from '../config.js';
import { startOperator, type RunningOperator } from '../operator.js';
import { eventually, freeLoopbackPort, installCrd } from '../testing/kube.js';
import { SIDECAR_CONTAINER_NAME } from '../../../api/src/agent.js';
import { bestEffort, createNamespace, freshName, podBody } from './testing/cluster.js';

const kubeconfig = inject('kubeconfig');

function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, timeout: 2000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('the webhook worker in a running operator', () => {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfig);
  const core = kc.makeApiClient(CoreV1Api);
  const admission = kc.makeApiClient(AdmissionregistrationV1Api);
  const namespaces: string[] = [];
  const mwc = freshName('ksww-injector');
  let op: RunningOperator | undefined;
  let shop: string;

  beforeAll(async () => {
    const rest = await KubeRest.create(kubeconfig);
    await installCrd(rest);
    rest.close();
    const opNs = await createNamespace(core, 'ksww-op');
    shop = await createNamespace(core, 'ksww-shop', { inject: true });
    namespaces.push(opNs, shop);
    const port = await freeLoopbackPort();
    const config = parseConfig({
      identity: 'ksww-worker',
      namespace: opNs,
      kubeconfig,
      logLevel: 'warn',
      leaderElection: { enabled: false },
      server: { host: '127.0.0.1', port: 0 },
      feed: { host: '127.0.0.1', port: 0 },
      webhook: {
        thread: 'worker',
        port,
        host: '127.0.0.1',
        namespace: opNs,
        url: `https://127.0.0.1:${port}/mutate-pods`,
        webhookConfigurationName: mwc,
        tls: { mode: 'self-managed', extraSANs: ['127.0.0.1'] },
      },
    });
    op = await startOperator({ config, log: pino({ level: 'warn' }), clock: systemClock });
  });

  afterAll(async () => {
    await op?.shutdown();
    await bestEffort(() => admission.deleteMutatingWebhookConfiguration({ name: mwc }));
    for (const ns of namespaces) await bestEffort(() => core.deleteNamespace({ name: ns }));
  });

  const admit = async (): Promise<V1Pod> => core.createNamespacedPod({ namespace: shop, body: podBody(freshName('pod')), dryRun: 'All' });
  const sidecarEnv = (pod: V1Pod) => {
    const c = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].find((x) => x.name === SIDECAR_CONTAINER_NAME);
    return Object.fromEntries((c?.env ?? []).map((e) => [e.name, e.value]));
  };

  it('answers the apiserver from the worker, is not ready while a dead worker is started again, and counts it', async () => {
    const health = op!.healthPort;
    expect(op!.webhook?.thread).toBe('worker');
    await eventually('/readyz 200', async () => (await get(health, '/readyz')).status === 200);
    const injected = await eventually('the apiserver to call the webhook', async () => {
      const pod = await admit();
      return Object.keys(sidecarEnv(pod)).length > 0 ? pod : undefined;
    });
    // The feed settings and the CA came from the main thread.
    const env = sidecarEnv(injected);
    expect(env.KSTREAMS_OPERATOR_ADDRESSES).toBe(`${op!.feedAddress},kstreams-webhook.${namespaces[0]}.svc:${op!.feed!.port}`);
    expect(env.KSTREAMS_OPERATOR_CA).toMatch(/^-----BEGIN CERTIFICATE-----/);

    await op!.webhook!.killWorker();
    expect(op!.webhook!.ready()).toBe(false);
    const notReady = await get(health, '/readyz');
    expect(notReady.status).toBe(503);
    expect(notReady.body).toMatch(/webhook worker not listening/);
    await eventually('/readyz 200 again', async () => (await get(health, '/readyz')).status === 200);
    expect(Object.keys(sidecarEnv(await admit())).length).toBeGreaterThan(0);

    const metrics = (await get(health, '/metrics')).body;
    expect(metrics).toMatch(/^kstreams_webhook_worker_restarts_total 1$/m);
    // The admission after the restart, counted in the new worker, reached the main registry's series.
    expect(metrics).toMatch(/^kstreams_webhook_admission_requests_total\{result="patched",reason="injected"} [1-9]/m);
    expect(metrics).toMatch(/^kstreams_webhook_admission_duration_seconds_count\{result="patched"} [1-9]/m);
    expect(metrics).toMatch(/^kstreams_webhook_tls_handshakes_total [1-9]/m);
  });
});
