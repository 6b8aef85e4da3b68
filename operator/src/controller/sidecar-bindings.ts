// The sidecar agents read StreamPaths, their own pod and target Services with their pod's ServiceAccount.
// The leader keeps one RoleBinding (to the sidecar ClusterRole, for the group of every ServiceAccount of the
// namespace) in each namespace labelled kstreams.io/inject=enabled, and deletes it when the label goes.
// Level-triggered and keyed by namespace: read the namespace and the binding from the caches, compute the
// plan with a pure function, write only the difference. Bindings the operator did not create (no
// app.kubernetes.io/managed-by=kstreams-operator label) are never changed or deleted.
import type { Logger } from 'pino';
import { ALWAYS_EXCLUDED_NAMESPACES } from '../api/agent.js';
import { AbortError } from '../clock.js';
import type { SidecarRbacConfig } from '../config.js';
import { namespaceInjectionEnabled, type SlimNamespace } from '../kube/objects.js';
import { KubeCallError } from '../kube/errors.js';
import { isStatus, type KubeTransport } from '../kube/rest.js';
import type { ProcessResult } from './queue.js';

export const MANAGED_BY_LABEL = 'app.kubernetes.io/managed-by';
export const MANAGED_BY_VALUE = 'kstreams-operator';
export const PART_OF_LABEL = 'app.kubernetes.io/part-of';
const RBAC_GROUP = 'rbac.authorization.k8s.io';

export interface Subject {
  kind: string;
  name: string;
  apiGroup?: string;
  namespace?: string;
}

export interface RoleRef {
  apiGroup: string;
  kind: string;
  name: string;
}

/** A RoleBinding as the operator keeps it. */
export interface SlimRoleBinding {
  namespace: string;
  name: string;
  uid: string;
  resourceVersion?: string;
  labels: Record<string, string>;
  roleRef: RoleRef;
  subjects: Subject[];
}

export interface RoleBindingManifest {
  apiVersion: 'rbac.authorization.k8s.io/v1';
  kind: 'RoleBinding';
  metadata: { name: string; namespace: string; labels: Record<string, string> };
  roleRef: RoleRef;
  subjects: Subject[];
}

export interface SidecarBindingSettings {
  bindingName: string;
  clusterRoleName: string;
  /** Namespaces never touched, whatever their labels or bindings. */
  excluded: ReadonlySet<string>;
}

export type NoActionReason =
  /** System, the operator's own, or webhook.excludedNamespaces. */
  | 'excluded'
  /** Not labelled and no binding of ours. */
  | 'not-enabled'
  | 'up-to-date'
  /** A binding of that name exists that the operator did not create: left alone. */
  | 'foreign'
  /** Deleted, or terminating: its contents go with it. */
  | 'namespace-gone';

export type BindingPlan =
  | { action: 'none'; reason: NoActionReason; /** For 'foreign': whether it grants what the agents need. */ sufficient?: boolean }
  | { action: 'create'; desired: RoleBindingManifest }
  /** Subjects or labels differ: a patch, guarded by the resourceVersion. */
  | { action: 'update'; desired: RoleBindingManifest; existing: SlimRoleBinding }
  /** roleRef differs, which Kubernetes does not let change: delete, then create. */
  | { action: 'recreate'; desired: RoleBindingManifest; existing: SlimRoleBinding }
  /** The label went away: the binding of ours goes too. */
  | { action: 'delete'; existing: SlimRoleBinding };

/** The operator's namespace and the always-excluded ones, plus any extra the webhook never injects. */
export function bindingExclusions(operatorNamespace: string, extra: Iterable<string> = []): Set<string> {
  return new Set<string>([...ALWAYS_EXCLUDED_NAMESPACES, operatorNamespace, ...extra]);
}

export function sidecarGroup(namespace: string): string {
  return `system:serviceaccounts:${namespace}`;
}

