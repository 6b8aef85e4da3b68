// The webhook against the real kube-apiserver 1.20 of the integration run, with real TLS: the apiserver
// calls https://127.0.0.1:PORT/mutate-pods trusting the caBundle the webhook wrote itself.
import { request as httpsRequest, type RequestOptions } from 'node:https';
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
import { AGENT_PORT_ANNOTATION, INJECTED_ANNOTATION, SIDECAR_CONTAINER_NAME } from '../../../api/src/agent.js';
import { handleAdmissionReview } from './admission.js';
import { bundleFromSecretData, fingerprint } from './certs.js';
import { WebhookConfigSchema, type WebhookConfig } from './config.js';
import { computePodPatch, parseServerVersion, type ServerVersion } from './patch.js';
import { startWebhook, type RunningWebhook } from './server.js';
import { bestEffort, createNamespace, freshName, isInjected, podBody, sidecarIndex } from './testing/cluster.js';
import { SelfManagedTls, type Clock } from './tls-source.js';
import { systemClock } from '../../../runtime/src/clock.js';
import { Backoff } from '../../../runtime/src/backoff.js';
import { Informer } from '../../../runtime/src/informer.js';
import { slimNamespace, type SlimNamespace } from '../kube/objects.js';
import { KubeRest } from '../../../runtime/src/rest.js';
import { podSecurityFixCommand } from './pod-security.js';

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

