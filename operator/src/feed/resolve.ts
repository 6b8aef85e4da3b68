// What the operator resolves for the agents, as pure functions of its caches: `service:` mirror targets
// (a ClusterIP Service to ClusterIP:port, a headless one to its first ready endpoint for that port, as the
// agents did before through the API) and the ConfigMaps holding transform programs.
import type { ResolvedService } from '../../../api/src/feed.js';

export interface SlimService {
  namespace: string;
  name: string;
  type?: string;
  clusterIP?: string;
  ports: { name?: string; port: number }[];
}

export interface SlimEndpoints {
  namespace: string;
  name: string;
  subsets: { addresses: string[]; ports: { name?: string; port: number }[] }[];
}

type Raw = Record<string, unknown>;
const obj = (v: unknown): Raw => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Raw) : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

function ports(v: unknown): { name?: string; port: number }[] {
  return arr(v).flatMap((p) => {
    const o = obj(p);
    if (typeof o.port !== 'number') return [];
    const name = str(o.name);
    return [{ ...(name ? { name } : {}), port: o.port }];
  });
}

export function slimService(raw: Raw): SlimService {
  const m = obj(raw.metadata);
  const s = obj(raw.spec);
  const type = str(s.type);
  const clusterIP = str(s.clusterIP);
  return {
    namespace: str(m.namespace) ?? '',
    name: str(m.name) ?? '',
    ...(type ? { type } : {}),
    ...(clusterIP ? { clusterIP } : {}),
    ports: ports(s.ports),
  };
}

export function slimEndpoints(raw: Raw): SlimEndpoints {
  const m = obj(raw.metadata);
  return {
    namespace: str(m.namespace) ?? '',
    name: str(m.name) ?? '',
    subsets: arr(raw.subsets).map((x) => {
      const sub = obj(x);
      return {
        addresses: arr(sub.addresses).flatMap((a) => (str(obj(a).ip) ? [str(obj(a).ip)!] : [])),
        ports: ports(sub.ports),
      };
    }),
  };
}

export function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Resolves one `service: {name, namespace, port}` target from the caches, with the message the agent reports when it cannot. */
export function resolveService(
  ref: { namespace: string; name: string; port: number },
  service: SlimService | undefined,
  endpoints: SlimEndpoints | undefined,
): ResolvedService {
  const what = `Service ${ref.namespace}/${ref.name}`;
  if (!service) return { error: `${what} does not exist` };
  const servicePort = service.ports.find((p) => p.port === ref.port);
  if (!servicePort) {
    const have = service.ports.map((p) => p.port).join(', ') || 'none';
    return { error: `${what} has no port ${ref.port} (it has: ${have})` };
  }
  if (service.type === 'ExternalName') {
    return { error: `${what} is of type ExternalName; give its external name as address: host:port instead` };
  }
  if (service.clusterIP && service.clusterIP !== 'None') return { host: service.clusterIP, port: ref.port };
  if (!endpoints) return { error: `${what} is headless and has no Endpoints yet` };
  // Endpoints name their ports after the Service's; an unnamed single port matches by being alone.
  for (const subset of endpoints.subsets) {
    const port = subset.ports.find((p) => (servicePort.name ? p.name === servicePort.name : subset.ports.length === 1));
    const address = subset.addresses[0];
    if (port && address) return { host: address, port: port.port };
  }
  return { error: `${what} is headless and has no ready endpoint for port ${ref.port}` };
}
