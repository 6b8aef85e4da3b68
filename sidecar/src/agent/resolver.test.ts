import { ApiException, type V1Endpoints, type V1Service } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { serviceResolver, type ServiceReader } from './resolver.js';

function fakeApi(services: Record<string, V1Service>, endpoints: Record<string, V1Endpoints> = {}): ServiceReader & { reads: string[] } {
  const reads: string[] = [];
  const notFound = () => new ApiException(404, 'Not Found', '{}', {});
  return {
    reads,
    readNamespacedService: (async ({ name, namespace }: { name: string; namespace: string }) => {
      reads.push(`svc ${namespace}/${name}`);
      const s = services[`${namespace}/${name}`];
      if (!s) throw notFound();
      return s;
    }) as ServiceReader['readNamespacedService'],
    readNamespacedEndpoints: (async ({ name, namespace }: { name: string; namespace: string }) => {
      reads.push(`ep ${namespace}/${name}`);
      const e = endpoints[`${namespace}/${name}`];
      if (!e) throw notFound();
      return e;
    }) as ServiceReader['readNamespacedEndpoints'],
  };
}

describe('serviceResolver', () => {
  const clusterIp: V1Service = { spec: { clusterIP: '10.96.0.10', ports: [{ port: 8080 }, { port: 9090 }] } };
  const headless: V1Service = { spec: { clusterIP: 'None', ports: [{ name: 'web', port: 8080, targetPort: 80 }, { name: 'admin', port: 9000 }] } };

  it('uses the StreamPath namespace when the reference names none', async () => {
    const api = fakeApi({ 'shop/staging': clusterIp });
    expect(await serviceResolver(api, 'shop')({ service: { name: 'staging', port: 9090 } })).toEqual({ host: '10.96.0.10', port: 9090 });
    expect(api.reads).toEqual(['svc shop/staging']);
  });

  it('refuses a port the Service does not have, listing the ones it has', async () => {
    const api = fakeApi({ 'shop/staging': clusterIp });
    await expect(serviceResolver(api, 'shop')({ service: { name: 'staging', port: 1 } })).rejects.toThrow(
      'Service shop/staging has no port 1 (it has: 8080, 9090)',
    );
  });

  it('picks the endpoint port named like the Service port for a headless Service', async () => {
    const api = fakeApi(
      { 'stage/db': headless },
      {
        'stage/db': {
          subsets: [
            { addresses: [], ports: [{ name: 'web', port: 80 }] },
            { addresses: [{ ip: '10.1.0.5' }, { ip: '10.1.0.6' }], ports: [{ name: 'admin', port: 9000 }, { name: 'web', port: 80 }] },
          ],
        },
      },
    );
    expect(await serviceResolver(api, 'shop')({ service: { name: 'db', namespace: 'stage', port: 8080 } })).toEqual({ host: '10.1.0.5', port: 80 });
  });

  it('says so when a headless Service has no ready endpoint', async () => {
    const api = fakeApi({ 'shop/db': headless }, { 'shop/db': { subsets: [{ notReadyAddresses: [{ ip: '10.1.0.5' }], ports: [{ name: 'web', port: 80 }] }] } });
    await expect(serviceResolver(api, 'shop')({ service: { name: 'db', port: 8080 } })).rejects.toThrow(/headless and has no ready endpoint for port 8080/);
    const none = fakeApi({ 'shop/db': headless });
    await expect(serviceResolver(none, 'shop')({ service: { name: 'db', port: 8080 } })).rejects.toThrow(/headless and has no Endpoints yet/);
  });

  it('refuses ExternalName Services with what to do instead', async () => {
    const api = fakeApi({ 'shop/ext': { spec: { type: 'ExternalName', externalName: 'x.example', ports: [{ port: 80 }] } } });
    await expect(serviceResolver(api, 'shop')({ service: { name: 'ext', port: 80 } })).rejects.toThrow(/ExternalName; give its external name as address/);
  });
});

describe('serviceResolver errors', () => {
  // client-node 1.4's ApiException as the apiserver answers a missing RoleBinding (recorded shape).
  const forbidden = () =>
    new ApiException(
      403,
      'Unknown API Status Code!',
      '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"services \\"staging\\" is forbidden: User \\"system:serviceaccount:shop:default\\" cannot get resource \\"services\\" in API group \\"\\" in the namespace \\"shop\\"","reason":"Forbidden","details":{"name":"staging","kind":"services"},"code":403}\n',
      { 'content-type': 'application/json' },
    );
  const failing = (err: () => unknown): ServiceReader => ({
    readNamespacedService: (async () => {
      throw err();
    }) as ServiceReader['readNamespacedService'],
    readNamespacedEndpoints: (async () => {
      throw err();
    }) as ServiceReader['readNamespacedEndpoints'],
  });

  it('a 403 becomes one line naming the Service, the status and the RoleBinding that is missing, not the client dump', async () => {
    const err = await serviceResolver(failing(forbidden), 'shop')({ service: { name: 'staging', port: 8080 } }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/^get Service shop\/staging: HTTP 403 Forbidden: services "staging" is forbidden: User "system:serviceaccount:shop:default" cannot get resource "services"/);
    expect((err as Error).message).toMatch(/; fix: the pod's ServiceAccount needs get on services and endpoints in namespace shop: label that namespace kstreams.io\/inject=enabled/);
    expect((err as Error).message).not.toMatch(/HTTP-Code|Headers|\n/);
  });

  it('an unreachable apiserver is named as such, without an RBAC hint', async () => {
    const refused = () => Object.assign(new Error('request to https://10.96.0.1:443/api/v1/namespaces/shop/services/staging failed, reason: connect ECONNREFUSED 10.96.0.1:443'), { name: 'FetchError', type: 'system', errno: 'ECONNREFUSED', code: 'ECONNREFUSED' });
    const err = await serviceResolver(failing(refused), 'shop')({ service: { name: 'staging', port: 8080 } }).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/^get Service shop\/staging: apiserver unreachable \(ECONNREFUSED\): connect ECONNREFUSED 10\.96\.0\.1:443; fix: the apiserver cannot be reached/);
    expect((err as Error).message).not.toMatch(/RoleBinding|ServiceAccount needs/);
  });
});
