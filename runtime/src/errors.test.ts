// The formatter on error objects recorded from a real apiserver with @kubernetes/client-node 1.4 and the
// operator's transport (testing/record-api-errors.ts wrote api-errors.recorded.json), revived with their
// real classes where the class is exported.
import { readFileSync } from 'node:fs';
import { ApiException } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { describeError, describeRequest, errSerializer, formatApiError } from './errors.js';
import { ApiError, TimeoutError } from './rest.js';

type Snap = Record<string, unknown> & { constructor: string; message: string };
const recorded = JSON.parse(readFileSync(new URL('./testing/api-errors.recorded.json', import.meta.url), 'utf8')) as Record<string, Snap>;

function revive(name: string): unknown {
  const s = recorded[name];
  if (!s) throw new Error(`no recorded error ${name}`);
  if (s.constructor === 'ApiException') return new ApiException(s.code as number, 'Unknown API Status Code!', s.body, s.headers as Record<string, string>);
  if (s.constructor === 'ApiError') return new ApiError(s.statusCode as number, s.method as string, s.path as string, s.body as string);
  const { constructor: _c, name: errName, message, ...props } = s;
  return Object.assign(new Error(message), { name: errName }, props);
}

describe('formatApiError on recorded client-node 1.4 errors', () => {
  it('403 from client-node: one line with verb, object, status, reason, the message and an RBAC fix; no dump', () => {
    const err = revive('clientNodeForbiddenGetSecret');
    expect((err as Error).message).toMatch(/^HTTP-Code: 403\nMessage: Unknown API Status Code!\nBody:/); // what users saw
    const line = formatApiError(err, { verb: 'get', object: 'Secret kstreams-system/kstreams-webhook-tls' });
    expect(line).toBe(
      'get Secret kstreams-system/kstreams-webhook-tls: HTTP 403 Forbidden: secrets "kstreams-webhook-tls" is forbidden: ' +
        'User "kstreams-nobody" cannot get resource "secrets" in API group "" in the namespace "kstreams-system"; ' +
        'fix: grant kstreams-nobody "get" on secrets in namespace kstreams-system (a Role and a RoleBinding)',
    );
    expect(line).not.toMatch(/HTTP-Code|Headers|Unknown API Status Code|\n/);
  });

  it('a caller-given hint replaces the generic RBAC fix', () => {
    const line = formatApiError(revive('clientNodeForbiddenCreateSecret'), {
      verb: 'create',
      object: 'Secret kstreams-system/kstreams-webhook-tls',
      forbiddenHint: "the chart's Role kstreams-webhook-tls grants it; with rbac.create=false bind an equivalent one",
    });
    expect(line).toMatch(/^create Secret kstreams-system\/kstreams-webhook-tls: HTTP 403 Forbidden: secrets is forbidden: User "kstreams-nobody" cannot create/);
    expect(line).toMatch(/; fix: the chart's Role kstreams-webhook-tls grants it/);
  });

  it('404, 409 and 422 carry the reason and the message, and no invented fix', () => {
    expect(formatApiError(revive('clientNodeNotFound'), { verb: 'get', object: 'Secret kstreams-system/absent' })).toBe(
      'get Secret kstreams-system/absent: HTTP 404 NotFound: secrets "absent" not found',
    );
    expect(formatApiError(revive('clientNodeConflict'))).toBe('HTTP 409 AlreadyExists: secrets "kstreams-webhook-tls" already exists');
    const invalid = formatApiError(revive('clientNodeInvalid'), { verb: 'create', object: 'Secret kstreams-system/Not_Valid' });
    expect(invalid).toMatch(/^create Secret kstreams-system\/Not_Valid: HTTP 422 Invalid: Secret "Not_Valid" is invalid: metadata.name: Invalid value/);
    expect(invalid).not.toMatch(/fix:/);
  });

  it('ECONNREFUSED and ENETUNREACH from client-node (node-fetch) say the apiserver is unreachable, never RBAC', () => {
    for (const name of ['clientNodeRefused', 'clientNodeUnreachable']) {
      const err = revive(name);
      const d = describeError(err);
      expect(d.cause).toBe('unreachable');
      const line = formatApiError(err, { verb: 'get', object: 'Secret kstreams-system/kstreams-webhook-tls' });
      expect(line).toMatch(/^get Secret kstreams-system\/kstreams-webhook-tls: apiserver unreachable \((ECONNREFUSED|ENETUNREACH)\): connect (ECONNREFUSED|ENETUNREACH) [\d.]+:\d+; fix: the apiserver cannot be reached/);
      expect(line).not.toMatch(/RoleBinding|grant|needs|Local \(/);
    }
    // Without a context the object comes from the URL node-fetch names.
    expect(formatApiError(revive('clientNodeRefused'))).toMatch(/^secrets kstreams-system\/kstreams-webhook-tls: apiserver unreachable/);
  });
});

describe("formatApiError on the operator's own transport", () => {
  it('derives verb and object from the request: 403 on a Lease names the resource with its group', () => {
    expect(formatApiError(revive('restForbidden'))).toBe(
      'get leases.coordination.k8s.io kstreams-system/kstreams-operator: HTTP 403 Forbidden: leases.coordination.k8s.io "kstreams-operator" is forbidden: ' +
        'User "kstreams-nobody" cannot get resource "leases" in API group "coordination.k8s.io" in the namespace "kstreams-system"; ' +
        'fix: grant kstreams-nobody "get" on leases.coordination.k8s.io in namespace kstreams-system (a Role and a RoleBinding)',
    );
    // ApiError's own message is already the readable line (logs that print err.message get it too).
    expect((revive('restNotFound') as Error).message).toBe('get secrets kstreams-system/absent: HTTP 404 NotFound: secrets "absent" not found');
  });

  it('socket errors of node:http and our timeout are network causes', () => {
    expect(formatApiError(revive('restRefused'), { verb: 'get', object: 'Lease kstreams-system/kstreams-operator' })).toMatch(
      /^get Lease kstreams-system\/kstreams-operator: apiserver unreachable \(ECONNREFUSED\): connect ECONNREFUSED 127\.0\.0\.1:\d+; fix: the apiserver cannot be reached/,
    );
    expect(describeError(revive('restUnreachable'))).toMatchObject({ cause: 'unreachable', reason: 'ENETUNREACH' });
    const timeout = new TimeoutError('PUT', '/apis/coordination.k8s.io/v1/namespaces/ns/leases/l', 2000);
    expect(formatApiError(timeout)).toBe(
      'update leases.coordination.k8s.io ns/l: apiserver timeout (ETIMEDOUT): no answer within 2000 ms; fix: the apiserver did not answer in time: it may be overloaded, or the connection is blackholed (NetworkPolicy, firewall); retried with backoff',
    );
  });

  it('describeRequest names verbs the way RBAC does', () => {
    expect(describeRequest('GET', '/api/v1/pods?limit=500')).toEqual({ verb: 'list', object: 'pods (cluster-wide)' });
    expect(describeRequest('GET', '/api/v1/pods?watch=true&resourceVersion=5')).toEqual({ verb: 'watch', object: 'pods (cluster-wide)' });
    expect(describeRequest('PATCH', '/apis/kstreams.io/v1alpha1/namespaces/shop/streampaths/a/status')).toEqual({ verb: 'patch', object: 'streampaths.kstreams.io/status shop/a' });
    expect(describeRequest('POST', '/api/v1/namespaces/shop/events')).toEqual({ verb: 'create', object: 'events in namespace shop' });
  });

  it('the log serializer keeps the line and the fields, not the body or headers', () => {
    const s = errSerializer(revive('clientNodeForbiddenGetSecret'));
    expect(s).toMatchObject({ cause: 'http', status: 403, reason: 'Forbidden' });
    expect(JSON.stringify(s)).not.toMatch(/Headers|content-type|x-kubernetes/);
    expect(errSerializer(new Error('plain'))).toMatchObject({ message: 'plain', cause: 'other' });
    expect(formatApiError('a string')).toBe('a string');
    expect(formatApiError(undefined)).toBe('undefined');
  });
});
