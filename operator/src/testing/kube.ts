// Helpers for the operator's integration tests and bench against the real apiserver: CRD install,
// fresh namespaces, pods that can exist without a controller-manager (agents on the feed: testing/feed-agent.ts).
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { AGENT_PORT_ANNOTATION, INJECTED_ANNOTATION } from '../../../api/src/agent.js';
import { API_VERSION, KIND, type StreamPathSpecInput } from '../../../api/src/streampath.js';
import { streamPathPath, type StreamPathObject } from '../controller/reconciler.js';
import { isStatus, type KubeTransport } from '../../../runtime/src/rest.js';

export const CRD_FILE = fileURLToPath(new URL('../../../crds/streampath.yaml', import.meta.url));

/** Polls `check` until it returns a truthy value or the deadline passes (then fails with `what`). */
export async function eventually<T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs = 15_000, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Installs the committed CRD (idempotent) and waits until the apiserver serves it. */
export async function installCrd(kube: KubeTransport): Promise<void> {
  const crd = parseYaml(readFileSync(CRD_FILE, 'utf8')) as { metadata: { name: string } };
  try {
    await kube.request('POST', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions', { body: crd });
  } catch (err) {
    if (!isStatus(err, 409)) throw err;
  }
  await eventually('the StreamPath CRD to be established', async () => {
    const got = await kube.request<{ status?: { conditions?: { type: string; status: string }[] } }>('GET', `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${crd.metadata.name}`);
    return got.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True');
  });
  await eventually('streampaths to be served', async () => {
    await kube.request('GET', '/apis/kstreams.io/v1alpha1/streampaths?limit=1');
    return true;
  });
}

/** A port free on 127.0.0.1 now: for a server that must come back on the same port after a restart. */
export async function freeLoopbackPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

export function freshName(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

/** A fresh namespace (deleted namespaces never finish terminating without a controller-manager). */
export async function createNamespace(kube: KubeTransport, name: string, labels: Record<string, string> = {}): Promise<void> {
  await kube.request('POST', '/api/v1/namespaces', { body: { apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } } });
  // Pods are admitted only when their ServiceAccount exists; no controller creates `default` here.
  await kube.request('POST', `/api/v1/namespaces/${name}/serviceaccounts`, { body: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default' } } });
}

export interface TestPodOptions {
  labels: Record<string, string>;
  /** Injected pods carry the webhook's annotation and the agent port. */
  agentPort?: number;
}

export function podManifest(name: string, o: TestPodOptions): Record<string, unknown> {
  const annotations: Record<string, string> = {};
  if (o.agentPort !== undefined) {
    annotations[INJECTED_ANNOTATION] = 'test';
    annotations[AGENT_PORT_ANNOTATION] = String(o.agentPort);
  }
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, labels: o.labels, annotations },
    spec: { automountServiceAccountToken: false, containers: [{ name: 'app', image: 'busybox:test', imagePullPolicy: 'Never' }] },
  };
}

/** Creates the pod (and sets its IP when given); returns its uid. */
export async function createPod(kube: KubeTransport, namespace: string, name: string, o: TestPodOptions & { podIP?: string }): Promise<string> {
  const created = await kube.request<{ metadata: { uid: string } }>('POST', `/api/v1/namespaces/${namespace}/pods`, { body: podManifest(name, o) });
  // No kubelet runs: set the pod IP ourselves, through the status subresource as a kubelet would.
  if (o.podIP) {
    await kube.request('PATCH', `/api/v1/namespaces/${namespace}/pods/${name}/status`, {
      body: { status: { podIP: o.podIP, podIPs: [{ ip: o.podIP }] } },
      patch: 'merge',
    });
  }
  return created.metadata.uid;
}

export async function createStreamPath(kube: KubeTransport, namespace: string, name: string, spec: StreamPathSpecInput): Promise<StreamPathObject> {
  return kube.request<StreamPathObject>('POST', streamPathPath(namespace), { body: { apiVersion: API_VERSION, kind: KIND, metadata: { name }, spec } });
}

export async function getStreamPath(kube: KubeTransport, namespace: string, name: string): Promise<StreamPathObject | undefined> {
  try {
    return await kube.request<StreamPathObject>('GET', streamPathPath(namespace, name));
  } catch (err) {
    if (isStatus(err, 404)) return undefined;
    throw err;
  }
}

export function condition(sp: StreamPathObject | undefined, type: string) {
  return sp?.status?.conditions?.find((c) => c.type === type);
}

export function exampleSpec(app: string, port = 8080): StreamPathSpecInput {
  return { selector: { matchLabels: { app } }, port, mirror: { targets: [{ address: '127.0.0.1:9' }] } };
}
