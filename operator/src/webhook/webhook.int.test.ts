// The webhook against the real kube-apiserver 1.20 of the integration run, with real TLS: the apiserver
// calls https://127.0.0.1:PORT/mutate-pods trusting the caBundle the webhook wrote itself.
import { connect } from 'node:tls';
import {
  AdmissionregistrationV1Api,
  CoreV1Api,
  KubeConfig,
  VersionApi,
  type V1Pod,
} from '@kubernetes/client-node';
import { pino } from 'pino';
import { Registry, type Counter } from 'prom-client';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { freePort, waitFor } from '../../../e2e/cluster/local/processes.js';
import { AGENT_PORT_ANNOTATION, INJECTED_ANNOTATION, SIDECAR_CONTAINER_NAME } from '../api/agent.js';
import { handleAdmissionReview } from './admission.js';
import { bundleFromSecretData, fingerprint } from './certs.js';
import { WebhookConfigSchema, type WebhookConfig } from './config.js';
import { computePodPatch, parseServerVersion, type ServerVersion } from './patch.js';
import { startWebhook, type RunningWebhook } from './server.js';
import { bestEffort, createNamespace, freshName, isInjected, podBody, sidecarIndex } from './testing/cluster.js';
import { SelfManagedTls, type Clock } from './tls-source.js';

const kubeconfig = inject('kubeconfig');
const logger = pino({ level: process.env.KSTREAMS_TEST_LOG ?? 'silent' });
const HOUR_S = 3600;

function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    // Only reading which cert is presented; trust is checked by the apiserver itself in the tests.
    const s = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.on('error', reject);
  });
}

async function counter(registry: Registry, result: string, reason: string): Promise<number> {
  const c = registry.getSingleMetric('kstreams_webhook_admission_requests_total') as Counter | undefined;
  const values = c ? (await c.get()).values : [];
  return values.filter((v) => v.labels.result === result && v.labels.reason === reason).reduce((a, v) => a + v.value, 0);
}

async function webhookConfig(overrides: Record<string, unknown>): Promise<WebhookConfig> {
  const port = await freePort();
  return WebhookConfigSchema.parse({
    port,
    host: '127.0.0.1',
    url: `https://127.0.0.1:${port}/mutate-pods`,
    webhookConfigurationName: freshName('kstreams-test-injector'),
    ...overrides,
  });
}

