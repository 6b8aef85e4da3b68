import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { handleAdmissionReview, type PodMutator } from './admission.js';
import { WebhookConfigSchema } from './config.js';
import { computePodPatch } from './patch.js';

const config = WebhookConfigSchema.parse({});
const mutate: PodMutator = (pod, ns) => computePodPatch(pod, { name: ns }, config, { major: 1, minor: 20 });

function review(apiVersion: string, overrides: Record<string, unknown> = {}) {
  return {
    apiVersion,
    kind: 'AdmissionReview',
    request: {
      uid: '705ab4f5-6393-11e8-b7cc-42010a800002',
      kind: { group: '', version: 'v1', kind: 'Pod' },
      resource: { group: '', version: 'v1', resource: 'pods' },
      operation: 'CREATE',
      namespace: 'shop',
      object: { metadata: { name: 'a' }, spec: { containers: [{ name: 'app', image: 'busybox' }] } },
      ...overrides,
    },
  };
}

describe('handleAdmissionReview', () => {
  it.each(['admission.k8s.io/v1', 'admission.k8s.io/v1beta1'])('answers %s with the same apiVersion and uid and a base64 JSONPatch', (v) => {
    const out = handleAdmissionReview(JSON.stringify(review(v)), mutate);
    expect(out.status).toBe(200);
    const body = out.body as any;
    expect(body.apiVersion).toBe(v);
    expect(body.kind).toBe('AdmissionReview');
    expect(body.response.uid).toBe('705ab4f5-6393-11e8-b7cc-42010a800002');
    expect(body.response.allowed).toBe(true);
    expect(body.response.patchType).toBe('JSONPatch');
    const patch = JSON.parse(Buffer.from(body.response.patch, 'base64').toString());
    expect(patch).toContainEqual(expect.objectContaining({ op: 'add', path: '/spec/containers/0' }));
    expect(out.result).toEqual({ kind: 'patched', reason: 'injected' });
  });

  it.each([
    ['UPDATE', 'pods', undefined],
    ['DELETE', 'pods', undefined],
    ['CREATE', 'pods', 'ephemeralcontainers'],
    ['CREATE', 'services', undefined],
  ])('allows %s %s/%s untouched', (operation, resource, subResource) => {
    const out = handleAdmissionReview(
      JSON.stringify(review('admission.k8s.io/v1', { operation, resource: { group: '', version: 'v1', resource }, subResource })),
      mutate,
    );
    expect(out.status).toBe(200);
    expect((out.body as any).response).toEqual({ uid: '705ab4f5-6393-11e8-b7cc-42010a800002', allowed: true });
    expect(out.result).toEqual({ kind: 'allowed', reason: 'not-pod-create' });
  });

  it('passes the mutator\'s warnings on beside the patch, and none when there are none', () => {
    const warned: PodMutator = (pod, ns) => ({ ...mutate(pod, ns), warnings: ['Pod Security "baseline:latest" rejects kstreams-sidecar'] });
    const body = handleAdmissionReview(JSON.stringify(review('admission.k8s.io/v1')), warned).body as any;
    expect(body.response.warnings).toEqual(['Pod Security "baseline:latest" rejects kstreams-sidecar']);
    expect(body.response.patchType).toBe('JSONPatch');
    const quiet = handleAdmissionReview(JSON.stringify(review('admission.k8s.io/v1')), (pod, ns) => ({ ...mutate(pod, ns), warnings: [] })).body as any;
    expect(quiet.response).not.toHaveProperty('warnings');
  });

  it('allows pods it must not touch without a patch, saying why', () => {
    const out = handleAdmissionReview(JSON.stringify(review('admission.k8s.io/v1', { namespace: 'kube-system' })), mutate);
    expect((out.body as any).response.patch).toBeUndefined();
    expect(out.result).toEqual({ kind: 'allowed', reason: 'excluded-namespace' });
  });

  it('admits the pod untouched if the mutator ever throws', () => {
    const out = handleAdmissionReview(JSON.stringify(review('admission.k8s.io/v1')), () => {
      throw new Error('bug');
    });
    expect(out.status).toBe(200);
    expect((out.body as any).response.allowed).toBe(true);
  });

  it.each([
    ['', 'bad-json'],
    ['{', 'bad-json'],
    ['null', 'bad-review'],
    ['[]', 'bad-review'],
    ['{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview","request":{}}', 'bad-review'],
    [JSON.stringify({ ...review('admission.k8s.io/v1'), request: undefined }), 'bad-review'],
    [JSON.stringify(review('admission.k8s.io/v1', { uid: 7 })), 'bad-review'],
    [JSON.stringify(review('admission.k8s.io/v1', { uid: '' })), 'bad-review'],
  ])('answers malformed body %j with a 400 Status and a message', (body, reason) => {
    const out = handleAdmissionReview(body, mutate);
    expect(out.status).toBe(400);
    expect(out.result).toEqual({ kind: 'invalid', reason });
    expect((out.body as any).message).toMatch(/request body/);
  });

  it('property: any JSON value gets either a 200 AdmissionReview or a 400, never an exception', () => {
    const near = fc.record(
      {
        apiVersion: fc.oneof(fc.constant('admission.k8s.io/v1'), fc.constant('admission.k8s.io/v1beta1'), fc.string()),
        kind: fc.oneof(fc.constant('AdmissionReview'), fc.string()),
        request: fc.record(
          {
            uid: fc.oneof(fc.uuid(), fc.anything()),
            kind: fc.anything(),
            resource: fc.oneof(fc.constant({ group: '', version: 'v1', resource: 'pods' }), fc.anything()),
            operation: fc.oneof(fc.constant('CREATE'), fc.anything()),
            namespace: fc.oneof(fc.string(), fc.anything()),
            object: fc.anything(),
          },
          { requiredKeys: [] },
        ),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue(), near), (value) => {
        const out = handleAdmissionReview(JSON.stringify(value) ?? '', mutate);
        expect([200, 400]).toContain(out.status);
        if (out.status === 200) expect((out.body as any).response.uid).toBe((value as any).request.uid);
      }),
      { numRuns: 1000 },
    );
  });

  it('property: truncated reviews never throw', () => {
    const full = JSON.stringify(review('admission.k8s.io/v1'));
    fc.assert(
      fc.property(fc.integer({ min: 0, max: full.length - 1 }), (n) => {
        expect(handleAdmissionReview(full.slice(0, n), mutate).status).toBe(400);
      }),
    );
  });
});
