// The RBAC matcher of the chart's audit-log test (testing/rbac.ts): it must refuse what the apiserver would.
import { describe, expect, it } from 'vitest';
import { allows, grantKey, grantsFromDocsTable, grantsOf, requestsFromAudit, type ApiRequest } from './testing/rbac.js';

const req = (o: Partial<ApiRequest>): ApiRequest => ({ verb: 'get', group: '', resource: 'secrets', uri: '/', ...o });

describe('RBAC matching', () => {
  const [byName, create] = grantsOf(
    [
      { apiGroups: [''], resources: ['secrets'], resourceNames: ['tls'], verbs: ['get'] },
      { apiGroups: [''], resources: ['secrets'], verbs: ['create'] },
    ],
    'namespace',
  );

  it('a Role grants in its namespace only; resourceNames need the request to name the object', () => {
    expect(allows(byName!, req({ namespace: 'sys', name: 'tls' }), 'sys')).toBe(true);
    expect(allows(byName!, req({ namespace: 'app', name: 'tls' }), 'sys')).toBe(false);
    expect(allows(byName!, req({ namespace: 'sys', name: 'other' }), 'sys')).toBe(false);
    expect(allows(byName!, req({ namespace: 'sys', verb: 'list' }), 'sys')).toBe(false);
    expect(allows(create!, req({ namespace: 'sys', verb: 'create' }), 'sys')).toBe(true);
    expect(allows(create!, req({ namespace: 'sys', verb: 'create', resource: 'secrets/status' }), 'sys')).toBe(false);
    expect(grantKey(byName!)).toBe('namespace core/secrets/tls get');
  });

  it('reads each audited request once, the subresource joined, impersonated ones left out', () => {
    const ev = (id: string, stage: string, extra: object = {}) =>
      JSON.stringify({ auditID: id, stage, verb: 'patch', requestURI: '/apis/kstreams.io/v1alpha1/namespaces/a/streampaths/x/status', user: { username: 'sa' }, objectRef: { apiGroup: 'kstreams.io', resource: 'streampaths', subresource: 'status', namespace: 'a', name: 'x' }, responseStatus: { code: 200 }, ...extra });
    const log = [ev('1', 'ResponseStarted'), ev('1', 'ResponseComplete'), ev('2', 'ResponseComplete', { impersonatedUser: { username: 'x' } }), ev('3', 'ResponseComplete', { user: { username: 'other' } })].join('\n');
    expect(requestsFromAudit(log, 'sa')).toEqual([{ verb: 'patch', group: 'kstreams.io', resource: 'streampaths/status', namespace: 'a', name: 'x', uri: '/apis/kstreams.io/v1alpha1/namespaces/a/streampaths/x/status', code: 200 }]);
  });

  it('parses the docs table, and refuses one whose columns or scopes it does not know', () => {
    const md = ['## RBAC', '', '| Scope | API group | Resources | Names | Verbs | Why |', '|---|---|---|---|---|---|', '| release ns | core | secrets | `tls` | get watch | x |', '| cluster | kstreams.io | streampaths, streampaths/status | | patch | y |'].join('\n');
    expect(grantsFromDocsTable(md, '## RBAC').map(grantKey)).toEqual([
      'namespace core/secrets/tls get',
      'namespace core/secrets/tls watch',
      'cluster kstreams.io/streampaths patch',
      'cluster kstreams.io/streampaths/status patch',
    ]);
    expect(() => grantsFromDocsTable(md.replace('| cluster |', '| everywhere |'), '## RBAC')).toThrow(/scope "everywhere"/);
    expect(() => grantsFromDocsTable(md.replace('API group', 'Group'), '## RBAC')).toThrow(/header/);
  });
});