describe.skipIf(!kubeconfig)('sidecar injection webhook on a real apiserver', () => {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfig);
  const core = kc.makeApiClient(CoreV1Api);
  const admission = kc.makeApiClient(AdmissionregistrationV1Api);
  const registry = new Registry();
  let version: ServerVersion | undefined;
  let config: WebhookConfig;
  let hook: RunningWebhook | undefined;
  let ownNs: string;
  let shop: string;
  const namespaces: string[] = [];

  const createPod = (namespace: string, labels: Record<string, string> = {}) =>
    core.createNamespacedPod({ namespace, body: podBody(freshName('pod'), labels) });

  beforeAll(async () => {
    version = parseServerVersion(await kc.makeApiClient(VersionApi).getCode());
    ownNs = await createNamespace(core, 'kstreams-system');
    shop = await createNamespace(core, 'shop', { inject: true });
    namespaces.push(ownNs, shop);
    config = await webhookConfig({ namespace: ownNs, tls: { mode: 'self-managed', extraSANs: ['127.0.0.1'] } });
    hook = await startWebhook({ config, kube: kc, logger, registry });
  });

  afterAll(async () => {
    await hook?.close();
    if (config) await bestEffort(() => admission.deleteMutatingWebhookConfiguration({ name: config.webhookConfigurationName }));
    for (const ns of namespaces) await bestEffort(() => core.deleteNamespace({ name: ns }));
  });

  it('registers itself: a TLS Secret in its namespace and a MutatingWebhookConfiguration trusting its CA', async () => {
    const secret = await core.readNamespacedSecret({ name: 'kstreams-webhook-tls', namespace: ownNs });
    const bundle = bundleFromSecretData(secret.data);
    expect(bundle).toBeDefined();
    expect(await servedFingerprint(hook!.port)).toBe(fingerprint(bundle!.serving.certPem));
    const mwc = await admission.readMutatingWebhookConfiguration({ name: config.webhookConfigurationName });
    const w = mwc.webhooks?.[0];
    expect(Buffer.from(w?.clientConfig.caBundle ?? '', 'base64').toString()).toBe(bundle!.ca.certPem.trim() + '\n');
    expect(w?.clientConfig.url).toBe(config.url);
    expect(w?.failurePolicy).toBe('Ignore');
    expect(w?.sideEffects).toBe('None');
    expect(w?.timeoutSeconds).toBe(5);
  });

  it('a second start is a no-op on the API: same Secret, configuration unchanged', async () => {
    const tls = new SelfManagedTls({ config, kube: kc, logger });
    const r = await tls.reconcile();
    await tls.stop();
    expect(r.secret).toBe('unchanged');
    expect(r.webhookConfiguration).toBe('unchanged');
  });

  it('mutates a pod CREATE through the real apiserver: sidecar first, annotations set', async () => {
    const pod = await createPod(shop);
    expect(version).toEqual({ major: 1, minor: 20 });
    expect(sidecarIndex(pod)).toBe(0);
    const sidecar = pod.spec!.containers[0]!;
    expect(sidecar.lifecycle?.postStart?.exec?.command?.slice(0, 3)).toEqual(['kstreams', 'agent', 'wait']);
    expect(sidecar.securityContext?.capabilities).toEqual({ add: ['NET_ADMIN', 'BPF'], drop: ['ALL'] });
    expect(sidecar.env?.find((e) => e.name === 'POD_IP')?.valueFrom?.fieldRef?.fieldPath).toBe('status.podIP');
    expect(pod.spec!.containers[1]!.name).toBe('app');
    expect(pod.metadata?.annotations?.[INJECTED_ANNOTATION]).toBe('1');
    expect(pod.metadata?.annotations?.[AGENT_PORT_ANNOTATION]).toBe('15090');
  });

  it('is idempotent: the stored pod, sent through the function and through the endpoint again, yields no patch', async () => {
    const created = await createPod(shop);
    const stored = await core.readNamespacedPod({ name: created.metadata!.name!, namespace: shop });
    const again = computePodPatch(stored, { name: shop }, config, version);
    expect(again).toEqual({ patch: [], reason: 'already-injected' });
    const review = {
      apiVersion: 'admission.k8s.io/v1',
      kind: 'AdmissionReview',
      request: {
        uid: 'idempotence',
        kind: { group: '', version: 'v1', kind: 'Pod' },
        resource: { group: '', version: 'v1', resource: 'pods' },
        operation: 'CREATE',
        namespace: shop,
        object: stored,
      },
    };
    const out = handleAdmissionReview(JSON.stringify(review), (p, ns) => computePodPatch(p, { name: ns }, config, version));
    expect((out.body as { response: Record<string, unknown> }).response).toEqual({ uid: 'idempotence', allowed: true });
    expect(stored.spec!.containers.filter((c) => c.name === SIDECAR_CONTAINER_NAME)).toHaveLength(1);
  });

  it('leaves a pod labelled kstreams.io/inject: "false" alone', async () => {
    const pod = await createPod(shop, { 'kstreams.io/inject': 'false' });
    expect(isInjected(pod)).toBe(false);
    expect(pod.metadata?.annotations?.[INJECTED_ANNOTATION]).toBeUndefined();
  });

  it('leaves namespaces without the opt-in label alone (the apiserver does not even call)', async () => {
    const plain = await createNamespace(core, 'plain');
    namespaces.push(plain);
    const before = (await counter(registry, 'allowed', 'namespace-not-enabled')) + (await counter(registry, 'patched', 'injected'));
    const pod = await createPod(plain);
    expect(isInjected(pod)).toBe(false);
    expect((await counter(registry, 'allowed', 'namespace-not-enabled')) + (await counter(registry, 'patched', 'injected'))).toBe(before);
  });

  it('never mutates its own namespace, even when labelled for injection', async () => {
    const before = await counter(registry, 'allowed', 'own-namespace');
    await core.patchNamespace({ name: ownNs, body: [{ op: 'add', path: '/metadata/labels', value: { 'kstreams.io/inject': 'enabled' } }] });
    const pod = await createPod(ownNs);
    expect(isInjected(pod)).toBe(false);
    // Called (1.20 cannot select namespaces by name) and refused by the patch function.
    expect(await counter(registry, 'allowed', 'own-namespace')).toBe(before + 1);
  });

  it('never mutates kube-system, even when it is labelled for injection', async () => {
    // On 1.20 namespaces have no kubernetes.io/metadata.name label, so the selector cannot keep the
    // apiserver from calling: the refusal is the patch function's, and the metric shows the call.
    const sa = freshName('kstreams-test');
    const name = freshName('pod');
    const before = await counter(registry, 'allowed', 'excluded-namespace');
    await core.createNamespacedServiceAccount({ namespace: 'kube-system', body: { metadata: { name: sa } } });
    await core.patchNamespace({
      name: 'kube-system',
      body: [{ op: 'add', path: '/metadata/labels', value: { 'kstreams.io/inject': 'enabled' } }],
    });
    try {
      const pod = await core.createNamespacedPod({ namespace: 'kube-system', body: podBody(name, {}, sa) });
      expect(isInjected(pod)).toBe(false);
      expect(await counter(registry, 'allowed', 'excluded-namespace')).toBe(before + 1);
    } finally {
      await bestEffort(() => core.patchNamespace({ name: 'kube-system', body: [{ op: 'remove', path: '/metadata/labels/kstreams.io~1inject' }] }));
      await bestEffort(() => core.deleteNamespacedPod({ name, namespace: 'kube-system' }));
      await bestEffort(() => core.deleteNamespacedServiceAccount({ name: sa, namespace: 'kube-system' }));
    }
  });

  it('when the webhook is down, pods are still admitted (failurePolicy Ignore), unmutated', async () => {
    await hook!.close();
    hook = undefined;
    await expect(servedFingerprint(config.port)).rejects.toThrow(/ECONNREFUSED/);
    const pod = await createPod(shop);
    expect(isInjected(pod)).toBe(false);
    expect(pod.metadata?.uid).toBeTruthy();
  });
});

