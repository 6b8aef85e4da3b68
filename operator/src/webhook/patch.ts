// The pod mutation, as a pure function of (pod, namespace, config, cluster version): no I/O, no clock.
// It is level-triggered: it compares the pod with what an injected pod looks like and emits only the
// missing pieces, so running it again on its own output yields an empty patch.
import {
  AGENT_PORT_ANNOTATION,
  ALWAYS_EXCLUDED_NAMESPACES,
  CAPTURE_DIR_ENV,
  CAPTURE_MOUNT_PATH,
  CAPTURE_VOLUME_NAME,
  INJECT_NAMESPACE_LABEL,
  INJECT_NAMESPACE_VALUE,
  INJECT_POD_LABEL,
  INJECTED_ANNOTATION,
  INJECTED_POD_LABEL,
  INJECTED_POD_LABEL_VALUE,
  SIDECAR_CONTAINER_NAME,
} from '../../../api/src/agent.js';
import type { SidecarConfig, WebhookConfig } from './config.js';
import { feedEnv, feedVolume, feedVolumeMount, type FeedInjection } from './feed-injection.js';

/** Value of the injected annotation: bumped when the shape of the injected sidecar changes. */
export const INJECTOR_VERSION = '1';

export type JsonPatchOp = { op: 'add' | 'replace'; path: string; value: unknown };

export type PatchReason =
  | 'injected'
  | 'already-injected'
  | 'excluded-namespace'
  | 'own-namespace'
  | 'namespace-not-enabled'
  | 'pod-opted-out'
  | 'host-network'
  | 'invalid-pod';

export interface PatchResult {
  patch: JsonPatchOp[];
  reason: PatchReason;
}

export interface NamespaceInfo {
  name: string;
  /**
   * Labels of the namespace when the caller knows them. The webhook server leaves this undefined: the
   * MutatingWebhookConfiguration's namespaceSelector already let only opted-in namespaces through, and
   * reading namespaces on the admission path would add latency and RBAC.
   */
  labels?: Readonly<Record<string, string>>;
}

export interface ServerVersion {
  major: number;
  minor: number;
}

/** Parses a /version answer ({major: "1", minor: "20+"}); undefined when it is not a version. */
export function parseServerVersion(v: { major?: unknown; minor?: unknown } | undefined): ServerVersion | undefined {
  const major = Number.parseInt(String(v?.major ?? ''), 10);
  const minor = Number.parseInt(String(v?.minor ?? ''), 10);
  return Number.isFinite(major) && Number.isFinite(minor) ? { major, minor } : undefined;
}

/** Native sidecars (initContainers with restartPolicy: Always) are on by default from 1.29. */
export function useNativeSidecar(mode: SidecarConfig['nativeSidecar'], version: ServerVersion | undefined): boolean {
  if (mode !== 'auto') return mode === 'always';
  if (!version) return false;
  return version.major > 1 || (version.major === 1 && version.minor >= 29);
}

