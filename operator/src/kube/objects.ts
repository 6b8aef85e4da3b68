// What the operator keeps of Pods and Namespaces, and label selector matching.
import { AGENT_PORT_ANNOTATION, DEFAULT_AGENT_PORT, INJECT_NAMESPACE_LABEL, INJECT_NAMESPACE_VALUE, INJECT_POD_LABEL, INJECTED_ANNOTATION } from '../../../api/src/agent.js';
import type { LabelSelector } from '../../../api/src/streampath.js';

/** A pod as the operator needs it: a few hundred bytes instead of the full object. */
export interface SlimPod {
  namespace: string;
  name: string;
  uid: string;
  labels: Record<string, string>;
  podIP?: string;
  /** Carries the webhook's injected annotation (so runs the agent sidecar). */
  injected: boolean;
  agentPort: number;
  /** Opted out by the pod label kstreams.io/inject=false. */
  optedOut: boolean;
  deleting: boolean;
  /** phase Succeeded or Failed: its containers have ended for good (a Job's pod, an evicted pod) and its
   *  agent with them. Such a pod is neither selected, nor polled, nor waited on to detach. */
  terminated?: boolean;
  /** What bounds its agent's drain at shutdown (sent to the agent on the feed). */
  termination?: PodTermination;
  /** spec.serviceAccountName: an agent's token must be of this ServiceAccount (immutable in a pod). */
  serviceAccount?: string;
}

export interface PodTermination {
  deletionTimestamp?: string;
  deletionGracePeriodSeconds?: number;
  terminationGracePeriodSeconds?: number;
}

export interface SlimNamespace {
  name: string;
  labels: Record<string, string>;
  /** deletionTimestamp set: nothing new can be created in it. */
  deleting?: boolean;
}

interface RawMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  deletionTimestamp?: string;
  deletionGracePeriodSeconds?: number;
}

export function slimPod(raw: Record<string, unknown>): SlimPod {
  const meta = (raw.metadata ?? {}) as RawMeta;
  const status = (raw.status ?? {}) as { podIP?: string; phase?: string };
  const annotations = meta.annotations ?? {};
  const labels = meta.labels ?? {};
  const port = Number(annotations[AGENT_PORT_ANNOTATION]);
  const pod: SlimPod = {
    namespace: meta.namespace ?? '',
    name: meta.name ?? '',
    uid: meta.uid ?? '',
    labels,
    injected: annotations[INJECTED_ANNOTATION] !== undefined,
    agentPort: Number.isInteger(port) && port > 0 && port < 65536 ? port : DEFAULT_AGENT_PORT,
    optedOut: labels[INJECT_POD_LABEL] === 'false',
    deleting: meta.deletionTimestamp !== undefined,
  };
  if (status.podIP) pod.podIP = status.podIP;
  const spec = (raw.spec ?? {}) as { terminationGracePeriodSeconds?: unknown; serviceAccountName?: unknown };
  if (typeof spec.serviceAccountName === 'string' && spec.serviceAccountName) pod.serviceAccount = spec.serviceAccountName;
  const grace = spec.terminationGracePeriodSeconds;
  const termination: PodTermination = {
    ...(meta.deletionTimestamp !== undefined ? { deletionTimestamp: meta.deletionTimestamp } : {}),
    ...(typeof meta.deletionGracePeriodSeconds === 'number' ? { deletionGracePeriodSeconds: meta.deletionGracePeriodSeconds } : {}),
    ...(typeof grace === 'number' ? { terminationGracePeriodSeconds: grace } : {}),
  };
  if (Object.keys(termination).length > 0) pod.termination = termination;
  if (status.phase === 'Succeeded' || status.phase === 'Failed') pod.terminated = true;
  return pod;
}

export function slimNamespace(raw: Record<string, unknown>): SlimNamespace {
  const meta = (raw.metadata ?? {}) as RawMeta;
  const ns: SlimNamespace = { name: meta.name ?? '', labels: meta.labels ?? {} };
  if (meta.deletionTimestamp !== undefined) ns.deleting = true;
  return ns;
}

export function podKey(p: { namespace: string; name: string }): string {
  return `${p.namespace}/${p.name}`;
}

export function sameSlimPod(a: SlimPod, b: SlimPod): boolean {
  return (
    a.uid === b.uid &&
    a.podIP === b.podIP &&
    a.injected === b.injected &&
    a.agentPort === b.agentPort &&
    a.optedOut === b.optedOut &&
    a.deleting === b.deleting &&
    a.serviceAccount === b.serviceAccount &&
    Boolean(a.terminated) === Boolean(b.terminated) &&
    sameLabels(a.labels, b.labels)
  );
}

export function sameSlimNamespace(a: SlimNamespace, b: SlimNamespace): boolean {
  return Boolean(a.deleting) === Boolean(b.deleting) && sameLabels(a.labels, b.labels);
}

export function sameLabels(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => a[k] === b[k]);
}

export function namespaceInjectionEnabled(ns: SlimNamespace | undefined): boolean {
  return ns?.labels[INJECT_NAMESPACE_LABEL] === INJECT_NAMESPACE_VALUE;
}

/** Kubernetes label selector semantics, except that an empty selector selects nothing (see the API docs). */
export function selectorMatches(selector: LabelSelector | undefined, labels: Record<string, string>): boolean {
  if (!selector) return false;
  const ml = Object.entries(selector.matchLabels ?? {});
  const me = selector.matchExpressions ?? [];
  if (ml.length === 0 && me.length === 0) return false;
  for (const [k, v] of ml) if (labels[k] !== v) return false;
  for (const e of me) {
    const has = Object.prototype.hasOwnProperty.call(labels, e.key);
    const v = labels[e.key];
    switch (e.operator) {
      case 'In':
        if (!has || !(e.values ?? []).includes(v!)) return false;
        break;
      case 'NotIn':
        if (has && (e.values ?? []).includes(v!)) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
    }
  }
  return true;
}
