import { describe, expect, it } from 'vitest';
import type { SlimNamespace } from '../kube/objects.js';
import { parseConfig } from '../config.js';
import {
  bindingExclusions,
  bindingSettings,
  desiredSidecarBinding,
  grantsSidecarAccess,
  planSidecarBinding,
  slimRoleBinding,
  type SidecarBindingSettings,
  type SlimRoleBinding,
} from './sidecar-bindings.js';

const settings: SidecarBindingSettings = { bindingName: 'kstreams-sidecar', clusterRoleName: 'kstreams-sidecar', excluded: bindingExclusions('kstreams-system', ['legacy']) };
const enabled = (name: string, extra: Partial<SlimNamespace> = {}): SlimNamespace => ({ name, labels: { 'kstreams.io/inject': 'enabled' }, ...extra });
const plain = (name: string): SlimNamespace => ({ name, labels: {} });

/** The binding as the apiserver returns it after the operator created it. */
function ours(namespace: string, overrides: Partial<SlimRoleBinding> = {}): SlimRoleBinding {
  const m = desiredSidecarBinding(namespace, settings);
  return { ...slimRoleBinding({ ...m, metadata: { ...m.metadata, uid: 'u-1', resourceVersion: '7' } }), ...overrides };
}

describe('desiredSidecarBinding', () => {
  it('binds the sidecar ClusterRole to every ServiceAccount of the namespace, labelled as the operator’s', () => {
    expect(desiredSidecarBinding('shop', { bindingName: 'rb', clusterRoleName: 'cr' })).toEqual({
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: 'rb', namespace: 'shop', labels: { 'app.kubernetes.io/managed-by': 'kstreams-operator', 'app.kubernetes.io/part-of': 'kstreams' } },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'cr' },
      subjects: [{ kind: 'Group', apiGroup: 'rbac.authorization.k8s.io', name: 'system:serviceaccounts:shop' }],
    });
  });
});