describe.skipIf(!kubeconfig)('webhook TLS rotation shared by two replicas', () => {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfig);
  const core = kc.makeApiClient(CoreV1Api);
  const admission = kc.makeApiClient(AdmissionregistrationV1Api);
  const realStart = Date.now();
  // The clock starts two hours back, so certs issued then are valid now; moving it to the present makes
  // them due without waiting and keeps newly issued certs valid for the real apiserver.
  const clock: Clock & { t: number } = { t: realStart - 2 * HOUR_S * 1000, now: () => clock.t };
  let configA: WebhookConfig;
  let a: RunningWebhook | undefined;
  let b: RunningWebhook | undefined;
  let tlsA: SelfManagedTls;
  let ownNs: string;
  let shop: string;

  const tlsSettings = {
    mode: 'self-managed',
    extraSANs: ['127.0.0.1'],
    caValiditySeconds: 2.5 * HOUR_S,
    certValiditySeconds: 2.5 * HOUR_S,
    rotateBeforeSeconds: HOUR_S,
  };

  beforeAll(async () => {
    ownNs = await createNamespace(core, 'kstreams-system');
    shop = await createNamespace(core, 'shop', { inject: true });
    configA = await webhookConfig({ namespace: ownNs, tls: tlsSettings });
    // Replica B shares the Secret; it leaves the webhook configuration to A since its URL differs.
    const configB = await webhookConfig({ namespace: ownNs, tls: tlsSettings, manageWebhookConfiguration: false });
    tlsA = new SelfManagedTls({ config: configA, kube: kc, logger, clock });
    a = await startWebhook({ config: configA, kube: kc, logger, registry: new Registry(), tlsSource: tlsA });
    b = await startWebhook({
      config: configB,
      kube: kc,
      logger,
      registry: new Registry(),
      tlsSource: new SelfManagedTls({ config: configB, kube: kc, logger, clock }),
    });
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
    if (configA) await bestEffort(() => admission.deleteMutatingWebhookConfiguration({ name: configA.webhookConfigurationName }));
    for (const ns of [ownNs, shop]) if (ns) await bestEffort(() => core.deleteNamespace({ name: ns }));
  });

  const createPod = (): Promise<V1Pod> => core.createNamespacedPod({ namespace: shop, body: podBody(freshName('pod')) });

  it('both replicas serve the one cert from the shared Secret, and the apiserver trusts it', async () => {
    const fp = await servedFingerprint(a!.port);
    expect(await servedFingerprint(b!.port)).toBe(fp);
    expect(isInjected(await createPod())).toBe(true);
  });

  it('rotates the CA before expiry; the other replica hot-reloads and the apiserver picks up the new caBundle', async () => {
    const oldFp = await servedFingerprint(a!.port);
    const oldMwc = await admission.readMutatingWebhookConfiguration({ name: configA.webhookConfigurationName });
    clock.t = Date.now();
    const r = await tlsA.reconcile();
    // The reconcile that rotated the CA is the one that writes the new caBundle: A's watch sees its own write
    // while that reconcile is still running, and used to write the caBundle itself (half the runs).
    expect(r.secret).toBe('rotated-ca');
    expect(r.webhookConfiguration).toBe('updated');
    expect(r.servingFingerprint).not.toBe(oldFp);
    expect(await servedFingerprint(a!.port)).toBe(r.servingFingerprint);
    // B learns of it through its watch on the Secret.
    await waitFor('replica B to serve the rotated cert', async () => (await servedFingerprint(b!.port)) === r.servingFingerprint, {
      timeoutMs: 10_000,
      intervalMs: 50,
    });
    const mwc = await admission.readMutatingWebhookConfiguration({ name: configA.webhookConfigurationName });
    const bundlePem = Buffer.from(mwc.webhooks![0]!.clientConfig.caBundle!, 'base64').toString();
    const oldBundlePem = Buffer.from(oldMwc.webhooks![0]!.clientConfig.caBundle!, 'base64').toString();
    const rotated = bundleFromSecretData((await core.readNamespacedSecret({ name: 'kstreams-webhook-tls', namespace: ownNs })).data)!;
    expect(fingerprint(rotated.serving.certPem)).toBe(r.servingFingerprint);
    // Exactly the new CA first, then the old one (kept while it is valid), and written once.
    expect(oldBundlePem.match(/BEGIN CERTIFICATE/g)).toHaveLength(1);
    expect(rotated.previousCaPem?.trim()).toBe(oldBundlePem.trim());
    expect(rotated.ca.certPem.trim()).not.toBe(oldBundlePem.trim());
    expect(bundlePem).toBe(rotated.ca.certPem.trim() + '\n' + oldBundlePem);
    expect(mwc.metadata?.generation).toBe(oldMwc.metadata!.generation! + 1);
    // The new serving cert chains only to the new CA: a mutated pod proves the apiserver uses the new bundle.
    // The apiserver reloads webhook configurations through its informer, hence the wait.
    await waitFor('the apiserver to call the webhook with the new caBundle', async () => isInjected(await createPod()), {
      timeoutMs: 15_000,
      intervalMs: 100,
    });
  });

  it('rotates again only when due: a second reconcile at the same time writes nothing', async () => {
    const r = await tlsA.reconcile();
    expect(r).toMatchObject({ secret: 'unchanged', webhookConfiguration: 'unchanged' });
  });

  it('recreates a deleted Secret and every replica follows', async () => {
    await core.deleteNamespacedSecret({ name: 'kstreams-webhook-tls', namespace: ownNs });
    // Replicas see DELETED on their watch and repair it; whoever wins, both end up serving the same cert.
    await waitFor(
      'a recreated Secret served by both replicas',
      async () => {
        const s = await core.readNamespacedSecret({ name: 'kstreams-webhook-tls', namespace: ownNs });
        const fp = fingerprint(bundleFromSecretData(s.data)!.serving.certPem);
        return (await servedFingerprint(a!.port)) === fp && (await servedFingerprint(b!.port)) === fp;
      },
      { timeoutMs: 15_000, intervalMs: 100 },
    );
    await waitFor('the apiserver to trust the recreated CA', async () => isInjected(await createPod()), { timeoutMs: 15_000, intervalMs: 100 });
  });
});
