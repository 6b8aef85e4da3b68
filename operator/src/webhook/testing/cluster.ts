// Helpers for webhook tests and benchmarks against a real apiserver that has no controller-manager:
// fresh namespaces (deleted ones never finish terminating), an explicit `default` ServiceAccount, and pods
// that mount no token (no token controller either).
import { randomBytes } from 'node:crypto';
import type { CoreV1Api, V1Pod } from '@kubernetes/client-node';
import { INJECT_NAMESPACE_LABEL, INJECT_NAMESPACE_VALUE, SIDECAR_CONTAINER_NAME } from '../../../../api/src/agent.js';

export const freshName = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

export async function createNamespace(core: CoreV1Api, prefix: string, opts: { inject?: boolean } = {}): Promise<string> {
  const name = freshName(prefix);
  const labels: Record<string, string> = opts.inject ? { [INJECT_NAMESPACE_LABEL]: INJECT_NAMESPACE_VALUE } : {};
  await core.createNamespace({ body: { metadata: { name, labels } } });
  await core.createNamespacedServiceAccount({ namespace: name, body: { metadata: { name: 'default' } } });
  return name;
}

export function podBody(name: string, labels: Record<string, string> = {}, serviceAccountName = 'default'): V1Pod {
  return {
    metadata: { name, labels: { app: 'checkout', ...labels } },
    spec: {
      automountServiceAccountToken: false,
      serviceAccountName,
      containers: [{ name: 'app', image: 'busybox', imagePullPolicy: 'Never', command: ['httpd', '-f'] }],
    },
  };
}

export function sidecarIndex(pod: V1Pod): number {
  return pod.spec?.containers.findIndex((c) => c.name === SIDECAR_CONTAINER_NAME) ?? -1;
}

export function isInjected(pod: V1Pod): boolean {
  return sidecarIndex(pod) >= 0 || (pod.spec?.initContainers ?? []).some((c) => c.name === SIDECAR_CONTAINER_NAME);
}

export async function bestEffort(fn: () => Promise<unknown>): Promise<void> {
  try {
    await fn();
  } catch {
    // cleanup: the object may already be gone
  }
}
