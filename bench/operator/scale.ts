// Operator scale bench: RSS and reconcile lag with 1000 StreamPaths and 10,000 pods in its caches, against
// a real kube-apiserver + etcd. Run by hand: `npx tsx bench/operator/scale.ts` (starts its own control
// plane unless KUBECONFIG is set). Targets: <= 200 MiB resident, lag <= 1 s (StreamPath edit -> its
// status.observedGeneration updated).
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { startControlPlane, type ControlPlane } from '../../e2e/cluster/local/controlplane.js';
import { streamPathPath } from '../../operator/src/controller/reconciler.js';
import { KubeRest } from '../../runtime/src/rest.js';
import { createNamespace, createPod, createStreamPath, exampleSpec, getStreamPath, installCrd } from '../../operator/src/testing/kube.js';
import { percentile } from '../webhook/stats.js';
import { compileOperator, operatorMain, pool, REPO, rssMiB } from './harness.js';

const NAMESPACES = Number(process.env.BENCH_NAMESPACES ?? 100);
const PODS = Number(process.env.BENCH_PODS ?? 10_000);
const STREAMPATHS = Number(process.env.BENCH_STREAMPATHS ?? 1000);
const LAG_SAMPLES = Number(process.env.BENCH_LAG_SAMPLES ?? 30);
const CONCURRENCY = 32;

const pct = (xs: number[], p: number) => percentile(xs, p / 100);

async function main(): Promise<void> {
  let cp: ControlPlane | undefined;
  let kubeconfig = process.env.KUBECONFIG;
  let operator: ReturnType<typeof spawn> | undefined;
  const outDir = compileOperator();
  if (!kubeconfig) {
    cp = await startControlPlane({}).catch((err: unknown) => {
      rmSync(outDir, { recursive: true, force: true });
      throw err;
    });
    kubeconfig = cp.kubeconfigPath;
    console.log(`control plane up in ${cp.timings.totalMs} ms`);
  }
  const kube = await KubeRest.create(kubeconfig);
  try {
    await installCrd(kube);
    const run = Math.random().toString(16).slice(2, 6);
    const namespaces = Array.from({ length: NAMESPACES }, (_, i) => `bench-${run}-${i}`);
    await pool(namespaces, 8, (ns) => createNamespace(kube, ns, { 'kstreams.io/inject': 'enabled' }));

    // Pods: injected (pending, no IP yet, so no agent to poll), spread over the namespaces, 10 apps each.
    const pods = Array.from({ length: PODS }, (_, i) => ({ ns: namespaces[i % NAMESPACES]!, name: `pod-${i}`, app: `app-${Math.floor(i / NAMESPACES) % 10}` }));
    let t = Date.now();
    await pool(pods, CONCURRENCY, async (p) => void (await createPod(kube, p.ns, p.name, { labels: { app: p.app }, agentPort: 15090 })));
    const podsMs = Date.now() - t;
    console.log(`created ${PODS} pods in ${(podsMs / 1000).toFixed(1)} s (${Math.round(PODS / (podsMs / 1000))}/s, concurrency ${CONCURRENCY})`);

    const sps = Array.from({ length: STREAMPATHS }, (_, i) => ({ ns: namespaces[i % NAMESPACES]!, name: `sp-${i}`, app: `app-${Math.floor(i / NAMESPACES) % 10}` }));
    t = Date.now();
    await pool(sps, CONCURRENCY, async (s) => void (await createStreamPath(kube, s.ns, s.name, exampleSpec(s.app))));
    console.log(`created ${STREAMPATHS} StreamPaths in ${((Date.now() - t) / 1000).toFixed(1)} s`);

    // The operator, as a real process with production defaults except the lease in a bench namespace.
    const opNs = `bench-${run}-system`;
    await createNamespace(kube, opNs);
    const started = Date.now();
    operator = spawn(process.execPath, [operatorMain(outDir)], {
      cwd: REPO,
      env: { ...process.env, KUBECONFIG: kubeconfig, KSTREAMS_NAMESPACE: opNs, KSTREAMS_IDENTITY: 'bench', KSTREAMS_WEBHOOK_ENABLED: 'false', KSTREAMS_METRICS_PORT: '0', KSTREAMS_LOG_LEVEL: 'warn', KSTREAMS_LEADER_ELECTION: 'false' },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    const pid = operator.pid!;

    // Initial convergence: every StreamPath has a status for generation 1.
    for (;;) {
      const list = await kube.request<{ items: { status?: { observedGeneration?: number } }[] }>('GET', '/apis/kstreams.io/v1alpha1/streampaths');
      const done = list.items.filter((i) => i.status?.observedGeneration === 1).length;
      if (done === STREAMPATHS) break;
      if (operator.exitCode !== null) throw new Error(`the operator exited with code ${operator.exitCode}`);
      if (Date.now() - started > 300_000) throw new Error(`only ${done}/${STREAMPATHS} StreamPaths reconciled after 300 s`);
      await new Promise((r) => setTimeout(r, 250));
    }
    const convergeMs = Date.now() - started;
    console.log(`operator start -> all ${STREAMPATHS} StreamPaths reconciled: ${(convergeMs / 1000).toFixed(1)} s`);
    const sample = await getStreamPath(kube, sps[0]!.ns, sps[0]!.name);
    console.log(`sample status: podsSelected=${sample?.status?.podsSelected} Ready=${sample?.status?.conditions?.find((c) => c.type === 'Ready')?.reason}`);
    const afterSync = rssMiB(pid);

    // Lag: edit one StreamPath at a time, time until its observedGeneration follows (polled every 5 ms).
    const lags: number[] = [];
    for (let i = 0; i < LAG_SAMPLES; i++) {
      const s = sps[Math.floor(Math.random() * sps.length)]!;
      const edited = await kube.request<{ metadata: { generation: number } }>('PATCH', streamPathPath(s.ns, s.name), { body: { spec: { port: 10_000 + i } }, patch: 'merge' });
      const t0 = Date.now();
      for (;;) {
        const sp = await getStreamPath(kube, s.ns, s.name);
        if ((sp?.status?.observedGeneration ?? 0) >= edited.metadata.generation) break;
        if (Date.now() - t0 > 30_000) throw new Error(`no status for ${s.ns}/${s.name} generation ${edited.metadata.generation} after 30 s`);
        await new Promise((r) => setTimeout(r, 5));
      }
      lags.push(Date.now() - t0);
    }
    const end = rssMiB(pid);
    const p50 = pct(lags, 50);
    const p99 = pct(lags, 99);
    const max = Math.max(...lags);
    console.log('');
    console.log(`operator with ${STREAMPATHS} StreamPaths, ${PODS} pods, ${NAMESPACES + 1} namespaces in cache:`);
    console.log(`  RSS after sync        ${afterSync.rss.toFixed(0)} MiB`);
    console.log(`  RSS at end            ${end.rss.toFixed(0)} MiB (peak ${end.hwm.toFixed(0)} MiB)   target <= 200 MiB: ${end.hwm <= 200 ? 'met' : 'MISSED'}`);
    console.log(`  reconcile lag (n=${lags.length})  p50 ${p50} ms, p99 ${p99} ms, max ${max} ms   target <= 1000 ms: ${max <= 1000 ? 'met' : 'MISSED'}`);
    console.log(`  initial convergence   ${(convergeMs / 1000).toFixed(1)} s`);
  } finally {
    if (operator && operator.exitCode === null) {
      operator.kill('SIGTERM');
      await new Promise((r) => operator!.once('exit', r));
    }
    kube.close();
    await cp?.stop();
    rmSync(outDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
