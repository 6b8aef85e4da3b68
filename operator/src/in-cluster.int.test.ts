// The operator run as in a pod (ServiceAccount token and CA at the in-cluster paths in a private mount
// namespace, KUBERNETES_SERVICE_HOST/PORT, no kubeconfig: runtime/src/testing/in-cluster-pod.ts) against the
// real apiserver: it leads, manages its webhook's Secret and MutatingWebhookConfiguration, the apiserver calls
// its webhook worker, and it never loads @kubernetes/client-node (~75 MiB of RSS). Every module the process
// and its worker thread load is recorded by a loader hook (test/module-log); with a kubeconfig the same hook
// sees client-node load, which shows it would see it. Root only (the mount namespace).
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { KubeRest, isStatus } from '../../runtime/src/rest.js';
import { podCommand } from '../../runtime/src/testing/in-cluster-pod.js';
import { operatorArgv, readyzStatus, spawnOperator, type OperatorProcess } from './testing/operator-process.js';
import { createNamespace, eventually, freeLoopbackPort, freshName, installCrd, podManifest } from './testing/kube.js';

const kubeconfig = inject('kubeconfig');
const apiServer = inject('apiServer');
const adminToken = inject('adminToken');
const apiServerCaFile = inject('apiServerCaFile');
const REPO = fileURLToPath(new URL('../../', import.meta.url));
const MODULE_LOG_HOOK = join(REPO, 'test/module-log/register.mjs');
const CLIENT_NODE = '/node_modules/@kubernetes/client-node/';

interface Run extends OperatorProcess {
  modules: () => string[];
  opNs: string;
  healthPort: number;
  mwc: string;
  webhookPort: number;
}

