// Smoke test of the shared control plane started by test/integration-setup.ts.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:https';
import { AdmissionregistrationV1Api, CoreV1Api, KubeConfig, VersionApi } from '@kubernetes/client-node';
import { describe, expect, inject, it } from 'vitest';
import { httpGet, issueCert } from './controlplane.js';
import { cleanupStale, procStartTime } from './processes.js';

const kubeconfig = inject('kubeconfig');

describe('local control plane', () => {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfig);

  it('is Kubernetes 1.20 and the kubeconfig points at the provided server', async () => {
    expect(kc.getCurrentCluster()?.server).toBe(inject('apiServer'));
    const v = await kc.makeApiClient(VersionApi).getCode();
    expect(v.gitVersion).toMatch(/^v1\.20\./);
  });

  it('creates a namespace and a ConfigMap and reads it back', async () => {
    const core = kc.makeApiClient(CoreV1Api);
    // Without kube-controller-manager a deleted namespace never finishes terminating: use fresh names.
    const ns = `smoke-${randomBytes(4).toString('hex')}`;
    await core.createNamespace({ body: { metadata: { name: ns } } });
    await core.createNamespacedConfigMap({
      namespace: ns,
      body: { metadata: { name: 'hello', labels: { app: 'smoke' } }, data: { greeting: 'hi', n: '42' } },
    });
    const cm = await core.readNamespacedConfigMap({ name: 'hello', namespace: ns });
    expect(cm.data).toEqual({ greeting: 'hi', n: '42' });
    expect(cm.metadata?.labels?.app).toBe('smoke');
    const list = await core.listNamespacedConfigMap({ namespace: ns, labelSelector: 'app=smoke' });
    expect(list.items.map((i) => i.metadata?.name)).toEqual(['hello']);
    await core.deleteNamespace({ name: ns });
  });

  it('serves /metrics to the admin token and refuses anonymous access (RBAC)', async () => {
    const ca = readFileSync(inject('apiServerCaFile'));
    const server = inject('apiServer');
    const admin = await httpGet(`${server}/metrics`, { ca, token: inject('adminToken') });
    expect(admin.status).toBe(200);
    expect(admin.body).toContain('apiserver_request_total');
    const anonymous = await httpGet(`${server}/metrics`, { ca });
    expect(anonymous.status).toBe(403);
  });

  it('calls a validating webhook served on 127.0.0.1 with a caBundle', async () => {
    // A serving cert from the cluster CA, as tests of the operator's webhook can do too.
    const caFile = inject('apiServerCaFile');
    const id = randomBytes(4).toString('hex');
    const cert = await issueCert(dirname(caFile), `webhook-${id}`, '/CN=webhook', 'server', ['IP:127.0.0.1']);
    const server = createServer({ key: readFileSync(cert.keyFile), cert: readFileSync(cert.certFile) }, (req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const review = JSON.parse(body) as { request: { uid: string; object: { metadata?: { labels?: Record<string, string> } } } };
        const deny = review.request.object.metadata?.labels?.deny === 'true';
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({
          apiVersion: 'admission.k8s.io/v1',
          kind: 'AdmissionReview',
          response: { uid: review.request.uid, allowed: !deny, ...(deny ? { status: { code: 403, message: 'denied by the test webhook' } } : {}) },
        }));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const core = kc.makeApiClient(CoreV1Api);
    const admission = kc.makeApiClient(AdmissionregistrationV1Api);
    const ns = `webhook-${id}`;
    const name = `deny-${id}.test.kstreams.io`;
    try {
      await core.createNamespace({ body: { metadata: { name: ns, labels: { 'kstreams-test-webhook': id } } } });
      await admission.createValidatingWebhookConfiguration({
        body: {
          metadata: { name },
          webhooks: [
            {
              name,
              clientConfig: { url: `https://127.0.0.1:${port}/validate`, caBundle: readFileSync(caFile).toString('base64') },
              rules: [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['configmaps'] }],
              namespaceSelector: { matchLabels: { 'kstreams-test-webhook': id } },
              sideEffects: 'None',
              admissionReviewVersions: ['v1'],
              failurePolicy: 'Fail',
              timeoutSeconds: 5,
            },
          ],
        },
      });
      // The apiserver picks the configuration up through an informer: retry until the webhook answers.
      let denied = '';
      for (let i = 0; i < 100 && !denied; i++) {
        try {
          await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: `bad-${i}`, labels: { deny: 'true' } } } });
          await new Promise((r) => setTimeout(r, 100));
        } catch (e) {
          denied = String((e as { body?: string }).body ?? e);
        }
      }
      expect(denied).toContain('denied by the test webhook');
      await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: 'good' } } });
    } finally {
      await admission.deleteValidatingWebhookConfiguration({ name }).catch(() => {});
      await core.deleteNamespace({ name: ns }).catch(() => {});
      server.close();
    }
  });

  it('has the admission webhook plugins enabled', async () => {
    const ca = readFileSync(inject('apiServerCaFile'));
    const r = await httpGet(`${inject('apiServer')}/metrics`, { ca, token: inject('adminToken') });
    // The admission controller metrics carry one series per enabled plugin once it has admitted a request.
    expect(r.body).toMatch(/apiserver_admission_controller_admission_duration_seconds_count\{name="MutatingAdmissionWebhook"/);
    expect(r.body).toMatch(/apiserver_admission_controller_admission_duration_seconds_count\{name="ValidatingAdmissionWebhook"/);
  });
});

describe('local control plane lifecycle', () => {
  it('dies with a SIGKILLed parent, and a later run removes what was left', async () => {
    const here = dirname(fileURLToPath(import.meta.url));
    const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'cli.ts')], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout }).once('line', resolve);
      child.once('exit', (code) => reject(new Error(`cli exited ${code}: ${stderr}`)));
    });
    const info = JSON.parse(line) as { dir: string; pids: Array<{ name: string; pid: number }> };
    expect(info.pids.map((p) => p.name)).toEqual(['etcd', 'kube-apiserver']);
    for (const p of info.pids) expect(procStartTime(p.pid)).toBeDefined();

    child.kill('SIGKILL');
    const isGone = (pid: number) => {
      try {
        return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z') ?? true;
      } catch {
        return true;
      }
    };
    const deadline = Date.now() + 10_000;
    while (!info.pids.every((p) => isGone(p.pid)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(info.pids.filter((p) => !isGone(p.pid))).toEqual([]);

    // SIGKILL leaves the temp dir; the next start (cleanupStale) removes it. The shared control plane's dir
    // is left alone because its owner (the vitest main process) is alive.
    expect(existsSync(info.dir)).toBe(true);
    await cleanupStale(dirname(info.dir), 'kstreams-cp-');
    expect(existsSync(info.dir)).toBe(false);
    expect(existsSync(inject('kubeconfig'))).toBe(true);
  });
});
