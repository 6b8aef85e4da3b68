import { describe, expect, it } from 'vitest';
import { resolveService, slimEndpoints, slimService } from './resolve.js';

const ref = { namespace: 'staging', name: 'checkout', port: 8080 };
const svc = (spec: Record<string, unknown>) => slimService({ metadata: { namespace: 'staging', name: 'checkout' }, spec });
const eps = (subsets: unknown[]) => slimEndpoints({ metadata: { namespace: 'staging', name: 'checkout' }, subsets });

describe('resolveService', () => {
  it('gives a ClusterIP Service its ClusterIP and the Service port', () => {
    expect(resolveService(ref, svc({ clusterIP: '10.96.4.2', ports: [{ name: 'http', port: 8080, targetPort: 80 }] }), undefined)).toEqual({ host: '10.96.4.2', port: 8080 });
  });

  it('gives a headless Service its first ready endpoint on the port of the same name', () => {
    const s = svc({ clusterIP: 'None', ports: [{ name: 'http', port: 8080 }, { name: 'admin', port: 9000 }] });
    const e = eps([{ addresses: [{ ip: '10.244.0.9' }], ports: [{ name: 'admin', port: 9001 }, { name: 'http', port: 80 }] }]);
    expect(resolveService(ref, s, e)).toEqual({ host: '10.244.0.9', port: 80 });
    // An unnamed single port matches by being alone.
    expect(resolveService(ref, svc({ clusterIP: 'None', ports: [{ port: 8080 }] }), eps([{ addresses: [{ ip: '10.244.0.5' }], ports: [{ port: 8080 }] }]))).toEqual({ host: '10.244.0.5', port: 8080 });
  });

  it('says what is missing, in the words the StreamPath condition shows', () => {
    expect(resolveService(ref, undefined, undefined)).toEqual({ error: 'Service staging/checkout does not exist' });
    expect(resolveService({ ...ref, port: 9 }, svc({ clusterIP: '10.96.4.2', ports: [{ port: 8080 }] }), undefined)).toEqual({ error: 'Service staging/checkout has no port 9 (it has: 8080)' });
    expect(resolveService(ref, svc({ type: 'ExternalName', ports: [{ port: 8080 }] }), undefined)).toEqual({ error: expect.stringMatching(/ExternalName; give its external name as address/) });
    expect(resolveService(ref, svc({ clusterIP: 'None', ports: [{ port: 8080 }] }), undefined)).toEqual({ error: 'Service staging/checkout is headless and has no Endpoints yet' });
    expect(resolveService(ref, svc({ clusterIP: 'None', ports: [{ port: 8080 }] }), eps([{ notReadyAddresses: [{ ip: '10.244.0.5' }], ports: [{ port: 8080 }] }]))).toEqual({
      error: 'Service staging/checkout is headless and has no ready endpoint for port 8080',
    });
  });
});