describe('the operator in a pod (in-cluster credentials)', () => {
  let kube: KubeRest;
  const runs: Run[] = [];
  const cleanup: (() => void)[] = [];
  const namespaces: string[] = [];
  const webhookConfigs: string[] = [];

  beforeAll(async () => {
    kube = await KubeRest.create(kubeconfig);
    await installCrd(kube);
  });

  afterAll(async () => {
    for (const r of runs) await r.kill();
    for (const c of cleanup) c();
    for (const name of webhookConfigs) await kube.request('DELETE', `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/${name}`).catch(() => undefined);
    for (const ns of namespaces) await kube.request('DELETE', `/api/v1/namespaces/${ns}`).catch(() => undefined);
    kube?.close();
  });

  /** Starts main.ts (under tsx, with the module log), in a pod or with the kubeconfig. */
  async function start(mode: 'in-cluster' | 'kubeconfig'): Promise<Run> {
    const opNs = freshName('ksic-op');
    await createNamespace(kube, opNs);
    namespaces.push(opNs);
    const [healthPort, webhookPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
    const mwc = freshName('ksic-injector');
    webhookConfigs.push(mwc);
    const tmp = mkdtempSync(join(tmpdir(), 'ksic-'));
    cleanup.push(() => rmSync(tmp, { recursive: true, force: true }));
    const configFile = join(tmp, 'operator.json');
    writeFileSync(
      configFile,
      JSON.stringify({
        namespace: opNs,
        identity: `ksic-${mode}`,
        logLevel: 'info',
        leaderElection: { enabled: true, leaseDurationMs: 4000, renewDeadlineMs: 3000, retryPeriodMs: 500 },
        server: { host: '127.0.0.1', port: healthPort },
        feed: { host: '127.0.0.1', port: 0 },
        webhook: {
          port: webhookPort,
          host: '127.0.0.1',
          url: `https://127.0.0.1:${webhookPort}/mutate-pods`,
          webhookConfigurationName: mwc,
          tls: { mode: 'self-managed', extraSANs: ['127.0.0.1'] },
        },
      }),
    );
    const moduleLog = join(tmp, 'modules.txt');
    const argv = operatorArgv(['--import', MODULE_LOG_HOOK]);
    const base = { ...process.env, KSTREAMS_OPERATOR_CONFIG: configFile, KSTREAMS_MODULE_LOG: moduleLog };
    let command: string;
    let args: string[];
    let env: Record<string, string | undefined>;
    if (mode === 'in-cluster') {
      const pod = podCommand({ server: apiServer, token: adminToken, caPem: readFileSync(apiServerCaFile, 'utf8'), argv, env: base });
      cleanup.push(() => rmSync(pod.dir, { recursive: true, force: true }));
      ({ command, args, env } = pod);
    } else {
      [command, args, env] = [argv[0]!, argv.slice(1), { ...base, KUBECONFIG: kubeconfig }];
    }
    const run: Run = {
      ...spawnOperator(`ksic-${mode}`, command, args, env),
      modules: () => (existsSync(moduleLog) ? readFileSync(moduleLog, 'utf8').split('\n').filter(Boolean) : []),
      opNs,
      healthPort,
      mwc,
      webhookPort,
    };
    runs.push(run);
    return run;
  }

  /** What to show when it exits non-zero: its warnings and errors, every line from 'shutting down' on, stderr. */
  function exitReport(op: Run): string {
    const from = op.lines.findIndex((l) => l.msg === 'shutting down');
    const shown = op.lines.filter((l, i) => typeof l.level !== 'number' || l.level >= 40 || (from >= 0 && i >= from));
    return `${shown.map((l) => JSON.stringify(l)).join('\n')}\n${op.stderr()}`;
  }

  /** Until its /readyz answers 200; an exit on the way fails with its stderr. */
  async function ready(op: Run): Promise<void> {
    await eventually(
      'the operator ready',
      async () => {
        if (op.child.exitCode !== null) throw new Error(`the operator exited ${op.child.exitCode}: ${op.stderr()}`);
        return (await readyzStatus(op.healthPort)) === 200;
      },
      60_000,
    );
  }

  it('leads, manages its webhook TLS and configuration, is called by the apiserver, and never loads @kubernetes/client-node', async () => {
    const op = await start('in-cluster');
    await ready(op);
    expect(op.lines.find((l) => l.msg === 'apiserver credentials loaded')?.credentials).toBe('in-cluster');
    // The Lease, through its in-cluster credentials.
    await eventually('the Lease held', async () => {
      const lease = await kube.request<{ spec?: { holderIdentity?: string } }>('GET', `/apis/coordination.k8s.io/v1/namespaces/${op.opNs}/leases/kstreams-operator`).catch((e: unknown) => {
        if (isStatus(e, 404)) return undefined;
        throw e;
      });
      return lease?.spec?.holderIdentity === 'ksic-in-cluster';
    });
    // The Secret it created and the caBundle it wrote match.
    const secret = await kube.request<{ data: Record<string, string> }>('GET', `/api/v1/namespaces/${op.opNs}/secrets/kstreams-webhook-tls`);
    const mwc = await kube.request<{ webhooks: { clientConfig: { caBundle?: string } }[] }>('GET', `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/${op.mwc}`);
    expect(Buffer.from(mwc.webhooks[0]!.clientConfig.caBundle ?? '', 'base64').toString()).toContain(Buffer.from(secret.data['ca.crt']!, 'base64').toString().trim());
    // The apiserver calls the webhook (in its worker thread) for a pod of an opted-in namespace: injected.
    const shop = freshName('ksic-shop');
    await createNamespace(kube, shop, { 'kstreams.io/inject': 'enabled' });
    namespaces.push(shop);
    await eventually(
      'a pod injected through the webhook',
      async () => {
        const pod = await kube.request<{ spec: { containers: { name: string }[]; initContainers?: { name: string }[] } }>('POST', `/api/v1/namespaces/${shop}/pods?dryRun=All`, {
          body: podManifest(freshName('pod'), { labels: { app: 'x' } }),
        });
        return [...pod.spec.containers, ...(pod.spec.initContainers ?? [])].some((c) => c.name === 'kstreams-sidecar');
      },
      30_000,
    );

    const modules = op.modules();
    // The hook saw both threads: the entry and the webhook worker's module.
    expect(modules.some((m) => m.endsWith('/operator/src/main.ts'))).toBe(true);
    expect(modules.some((m) => m.endsWith('/operator/src/webhook/worker.ts'))).toBe(true);
    expect(modules.filter((m) => m.includes(CLIENT_NODE))).toEqual([]);

    op.child.kill('SIGTERM');
    expect((await op.exit).code, exitReport(op)).toBe(0);
  });

  it('with a kubeconfig the same hook sees @kubernetes/client-node load (it reads the kubeconfig)', async () => {
    const op = await start('kubeconfig');
    await ready(op);
    expect(op.lines.find((l) => l.msg === 'apiserver credentials loaded')?.credentials).toBe(`kubeconfig ${kubeconfig}`);
    expect(op.modules().filter((m) => m.includes(CLIENT_NODE)).length).toBeGreaterThan(10);
    op.child.kill('SIGTERM');
    expect((await op.exit).code, exitReport(op)).toBe(0);
  });
});
