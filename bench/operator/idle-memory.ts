// The operator's memory with 0 agents (issue 9: RSS <= 300 MiB at 10k agents, on top of this floor): the
// compiled operator as a real process on a real kube-apiserver + etcd, configured as bench/operator/feed-scale.ts
// runs it (webhook on, in its worker thread, self-managed TLS; the feed on; one replica), with its
// credentials either in a pod's way (ServiceAccount token and CA at the in-cluster paths in a private mount
// namespace: runtime/src/testing/in-cluster-pod.ts; root only) or from a kubeconfig. VmRSS once ready, and
// after REVIEWS AdmissionReviews sent to its webhook (feed-scale's "0 agents" point). With --compare REV the
// same for the tree at REV, compiled the same way; starts interleaved (REV and this tree, each mode, in turn).
// Run by hand: `npx tsx bench/operator/idle-memory.ts [--starts 3] [--compare main]`;
// writes bench/results/<date>-operator-idle-memory.md and .json.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { httpGet, startControlPlane, type ControlPlane } from '../../e2e/cluster/local/controlplane.js';
import { freePort } from '../../e2e/cluster/local/processes.js';
import { KubeRest } from '../../runtime/src/rest.js';
import { podCommand } from '../../runtime/src/testing/in-cluster-pod.js';
import { createNamespace, installCrd } from '../../operator/src/testing/kube.js';
import { admissionLatencies, compileOperator, operatorMain, REPO, rssMiB } from './harness.js';

const { values: args } = parseArgs({
  options: {
    starts: { type: 'string', default: '3' },
    reviews: { type: 'string', default: '2000' },
    compare: { type: 'string' },
    modes: { type: 'string', default: 'in-cluster,kubeconfig' },
  },
});
const STARTS = Number(args.starts);
const REVIEWS = Number(args.reviews);
const MODES = args.modes!.split(',') as ('in-cluster' | 'kubeconfig')[];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The tree at `rev` compiled like compileOperator, in a directory inside the repo (so node_modules resolve). */
function compileRev(rev: string): string {
  const dir = mkdtempSync(join(REPO, 'bench/operator/.build-rev-'));
  const src = join(dir, 'src');
  mkdirSync(src);
  execFileSync('sh', ['-c', `git archive ${rev} | tar -x -C ${JSON.stringify(src)}`], { cwd: REPO });
  const out = join(dir, 'out');
  try {
    execFileSync(process.execPath, [join(REPO, 'node_modules/typescript/bin/tsc'), '-p', join(src, 'tsconfig.build.json'), '--outDir', out], { cwd: src, stdio: 'ignore' });
  } catch (err) {
    try {
      readFileSync(operatorMain(out));
    } catch {
      throw err;
    }
  }
  return out;
}

