// The sidecar RoleBindings against the real kube-apiserver: labelling a namespace is enough for its
// ServiceAccounts to read StreamPaths (the apiserver's RBAC says so, via `kubectl auth can-i`), unlabelling
// takes the right away, excluded namespaces are never touched, and a second pass writes nothing.
import { execFile } from 'node:child_process';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { systemClock } from '../clock.js';
import { parseConfig } from '../config.js';
import { KubeRest, isStatus } from '../kube/rest.js';
import { startOperator, type RunningOperator } from '../operator.js';
import { createNamespace, eventually, freshName, installCrd } from '../testing/kube.js';
import { roleBindingPath, slimRoleBinding, type SlimRoleBinding } from './sidecar-bindings.js';

const kubeconfig = inject('kubeconfig');
const KUBECTL = process.env.KSTREAMS_KUBECTL ?? '/var/cache/kstreams/kubernetes-1.20.2/bin/kubectl';

/** `kubectl auth can-i <args> --as=system:serviceaccount:<ns>:default`: "yes" or "no". */
function canI(namespace: string, ...args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(KUBECTL, ['--kubeconfig', kubeconfig, 'auth', 'can-i', ...args, '-n', namespace, `--as=system:serviceaccount:${namespace}:default`], (err, stdout, stderr) => {
      const answer = stdout.trim();
      // can-i exits 1 for "no": only a missing answer is a failure.
      if (answer === 'yes' || answer === 'no') resolve(answer);
      else reject(new Error(`kubectl auth can-i ${args.join(' ')} -n ${namespace}: ${err?.message ?? ''} ${stderr}`));
    });
  });
}