export function excludedNamespaces(config: Pick<WebhookConfig, 'namespace' | 'excludedNamespaces'>): Set<string> {
  return new Set<string>([...ALWAYS_EXCLUDED_NAMESPACES, config.namespace, ...config.excludedNamespaces]);
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const stringMap = (v: unknown): Record<string, unknown> => (isObj(v) ? v : {});

/** RFC 6901: '~' and '/' inside a key. */
/** JSON patch ops that set `members` in the object at `path` (created whole when `missing`). */
function addMembers(patch: JsonPatchOp[], path: string, missing: boolean, members: Record<string, string>): void {
  if (Object.keys(members).length === 0) return;
  if (missing) patch.push({ op: 'add', path, value: members });
  else for (const [k, v] of Object.entries(members)) patch.push({ op: 'add', path: `${path}/${escapeJsonPointer(k)}`, value: v });
}

export function escapeJsonPointer(key: string): string {
  return key.replace(/~/g, '~0').replace(/\//g, '~1');
}

/** The capture volume of the pod (sidecar.capture), or undefined when disabled. */
export function captureVolume(capture: SidecarConfig['capture']): Obj | undefined {
  if (!capture.enabled) return undefined;
  return capture.claimName !== undefined
    ? { name: CAPTURE_VOLUME_NAME, persistentVolumeClaim: { claimName: capture.claimName } }
    : { name: CAPTURE_VOLUME_NAME, emptyDir: { sizeLimit: capture.sizeLimit } };
}

function hasContainerNamed(list: unknown, name: string): boolean {
  return Array.isArray(list) && list.some((c) => isObj(c) && c.name === name);
}

const AGENT_PORT_NAME = 'kstreams-agent';
/** Honoured by kubectl logs/exec/attach since 1.21 (older kubectl ignores it). */
export const DEFAULT_CONTAINER_ANNOTATION = 'kubectl.kubernetes.io/default-container';

/**
 * The sidecar container. Why these privileges: the agent loads eBPF programs (CAP_BPF) and attaches an
 * sk_lookup program to the pod's network namespace and sets up sockets for splice (CAP_NET_ADMIN). The
 * in-kernel transform program (and a user's program) verifies with these two: no CAP_PERFMON
 * (docs/adr/0007-in-kernel-transforms.md).
 * runAsUser 0 is needed because capabilities granted by the runtime land in the effective set only for
 * uid 0 (a non-root process gets them only as ambient capabilities, which Kubernetes cannot request).
 */
export function sidecarContainer(sidecar: SidecarConfig, native: boolean, feed?: FeedInjection): Obj {
  const port = sidecar.agentPort;
  const httpGet = (path: string) => ({ path, port, scheme: 'HTTP' });
  const fieldEnv = (name: string, fieldPath: string) => ({ name, valueFrom: { fieldRef: { fieldPath } } });
  const securityContext: Obj = sidecar.privileged
    ? { privileged: true, runAsUser: 0, runAsNonRoot: false }
    : {
        privileged: false,
        allowPrivilegeEscalation: false,
        runAsUser: 0,
        runAsNonRoot: false,
        readOnlyRootFilesystem: true,
        capabilities: { add: ['NET_ADMIN', 'BPF'], drop: ['ALL'] },
      };
  const container: Obj = {
    name: SIDECAR_CONTAINER_NAME,
    image: sidecar.image,
    imagePullPolicy: sidecar.imagePullPolicy,
    command: ['kstreams', 'agent'],
    ports: [{ name: AGENT_PORT_NAME, containerPort: port, protocol: 'TCP' }],
    env: [
      fieldEnv('POD_NAME', 'metadata.name'),
      fieldEnv('POD_NAMESPACE', 'metadata.namespace'),
      fieldEnv('POD_UID', 'metadata.uid'),
      fieldEnv('POD_IP', 'status.podIP'),
      { name: 'KSTREAMS_AGENT_PORT', value: String(port) },
      ...(feed ? feedEnv(feed) : []),
      ...(sidecar.capture.enabled ? [{ name: CAPTURE_DIR_ENV, value: CAPTURE_MOUNT_PATH }] : []),
    ],
    ...(feed || sidecar.capture.enabled
      ? {
          volumeMounts: [
            ...(feed ? [feedVolumeMount] : []),
            ...(sidecar.capture.enabled ? [{ name: CAPTURE_VOLUME_NAME, mountPath: CAPTURE_MOUNT_PATH }] : []),
          ],
        }
      : {}),
    resources: structuredClone(sidecar.resources),
    securityContext,
    readinessProbe: { httpGet: httpGet('/readyz'), periodSeconds: 2, failureThreshold: 3, timeoutSeconds: 1 },
    livenessProbe: { httpGet: httpGet('/healthz'), periodSeconds: 10, failureThreshold: 3, timeoutSeconds: 2 },
  };
  if (native) {
    container.restartPolicy = 'Always';
    // The kubelet starts the next (init or app) container only once a native sidecar's startupProbe passes.
    if (sidecar.holdApplicationUntilAttached) {
      container.startupProbe = {
        httpGet: httpGet('/readyz'),
        periodSeconds: 1,
        failureThreshold: sidecar.attachTimeoutSeconds,
        timeoutSeconds: 1,
      };
    }
  } else if (sidecar.holdApplicationUntilAttached) {
    // Before native sidecars: the kubelet starts containers in order and runs a postStart hook to
    // completion before starting the next container, so a hook that waits for /readyz holds the app.
    container.lifecycle = {
      postStart: {
        exec: {
          command: ['kstreams', 'agent', 'wait', '--port', String(port), '--timeout-seconds', String(sidecar.attachTimeoutSeconds)],
        },
      },
    };
  }
  return container;
}

/**
 * JSON patch that injects the sidecar into `pod` (an untrusted object from an AdmissionReview), or no
 * patch with the reason why not. Never throws.
 */
export function computePodPatch(
  pod: unknown,
  namespace: NamespaceInfo,
  config: Pick<WebhookConfig, 'namespace' | 'excludedNamespaces' | 'sidecar'>,
  serverVersion?: ServerVersion,
  feed?: FeedInjection,
): PatchResult {
  const none = (reason: PatchReason): PatchResult => ({ patch: [], reason });
  if (ALWAYS_EXCLUDED_NAMESPACES.includes(namespace.name as (typeof ALWAYS_EXCLUDED_NAMESPACES)[number]))
    return none('excluded-namespace');
  if (namespace.name === config.namespace) return none('own-namespace');
  if (config.excludedNamespaces.includes(namespace.name)) return none('excluded-namespace');
  if (namespace.labels && namespace.labels[INJECT_NAMESPACE_LABEL] !== INJECT_NAMESPACE_VALUE)
    return none('namespace-not-enabled');
  if (!isObj(pod) || !isObj(pod.spec) || (pod.metadata !== undefined && !isObj(pod.metadata))) return none('invalid-pod');
  const metadata = stringMap(pod.metadata);
  const spec = pod.spec;
  if (stringMap(metadata.labels)[INJECT_POD_LABEL] === 'false') return none('pod-opted-out');
  // With hostNetwork the agent would attach to the node's network namespace: never.
  if (spec.hostNetwork === true) return none('host-network');
  if (metadata.annotations !== undefined && !isObj(metadata.annotations)) return none('invalid-pod');
  if (metadata.labels !== undefined && !isObj(metadata.labels)) return none('invalid-pod');
  if (spec.containers !== undefined && !Array.isArray(spec.containers)) return none('invalid-pod');
  if (spec.initContainers !== undefined && !Array.isArray(spec.initContainers)) return none('invalid-pod');

  const native = useNativeSidecar(config.sidecar.nativeSidecar, serverVersion);
  const patch: JsonPatchOp[] = [];
  const present =
    hasContainerNamed(spec.containers, SIDECAR_CONTAINER_NAME) || hasContainerNamed(spec.initContainers, SIDECAR_CONTAINER_NAME);
  if (!present) {
    const sidecar = sidecarContainer(config.sidecar, native, feed);
    const capture = captureVolume(config.sidecar.capture);
    const volumes: Obj[] = [...(feed ? [feedVolume] : []), ...(capture ? [capture] : [])];
    if (volumes.length && spec.volumes !== undefined && !Array.isArray(spec.volumes)) return none('invalid-pod');
    // A pod that already has a volume of our name (its own capture volume, given by hand) keeps it.
    const own = new Set(Array.isArray(spec.volumes) ? spec.volumes.filter(isObj).map((v) => v.name) : []);
    const added = volumes.filter((v) => !own.has(v.name));
    if (spec.volumes === undefined) {
      if (added.length) patch.push({ op: 'add', path: '/spec/volumes', value: added });
    } else {
      for (const v of added) patch.push({ op: 'add', path: '/spec/volumes/-', value: v });
    }
    if (native) {
      // First, so that later init containers and the app start after the data plane is attached.
      if (spec.initContainers === undefined) patch.push({ op: 'add', path: '/spec/initContainers', value: [sidecar] });
      else patch.push({ op: 'add', path: '/spec/initContainers/0', value: sidecar });
    } else if (spec.containers === undefined) {
      patch.push({ op: 'add', path: '/spec/containers', value: [sidecar] });
    } else if (config.sidecar.holdApplicationUntilAttached) {
      // First: the kubelet starts containers in list order (the postStart wait holds the ones after it).
      patch.push({ op: 'add', path: '/spec/containers/0', value: sidecar });
    } else {
      patch.push({ op: 'add', path: '/spec/containers/-', value: sidecar });
    }
  }

  // Annotations: set ours where missing or different. An existing sidecar keeps its own port annotation
  // only if one is there; a pod injected by an older injector keeps its injected version.
  const annotations = stringMap(metadata.annotations);
  const wanted: Record<string, string> = {};
  if (typeof annotations[INJECTED_ANNOTATION] !== 'string') wanted[INJECTED_ANNOTATION] = INJECTOR_VERSION;
  if (typeof annotations[AGENT_PORT_ANNOTATION] !== 'string')
    wanted[AGENT_PORT_ANNOTATION] = String(config.sidecar.agentPort);
  // With the sidecar first in containers, kubectl logs/exec would pick it by default: point them at the app.
  if (!present && !native && config.sidecar.holdApplicationUntilAttached && Array.isArray(spec.containers)) {
    const app = spec.containers.find((c): c is Obj => isObj(c) && typeof c.name === 'string' && c.name !== '');
    if (app && typeof annotations[DEFAULT_CONTAINER_ANNOTATION] !== 'string') wanted[DEFAULT_CONTAINER_ANNOTATION] = app.name as string;
  }
  // The label that lets monitoring select injected pods (a PodMonitor's selector), set where missing.
  const wantedLabels: Record<string, string> = {};
  if (stringMap(metadata.labels)[INJECTED_POD_LABEL] !== INJECTED_POD_LABEL_VALUE) wantedLabels[INJECTED_POD_LABEL] = INJECTED_POD_LABEL_VALUE;
  if (pod.metadata === undefined) {
    const value: Record<string, Record<string, string>> = {};
    if (Object.keys(wanted).length > 0) value.annotations = wanted;
    if (Object.keys(wantedLabels).length > 0) value.labels = wantedLabels;
    if (Object.keys(value).length > 0) patch.push({ op: 'add', path: '/metadata', value });
  } else {
    addMembers(patch, '/metadata/annotations', metadata.annotations === undefined, wanted);
    addMembers(patch, '/metadata/labels', metadata.labels === undefined, wantedLabels);
  }
  if (patch.length === 0) return none('already-injected');
  return { patch, reason: present ? 'already-injected' : 'injected' };
}
