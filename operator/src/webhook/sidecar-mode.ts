// Native sidecar (an init container with restartPolicy: Always) or classic sidecar (a regular container),
// decided per pod. What matters is the kubelet that will run the pod: a kubelet without the
// SidecarContainers feature (off before 1.29) runs a native sidecar as a plain init container that never
// exits, and the pod stays in Init forever. At admission the pod is not scheduled yet, so unless it names
// its node (spec.nodeName), every schedulable node must run a kubelet >= 1.29: in a cluster half-way
// through an upgrade pods get the classic sidecar until the last old node is upgraded or cordoned.
// Pure: the webhook passes what its node cache holds.
import type { SidecarConfig } from './config.js';
import { useNativeSidecar, type ServerVersion } from './patch.js';

/** What the webhook keeps of a Node. */
export interface SlimNode {
  name: string;
  /** status.nodeInfo.kubeletVersion parsed; undefined when absent or unparsable. */
  kubelet?: ServerVersion;
  /** The raw version string, for logs and messages. */
  kubeletVersion?: string;
  /** spec.unschedulable (cordoned): the scheduler places no new pod there. */
  unschedulable?: boolean;
}

/** "v1.29.3", "v1.28.5-eks-5e0fdde", "1.31.0+k3s1" -> {1, 29}; undefined for anything else. */
export function parseKubeletVersion(v: unknown): ServerVersion | undefined {
  const m = typeof v === 'string' ? /^v?(\d+)\.(\d+)(?:\.|$|[-+])/.exec(v) : null;
  return m ? { major: Number(m[1]), minor: Number(m[2]) } : undefined;
}

export function slimNode(raw: Record<string, unknown>): SlimNode {
  const meta = (raw.metadata ?? {}) as { name?: string };
  const spec = (raw.spec ?? {}) as { unschedulable?: boolean };
  const info = ((raw.status ?? {}) as { nodeInfo?: { kubeletVersion?: unknown } }).nodeInfo ?? {};
  const node: SlimNode = { name: meta.name ?? '' };
  const kubelet = parseKubeletVersion(info.kubeletVersion);
  if (kubelet) node.kubelet = kubelet;
  if (typeof info.kubeletVersion === 'string') node.kubeletVersion = info.kubeletVersion;
  if (spec.unschedulable === true) node.unschedulable = true;
  return node;
}

export function sameSlimNode(a: SlimNode, b: SlimNode): boolean {
  return a.name === b.name && a.kubeletVersion === b.kubeletVersion && Boolean(a.unschedulable) === Boolean(b.unschedulable);
}

const supportsNative = (v: ServerVersion) => useNativeSidecar('auto', v);

export interface SidecarModeDecision {
  native: boolean;
  /** For logs: why this mode. */
  why: string;
}

/**
 * `nodes` undefined: not known (no node cache, or it has not synced, or may not list nodes); the
 * apiserver's version then decides alone, as before nodes were looked at.
 */
export function chooseSidecarMode(
  mode: SidecarConfig['nativeSidecar'],
  server: ServerVersion | undefined,
  nodes: Iterable<SlimNode> | undefined,
  nodeName?: string,
): SidecarModeDecision {
  if (mode === 'always') return { native: true, why: 'sidecar.nativeSidecar=always' };
  if (mode === 'never') return { native: false, why: 'sidecar.nativeSidecar=never' };
  if (!server) return { native: false, why: 'apiserver version unknown' };
  if (!supportsNative(server)) return { native: false, why: `apiserver ${server.major}.${server.minor} < 1.29` };
  if (nodes === undefined) return { native: true, why: `apiserver ${server.major}.${server.minor} >= 1.29, node versions unknown` };
  const all = [...nodes];
  if (nodeName) {
    const node = all.find((n) => n.name === nodeName);
    if (node?.kubelet) {
      return supportsNative(node.kubelet)
        ? { native: true, why: `pod bound to node ${nodeName} (kubelet ${node.kubeletVersion})` }
        : { native: false, why: `pod bound to node ${nodeName}, kubelet ${node.kubeletVersion} < 1.29` };
    }
  }
  // A node whose version cannot be read is taken as old: a classic sidecar works on every kubelet.
  const old = all.filter((n) => !n.unschedulable && !(n.kubelet && supportsNative(n.kubelet)));
  if (old.length === 0) return { native: true, why: `apiserver and every schedulable node (${all.length}) >= 1.29` };
  const first = old[0]!;
  return { native: false, why: `node ${first.name} runs kubelet ${first.kubeletVersion ?? '(unknown)'} < 1.29${old.length > 1 ? ` (and ${old.length - 1} more)` : ''}` };
}