interface Sample {
  build: string;
  mode: string;
  start: number;
  readyMs: number;
  rssReadyMiB: number;
  rssAfterReviewsMiB: number;
  hwmMiB: number;
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const builds: { name: string; dir: string }[] = [];
  if (args.compare) builds.push({ name: `${args.compare} (${execFileSync('git', ['rev-parse', '--short', args.compare], { cwd: REPO, encoding: 'utf8' }).trim()})`, dir: compileRev(args.compare) });
  builds.push({ name: `this tree (${execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, encoding: 'utf8' }).trim()})`, dir: compileOperator() });
  const tmp = mkdtempSync(join(tmpdir(), 'kstreams-idle-memory-'));
  let cp: ControlPlane | undefined;
  let kube: KubeRest | undefined;
  let operator: ChildProcess | undefined;
  const samples: Sample[] = [];
  const podDirs: string[] = [];
  try {
    cp = await startControlPlane({});
    kube = await KubeRest.create(cp.kubeconfigPath);
    await installCrd(kube);
    const opNs = 'idle-memory-system';
    const shop = 'idle-memory-shop';
    await createNamespace(kube, opNs);
    await createNamespace(kube, shop, { 'kstreams.io/inject': 'enabled' });
    const caPem = readFileSync(cp.caFile, 'utf8');
    for (let start = 1; start <= STARTS; start++) {
      for (const mode of MODES) {
        for (const build of builds) {
          const [feedPort, webhookPort, metricsPort] = [await freePort(), await freePort(), await freePort()];
          const configFile = join(tmp, 'operator.json');
          writeFileSync(
            configFile,
            JSON.stringify({
              identity: 'idle-memory',
              namespace: opNs,
              logLevel: 'warn',
              leaderElection: { enabled: false },
              server: { host: '127.0.0.1', port: metricsPort },
              feed: { host: '127.0.0.1', port: feedPort, advertiseAddress: `127.0.0.1:${feedPort}` },
              webhook: {
                host: '127.0.0.1',
                port: webhookPort,
                namespace: opNs,
                url: `https://127.0.0.1:${webhookPort}/mutate-pods`,
                webhookConfigurationName: 'kstreams-idle-memory',
                tls: { mode: 'self-managed', extraSANs: ['127.0.0.1'] },
              },
            }),
          );
          const argv = [process.execPath, operatorMain(build.dir)];
          const env = { ...process.env, KSTREAMS_OPERATOR_CONFIG: configFile };
          const pod = mode === 'in-cluster' ? podCommand({ server: cp.server, token: cp.token, caPem, argv, env }) : undefined;
          if (pod) podDirs.push(pod.dir);
          // Its log (warnings up) to a file, shown when it does not get ready.
          const logFile = join(tmp, 'operator.log');
          const fd = openSync(logFile, 'w');
          const p = pod
            ? spawn(pod.command, pod.args, { cwd: REPO, env: pod.env, stdio: ['ignore', fd, fd] })
            : spawn(argv[0]!, argv.slice(1), { cwd: REPO, env: { ...env, KUBECONFIG: cp.kubeconfigPath }, stdio: ['ignore', fd, fd] });
          closeSync(fd);
          operator = p;
          const t0 = Date.now();
          for (;;) {
            if (p.exitCode !== null) throw new Error(`the operator (${build.name}, ${mode}) exited with code ${p.exitCode}: ${readFileSync(logFile, 'utf8').slice(-2000)}`);
            const r = await httpGet(`http://127.0.0.1:${metricsPort}/readyz`).catch(() => undefined);
            if (r?.status === 200) break;
            if (Date.now() - t0 > 120_000) throw new Error(`the operator (${build.name}, ${mode}) not ready within 120 s: ${readFileSync(logFile, 'utf8').slice(-2000)}`);
            await sleep(50);
          }
          const readyMs = Date.now() - t0;
          await sleep(2000);
          const ready = rssMiB(p.pid!);
          const secret = await kube.request<{ data: Record<string, string> }>('GET', `/api/v1/namespaces/${opNs}/secrets/kstreams-webhook-tls`);
          const { mutated } = await admissionLatencies(webhookPort, Buffer.from(secret.data['ca.crt']!, 'base64').toString(), shop, REVIEWS);
          if (mutated !== REVIEWS) throw new Error(`the webhook injected ${mutated}/${REVIEWS}`);
          const after = rssMiB(p.pid!);
          samples.push({ build: build.name, mode, start, readyMs, rssReadyMiB: ready.rss, rssAfterReviewsMiB: after.rss, hwmMiB: after.hwm });
          console.log(`start ${start} ${mode} ${build.name}: ready in ${readyMs} ms, RSS ${ready.rss.toFixed(0)} MiB ready, ${after.rss.toFixed(0)} MiB after ${REVIEWS} reviews (peak ${after.hwm.toFixed(0)})`);
          p.kill('SIGTERM');
          await new Promise((r) => (p.exitCode !== null ? r(undefined) : p.once('exit', r)));
          operator = undefined;
        }
      }
    }
  } finally {
    if (operator && operator.exitCode === null) operator.kill('SIGKILL');
    kube?.close();
    await cp?.stop();
    rmSync(tmp, { recursive: true, force: true });
    for (const d of podDirs) rmSync(d, { recursive: true, force: true });
    for (const b of builds) rmSync(b.dir.endsWith('/out') ? join(b.dir, '..') : b.dir, { recursive: true, force: true });
  }
  const range = (xs: number[]) => (Math.min(...xs).toFixed(0) === Math.max(...xs).toFixed(0) ? `${Math.min(...xs).toFixed(0)}` : `${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)}`);
  const rows: string[] = [];
  for (const mode of MODES)
    for (const b of builds) {
      const s = samples.filter((x) => x.mode === mode && x.build === b.name);
      rows.push(`| ${b.name} | ${mode} | ${s.length} | ${range(s.map((x) => x.rssReadyMiB))} | ${range(s.map((x) => x.rssAfterReviewsMiB))} | ${range(s.map((x) => x.hwmMiB))} | ${range(s.map((x) => x.readyMs))} |`);
    }
  const machine = { cpus: cpus().length, model: cpus()[0]?.model ?? '', kernel: release(), node: process.version, loadAfter: loadavg()[0] ?? 0 };
  const base = join(REPO, 'bench/results', `${startedAt.toISOString().slice(0, 16).replace(':', '-')}-operator-idle-memory`);
  const md = [
    `# Operator RSS with 0 agents (${startedAt.toISOString()})`,
    '',
    `\`bench/operator/idle-memory.ts --starts ${STARTS} --reviews ${REVIEWS}${args.compare ? ` --compare ${args.compare}` : ''}\`: the compiled operator (webhook in its worker thread, self-managed TLS, feed on, one replica, no lease) on a kube-apiserver 1.20 + etcd of its own; ${machine.cpus} CPUs (${machine.model}), kernel ${machine.kernel}, Node ${machine.node}, load average ${machine.loadAfter.toFixed(1)} at the end. Starts interleaved; ranges over the starts.`,
    '',
    '| build | credentials | starts | VmRSS ready + 2 s, MiB | VmRSS after the reviews, MiB | VmHWM, MiB | ready in, ms |',
    '|---|---|---|---|---|---|---|',
    ...rows,
    '',
  ].join('\n');
  writeFileSync(`${base}.md`, md);
  writeFileSync(`${base}.json`, JSON.stringify({ startedAt: startedAt.toISOString(), machine, starts: STARTS, reviews: REVIEWS, samples }, null, 2));
  console.log(md);
  console.log(`wrote ${base}.md`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