describe('sidecar injection webhook on a real apiserver', () => {
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
  let rest: KubeRest;
  let nsCache: Informer<SlimNamespace>;

  /** POST a pod with dryRun: the apiserver's Warning headers (client-node does not expose them) and the pod. */
  const createWithWarnings = async (namespace: string): Promise<{ warnings: string[]; pod: V1Pod }> => {
    const opts: RequestOptions = { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json' } };
    await kc.applyToHTTPSOptions(opts);
    const url = new URL(`${kc.getCurrentCluster()!.server}/api/v1/namespaces/${namespace}/pods?dryRun=All`);
    return new Promise((resolve, reject) => {
      const req = httpsRequest(url, opts, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          if ((res.statusCode ?? 0) >= 300) return reject(new Error(`pod create: HTTP ${res.statusCode}: ${text}`));
          // Not res.headers.warning: Node joins repeated headers with ", ".
          const warnings = res.rawHeaders.filter((_, i) => i % 2 === 1 && res.rawHeaders[i - 1]!.toLowerCase() === 'warning');
          resolve({ warnings, pod: JSON.parse(text) as V1Pod });
        });
      });
      req.on('error', reject);
      req.end(JSON.stringify(podBody(freshName('pod'))));
    });
  };

  const createPod = (namespace: string, labels: Record<string, string> = {}) =>
    core.createNamespacedPod({ namespace, body: podBody(freshName('pod'), labels) });

  beforeAll(async () => {
    version = parseServerVersion(await kc.makeApiClient(VersionApi).getCode());
    ownNs = await createNamespace(core, 'kstreams-system');
    shop = await createNamespace(core, 'shop', { inject: true });
    namespaces.push(ownNs, shop);
    config = await webhookConfig({ namespace: ownNs, tls: { mode: 'self-managed', extraSANs: ['127.0.0.1'] } });
    rest = await KubeRest.create(kubeconfig);
    nsCache = new Informer<SlimNamespace>({
      name: 'namespaces',
      transport: rest,
      path: '/api/v1/namespaces',
      transform: slimNamespace,
      key: (n) => n.name,
      clock: systemClock,
      backoff: new Backoff({ initialMs: 100, maxMs: 1000 }),
      resyncPeriodMs: 600_000,
    });
    nsCache.start();
    await nsCache.whenSynced();
    hook = await startWebhook({ config, kube: rest, logger, registry, namespaces: nsCache });
  });

  afterAll(async () => {
    await hook?.close();
    await nsCache?.stop();
    rest?.close();
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
    const tls = new SelfManagedTls({ config, kube: rest, logger });
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

  it('warns whoever creates a pod where a Pod Security level forbids the sidecar, with the fix (1.20 does not enforce the label)', async () => {
    const name = freshName('psa');
    await core.createNamespace({
      body: {
        metadata: {
          name,
          labels: { 'kstreams.io/inject': 'enabled', 'pod-security.kubernetes.io/enforce': 'baseline', 'pod-security.kubernetes.io/warn': 'restricted' },
        },
      },
    });
    namespaces.push(name);
    await core.createNamespacedServiceAccount({ namespace: name, body: { metadata: { name: 'default' } } });
    await waitFor('the namespace in the webhook\'s cache', async () => nsCache.get(name) !== undefined, { timeoutMs: 5000, intervalMs: 20 });
    const { warnings, pod } = await createWithWarnings(name);
    // The Warning header: 299 - "<text>"; one per AdmissionReview warning, enforce first.
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toMatch(/^299 - "Pod Security \\?"baseline:latest\\?" rejects kstreams-sidecar; fix: /);
    expect(warnings[0]).toContain(podSecurityFixCommand(name, 'enforce'));
    expect(warnings[1]).toMatch(/^299 - "Pod Security warn \\?"restricted:latest\\?" flags kstreams-sidecar; to silence it: /);
    expect(warnings[1]).toContain(podSecurityFixCommand(name, 'warn'));
    // Still injected: a rejection that names the container beats an unmirrored pod (docs/webhook.md).
    expect(isInjected(pod)).toBe(true);
    const plain = await createWithWarnings(shop);
    expect(plain.warnings).toEqual([]);
    expect(isInjected(plain.pod)).toBe(true);
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

describe('webhook TLS rotation shared by two replicas', () => {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfig);
  const core = kc.makeApiClient(CoreV1Api);
  const admission = kc.makeApiClient(AdmissionregistrationV1Api);
  // The clock runs two hours behind at first, so certs issued then are valid now; putting it right makes
  // them due without waiting and keeps newly issued certs valid for the real apiserver. It runs with real
  // time, so the CA propagation wait is a real wait.
  const clock: Clock & { offsetMs: number } = { offsetMs: -2 * HOUR_S * 1000, now: () => Date.now() + clock.offsetMs };
  const PROPAGATION_S = 2;
  let configA: WebhookConfig;
  let a: RunningWebhook | undefined;
  let b: RunningWebhook | undefined;
  let tlsA: SelfManagedTls;
  let ownNs: string;
  let shop: string;
  let rest: KubeRest;

  const tlsSettings = {
    mode: 'self-managed',
    extraSANs: ['127.0.0.1'],
    caValiditySeconds: 2.5 * HOUR_S,
    certValiditySeconds: 2.5 * HOUR_S,
    rotateBeforeSeconds: HOUR_S,
    caPropagationSeconds: PROPAGATION_S,
  };

  beforeAll(async () => {
    ownNs = await createNamespace(core, 'kstreams-system');
    shop = await createNamespace(core, 'shop', { inject: true });
    // failurePolicy Fail: a request answered with a cert the apiserver does not trust fails the pod create
    // instead of passing it uninjected, so the rotation test counts every such answer.
    configA = await webhookConfig({ namespace: ownNs, tls: tlsSettings, failurePolicy: 'Fail' });
    // Replica B shares the Secret; it leaves the webhook configuration to A since its URL differs.
    const configB = await webhookConfig({ namespace: ownNs, tls: tlsSettings, manageWebhookConfiguration: false });
    rest = await KubeRest.create(kubeconfig);
    tlsA = new SelfManagedTls({ config: configA, kube: rest, logger, clock });
    a = await startWebhook({ config: configA, kube: rest, logger, registry: new Registry(), tlsSource: tlsA });
    b = await startWebhook({
      config: configB,
      kube: rest,
      logger,
      registry: new Registry(),
      tlsSource: new SelfManagedTls({ config: configB, kube: rest, logger, clock }),
    });
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
    rest?.close();
    if (configA) await bestEffort(() => admission.deleteMutatingWebhookConfiguration({ name: configA.webhookConfigurationName }));
    for (const ns of [ownNs, shop]) if (ns) await bestEffort(() => core.deleteNamespace({ name: ns }));
  });

  const createPod = (): Promise<V1Pod> => core.createNamespacedPod({ namespace: shop, body: podBody(freshName('pod')) });

  it('both replicas serve the one cert from the shared Secret, and the apiserver trusts it', async () => {
    const fp = await servedFingerprint(a!.port);
    expect(await servedFingerprint(b!.port)).toBe(fp);
    expect(isInjected(await createPod())).toBe(true);
  });

  it('rotates a due CA in two stages under steady admissions: the caBundle trusts the new CA before any replica serves its cert; zero failures', async () => {
    const oldFp = await servedFingerprint(a!.port);
    const oldMwc = await admission.readMutatingWebhookConfiguration({ name: configA.webhookConfigurationName });
    const oldBundlePem = Buffer.from(oldMwc.webhooks![0]!.clientConfig.caBundle!, 'base64').toString();
    expect(oldBundlePem.match(/BEGIN CERTIFICATE/g)).toHaveLength(1);

    // Admissions at a steady rate (dry-run pod creates: the apiserver calls the webhook, nothing is stored),
    // and the instants at which the caBundle the apiserver holds changes, polled beside them.
    let running = true;
    const results: { ok: boolean; injected: boolean; error?: string }[] = [];
    const bundleSeen: { at: number; pem: string }[] = [];
    const load = (async () => {
      while (running) {
        const t = performance.now();
        try {
          const pod = await core.createNamespacedPod({ namespace: shop, body: podBody(freshName('pod')), dryRun: 'All' });
          results.push({ ok: true, injected: isInjected(pod) });
        } catch (e) {
          results.push({ ok: false, injected: false, error: (e as Error).message.split('\n').slice(0, 3).join(' ') });
        }
        await new Promise((r) => setTimeout(r, Math.max(0, 50 - (performance.now() - t))));
      }
    })();
    const poll = (async () => {
      while (running) {
        const m = await admission.readMutatingWebhookConfiguration({ name: configA.webhookConfigurationName });
        const pem = Buffer.from(m.webhooks![0]!.clientConfig.caBundle!, 'base64').toString();
        if (bundleSeen.at(-1)?.pem !== pem) bundleSeen.push({ at: performance.now(), pem });
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const served: { replica: string; at: number; certPem: string }[] = [];
    a!.tls.onChange((pem) => served.push({ replica: 'a', at: performance.now(), certPem: pem.certPem }));
    b!.tls.onChange((pem) => served.push({ replica: 'b', at: performance.now(), certPem: pem.certPem }));
    await new Promise((r) => setTimeout(r, 500)); // a steady rate before the rotation starts

    clock.offsetMs = 0; // the CA (and the cert) are now due
    const staged = await tlsA.reconcile();
    // Stage 1: the next CA is published; both replicas go on serving the old cert.
    expect(staged).toMatchObject({ secret: 'staged-ca', webhookConfiguration: 'updated', servingFingerprint: oldFp });
    const stagedSecret = bundleFromSecretData((await core.readNamespacedSecret({ name: 'kstreams-webhook-tls', namespace: ownNs })).data)!;
    expect(stagedSecret.nextCa).toBeDefined();
    expect(await servedFingerprint(a!.port)).toBe(oldFp);
    expect(await servedFingerprint(b!.port)).toBe(oldFp);
    // Stage 2 comes by itself, PROPAGATION_S after the publication: both replicas serve the new CA's cert.
    let newFp = '';
    await waitFor(
      'both replicas to serve a cert of the new CA',
      async () => {
        newFp = await servedFingerprint(a!.port);
        return newFp !== oldFp && (await servedFingerprint(b!.port)) === newFp;
      },
      { timeoutMs: PROPAGATION_S * 1000 + 15_000, intervalMs: 50 },
    );
    await new Promise((r) => setTimeout(r, 1_000)); // and a steady rate after it
    running = false;
    await Promise.all([load, poll]);

    const rotated = bundleFromSecretData((await core.readNamespacedSecret({ name: 'kstreams-webhook-tls', namespace: ownNs })).data)!;
    expect(fingerprint(rotated.serving.certPem)).toBe(newFp);
    expect(rotated.ca).toEqual(stagedSecret.nextCa);
    expect(rotated.nextCa).toBeUndefined();
    expect(rotated.previousCaPem?.trim()).toBe(oldBundlePem.trim());
    const finalMwc = await admission.readMutatingWebhookConfiguration({ name: configA.webhookConfigurationName });
    const finalPem = Buffer.from(finalMwc.webhooks![0]!.clientConfig.caBundle!, 'base64').toString();
    expect(finalPem).toBe(rotated.ca.certPem.trim() + '\n' + oldBundlePem);

    // Every admission succeeded and was injected: not one answered with a cert the apiserver did not trust.
    const failures = results.filter((r) => !r.ok);
    console.log(`[rotation] ${results.length} admissions, ${failures.length} failed, ${results.filter((r) => r.ok && !r.injected).length} uninjected; caBundle versions seen: ${bundleSeen.length}`);
    expect(failures).toEqual([]);
    expect(results.every((r) => r.injected)).toBe(true);
    expect(results.length).toBeGreaterThan(20);
    // The instants: the caBundle held the new CA before either replica served a cert it signed, by at least
    // the propagation wait (less the 20 ms poll and a request's latency).
    const trustedAt = bundleSeen.find((v) => v.pem.includes(stagedSecret.nextCa!.certPem.trim()))!.at;
    const newCerts = served.filter((x) => fingerprint(x.certPem) === newFp);
    expect(newCerts.map((x) => x.replica).sort()).toEqual(['a', 'b']);
    for (const x of newCerts) expect(x.at - trustedAt).toBeGreaterThanOrEqual(PROPAGATION_S * 1000 - 500);
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