export function desiredSidecarBinding(namespace: string, s: Pick<SidecarBindingSettings, 'bindingName' | 'clusterRoleName'>): RoleBindingManifest {
  return {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'RoleBinding',
    metadata: { name: s.bindingName, namespace, labels: { [MANAGED_BY_LABEL]: MANAGED_BY_VALUE, [PART_OF_LABEL]: 'kstreams' } },
    roleRef: { apiGroup: RBAC_GROUP, kind: 'ClusterRole', name: s.clusterRoleName },
    subjects: [{ kind: 'Group', apiGroup: RBAC_GROUP, name: sidecarGroup(namespace) }],
  };
}

export function isManagedByOperator(rb: Pick<SlimRoleBinding, 'labels'>): boolean {
  return rb.labels[MANAGED_BY_LABEL] === MANAGED_BY_VALUE;
}

function sameRoleRef(a: RoleRef, b: RoleRef): boolean {
  return a.apiGroup === b.apiGroup && a.kind === b.kind && a.name === b.name;
}

/** Subjects compared as the apiserver stores them (apiGroup defaulted for Group and User, namespace only for ServiceAccount). */
function subjectKey(s: Subject): string {
  const apiGroup = s.apiGroup ?? (s.kind === 'ServiceAccount' ? '' : RBAC_GROUP);
  return JSON.stringify([s.kind, apiGroup, s.name, s.kind === 'ServiceAccount' ? (s.namespace ?? '') : '']);
}

function sameSubjects(a: Subject[], b: Subject[]): boolean {
  return a.length === b.length && a.every((s, i) => subjectKey(s) === subjectKey(b[i]!));
}

/** Whether a binding (ours or not) gives every ServiceAccount of the namespace the sidecar ClusterRole. */
export function grantsSidecarAccess(rb: Pick<SlimRoleBinding, 'roleRef' | 'subjects'>, namespace: string, clusterRoleName: string): boolean {
  const wanted = subjectKey({ kind: 'Group', name: sidecarGroup(namespace) });
  return rb.roleRef.kind === 'ClusterRole' && rb.roleRef.name === clusterRoleName && rb.subjects.some((s) => subjectKey(s) === wanted);
}

/**
 * What to do in one namespace. `ns` is the cached Namespace (undefined: gone), `existing` the cached RoleBinding
 * named `bindingName` in it, if any. Pure: no I/O, the same inputs give the same plan.
 */
export function planSidecarBinding(namespace: string, ns: SlimNamespace | undefined, existing: SlimRoleBinding | undefined, s: SidecarBindingSettings): BindingPlan {
  if (s.excluded.has(namespace)) return { action: 'none', reason: 'excluded' };
  if (!ns || ns.deleting) return { action: 'none', reason: 'namespace-gone' };
  const ours = existing !== undefined && isManagedByOperator(existing);
  if (!namespaceInjectionEnabled(ns)) {
    if (existing && ours) return { action: 'delete', existing };
    return { action: 'none', reason: 'not-enabled' };
  }
  const desired = desiredSidecarBinding(namespace, s);
  if (!existing) return { action: 'create', desired };
  if (!ours) return { action: 'none', reason: 'foreign', sufficient: grantsSidecarAccess(existing, namespace, s.clusterRoleName) };
  if (!sameRoleRef(existing.roleRef, desired.roleRef)) return { action: 'recreate', desired, existing };
  const labelsOk = Object.entries(desired.metadata.labels).every(([k, v]) => existing.labels[k] === v);
  if (!labelsOk || !sameSubjects(existing.subjects, desired.subjects)) return { action: 'update', desired, existing };
  return { action: 'none', reason: 'up-to-date' };
}

export function slimRoleBinding(raw: Record<string, unknown>): SlimRoleBinding {
  const meta = (raw.metadata ?? {}) as { name?: string; namespace?: string; uid?: string; resourceVersion?: string; labels?: Record<string, string> };
  const rb: SlimRoleBinding = {
    namespace: meta.namespace ?? '',
    name: meta.name ?? '',
    uid: meta.uid ?? '',
    labels: meta.labels ?? {},
    roleRef: (raw.roleRef as RoleRef | undefined) ?? { apiGroup: RBAC_GROUP, kind: '', name: '' },
    subjects: ((raw.subjects as Subject[] | undefined) ?? []).map((x) => {
      const subject: Subject = { kind: x.kind, name: x.name };
      if (x.apiGroup !== undefined) subject.apiGroup = x.apiGroup;
      if (x.namespace !== undefined) subject.namespace = x.namespace;
      return subject;
    }),
  };
  if (meta.resourceVersion) rb.resourceVersion = meta.resourceVersion;
  return rb;
}

