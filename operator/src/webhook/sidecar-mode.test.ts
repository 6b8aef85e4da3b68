// Native or classic sidecar, on /version answers and Node objects in the form the apiservers and kubelets of
// 1.20, 1.25, 1.29 and 1.31 return them (trimmed to the fields that matter). The integration cluster is 1.20,
// which has no native sidecars, so the native path is decided here and the patch it yields is checked on
// its own (patch.test.ts); docs/e2e.md says so.
import { KubeConfig } from '@kubernetes/client-node';
import { request } from 'node:https';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SIDECAR_CONTAINER_NAME } from '../api/agent.js';
import { WebhookConfigSchema } from './config.js';
import { parseServerVersion } from './patch.js';
import { startWebhook, type RunningWebhook } from './server.js';
import { chooseSidecarMode, parseKubeletVersion, sameSlimNode, slimNode, type SlimNode } from './sidecar-mode.js';
import { StaticTls } from './testing/static-tls.js';

/** GET /version. */
const VERSION = {
  '1.20': { major: '1', minor: '20', gitVersion: 'v1.20.15', platform: 'linux/amd64' },
  '1.25': { major: '1', minor: '25', gitVersion: 'v1.25.16', platform: 'linux/amd64' },
  '1.29': { major: '1', minor: '29+', gitVersion: 'v1.29.10-eks-7f9249a', platform: 'linux/amd64' },
  '1.31': { major: '1', minor: '31', gitVersion: 'v1.31.4', platform: 'linux/amd64' },
};

/** GET /api/v1/nodes/<name>, trimmed. */
const node = (name: string, kubeletVersion: string, extra: { unschedulable?: boolean } = {}) => ({
  apiVersion: 'v1',
  kind: 'Node',
  metadata: { name, labels: { 'kubernetes.io/hostname': name } },
  spec: { podCIDR: '10.244.0.0/24', ...extra },
  status: {
    nodeInfo: { kubeletVersion, kubeProxyVersion: kubeletVersion, containerRuntimeVersion: 'containerd://1.7.2', operatingSystem: 'linux', architecture: 'amd64' },
    conditions: [{ type: 'Ready', status: 'True' }],
  },
});
const NODES = {
  '1.20': node('n120', 'v1.20.15'),
  '1.25': node('n125', 'v1.25.16'),
  '1.28': node('n128', 'v1.28.5-eks-5e0fdde'),
  '1.29': node('n129', 'v1.29.10-eks-7f9249a'),
  '1.31': node('n131', 'v1.31.4+k3s1'),
};
const slim = (...names: (keyof typeof NODES)[]) => names.map((n) => slimNode(NODES[n]));
const server = (v: keyof typeof VERSION) => parseServerVersion(VERSION[v]);

describe('parsing', () => {
  it('reads /version answers and kubelet versions of every vendor suffix', () => {
    expect(server('1.29')).toEqual({ major: 1, minor: 29 });
    expect(parseKubeletVersion('v1.28.5-eks-5e0fdde')).toEqual({ major: 1, minor: 28 });
    expect(parseKubeletVersion('v1.31.4+k3s1')).toEqual({ major: 1, minor: 31 });
    expect(parseKubeletVersion('1.30.0')).toEqual({ major: 1, minor: 30 });
    for (const bad of ['', 'latest', 'v1', 'v1.x.0', 42, undefined]) expect(parseKubeletVersion(bad)).toBeUndefined();
    expect(slimNode(NODES['1.29'])).toEqual({ name: 'n129', kubelet: { major: 1, minor: 29 }, kubeletVersion: 'v1.29.10-eks-7f9249a' });
    expect(slimNode(node('c', 'v1.29.1', { unschedulable: true })).unschedulable).toBe(true);
    // A heartbeat that changes nothing the decision reads is no update.
    expect(sameSlimNode(slimNode(NODES['1.29']), slimNode({ ...NODES['1.29'], status: { ...NODES['1.29'].status, conditions: [] } }))).toBe(true);
  });
});

