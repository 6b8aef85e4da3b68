// Records the error objects @kubernetes/client-node 1.4 and the operator's own transport (KubeRest) throw,
// against a real apiserver, into api-errors.recorded.json: the unit tests of the error formatter run on
// these instead of hand-made look-alikes. Re-record after a client-node upgrade:
//   npx tsx runtime/src/testing/record-api-errors.ts
// It starts its own local control plane (e2e/cluster/local) and, for ENETUNREACH, runs one request inside a
// network namespace of its own that has only loopback (ksh3-rec-<pid>), so no packet leaves the machine.
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { startControlPlane } from '../../../e2e/cluster/local/controlplane.js';
import { KubeRest } from '../rest.js';

const OUT = fileURLToPath(new URL('./api-errors.recorded.json', import.meta.url));

/** What survives JSON: own enumerable properties plus name, message and (for causes) the same, recursively. */
export function snapshot(err: unknown): Record<string, unknown> {
  if (typeof err !== 'object' || err === null) return { value: String(err) };
  const e = err as Record<string, unknown> & Error;
  const out: Record<string, unknown> = { constructor: e.constructor?.name, name: e.name, message: e.message };
  for (const [k, v] of Object.entries(e)) {
    if (k === 'headers' && v && typeof v === 'object') out[k] = { 'content-type': (v as Record<string, unknown>)['content-type'] };
    else if (k === 'cause' || (v && typeof v === 'object' && v instanceof Error)) out[k] = snapshot(v);
    else if (typeof v !== 'function') out[k] = v;
  }
  if (e.cause !== undefined && out.cause === undefined) out.cause = snapshot(e.cause);
  return out;
}

async function capture(fn: () => Promise<unknown>): Promise<Record<string, unknown>> {
  try {
    await fn();
  } catch (err) {
    return snapshot(err);
  }
  throw new Error('expected an error');
}

function kubeconfigFor(server: string, base: KubeConfig, as?: string): KubeConfig {
  const kc = new KubeConfig();
  const cluster = base.getCurrentCluster()!;
  const user = base.getCurrentUser()!;
  kc.loadFromOptions({
    clusters: [{ ...cluster, server }],
    users: [{ ...user, ...(as ? { impersonateUser: as } : {}) }],
    contexts: [{ name: 'c', cluster: cluster.name, user: user.name }],
    currentContext: 'c',
  });
  return kc;
}

async function main(): Promise<void> {
  if (process.argv[2] === '--unreachable') {
    // Child mode, inside the loopback-only netns: the route lookup fails before any packet is sent.
    const base = new KubeConfig();
    base.loadFromFile(process.argv[3]!);
    const core = kubeconfigFor('https://10.255.255.1:6443', base).makeApiClient(CoreV1Api);
    const restErr = await capture(async () => {
      const r = await KubeRest.create(process.argv[4]);
      try {
        await r.request('GET', '/api/v1/namespaces/kstreams-system/secrets/kstreams-webhook-tls');
      } finally {
        r.close();
      }
    });
    process.stdout.write(JSON.stringify({ clientNode: await capture(() => core.readNamespacedSecret({ name: 'kstreams-webhook-tls', namespace: 'kstreams-system' })), rest: restErr }));
    return;
  }
  const cp = await startControlPlane();
  const netns = `ksh3-rec-${process.pid}`;
  const refusedPort = await new Promise<number>((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  try {
    const base = new KubeConfig();
    base.loadFromFile(cp.kubeconfigPath);
    const admin = base.makeApiClient(CoreV1Api);
    const nobody = kubeconfigFor(cp.server, base, 'kstreams-nobody').makeApiClient(CoreV1Api);
    const refused = kubeconfigFor(`https://127.0.0.1:${refusedPort}`, base).makeApiClient(CoreV1Api);
    await admin.createNamespace({ body: { metadata: { name: 'kstreams-system' } } });
    const secret = { metadata: { name: 'kstreams-webhook-tls' }, type: 'kubernetes.io/tls', data: { 'tls.crt': '', 'tls.key': '' } };
    await admin.createNamespacedSecret({ namespace: 'kstreams-system', body: secret });
    const rest = await KubeRest.create(cp.kubeconfigPath);
    const refusedKubeconfig = `${cp.dir}/refused.kubeconfig`;
    writeFileSync(refusedKubeconfig, kubeconfigFor(`https://127.0.0.1:${refusedPort}`, base).exportConfig());
    const unreachableKubeconfig = `${cp.dir}/unreachable.kubeconfig`;
    writeFileSync(unreachableKubeconfig, kubeconfigFor('https://10.255.255.1:6443', base).exportConfig());
    const restRefused = await KubeRest.create(refusedKubeconfig);

    const recorded: Record<string, unknown> = {
      clientNodeForbiddenGetSecret: await capture(() => nobody.readNamespacedSecret({ name: 'kstreams-webhook-tls', namespace: 'kstreams-system' })),
      clientNodeForbiddenCreateSecret: await capture(() => nobody.createNamespacedSecret({ namespace: 'kstreams-system', body: secret })),
      clientNodeNotFound: await capture(() => admin.readNamespacedSecret({ name: 'absent', namespace: 'kstreams-system' })),
      clientNodeConflict: await capture(() => admin.createNamespacedSecret({ namespace: 'kstreams-system', body: secret })),
      clientNodeInvalid: await capture(() => admin.createNamespacedSecret({ namespace: 'kstreams-system', body: { metadata: { name: 'Not_Valid' } } })),
      clientNodeRefused: await capture(() => refused.readNamespacedSecret({ name: 'kstreams-webhook-tls', namespace: 'kstreams-system' })),
      restForbidden: await capture(async () => {
        const r = await KubeRest.create(cp.kubeconfigPath);
        (r as unknown as { headers: Record<string, string>; headersAt: number }).headersAt = Date.now();
        (r as unknown as { headers: Record<string, string> }).headers = { Authorization: `Bearer ${cp.token}`, 'Impersonate-User': 'kstreams-nobody' };
        try {
          await r.request('GET', '/apis/coordination.k8s.io/v1/namespaces/kstreams-system/leases/kstreams-operator');
        } finally {
          r.close();
        }
      }),
      restNotFound: await capture(() => rest.request('GET', '/api/v1/namespaces/kstreams-system/secrets/absent')),
      restRefused: await capture(() => restRefused.request('GET', '/api/v1/namespaces/kstreams-system/secrets/kstreams-webhook-tls')),
    };
    rest.close();
    restRefused.close();
    execFileSync('ip', ['netns', 'add', netns]);
    try {
      execFileSync('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
      const out = execFileSync('ip', ['netns', 'exec', netns, process.execPath, '--import', 'tsx', fileURLToPath(import.meta.url), '--unreachable', cp.kubeconfigPath, unreachableKubeconfig]);
      const { clientNode, rest: restUnreachable } = JSON.parse(out.toString()) as Record<string, Record<string, unknown>>;
      recorded.clientNodeUnreachable = clientNode;
      recorded.restUnreachable = restUnreachable;
    } finally {
      execFileSync('ip', ['netns', 'del', netns]);
    }
    writeFileSync(OUT, JSON.stringify(recorded, null, 2) + '\n');
    console.log(`wrote ${OUT}`);
  } finally {
    await cp.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