export function sameSlimRoleBinding(a: SlimRoleBinding, b: SlimRoleBinding): boolean {
  return a.resourceVersion === b.resourceVersion && a.uid === b.uid;
}

export function roleBindingPath(namespace: string, name?: string): string {
  const base = `/apis/rbac.authorization.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/rolebindings`;
  return name ? `${base}/${encodeURIComponent(name)}` : base;
}

export type BindingWrite = 'create' | 'update' | 'delete';

export interface SidecarBindingReconcilerDeps {
  transport: KubeTransport;
  log: Logger;
  settings: SidecarBindingSettings;
  getNamespace(name: string): SlimNamespace | undefined;
  /** The cached binding named settings.bindingName in that namespace. */
  getBinding(namespace: string): SlimRoleBinding | undefined;
  /** Write-through: the cache sees what was just written (undefined: deleted) before the watch event. */
  storeBinding(namespace: string, rb: SlimRoleBinding | undefined): void;
  onWrite?: (action: BindingWrite) => void;
  /** Every reconcile's plan: the action, or for none its reason (metrics, tests). */
  onResult?: (result: BindingPlan['action'] | NoActionReason) => void;
}

export class SidecarBindingReconciler {
  /** Namespaces whose foreign binding was already reported at this resourceVersion (one log line, not one per pass). */
  private readonly reportedForeign = new Map<string, string>();

  constructor(private readonly d: SidecarBindingReconcilerDeps) {}

  async reconcile(namespace: string, signal: AbortSignal): Promise<ProcessResult | void> {
    // Twice at most: a create that finds the binding already there (409) refreshes the cache and plans again.
    for (let attempt = 0; attempt < 2; attempt++) {
      const plan = planSidecarBinding(namespace, this.d.getNamespace(namespace), this.d.getBinding(namespace), this.d.settings);
      this.d.onResult?.(plan.action === 'none' ? plan.reason : plan.action);
      if (plan.action === 'none') {
        this.noteForeign(namespace, plan);
        return;
      }
      if (signal.aborted) throw new AbortError(`leadership lost: RoleBinding in ${namespace} not written`);
      const done = await this.apply(namespace, plan);
      if (done) return;
    }
    throw new Error(`RoleBinding ${this.d.settings.bindingName} in namespace ${namespace} changed while it was being written; retrying`);
  }

  private noteForeign(namespace: string, plan: Extract<BindingPlan, { action: 'none' }>): void {
    if (plan.reason !== 'foreign') {
      this.reportedForeign.delete(namespace);
      return;
    }
    const rv = this.d.getBinding(namespace)?.resourceVersion ?? '';
    if (this.reportedForeign.get(namespace) === rv) return;
    this.reportedForeign.set(namespace, rv);
    const { bindingName, clusterRoleName } = this.d.settings;
    if (plan.sufficient) {
      this.d.log.info({ namespace, roleBinding: bindingName }, `RoleBinding ${bindingName} in ${namespace} was not created by the operator but grants ClusterRole ${clusterRoleName}: left as it is`);
    } else {
      this.d.log.warn(
        { namespace, roleBinding: bindingName },
        `RoleBinding ${bindingName} in ${namespace} was not created by the operator and does not grant ClusterRole ${clusterRoleName} to ${sidecarGroup(namespace)}: ` +
          `the sidecars there cannot read their StreamPaths. Delete it (the operator then creates its own) or fix its roleRef and subjects`,
      );
    }
  }

