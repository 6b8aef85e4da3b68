// vitest globalSetup for the e2e suite (vitest.e2e.config.ts):
//
//   KSTREAMS_E2E_CLUSTER=local (default when KUBECONFIG is unset): assembles a one-node cluster on this machine
//     (etcd, kube-apiserver, controller-manager, scheduler, containerd, kubelet; see docs/local-cluster.md),
//     imports a busybox image, and tears it all down after the run. The apiserver routes calls to Services
//     (webhooks) straight to their endpoints (--enable-aggregator-routing): there is no kube-proxy.
//   KSTREAMS_E2E_CLUSTER=kubeconfig (default when KUBECONFIG is set): uses that cluster (kind, ...) as is.
//
// In a test:
//   import { inject } from 'vitest';
//   inject('kubeconfig')        path of an admin kubeconfig (also in process.env.KUBECONFIG of the main process)
//   inject('clusterProvider')   'local' | 'kubeconfig'
//   inject('containerdSocket')  local only: containerd socket for `ctr --address <sock> -n k8s.io images import x.tar`
//                               (pods then use imagePullPolicy: Never); '' otherwise
//   inject('busyboxImage')      local only: an image with busybox-static (sh, httpd, nc, ...); '' otherwise
//   inject('hostIP')            local only: the host's address on the pod bridge (pods reach host listeners there)
import type { TestProject } from 'vitest/node';
import { startControlPlane, type ControlPlane } from './controlplane.js';
import { startNode, type LocalNode } from './node.js';

declare module 'vitest' {
  export interface ProvidedContext {
    kubeconfig: string;
    clusterProvider: 'local' | 'kubeconfig';
    containerdSocket: string;
    busyboxImage: string;
    hostIP: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const provider = process.env.KSTREAMS_E2E_CLUSTER ?? (process.env.KUBECONFIG ? 'kubeconfig' : 'local');
  if (provider !== 'local') {
    if (!process.env.KUBECONFIG) throw new Error('KSTREAMS_E2E_CLUSTER=kubeconfig needs KUBECONFIG');
    project.provide('kubeconfig', process.env.KUBECONFIG);
    project.provide('clusterProvider', 'kubeconfig');
    project.provide('containerdSocket', '');
    project.provide('busyboxImage', '');
    project.provide('hostIP', '');
    return async () => {};
  }
  const log = (m: string) => console.error(`[e2e-setup] ${m}`);
  const t0 = performance.now();
  let cp: ControlPlane | undefined;
  let node: LocalNode | undefined;
  try {
    cp = await startControlPlane({
      controllerManager: true,
      scheduler: true,
      log,
      // No kube-proxy on the local node: the apiserver calls webhooks (and aggregated APIs) given as a Service
      // on one of the Service's endpoints (pod IPs on the bridge) instead of its ClusterIP.
      extraApiServerArgs: ['--enable-aggregator-routing=true'],
    });
    node = await startNode({ controlPlane: cp, log });
    const busybox = await node.importBusyboxImage();
    log(`local cluster ready in ${Math.round(performance.now() - t0)} ms (control plane ${cp.timings.totalMs}, node ${node.timings.totalMs})`);
    const previous = process.env.KUBECONFIG;
    process.env.KUBECONFIG = cp.kubeconfigPath;
    project.provide('kubeconfig', cp.kubeconfigPath);
    project.provide('clusterProvider', 'local');
    project.provide('containerdSocket', node.containerdSocket);
    project.provide('busyboxImage', busybox);
    project.provide('hostIP', node.gatewayIP);
    const [c, n] = [cp, node];
    return async () => {
      if (previous === undefined) delete process.env.KUBECONFIG;
      else process.env.KUBECONFIG = previous;
      await n.stop();
      await c.stop();
    };
  } catch (e) {
    await node?.stop().catch(() => {});
    await cp?.stop().catch(() => {});
    throw e;
  }
}
