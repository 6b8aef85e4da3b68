// API objects in the form the apiservers and kubelets of 1.20, 1.25, 1.29 and 1.31 return them (trimmed to
// the fields that matter; written after those versions' API reference, not captured from clusters, which
// these machines do not have): what the webhook's version-dependent decisions are unit-tested on.
import { parseServerVersion } from '../patch.js';
import { slimNode } from '../sidecar-mode.js';

/** GET /version. */
export const VERSION = {
  '1.20': { major: '1', minor: '20', gitVersion: 'v1.20.15', platform: 'linux/amd64' },
  '1.25': { major: '1', minor: '25', gitVersion: 'v1.25.16', platform: 'linux/amd64' },
  '1.29': { major: '1', minor: '29+', gitVersion: 'v1.29.10-eks-7f9249a', platform: 'linux/amd64' },
  '1.31': { major: '1', minor: '31', gitVersion: 'v1.31.4', platform: 'linux/amd64' },
};

/** GET /api/v1/nodes/<name>, trimmed. */
export const node = (name: string, kubeletVersion: string, extra: { unschedulable?: boolean } = {}) => ({
  apiVersion: 'v1',
  kind: 'Node',
  metadata: { name, labels: { 'kubernetes.io/hostname': name } },
  spec: { podCIDR: '10.244.0.0/24', ...extra },
  status: {
    nodeInfo: { kubeletVersion, kubeProxyVersion: kubeletVersion, containerRuntimeVersion: 'containerd://1.7.2', operatingSystem: 'linux', architecture: 'amd64' },
    conditions: [{ type: 'Ready', status: 'True' }],
  },
});
export const NODES = {
  '1.20': node('n120', 'v1.20.15'),
  '1.25': node('n125', 'v1.25.16'),
  '1.28': node('n128', 'v1.28.5-eks-5e0fdde'),
  '1.29': node('n129', 'v1.29.10-eks-7f9249a'),
  '1.31': node('n131', 'v1.31.4+k3s1'),
};
export const slim = (...names: (keyof typeof NODES)[]) => names.map((n) => slimNode(NODES[n]));
export const server = (v: keyof typeof VERSION) => parseServerVersion(VERSION[v]);

/** GET /api/v1/namespaces/shop on each version: 1.21+ add kubernetes.io/metadata.name; Pod Security labels from 1.23. */
const namespace = (labels: Record<string, string>, since121 = true) => ({
  apiVersion: 'v1',
  kind: 'Namespace',
  metadata: { name: 'shop', labels: { ...(since121 ? { 'kubernetes.io/metadata.name': 'shop' } : {}), 'kstreams.io/inject': 'enabled', ...labels } },
  spec: { finalizers: ['kubernetes'] },
  status: { phase: 'Active' },
});
export const NAMESPACES = {
  '1.20': namespace({}, false),
  '1.25': namespace({
    'pod-security.kubernetes.io/enforce': 'baseline',
    'pod-security.kubernetes.io/enforce-version': 'v1.25',
    'pod-security.kubernetes.io/warn': 'restricted',
    'pod-security.kubernetes.io/warn-version': 'v1.25',
  }),
  '1.29': namespace({ 'pod-security.kubernetes.io/enforce': 'restricted' }),
  '1.31': namespace({
    'pod-security.kubernetes.io/enforce': 'privileged',
    'pod-security.kubernetes.io/enforce-version': 'latest',
    'pod-security.kubernetes.io/audit': 'baseline',
  }),
};
