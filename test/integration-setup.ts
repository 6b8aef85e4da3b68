// vitest globalSetup for the integration run: ONE local Kubernetes control plane (etcd + kube-apiserver
// 1.20, see e2e/cluster/local/controlplane.ts) shared by every *.int.test.ts file.
//
// In a test:
//   import { inject } from 'vitest';
//   const kubeconfig = inject('kubeconfig');     // path of an admin kubeconfig (CA embedded, token)
//   const server = inject('apiServer');          // https://127.0.0.1:<port>
//   const token = inject('adminToken');          // bearer token, user kstreams-admin in system:masters
//   const caFile = inject('apiServerCaFile');    // CA (also signs client certs: see caKeyFile)
//   const audit = inject('auditLogFile');        // audit log of every ServiceAccount's requests
// process.env.KUBECONFIG is set in this process too, so child processes (kubectl, helm) spawned from the
// main vitest process see it; test workers should use inject('kubeconfig').
//
// Environment:
//   KSTREAMS_CONTROLPLANE=off               do not start a control plane (e.g. kernel-only runs); inject()
//                                           then returns ''.
//   KSTREAMS_CONTROLPLANE_CONTROLLERS=1     also run kube-controller-manager (default ServiceAccounts,
//                                           namespace deletion, GC), adds a few seconds.
//   KSTREAMS_K8S_BIN                        directory with kube-apiserver etc. (default
//                                           /var/cache/kstreams/kubernetes-1.20.2/bin).
//   KSTREAMS_CLUSTER_DEBUG=1 / KSTREAMS_CLUSTER_KEEP=1   progress lines / keep the temp dir with logs.
import type { TestProject } from 'vitest/node';
import { startControlPlane, type ControlPlane } from '../e2e/cluster/local/controlplane.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Path of the admin kubeconfig; '' when KSTREAMS_CONTROLPLANE=off. */
    kubeconfig: string;
    /** https://127.0.0.1:<port>; '' when off. */
    apiServer: string;
    /** Bearer token of an admin (system:masters); '' when off. */
    adminToken: string;
    /** CA certificate file of the apiserver; '' when off. */
    apiServerCaFile: string;
    /** CA private key (to mint client or webhook serving certificates); '' when off. */
    apiServerCaKeyFile: string;
    /** Whether kube-controller-manager runs (default ServiceAccounts exist, namespaces finish deleting). */
    controllerManager: boolean;
    /** The apiserver's audit log of every ServiceAccount's requests (JSON lines, level Metadata); '' when off. */
    auditLogFile: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const provideAll = (cp?: ControlPlane, controllers = false) => {
    project.provide('kubeconfig', cp?.kubeconfigPath ?? '');
    project.provide('apiServer', cp?.server ?? '');
    project.provide('adminToken', cp?.token ?? '');
    project.provide('apiServerCaFile', cp?.caFile ?? '');
    project.provide('apiServerCaKeyFile', cp?.caKeyFile ?? '');
    project.provide('controllerManager', controllers);
    project.provide('auditLogFile', cp?.auditLogPath ?? '');
  };
  if (process.env.KSTREAMS_CONTROLPLANE === 'off') {
    provideAll();
    return async () => {};
  }
  const controllers = process.env.KSTREAMS_CONTROLPLANE_CONTROLLERS === '1';
  const cp = await startControlPlane({
    controllerManager: controllers,
    // The chart test compares what the operator asked for, under the chart's RBAC, with the chart's rules.
    auditServiceAccounts: true,
    log: (m) => {
      if (process.env.KSTREAMS_CLUSTER_DEBUG) console.error(`[integration-setup] ${m}`);
    },
  });
  const t = cp.timings;
  console.error(
    `[integration-setup] kube-apiserver ready at ${cp.server} in ${t.totalMs} ms ` +
      `(pki ${t.pkiMs}, etcd ${t.etcdMs}, apiserver ${t.apiServerMs}` +
      `${t.controllerManagerMs !== undefined ? `, controller-manager ${t.controllerManagerMs}` : ''} ms)`,
  );
  const previousKubeconfig = process.env.KUBECONFIG;
  process.env.KUBECONFIG = cp.kubeconfigPath;
  provideAll(cp, controllers);
  return async () => {
    if (previousKubeconfig === undefined) delete process.env.KUBECONFIG;
    else process.env.KUBECONFIG = previousKubeconfig;
    await cp.stop();
  };
}