describe('planSidecarBinding', () => {
  it('creates the binding in a labelled namespace that has none', () => {
    const plan = planSidecarBinding('shop', enabled('shop'), undefined, settings);
    expect(plan).toEqual({ action: 'create', desired: desiredSidecarBinding('shop', settings) });
  });

  it('does nothing when the binding is already as desired (a second pass writes nothing)', () => {
    expect(planSidecarBinding('shop', enabled('shop'), ours('shop'), settings)).toEqual({ action: 'none', reason: 'up-to-date' });
    // Extra labels someone added, and subjects as the apiserver stores them, are not differences.
    const stored = ours('shop', { labels: { ...ours('shop').labels, team: 'payments' }, subjects: [{ kind: 'Group', name: 'system:serviceaccounts:shop' }] });
    expect(planSidecarBinding('shop', enabled('shop'), stored, settings)).toEqual({ action: 'none', reason: 'up-to-date' });
  });

  it('deletes its own binding when the label is removed or set to another value', () => {
    const existing = ours('shop');
    expect(planSidecarBinding('shop', plain('shop'), existing, settings)).toEqual({ action: 'delete', existing });
    expect(planSidecarBinding('shop', { name: 'shop', labels: { 'kstreams.io/inject': 'disabled' } }, existing, settings)).toEqual({ action: 'delete', existing });
  });

  it('does nothing in an unlabelled namespace without a binding', () => {
    expect(planSidecarBinding('shop', plain('shop'), undefined, settings)).toEqual({ action: 'none', reason: 'not-enabled' });
  });

  it.each(['kube-system', 'kube-public', 'kube-node-lease', 'kstreams-system', 'legacy'])('never touches the excluded namespace %s, labelled or not', (ns) => {
    expect(planSidecarBinding(ns, enabled(ns), undefined, settings)).toEqual({ action: 'none', reason: 'excluded' });
    // Not even a binding that carries the operator's label.
    expect(planSidecarBinding(ns, plain(ns), ours(ns), settings)).toEqual({ action: 'none', reason: 'excluded' });
  });

  it('leaves a binding of the same name that it did not create alone, and says whether it grants enough', () => {
    const byHelm = ours('shop', { labels: { 'app.kubernetes.io/managed-by': 'Helm' } });
    expect(planSidecarBinding('shop', enabled('shop'), byHelm, settings)).toEqual({ action: 'none', reason: 'foreign', sufficient: true });
    const wrongRole = { ...byHelm, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'view' } };
    expect(planSidecarBinding('shop', enabled('shop'), wrongRole, settings)).toEqual({ action: 'none', reason: 'foreign', sufficient: false });
    // Unlabelled namespace: still not ours to delete.
    expect(planSidecarBinding('shop', plain('shop'), byHelm, settings)).toEqual({ action: 'none', reason: 'not-enabled' });
  });

  it('restores changed subjects or a removed label of its own binding by an update', () => {
    const edited = ours('shop', { subjects: [{ kind: 'ServiceAccount', name: 'default', namespace: 'shop' }] });
    expect(planSidecarBinding('shop', enabled('shop'), edited, settings)).toMatchObject({ action: 'update', existing: edited });
    const partOfRemoved = ours('shop', { labels: { 'app.kubernetes.io/managed-by': 'kstreams-operator' } });
    expect(planSidecarBinding('shop', enabled('shop'), partOfRemoved, settings)).toMatchObject({ action: 'update' });
  });

  it('recreates its binding when the configured ClusterRole changed (roleRef is immutable)', () => {
    const existing = ours('shop');
    const plan = planSidecarBinding('shop', enabled('shop'), existing, { ...settings, clusterRoleName: 'ks-2-sidecar' });
    expect(plan).toMatchObject({ action: 'recreate', existing, desired: { roleRef: { name: 'ks-2-sidecar' } } });
  });

  it('does nothing in a namespace that is gone or terminating (its contents go with it)', () => {
    expect(planSidecarBinding('shop', undefined, undefined, settings)).toEqual({ action: 'none', reason: 'namespace-gone' });
    expect(planSidecarBinding('shop', enabled('shop', { deleting: true }), undefined, settings)).toEqual({ action: 'none', reason: 'namespace-gone' });
    expect(planSidecarBinding('shop', plain('shop'), undefined, settings).action).toBe('none');
  });
});

describe('grantsSidecarAccess', () => {
  it('needs the ClusterRole and the namespace’s ServiceAccount group', () => {
    expect(grantsSidecarAccess(ours('shop'), 'shop', 'kstreams-sidecar')).toBe(true);
    expect(grantsSidecarAccess(ours('shop'), 'shop', 'other')).toBe(false);
    expect(grantsSidecarAccess(ours('shop', { subjects: [{ kind: 'Group', name: 'system:serviceaccounts:cart' }] }), 'shop', 'kstreams-sidecar')).toBe(false);
  });
});

describe('bindingSettings from the operator config', () => {
  it('defaults to the chart’s names and excludes the system namespaces, its own and the webhook’s extra ones', () => {
    const config = parseConfig({ identity: 'x', namespace: 'ops', webhook: { excludedNamespaces: ['legacy'] } });
    expect(config.sidecarRbac).toEqual({ manageBindings: true, clusterRoleName: 'kstreams-sidecar', bindingName: 'kstreams-sidecar' });
    const s = bindingSettings(config.sidecarRbac, config.namespace, config.webhook.excludedNamespaces);
    expect([...s.excluded].sort()).toEqual(['kube-node-lease', 'kube-public', 'kube-system', 'legacy', 'ops']);
  });

  it('refuses a ClusterRole name Kubernetes would refuse', () => {
    expect(() => parseConfig({ identity: 'x', sidecarRbac: { clusterRoleName: 'Not_A_Name' } })).toThrow(/sidecarRbac\.clusterRoleName/);
  });
});