describe('chooseSidecarMode', () => {
  it('1.20 and 1.25 apiservers: classic, whatever the nodes say', () => {
    expect(chooseSidecarMode('auto', server('1.20'), slim('1.20'))).toMatchObject({ native: false, why: 'apiserver 1.20 < 1.29' });
    expect(chooseSidecarMode('auto', server('1.25'), slim('1.25'))).toMatchObject({ native: false });
  });

  it('1.29 and 1.31 with every node up to date: native', () => {
    expect(chooseSidecarMode('auto', server('1.29'), slim('1.29'))).toMatchObject({ native: true });
    expect(chooseSidecarMode('auto', server('1.31'), slim('1.29', '1.31'))).toMatchObject({ native: true, why: 'apiserver and every schedulable node (2) >= 1.29' });
  });

  it('mid-upgrade (control plane 1.31, one node still 1.28): classic for unbound pods, per node for bound ones', () => {
    const nodes = slim('1.31', '1.28', '1.29');
    expect(chooseSidecarMode('auto', server('1.31'), nodes)).toEqual({ native: false, why: 'node n128 runs kubelet v1.28.5-eks-5e0fdde < 1.29' });
    expect(chooseSidecarMode('auto', server('1.31'), nodes, 'n131')).toMatchObject({ native: true });
    expect(chooseSidecarMode('auto', server('1.31'), nodes, 'n128')).toMatchObject({ native: false });
    // A bound pod on a node not in the cache is judged like an unbound one.
    expect(chooseSidecarMode('auto', server('1.31'), nodes, 'gone')).toMatchObject({ native: false });
  });

  it('a cordoned old node (being drained for its upgrade) gets no new pods: it does not hold the others back', () => {
    const nodes = [slimNode(node('old', 'v1.28.5', { unschedulable: true })), ...slim('1.29')];
    expect(chooseSidecarMode('auto', server('1.29'), nodes)).toMatchObject({ native: true });
  });

  it('a node whose kubelet version cannot be read counts as old; unknown nodes leave it to the apiserver', () => {
    expect(chooseSidecarMode('auto', server('1.31'), [{ name: 'odd', kubeletVersion: 'v-next' }, ...slim('1.31')])).toMatchObject({ native: false });
    expect(chooseSidecarMode('auto', server('1.31'), undefined)).toMatchObject({ native: true, why: 'apiserver 1.31 >= 1.29, node versions unknown' });
    expect(chooseSidecarMode('auto', undefined, slim('1.31'))).toMatchObject({ native: false });
  });

  it('always and never win over every version', () => {
    expect(chooseSidecarMode('always', server('1.20'), slim('1.20'))).toMatchObject({ native: true });
    expect(chooseSidecarMode('never', server('1.31'), slim('1.31'))).toMatchObject({ native: false });
  });
});

describe('the webhook server decides per pod from its node cache', () => {
  let tls: StaticTls;
  let hook: RunningWebhook;
  const nodes: { synced: boolean; items: SlimNode[]; list(): SlimNode[] } = { synced: true, items: slim('1.31', '1.28'), list: () => nodes.items };

  beforeAll(async () => {
    tls = await StaticTls.create();
    hook = await startWebhook({
      config: WebhookConfigSchema.parse({ port: 0, host: '127.0.0.1' }),
      kube: new KubeConfig(),
      logger: pino({ level: 'silent' }),
      registry: new Registry(),
      serverVersion: VERSION['1.31'],
      tlsSource: tls,
      nodes,
    });
  });
  afterAll(async () => {
    await hook?.close();
  });

  type Container = { name?: string; restartPolicy?: string };
  const admit = (spec: Record<string, unknown>) =>
    new Promise<{ op: string; path: string; value: Container | Container[] }[]>((resolve, reject) => {
      const body = JSON.stringify({
        apiVersion: 'admission.k8s.io/v1',
        kind: 'AdmissionReview',
        request: {
          uid: 'u',
          kind: { group: '', version: 'v1', kind: 'Pod' },
          resource: { group: '', version: 'v1', resource: 'pods' },
          operation: 'CREATE',
          namespace: 'shop',
          object: { metadata: { name: 'p' }, spec: { containers: [{ name: 'app', image: 'x' }], ...spec } },
        },
      });
      const req = request({ host: '127.0.0.1', port: hook.port, path: '/mutate-pods', method: 'POST', ca: tls.caPem, agent: false, headers: { 'content-type': 'application/json' } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve(JSON.parse(Buffer.from(JSON.parse(Buffer.concat(chunks).toString()).response.patch, 'base64').toString())));
      });
      req.on('error', reject);
      req.end(body);
    });
  /** The op that adds the sidecar (to containers or initContainers; the app has no init containers). */
  const sidecarOp = (ops: Awaited<ReturnType<typeof admit>>) => {
    const op = ops.find((o) => o.path.startsWith('/spec/containers') || o.path.startsWith('/spec/initContainers'));
    const container = Array.isArray(op?.value) ? op.value[0] : op?.value;
    expect(container?.name).toBe(SIDECAR_CONTAINER_NAME);
    return op;
  };

  it('a 1.28 node in the cache: classic container; bound to the 1.31 node: native init container; the old node gone: native', async () => {
    expect(sidecarOp(await admit({}))?.path).toBe('/spec/containers/0');
    const bound = sidecarOp(await admit({ nodeName: 'n131' }));
    expect(bound?.path).toBe('/spec/initContainers');
    expect((bound?.value as Container[])[0]!.restartPolicy).toBe('Always');
    nodes.items = slim('1.31');
    expect(sidecarOp(await admit({}))?.path).toBe('/spec/initContainers');
    // Not synced yet: the apiserver's 1.31 decides.
    nodes.items = slim('1.28');
    nodes.synced = false;
    expect(sidecarOp(await admit({}))?.path).toBe('/spec/initContainers');
  });
});