  /** True when the plan was carried out (or turned out unnecessary); false to plan again from a refreshed cache. */
  private async apply(namespace: string, plan: Exclude<BindingPlan, { action: 'none' }>): Promise<boolean> {
    const { transport, log } = this.d;
    const name = this.d.settings.bindingName;
    try {
      switch (plan.action) {
        case 'create':
          return await this.create(namespace, plan.desired);
        case 'update': {
          const written = await transport.request<Record<string, unknown>>('PATCH', roleBindingPath(namespace, name), {
            body: { metadata: { resourceVersion: plan.existing.resourceVersion, labels: plan.desired.metadata.labels }, subjects: plan.desired.subjects },
            patch: 'merge',
          });
          this.d.onWrite?.('update');
          this.d.storeBinding(namespace, slimRoleBinding(written));
          log.info({ namespace, roleBinding: name }, 'sidecar RoleBinding subjects restored');
          return true;
        }
        case 'recreate':
          await this.delete(namespace, plan.existing);
          log.info({ namespace, roleBinding: name, from: plan.existing.roleRef.name, to: plan.desired.roleRef.name }, 'sidecar RoleBinding points at another ClusterRole: recreating it');
          return await this.create(namespace, plan.desired);
        case 'delete':
          await this.delete(namespace, plan.existing);
          log.info({ namespace, roleBinding: name }, `namespace no longer labelled kstreams.io/inject=enabled: sidecar RoleBinding deleted`);
          return true;
      }
    } catch (err) {
      // 404: the binding (or the namespace) went away meanwhile; 409: it changed. Either way the watch brings
      // the news; plan again after the queue's backoff with what it says.
      if (isStatus(err, 404) && plan.action === 'delete') {
        this.d.storeBinding(namespace, undefined);
        return true;
      }
      throw this.explain(namespace, plan.action, err);
    }
  }

  private async create(namespace: string, desired: RoleBindingManifest): Promise<boolean> {
    try {
      const written = await this.d.transport.request<Record<string, unknown>>('POST', roleBindingPath(namespace), { body: desired });
      this.d.onWrite?.('create');
      this.d.storeBinding(namespace, slimRoleBinding(written));
      this.d.log.info({ namespace, roleBinding: desired.metadata.name, clusterRole: desired.roleRef.name }, 'sidecar RoleBinding created');
      return true;
    } catch (err) {
      if (!isStatus(err, 409)) throw err;
      // Already there (the watch has not told us yet): read it and plan again.
      try {
        const current = await this.d.transport.request<Record<string, unknown>>('GET', roleBindingPath(namespace, desired.metadata.name));
        this.d.storeBinding(namespace, slimRoleBinding(current));
      } catch (getErr) {
        if (!isStatus(getErr, 404)) throw getErr;
      }
      return false;
    }
  }

  private async delete(namespace: string, existing: SlimRoleBinding): Promise<void> {
    // Preconditions: never delete a binding that changed since it was judged ours (e.g. relabelled by a user).
    const preconditions: Record<string, string> = { uid: existing.uid };
    if (existing.resourceVersion) preconditions.resourceVersion = existing.resourceVersion;
    await this.d.transport.request('DELETE', roleBindingPath(namespace, existing.name), {
      body: { apiVersion: 'v1', kind: 'DeleteOptions', preconditions },
    });
    this.d.onWrite?.('delete');
    this.d.storeBinding(namespace, undefined);
  }

  private explain(namespace: string, action: string, err: unknown): Error {
    const { bindingName, clusterRoleName } = this.d.settings;
    // One line whose fix follows the cause: RBAC for a 403, the network when the apiserver is unreachable.
    return new KubeCallError(err, {
        verb: action,
        object: `RoleBinding ${namespace}/${bindingName}`,
        forbiddenHint:
          `the operator's ServiceAccount needs get/list/watch/create/update/patch/delete on rolebindings and "bind" on ClusterRole ${clusterRoleName} ` +
          `(the chart grants them with sidecar.rbac.manageBindings=true); or set sidecarRbac.manageBindings=false and create the RoleBindings yourself`,
    });
  }
}

/** The settings from the operator config; `extraExcluded` are the webhook's excludedNamespaces. */
export function bindingSettings(config: SidecarRbacConfig, operatorNamespace: string, extraExcluded: Iterable<string>): SidecarBindingSettings {
  return { bindingName: config.bindingName, clusterRoleName: config.clusterRoleName, excluded: bindingExclusions(operatorNamespace, extraExcluded) };
}
