// Resolves `service: {name, namespace, port}` mirror targets through the API rather than DNS: pods of this
// project may run where cluster DNS is absent, and the API knows the answer exactly. A Service with a
// ClusterIP resolves to ClusterIP:port (kube-proxy balances); a headless one (ClusterIP None) to the first
// ready endpoint behind that port. The agent resolves again on every attach and update, so an address that
// changes is picked up by the next edit or resync.
import type { CoreV1Api, CoreV1EndpointPort, V1Endpoints, V1Service } from '@kubernetes/client-node';
import type { MirrorTarget } from '../../../operator/src/api/streampath.js';
import type { Endpoint } from '../../../native/lib/types.js';
import { formatApiError } from '../../../operator/src/kube/errors.js';
import type { ServiceResolver } from './dataplane.js';

/** The fix for a 403: the pod's ServiceAccount reads Services and Endpoints through the sidecar ClusterRole. */
function readHint(namespace: string): string {
  return (
    `the pod's ServiceAccount needs get on services and endpoints in namespace ${namespace}: label that namespace ` +
    `kstreams.io/inject=enabled so the operator binds the kstreams sidecar ClusterRole there, or create that RoleBinding yourself (docs/agent.md)`
  );
}

/** The slice of CoreV1Api the resolver uses (a fake in unit tests). */
export type ServiceReader = Pick<CoreV1Api, 'readNamespacedService' | 'readNamespacedEndpoints'>;

function httpStatus(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown };
  if (typeof e?.code === 'number') return e.code;
  if (typeof e?.statusCode === 'number') return e.statusCode;
  return undefined;
}

export function serviceResolver(api: ServiceReader, defaultNamespace: string): ServiceResolver {
  return async (target: MirrorTarget): Promise<Endpoint> => {
    const ref = target.service;
    if (!ref) throw new Error('target has no service reference');
    const namespace = ref.namespace ?? defaultNamespace;
    const what = `Service ${namespace}/${ref.name}`;
    let svc: V1Service;
    try {
      svc = await api.readNamespacedService({ name: ref.name, namespace });
    } catch (err) {
      if (httpStatus(err) === 404) throw new Error(`${what} does not exist`);
      throw new Error(formatApiError(err, { verb: 'get', object: what, forbiddenHint: readHint(namespace) }), { cause: err });
    }
    const ports = svc.spec?.ports ?? [];
    const servicePort = ports.find((p) => p.port === ref.port);
    if (!servicePort) {
      const have = ports.map((p) => p.port).join(', ') || 'none';
      throw new Error(`${what} has no port ${ref.port} (it has: ${have})`);
    }
    const clusterIP = svc.spec?.clusterIP;
    if (clusterIP && clusterIP !== 'None') return { host: clusterIP, port: ref.port };
    if (svc.spec?.type === 'ExternalName') {
      throw new Error(`${what} is of type ExternalName; give its external name as address: host:port instead`);
    }

    let endpoints: V1Endpoints;
    try {
      endpoints = await api.readNamespacedEndpoints({ name: ref.name, namespace });
    } catch (err) {
      if (httpStatus(err) === 404) throw new Error(`${what} is headless and has no Endpoints yet`);
      throw new Error(formatApiError(err, { verb: 'get', object: `Endpoints ${namespace}/${ref.name}`, forbiddenHint: readHint(namespace) }), { cause: err });
    }
    // Endpoints name their ports after the Service's; an unnamed single port matches by being alone.
    const matches = (p: CoreV1EndpointPort, all: CoreV1EndpointPort[]) =>
      servicePort.name ? p.name === servicePort.name : all.length === 1;
    for (const subset of endpoints.subsets ?? []) {
      const all = subset.ports ?? [];
      const port = all.find((p) => matches(p, all));
      const address = subset.addresses?.[0];
      if (port && address?.ip) return { host: address.ip, port: port.port };
    }
    throw new Error(`${what} is headless and has no ready endpoint for port ${ref.port}`);
  };
}