describe('the sidecar RoleBindings, against a real apiserver', () => {
  const suffix = freshName('x').slice(2);
  const clusterRole = `kstreams-sidecar-int-${suffix}`;
  const bindingName = `kstreams-sidecar-${suffix}`;
  const operatorNamespace = `ks-op-${suffix}`;
  const extraExcluded = `ks-excluded-${suffix}`;
  let kube: KubeRest;
  let op: RunningOperator;
  const labelledKubeSystem = { done: false };

  const label = (ns: string, value: string | null) =>
    kube.request('PATCH', `/api/v1/namespaces/${ns}`, { body: { metadata: { labels: { 'kstreams.io/inject': value } } }, patch: 'merge' });
  const getBinding = async (ns: string): Promise<SlimRoleBinding | undefined> => {
    try {
      return slimRoleBinding(await kube.request<Record<string, unknown>>('GET', roleBindingPath(ns, bindingName)));
    } catch (err) {
      if (isStatus(err, 404)) return undefined;
      throw err;
    }
  };
  const count = async (result: string) => (await op.metrics.sidecarBindingReconciles.get()).values.find((v) => v.labels.result === result)?.value ?? 0;

  beforeAll(async () => {
    kube = await KubeRest.create(kubeconfig);
    await installCrd(kube);
    // A ClusterRole of this test's own, with the chart's sidecar rules.
    await kube.request('POST', '/apis/rbac.authorization.k8s.io/v1/clusterroles', {
      body: {
        apiVersion: 'rbac.authorization.k8s.io/v1',
        kind: 'ClusterRole',
        metadata: { name: clusterRole },
        rules: [
          { apiGroups: ['kstreams.io'], resources: ['streampaths'], verbs: ['get', 'list', 'watch'] },
          { apiGroups: [''], resources: ['services', 'endpoints', 'pods'], verbs: ['get', 'list', 'watch'] },
        ],
      },
    });
    await createNamespace(kube, operatorNamespace);
    await createNamespace(kube, extraExcluded);
    const config = parseConfig({
      identity: 'bindings-int-test',
      namespace: operatorNamespace,
      kubeconfig,
      logLevel: 'warn',
      leaderElection: { enabled: false },
      resyncPeriodMs: 600_000,
      server: { host: '127.0.0.1', port: 0 },
      sidecarRbac: { clusterRoleName: clusterRole, bindingName },
      webhook: { enabled: false, namespace: operatorNamespace, excludedNamespaces: [extraExcluded] },
    });
    op = await startOperator({ config, log: pino({ level: 'warn' }), clock: systemClock });
    await eventually('caches synced', async () => op.controller()?.synced);
  });

  afterAll(async () => {
    await op?.shutdown();
    if (labelledKubeSystem.done) await label('kube-system', null);
    await kube?.request('DELETE', `/apis/rbac.authorization.k8s.io/v1/clusterroles/${clusterRole}`).catch(() => {});
    kube?.close();
  });

  it('labelling a namespace lets its ServiceAccounts read StreamPaths; unlabelling takes it away', async () => {
    const ns = freshName('rb-shop');
    await createNamespace(kube, ns);
    expect(await canI(ns, 'list', 'streampaths.kstreams.io')).toBe('no');

    await label(ns, 'enabled');
    const rb = await eventually('the RoleBinding', () => getBinding(ns));
    expect(rb.labels['app.kubernetes.io/managed-by']).toBe('kstreams-operator');
    expect(rb.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: clusterRole });
    expect(rb.subjects).toEqual([{ kind: 'Group', apiGroup: 'rbac.authorization.k8s.io', name: `system:serviceaccounts:${ns}` }]);
    expect(await canI(ns, 'list', 'streampaths.kstreams.io')).toBe('yes');
    expect(await canI(ns, 'watch', 'pods')).toBe('yes');
    expect(await canI(ns, 'update', 'streampaths.kstreams.io/status')).toBe('no');

    await label(ns, null);
    await eventually('the RoleBinding gone', async () => (await getBinding(ns)) === undefined);
    expect(await canI(ns, 'list', 'streampaths.kstreams.io')).toBe('no');
  });

  it('puts its binding back when someone deletes or edits it', async () => {
    const ns = freshName('rb-drift');
    await createNamespace(kube, ns, { 'kstreams.io/inject': 'enabled' });
    const first = await eventually('the RoleBinding', () => getBinding(ns));
    await kube.request('DELETE', roleBindingPath(ns, bindingName));
    const second = await eventually('a new RoleBinding', async () => {
      const rb = await getBinding(ns);
      return rb && rb.uid !== first.uid ? rb : undefined;
    });
    await kube.request('PATCH', roleBindingPath(ns, bindingName), { body: { subjects: [{ kind: 'Group', apiGroup: 'rbac.authorization.k8s.io', name: 'system:authenticated' }] }, patch: 'merge' });
    const restored = await eventually('the subjects restored', async () => {
      const rb = await getBinding(ns);
      return rb?.subjects[0]?.name === `system:serviceaccounts:${ns}` ? rb : undefined;
    });
    expect(restored.uid).toBe(second.uid);
    expect(restored.subjects).toHaveLength(1);
  });

  it('never touches excluded namespaces, even labelled', async () => {
    const control = freshName('rb-control');
    await createNamespace(kube, control);
    const excludedBefore = await count('excluded');
    labelledKubeSystem.done = true;
    for (const ns of ['kube-system', operatorNamespace, extraExcluded]) await label(ns, 'enabled');
    // Labelled after the excluded ones: once its binding exists, the operator has seen their labels too.
    await label(control, 'enabled');
    await eventually('the control namespace’s RoleBinding', () => getBinding(control));
    await op.controller()!.bindingQueue!.idle();
    expect(await count('excluded')).toBeGreaterThanOrEqual(excludedBefore + 3);
    for (const ns of ['kube-system', operatorNamespace, extraExcluded]) expect(`${ns}: ${(await getBinding(ns))?.name ?? 'none'}`).toBe(`${ns}: none`);
    await label('kube-system', null);
    labelledKubeSystem.done = false;
  });

  it('leaves a binding of the same name that it did not create as it is, labelled or not', async () => {
    const ns = freshName('rb-foreign');
    await createNamespace(kube, ns);
    const foreign = slimRoleBinding(
      await kube.request<Record<string, unknown>>('POST', roleBindingPath(ns), {
        body: {
          apiVersion: 'rbac.authorization.k8s.io/v1',
          kind: 'RoleBinding',
          metadata: { name: bindingName, labels: { 'app.kubernetes.io/managed-by': 'Helm' } },
          roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'view' },
          subjects: [{ kind: 'User', apiGroup: 'rbac.authorization.k8s.io', name: 'alice' }],
        },
      }),
    );
    const foreignBefore = await count('foreign');
    await label(ns, 'enabled');
    await eventually('the labelled namespace judged', async () => (await count('foreign')) > foreignBefore);
    await label(ns, null);
    await eventually('the unlabelled namespace judged', async () => {
      await op.controller()!.bindingQueue!.idle();
      return op.controller()!.namespaces.get(ns)?.labels['kstreams.io/inject'] === undefined;
    });
    await op.controller()!.bindingQueue!.idle();
    expect((await getBinding(ns))?.resourceVersion).toBe(foreign.resourceVersion);
  });

  it('a second pass over every namespace with nothing changed makes zero writes', async () => {
    const namespaces = [freshName('rb-quiet'), freshName('rb-quiet')];
    for (const ns of namespaces) await createNamespace(kube, ns, { 'kstreams.io/inject': 'enabled' });
    for (const ns of namespaces) await eventually(`the RoleBinding in ${ns}`, () => getBinding(ns));
    const controller = op.controller()!;
    await controller.bindingQueue!.idle();
    // Only the RoleBinding writes: StreamPaths other test files left behind may still get a status write.
    const writes = op.transport.writesTo('/rolebindings');
    const upToDate = await count('up-to-date');
    controller.resyncSidecarBindings();
    await controller.bindingQueue!.idle();
    expect(op.transport.writesTo('/rolebindings') - writes).toBe(0);
    // It did look: every labelled namespace (these two at least) was found up to date.
    expect(await count('up-to-date')).toBeGreaterThanOrEqual(upToDate + namespaces.length);
  });
});
