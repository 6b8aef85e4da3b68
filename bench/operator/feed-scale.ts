// The control plane at scale (issue 9, item 2; docs/adr/0008): N simulated agents, each the sidecar's real
// feed client on its own TLS connection (ALPN kstreams-feed/1) with a token minted by the real apiserver's TokenRequest for
// its own pod, against the compiled operator run as a real process (webhook and feed on, one replica) on a
// real kube-apiserver + etcd. Measures:
//   1. edit-to-all-agents propagation: one wide StreamPath per namespace (1000 pods each) edited at once,
//      until every agent received the new generation: p50/p99/max;
//   2. the operator's CPU seconds and RSS (VmRSS, VmHWM) idle with N streams and during the edit;
//   3. status writes while every agent's counters change every second (as under traffic): per StreamPath,
//      the most writes of one within 10 s as a watch on streampaths sees them (the bound), and the
//      apiserver's own apiserver_request_total for streampaths/status per s;
//   4. reconnect storm: SIGKILL the operator, start it again, until every agent is configured again; Ready
//      transitions of the StreamPaths across it; the TokenReviews it cost;
//   5. webhook p99: AdmissionReviews sent straight to the webhook's HTTPS port (paced: --webhook-per-second),
//      with 0 and N agents connected.
// Run by hand: `npx tsx bench/operator/feed-scale.ts [--agents 500] [--generators 4]`; writes
// bench/results/<date>-feed-scale-<N>.md and .json. Not a timed test.
import { execFileSync, fork, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { httpGet, startControlPlane, type ControlPlane } from '../../e2e/cluster/local/controlplane.js';
import { freePort } from '../../e2e/cluster/local/processes.js';
import { streamPathPath } from '../../operator/src/controller/reconciler.js';
import { KubeRest } from '../../runtime/src/rest.js';
import { podCommand } from '../../runtime/src/testing/in-cluster-pod.js';
import { podToken } from '../../operator/src/testing/feed-agent.js';
import { createNamespace, createPod, createStreamPath, exampleSpec, installCrd } from '../../operator/src/testing/kube.js';
import { processTicks, USER_HZ } from '../src/procfs.js';
import { counterSum, percentile } from '../webhook/stats.js';
import { writeSpacing } from './write-spacing.js';
import type { AgentSpec, QueryMessage, Stats } from './feed-agents.js';
import { admissionLatencies, compileOperator, operatorMain, pool, REPO, rssMiB } from './harness.js';

const { values: args } = parseArgs({
  options: {
    agents: { type: 'string', default: '500' },
    generators: { type: 'string', default: '4' },
    'pods-per-namespace': { type: 'string', default: '1000' },
    'idle-seconds': { type: 'string', default: '20' },
    'webhook-reviews': { type: 'string', default: '2000' },
    /** Reviews started per second (0: 4 at a time, as fast as answered). 100: 2000 span 20 s, more than a counter period. */
    'webhook-per-second': { type: 'string', default: '100' },
    'counter-ms': { type: 'string', default: '1000' },
    'start-per-second': { type: 'string', default: '100' },
    'phase-timeout': { type: 'string', default: '300' },
    'generator-nice': { type: 'string', default: '10' },
    // in-cluster: the operator reads a ServiceAccount token and CA at the pod's paths (a private mount
    // namespace), as in production, where it loads no client-node; kubeconfig: as the runs before 2026-12-02 17:00.
    credentials: { type: 'string', default: 'in-cluster' },
    /** The operator's feed transport (feed.transport): native, node or auto. */
    transport: { type: 'string', default: 'native' },
    /** Write a V8 CPU profile of the operator's main thread over the edit window into this directory (cpu-profile.cjs). */
    'profile-edit': { type: 'string' },
    /** Also take the kube-apiserver's CPU profile (Go pprof, 3 s from the PATCHes) into this file. */
    'profile-apiserver': { type: 'string' },
    /** Also `perf record` the operator (all its threads, no call graphs) over the edit window into this file. */
    'perf-edit': { type: 'string' },
    /** Write V8 heap snapshots of the operator's main thread into this directory (heap-snapshot.cjs): with 0 agents and idle with N. */
    'heap-snapshot': { type: 'string' },
    /** Node flags for the operator process, space-separated, given with = (--operator-node-flags="--max-semi-space-size=8"). */
    // Default: the flags of the chart's operator.command (charts/kstreams/values.yaml); "" runs V8's defaults.
    'operator-node-flags': { type: 'string' },
    /** The operator's statusWritesPerSecond (the budget of counter-only status writes); default: the operator's (20). 0: none. */
    'status-writes-per-second': { type: 'string' },
  },
});
const N = Number(args.agents);
const GENERATORS = Math.min(Number(args.generators), N);
const PER_NS = Math.min(N, Number(args['pods-per-namespace']));
const IDLE_S = Number(args['idle-seconds']);
const REVIEWS = Number(args['webhook-reviews']);
const REVIEWS_PER_S = Number(args['webhook-per-second']);
const COUNTER_MS = Number(args['counter-ms']);
const START_PER_S = Number(args['start-per-second']);
/** Each phase (all connected, all Ready, all at the new generation, all back after the restart) must end within this. */
const PHASE_MS = Number(args['phase-timeout']) * 1000;
/**
 * Niceness of the generator processes. In a cluster the agents run on other nodes; here N simulated agents
 * share the operator's cores, and at equal priority a reconnect storm of 10,000 of them left the operator a
 * fair share of a sixth of a core (load 12). Nice 10 gives the operator and the apiserver the CPU first, so
 * the figures are the control plane's; the agents' own time still delays when they see a config.
 */
const GENERATOR_NICE = Number(args['generator-nice']);
const CREDENTIALS = args.credentials;
const TRANSPORT = args.transport as 'native' | 'node' | 'auto';
if (!['native', 'node', 'auto'].includes(TRANSPORT)) throw new Error(`--transport: native, node or auto, not ${TRANSPORT}`);
if (CREDENTIALS !== 'in-cluster' && CREDENTIALS !== 'kubeconfig') throw new Error(`--credentials: in-cluster or kubeconfig, not ${CREDENTIALS}`);
const PROFILE_DIR = args['profile-edit'];
/** The node flags of the chart's operator.command: what the operator runs with in a cluster. */
function chartNodeFlags(): string {
  const values = parseYaml(readFileSync(join(REPO, 'charts/kstreams/values.yaml'), 'utf8')) as { operator: { command: string[] } };
  return values.operator.command.filter((a) => a.startsWith('--')).join(' ');
}
const OPERATOR_NODE_FLAGS = args['operator-node-flags'] ?? chartNodeFlags();
const PERF_FILE = args['perf-edit'];
const HEAP_DIR = args['heap-snapshot'];
const CONCURRENCY = 32;
/** Pods per narrow StreamPath (app label). */
const APP_PODS = 10;
const WARMUP_MS = 30_000;
const STATUS_INTERVAL_MS = 10_000;
const WRITE_BUDGET = args['status-writes-per-second'] === undefined ? undefined : Number(args['status-writes-per-second']);
/** Watch delivery jitter allowed between two writes of one StreamPath an interval apart. */
const WATCH_JITTER_MS = 500;

const TARGETS = { propagationP99Ms: 2000, writesPerStreamPathPer10s: 1, rssMiB: 300, webhookP99Ratio: 1.2 };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** V8's heap spaces as prom-client labels them (nodejs_heap_space_size_*_bytes{space=...}). */
const V8_SPACES = ['new', 'old', 'code', 'large_object', 'new_large_object', 'code_large_object', 'read_only'];

/** With --heap-snapshot: the operator's n-th heap snapshot (SIGWINCH), awaited until written. */
async function heapSnapshot(pid: number, n: number): Promise<void> {
  if (!HEAP_DIR) return;
  mkdirSync(HEAP_DIR, { recursive: true });
  process.kill(pid, 'SIGWINCH');
  const done = join(HEAP_DIR, `${pid}-${n}.heapsnapshot.done`);
  const t0 = Date.now();
  while (!existsSync(done)) {
    if (Date.now() - t0 > 300_000) throw new Error(`no heap snapshot ${done} within 300 s`);
    await sleep(200);
  }
  console.log(`heap snapshot ${n} written in ${Date.now() - t0} ms`);
}
const cpuSeconds = (pid: number) => (processTicks(pid) ?? 0) / USER_HZ;
const mark = (ok: boolean) => (ok ? 'met' : 'MISSED');

interface Generator {
  child: ChildProcess;
  query(q: Omit<QueryMessage, 'type' | 'id'>): Promise<Stats>;
}

function startGenerator(): Promise<Generator> {
  // With --profile-edit the simulated agents are profiled over the edit too (the same SIGUSR2s as the operator).
  const profiling = PROFILE_DIR ? ['--require', join(REPO, 'bench/operator/cpu-profile.cjs')] : [];
  const child = fork(join(REPO, 'bench/operator/feed-agents.ts'), [], {
    execArgv: ['--import', 'tsx', ...profiling],
    env: { ...process.env, ...(PROFILE_DIR ? { KSTREAMS_CPU_PROFILE_DIR: PROFILE_DIR } : {}) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  if (GENERATOR_NICE !== 0 && child.pid !== undefined) setPriority(child.pid, GENERATOR_NICE);
  let nextId = 0;
  const waiting = new Map<number, (s: Stats) => void>();
  child.on('message', (m: { type: string; id?: number } & Stats) => {
    if (m.type === 'stats') waiting.get(m.id!)?.(m);
  });
  const query = (q: Omit<QueryMessage, 'type' | 'id'>) =>
    new Promise<Stats>((resolve) => {
      const id = nextId++;
      waiting.set(id, (s) => {
        waiting.delete(id);
        resolve(s);
      });
      child.send({ type: 'query', id, ...q });
    });
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`load generator exited with ${code} before it was ready`)));
    child.on('message', (m: { type: string }) => {
      if (m.type === 'ready') resolve({ child, query });
    });
  });
}

/** Sums the generators' stats; reachedAt is concatenated. */
async function allStats(gens: Generator[], q: Omit<QueryMessage, 'type' | 'id'>): Promise<Stats> {
  const parts = await Promise.all(gens.map((g) => g.query(q)));
  const sum: Stats = { agents: 0, connected: 0, configured: 0, reached: 0, configuredSince: 0, rssMiB: 0, ...(q.times ? { reachedAt: [] } : {}) };
  for (const p of parts) {
    for (const k of ['agents', 'connected', 'configured', 'reached', 'configuredSince', 'rssMiB'] as const) sum[k] += p[k];
    if (q.times) sum.reachedAt!.push(...(p.reachedAt ?? []));
  }
  return sum;
}

let interrupted: string | undefined;
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => (interrupted = sig));

async function until<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (interrupted) throw new Error(`${interrupted} while waiting for ${what}`);
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** The operator's log lines counted by level and message (errors shortened to their first 120 characters). */
function logSummary(file: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    let key: string;
    try {
      const j = JSON.parse(line) as { level?: number; msg?: string; err?: { message?: string } };
      key = `[${j.level}] ${j.msg}${j.err?.message ? `: ${j.err.message.slice(0, 120)}` : ''}`;
    } catch {
      key = line.slice(0, 160);
    }
    out[key] = (out[key] ?? 0) + 1;
  }
  return out;
}

const q = (xs: number[], p: number) => percentile(xs, p);
const f0 = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : 'n/a');
const f1 = (n: number) => (Number.isFinite(n) ? n.toFixed(1) : 'n/a');
const f2 = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : 'n/a');

async function main(): Promise<void> {
  // The operator holds one socket per agent, inherited limit: say so before minutes of setup.
  const nofile = Number(execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim());
  if (Number.isFinite(nofile) && nofile < N + 1024) throw new Error(`open files limit ${nofile} is too low for ${N} agents: raise it (ulimit -n ${N + 1024}) and run again`);
  const startedAt = new Date();
  const loadBefore = loadavg()[0] ?? 0;
  const outDir = compileOperator();
  const tmp = mkdtempSync(join(tmpdir(), 'kstreams-feed-scale-'));
  let cp: ControlPlane | undefined;
  let kube: KubeRest | undefined;
  let operator: ChildProcess | undefined;
  /** The pods' token directories (in-cluster credentials), removed at the end. */
  const podDirs: string[] = [];
  const gens: Generator[] = [];
  const lines: string[] = [];
  const log = (s: string) => {
    const line = `[${((Date.now() - startedAt.getTime()) / 1000).toFixed(0).padStart(4)} s] ${s}`;
    lines.push(line);
    console.log(line);
  };
  // When a phase does not end: what the agents and the operator say at that moment, for the results file.
  let diagnose: (() => Promise<string[]>) | undefined;
  const resultBase = join(REPO, 'bench/results', `${startedAt.toISOString().slice(0, 16).replace(':', '-')}-feed-scale-${N}`);
  try {
    cp = await startControlPlane({ profiling: args['profile-apiserver'] !== undefined });
    log(`control plane up in ${cp.timings.totalMs} ms`);
    const ca = readFileSync(cp.caFile);
    const apiMetrics = async () => (await httpGet(`${cp!.server}/metrics`, { ca, token: cp!.token, timeoutMs: 30_000 })).body;
    kube = await KubeRest.create(cp.kubeconfigPath);
    await installCrd(kube);

    // Layout: namespaces of PER_NS pods; per namespace one StreamPath per APP_PODS pods (app label) and one
    // wide StreamPath `all` selecting every pod of the namespace (the edit that reaches all agents).
    const nsCount = Math.ceil(N / PER_NS);
    const namespaces = Array.from({ length: nsCount }, (_, i) => `feed-bench-${i}`);
    const opNs = 'feed-bench-system';
    await createNamespace(kube, opNs);
    await pool(namespaces, 8, (ns) => createNamespace(kube!, ns, { 'kstreams.io/inject': 'enabled' }));
    const pods = Array.from({ length: N }, (_, i) => ({ ns: namespaces[Math.floor(i / PER_NS)]!, name: `pod-${i}`, app: `app-${Math.floor((i % PER_NS) / APP_PODS)}`, uid: '' }));
    let t = Date.now();
    await pool(pods, CONCURRENCY, async (p) => {
      p.uid = await createPod(kube!, p.ns, p.name, { labels: { app: p.app, bench: 'feed' }, agentPort: 15090, podIP: '127.0.0.1' });
    });
    log(`created ${N} pods in ${f1((Date.now() - t) / 1000)} s`);
    const apps = [...new Set(pods.map((p) => `${p.ns}/${p.app}`))];
    t = Date.now();
    await pool(apps, CONCURRENCY, async (a) => {
      const [ns, app] = a.split('/') as [string, string];
      await createStreamPath(kube!, ns, `sp-${app}`, exampleSpec(app));
    });
    await pool(namespaces, 8, async (ns) => void (await createStreamPath(kube!, ns, 'all', { ...exampleSpec('unused', 8081), selector: { matchLabels: { bench: 'feed' } } })));
    const streamPathCount = apps.length + namespaces.length;
    log(`created ${streamPathCount} StreamPaths in ${f1((Date.now() - t) / 1000)} s`);

    // Tokens: one TokenRequest per pod, bound to it, for the feed's audience; files reused for every (re)connect.
    const tokenDir = join(tmp, 'tokens');
    mkdirSync(tokenDir);
    t = Date.now();
    const specs: AgentSpec[] = [];
    await pool(pods, CONCURRENCY, async (p) => {
      const tokenFile = join(tokenDir, `${p.ns}_${p.name}`);
      writeFileSync(tokenFile, await podToken(kube!, p.ns, p.name, { uid: p.uid }));
      specs.push({ namespace: p.ns, pod: p.name, tokenFile });
    });
    const tokensS = (Date.now() - t) / 1000;
    log(`minted ${N} tokens in ${f1(tokensS)} s (${f0(N / tokensS)}/s)`);

    // The operator: production defaults (statusWriteIntervalMs 10 s, warmup 30 s) but one replica, no lease.
    const [feedPort, webhookPort, metricsPort] = [await freePort(), await freePort(), await freePort()];
    const configFile = join(tmp, 'operator.json');
    writeFileSync(
      configFile,
      JSON.stringify({
        identity: 'feed-bench',
        namespace: opNs,
        logLevel: 'warn',
        leaderElection: { enabled: false },
        statusWriteIntervalMs: STATUS_INTERVAL_MS,
        ...(WRITE_BUDGET !== undefined ? { statusWritesPerSecond: WRITE_BUDGET } : {}),
        server: { host: '127.0.0.1', port: metricsPort },
        feed: { host: '127.0.0.1', port: feedPort, advertiseAddress: `127.0.0.1:${feedPort}`, warmupMs: WARMUP_MS, transport: TRANSPORT },
        webhook: {
          host: '127.0.0.1',
          port: webhookPort,
          namespace: opNs,
          url: `https://127.0.0.1:${webhookPort}/mutate-pods`,
          webhookConfigurationName: 'kstreams-feed-bench',
          tls: { mode: 'self-managed', extraSANs: ['127.0.0.1'] },
        },
      }),
    );
    const operatorLogs: string[] = [];
    const startOperatorProcess = async () => {
      // Its log (warnings up) goes to a file: at N agents a refusal per agent is N lines. Summarised at the end.
      const logFile = join(tmp, `operator-${operatorLogs.length + 1}.log`);
      operatorLogs.push(logFile);
      const fd = openSync(logFile, 'w');
      const profiling = [
        ...(PROFILE_DIR ? ['--require', join(REPO, 'bench/operator/cpu-profile.cjs')] : []),
        ...(HEAP_DIR ? ['--require', join(REPO, 'bench/operator/heap-snapshot.cjs')] : []),
      ];
      const nodeFlags = OPERATOR_NODE_FLAGS.split(/\s+/).filter(Boolean);
      const argv = [process.execPath, ...nodeFlags, ...profiling, operatorMain(outDir)];
      // The compiled operator lives outside dist/: it is told where the addon is (the native feed transport).
      const env = { ...process.env, KSTREAMS_OPERATOR_CONFIG: configFile, KSTREAMS_ADDON: join(REPO, 'native/build/Release/kstreams.node'), ...(PROFILE_DIR ? { KSTREAMS_CPU_PROFILE_DIR: PROFILE_DIR } : {}), ...(HEAP_DIR ? { KSTREAMS_HEAP_SNAPSHOT_DIR: HEAP_DIR } : {}) };
      let p: ChildProcess;
      if (CREDENTIALS === 'in-cluster') {
        const pod = podCommand({ server: cp!.server, token: cp!.token, caPem: ca.toString(), argv, env });
        podDirs.push(pod.dir);
        p = spawn(pod.command, pod.args, { cwd: REPO, env: pod.env, stdio: ['ignore', fd, fd] });
      } else {
        p = spawn(argv[0]!, argv.slice(1), { cwd: REPO, env: { ...env, KUBECONFIG: cp!.kubeconfigPath }, stdio: ['ignore', fd, fd] });
      }
      closeSync(fd);
      operator = p;
      const t0 = Date.now();
      await until('the operator ready (leader, caches synced)', 300_000, async () => {
        if (p.exitCode !== null) throw new Error(`the operator exited with code ${p.exitCode}`);
        const r = await httpGet(`http://127.0.0.1:${metricsPort}/readyz`).catch(() => undefined);
        return r?.status === 200 ? true : undefined;
      }, 50);
      return { p, readyMs: Date.now() - t0 };
    };
    diagnose = async () => {
      const out: string[] = [];
      if (gens.length) {
        const s = await allStats(gens, { streamPath: 'all', generation: 1, since: 0 });
        out.push(`agents: ${s.connected} connected, ${s.configured} configured of ${s.agents}`);
      }
      const m = await httpGet(`http://127.0.0.1:${metricsPort}/metrics`, { timeoutMs: 60_000 }).catch((err: Error) => ({ body: `# metrics: ${err.message}` }));
      out.push(...m.body.split('\n').filter((l) => /^(kstreams_operator_feed|nodejs_eventloop_lag_p99|process_cpu_seconds_total|process_resident_memory_bytes|# metrics)/.test(l)));
      for (const f of operatorLogs) for (const [msg, n] of Object.entries(logSummary(f))) out.push(`${f.split('/').pop()}: ${n} x ${msg}`);
      out.push(`load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
      return out;
    };
    const first = await startOperatorProcess();
    const pid = () => operator!.pid!;
    log(`operator ready in ${first.readyMs} ms (pid ${pid()})`);
    const secret = await kube.request<{ data: Record<string, string> }>('GET', `/api/v1/namespaces/${opNs}/secrets/kstreams-webhook-tls`);
    const caPem = Buffer.from(secret.data['ca.crt']!, 'base64').toString();

    // 5a. Webhook latency without agents.
    const hookIdle = await admissionLatencies(webhookPort, caPem, namespaces[0]!, REVIEWS, REVIEWS_PER_S);
    if (hookIdle.mutated !== REVIEWS) throw new Error(`the webhook injected ${hookIdle.mutated}/${REVIEWS} pods of an opted-in namespace`);
    log(`webhook, 0 agents: p50 ${f2(q(hookIdle.ms, 0.5))} ms, p99 ${f2(q(hookIdle.ms, 0.99))} ms`);
    const rssNoAgents = rssMiB(pid());
    /** The operator's V8 heap by space (main thread; the webhook's worker has its own), from its /metrics. */
    const heapSpaces = async () => {
      const body = (await httpGet(`http://127.0.0.1:${metricsPort}/metrics`, { timeoutMs: 60_000 })).body;
      const mib = (metric: string, match: Record<string, string> = {}) => counterSum(body, metric, match) / 2 ** 20;
      const bySpace = (metric: string) => Object.fromEntries(V8_SPACES.map((space) => [space, mib(metric, { space })]));
      const total = bySpace('nodejs_heap_space_size_total_bytes');
      const used = bySpace('nodejs_heap_space_size_used_bytes');
      const external = mib('nodejs_external_memory_bytes');
      const text = `committed ${f0(mib('nodejs_heap_size_total_bytes'))} MiB, used ${f0(mib('nodejs_heap_size_used_bytes'))} (${V8_SPACES.filter((k) => total[k]! >= 1).map((k) => `${k} ${f0(used[k]!)}/${f0(total[k]!)}`).join(', ')}), external ${f0(external)}`;
      return { total, used, external, text };
    };
    const heapNoAgents = await heapSpaces();
    log(`heap, 0 agents: ${heapNoAgents.text}`);
    await heapSnapshot(pid(), 1);

    // The agents: GENERATORS processes, the specs dealt round robin.
    for (let i = 0; i < GENERATORS; i++) gens.push(await startGenerator());
    const tConnect = Date.now();
    const reviewsBefore = counterSum(await apiMetrics(), 'apiserver_request_total', { resource: 'tokenreviews' });
    gens.forEach((g, i) =>
      g.child.send({
        type: 'start',
        agents: specs.filter((_, j) => j % GENERATORS === i),
        address: `127.0.0.1:${feedPort}`,
        caPem,
        serverName: `kstreams-webhook.${opNs}.svc`,
        counterMs: COUNTER_MS,
        startPerSecond: START_PER_S / GENERATORS,
      }),
    );
    const everyone = { streamPath: 'all', generation: 1, since: 0 };
    await until(`all ${N} agents configured`, PHASE_MS, async () => {
      const s = await allStats(gens, everyone);
      return s.reached === N && s.connected === N ? s : undefined;
    }, 250);
    const connectS = (Date.now() - tConnect) / 1000;
    const initialReviews = counterSum(await apiMetrics(), 'apiserver_request_total', { resource: 'tokenreviews' }) - reviewsBefore;
    log(`all ${N} agents connected and configured in ${f1(connectS)} s (${initialReviews} TokenReviews)`);

    // Every StreamPath Ready from the agents' reports.
    const list = () =>
      kube!.request<{ items: { metadata: { namespace: string; name: string }; status?: { connections?: number; bytesPrimary?: number; conditions?: { type: string; status: string; lastTransitionTime?: string }[] } }[] }>(
        'GET',
        '/apis/kstreams.io/v1alpha1/streampaths',
      );
    // Events about StreamPaths, counting repeats (the recorder bumps count on an identical one).
    const streamPathEvents = async () => {
      const l = await kube!.request<{ items: { involvedObject: { kind?: string }; count?: number }[] }>('GET', '/api/v1/events');
      return l.items.filter((e) => e.involvedObject.kind === 'StreamPath').reduce((n, e) => n + (e.count ?? 1), 0);
    };
    const readyOf = (i: Awaited<ReturnType<typeof list>>['items'][number]) => i.status?.conditions?.find((c) => c.type === 'Ready');
    await until('every StreamPath Ready', PHASE_MS, async () => {
      const l = await list();
      return l.items.filter((i) => readyOf(i)?.status === 'True').length === streamPathCount ? true : undefined;
    }, 1000);
    log(`every StreamPath Ready`);

    // 2+3. Idle with N streams whose counters change every COUNTER_MS: CPU, RSS, status writes.
    const statusWrites = async () => counterSum(await apiMetrics(), 'apiserver_request_total', { resource: 'streampaths', subresource: 'status', verb: /^(PATCH|PUT|UPDATE|APPLY)$/ });
    // Each StreamPath's own writes, as a watch sees them: the bound is per StreamPath.
    const writeTimes = new Map<string, number[]>();
    const spWatch = new AbortController();
    const listed = await kube!.request<{ metadata: { resourceVersion: string } }>('GET', '/apis/kstreams.io/v1alpha1/streampaths?limit=1');
    const watching = kube!
      .watch('/apis/kstreams.io/v1alpha1/streampaths', { resourceVersion: listed.metadata.resourceVersion }, (e) => {
        if (e.type !== 'MODIFIED') return;
        const m = (e.object as { metadata: { namespace: string; name: string } }).metadata;
        const key = `${m.namespace}/${m.name}`;
        const at = writeTimes.get(key);
        if (at) at.push(Date.now());
        else writeTimes.set(key, [Date.now()]);
      }, spWatch.signal)
      .catch((err: unknown) => (spWatch.signal.aborted ? undefined : log(`streampaths watch ended: ${String(err)}`)));
    // The others' CPU over a window: the agents' processes and the control plane's (the same 2 cores).
    const others = () => ({
      generators: gens.reduce((n, g) => n + cpuSeconds(g.child.pid!), 0),
      controlPlane: Object.fromEntries(cp!.processes.map((p) => [p.name, cpuSeconds(p.pid)])),
    });
    const othersSince = (a: ReturnType<typeof others>) => {
      const b = others();
      return { generators: b.generators - a.generators, ...Object.fromEntries(Object.entries(b.controlPlane).map(([k, v]) => [k, v - (a.controlPlane[k] ?? 0)])) };
    };
    const w0 = await statusWrites();
    const idleOthers0 = others();
    const c0 = cpuSeconds(pid());
    const i0 = Date.now();
    await sleep(IDLE_S * 1000);
    const idleS = (Date.now() - i0) / 1000;
    const idleCpu = cpuSeconds(pid()) - c0;
    const idleOthersCpu = othersSince(idleOthers0);
    const idleWrites = (await statusWrites()) - w0;
    spWatch.abort();
    await watching;
    const spacing = writeSpacing(writeTimes, STATUS_INTERVAL_MS, WATCH_JITTER_MS);
    const rssIdle = rssMiB(pid());
    const heapIdle = await heapSpaces();
    log(`idle heap: ${heapIdle.text}`);
    const genIdle = await allStats(gens, everyone);
    const perCore = (o: Record<string, number>, s: number) => Object.entries(o).map(([k, v]) => `${k} ${f2(v / s)}`).join(', ');
    log(`idle ${f0(idleS)} s: CPU ${f2(idleCpu)} s (${f0((idleCpu / idleS) * 100)}% of a core; meanwhile, cores: ${perCore(idleOthersCpu, idleS)}), RSS ${f0(rssIdle.rss)} MiB, ${idleWrites} status writes`);
    await heapSnapshot(pid(), 2);

    // 5b. Webhook latency with N agents connected (their reports keep coming meanwhile).
    const hookBusy = await admissionLatencies(webhookPort, caPem, namespaces[0]!, REVIEWS, REVIEWS_PER_S);
    log(`webhook, ${N} agents: p50 ${f2(q(hookBusy.ms, 0.5))} ms, p99 ${f2(q(hookBusy.ms, 0.99))} ms`);

    // 1. The edit: every namespace's `all` StreamPath gets a new port at once (generation 2).
    if (PROFILE_DIR) {
      mkdirSync(PROFILE_DIR, { recursive: true });
      operator!.kill('SIGUSR2');
      for (const g of gens) g.child.kill('SIGUSR2');
      await sleep(500); // the profiler is started asynchronously in the operator
    }
    // What the edit made the operator do: config frames sent, reports received, reconciles (by result). Read
    // before and after only: at 10,000 agents one scrape costs the operator tens of ms (prom-client's default
    // metrics count its handles and open files).
    const opCounters = async () => {
      const m = (await httpGet(`http://127.0.0.1:${metricsPort}/metrics`, { timeoutMs: 60_000 })).body;
      const out: Record<string, number> = {
        configFrames: counterSum(m, 'kstreams_operator_feed_frames_total', { frame: 'config' }),
        reports: counterSum(m, 'kstreams_operator_feed_frames_total', { frame: 'report' }),
      };
      for (const r of ['changed', 'unchanged', 'skipped', 'waiting', 'deferred', 'error']) out[`reconcile_${r}`] = counterSum(m, 'kstreams_operator_reconcile_total', { result: r });
      return out;
    };
    const diff = (a: Record<string, number>, b: Record<string, number>) => Object.fromEntries(Object.entries(b).map(([k, v]) => [k, v - (a[k] ?? 0)]));
    const counters0 = await opCounters();
    const perf = PERF_FILE ? spawn('perf', ['record', '-q', '-F', '999', '-p', String(pid()), '-o', PERF_FILE], { stdio: 'ignore' }) : undefined;
    if (perf) await sleep(500);
    const e0cpu = cpuSeconds(pid());
    const others0 = others();
    // From just before the PATCHes are sent: the figure includes the apiserver's write and watch delivery.
    const apiProfile = args['profile-apiserver']
      ? httpGet(`${cp!.server}/debug/pprof/profile?seconds=3`, { ca, token: cp!.token, timeoutMs: 30_000, encoding: 'latin1' })
      : undefined;
    const t0 = Date.now();
    await Promise.all(namespaces.map((ns) => kube!.request('PATCH', streamPathPath(ns, 'all'), { body: { spec: { port: 8082 } }, patch: 'merge' })));
    const edited = { streamPath: 'all', generation: 2, since: 0 };
    await until(`all ${N} agents at generation 2`, PHASE_MS, async () => ((await allStats(gens, edited)).reached === N ? true : undefined), 50);
    const editCpu = cpuSeconds(pid()) - e0cpu;
    const editOthersCpu = othersSince(others0);
    if (apiProfile) {
      const r = await apiProfile;
      writeFileSync(args['profile-apiserver']!, Buffer.from(r.body, 'latin1'));
      log(`kube-apiserver CPU profile of the edit (HTTP ${r.status}): ${args['profile-apiserver']} (go tool pprof -top)`);
    }
    if (perf) {
      perf.kill('SIGINT');
      await once(perf, 'exit');
      log(`perf record of the edit: ${PERF_FILE}`);
    }
    if (PROFILE_DIR) {
      operator!.kill('SIGUSR2');
      for (const g of gens) g.child.kill('SIGUSR2');
      const file = join(PROFILE_DIR, `${pid()}-1.cpuprofile`);
      await until('the operator to write its CPU profile', 60_000, async () => (existsSync(`${file}.done`) ? true : undefined));
      log(`CPU profile of the edit: ${file}`);
    }
    const rssEdit = rssMiB(pid());
    const editWork = diff(counters0, await opCounters());
    const reached = await allStats(gens, { ...edited, times: true });
    const prop = reached.reachedAt!.map((at) => at - t0);
    log(`edit -> all ${N} agents: p50 ${f0(q(prop, 0.5))} ms, p99 ${f0(q(prop, 0.99))} ms, max ${f0(Math.max(...prop))} ms; CPU ${f2(editCpu)} s (others: ${Object.entries(editOthersCpu).map(([k, v]) => `${k} ${f2(v)} s`).join(', ')}); ${JSON.stringify(editWork)}`);

    // 4. Reconnect storm: SIGKILL, start again, until every agent has a config from the new process.
    const c10 = cpuSeconds(pid());
    await sleep(STATUS_INTERVAL_MS); // the edit's status writes are done
    const afterEditCpu = cpuSeconds(pid()) - c10;
    const afterEditWork = diff(counters0, await opCounters());
    log(`edit + ${STATUS_INTERVAL_MS / 1000} s: CPU ${f2(afterEditCpu)} s in the ${STATUS_INTERVAL_MS / 1000} s after all agents had it; ${JSON.stringify(afterEditWork)}`);
    const beforeStorm = (await list()).items;
    const readyBefore = new Map(beforeStorm.map((i) => [`${i.metadata.namespace}/${i.metadata.name}`, readyOf(i)?.lastTransitionTime]));
    // What Ready said of each before the SIGKILL: a StreamPath not yet Ready then (the edit still settling)
    // moves its lastTransitionTime later for a reason other than the storm.
    const readyBeforeOf = new Map(beforeStorm.map((i) => [`${i.metadata.namespace}/${i.metadata.name}`, readyOf(i)]));
    const notReadyBeforeStorm = beforeStorm.filter((i) => readyOf(i)?.status !== 'True').length;
    const countersBefore = new Map(beforeStorm.map((i) => [`${i.metadata.namespace}/${i.metadata.name}`, [i.status?.connections ?? 0, i.status?.bytesPrimary ?? 0] as const]));
    const eventsBefore = await streamPathEvents();
    let countersBack = 0;
    const reviews0 = counterSum(await apiMetrics(), 'apiserver_request_total', { resource: 'tokenreviews' });
    const storm0 = Date.now();
    const killed = first.p;
    killed.kill('SIGKILL');
    await once(killed, 'exit');
    const killedAt = Date.now();
    let notReadySeen = 0;
    const second = await startOperatorProcess();
    const stormCpu0 = cpuSeconds(pid());
    await until(`all ${N} agents configured by the new operator`, PHASE_MS, async () => {
      const s = await allStats(gens, { streamPath: 'all', generation: 2, since: killedAt });
      return s.configuredSince === N && s.connected === N ? s : undefined;
    }, 250);
    const stormS = (Date.now() - storm0) / 1000;
    const stormReviews = counterSum(await apiMetrics(), 'apiserver_request_total', { resource: 'tokenreviews' }) - reviews0;
    const stormCpu = cpuSeconds(pid()) - stormCpu0;
    const rssStorm = rssMiB(pid());
    log(`storm: all ${N} agents configured again ${f1(stormS)} s after the SIGKILL (operator ready after ${f1(second.readyMs / 1000)} s; ${stormReviews} TokenReviews; CPU ${f2(stormCpu)} s)`);
    // Ready transitions: watched through the warm-up and one write interval after it.
    const watchEnd = killedAt + second.readyMs + WARMUP_MS + STATUS_INTERVAL_MS + 2000;
    while (Date.now() < watchEnd) {
      const now = (await list()).items;
      notReadySeen = Math.max(notReadySeen, now.filter((i) => readyOf(i)?.status !== 'True').length);
      countersBack = Math.max(
        countersBack,
        now.filter((i) => {
          const b = countersBefore.get(`${i.metadata.namespace}/${i.metadata.name}`);
          return b !== undefined && ((i.status?.connections ?? 0) < b[0] || (i.status?.bytesPrimary ?? 0) < b[1]);
        }).length,
      );
      await sleep(1000);
    }
    const after = (await list()).items;
    const moved = after.filter((i) => readyOf(i)?.lastTransitionTime !== readyBefore.get(`${i.metadata.namespace}/${i.metadata.name}`));
    const flapped = moved.length;
    const movedDetail = moved.slice(0, 10).map((i) => {
      const key = `${i.metadata.namespace}/${i.metadata.name}`;
      return { streamPath: key, before: readyBeforeOf.get(key), after: readyOf(i) };
    });
    const rssEnd = rssMiB(pid());
    const stormEvents = (await streamPathEvents()) - eventsBefore;
    log(`storm: ${flapped} StreamPaths whose Ready lastTransitionTime moved, at most ${notReadySeen} seen not Ready at once, at most ${countersBack} with counters below the stored ones, ${stormEvents} StreamPath Events`);

    const operatorLog = operatorLogs.map((f, i) => ({ process: i + 1, messages: logSummary(f) }));
    for (const l of operatorLog) for (const [msg, n] of Object.entries(l.messages)) log(`operator ${l.process} logged ${n} x ${msg}`);
    const result = {
      operatorLog,
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      machine: { cpus: cpus().length, model: cpus()[0]?.model ?? '', kernel: release(), node: process.version, loadBefore, loadAfter: loadavg()[0] ?? 0 },
      commit: execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, encoding: 'utf8' }).trim(),
      agents: N,
      generators: GENERATORS,
      namespaces: nsCount,
      streamPaths: streamPathCount,
      counterMs: COUNTER_MS,
      statusWriteIntervalMs: STATUS_INTERVAL_MS,
      statusWritesPerSecond: WRITE_BUDGET ?? 'default',
      setup: { tokensPerSecond: N / tokensS, initialConnectS: connectS, initialTokenReviews: initialReviews },
      propagationMs: { p50: q(prop, 0.5), p99: q(prop, 0.99), max: Math.max(...prop), n: prop.length },
      operator: {
        rssNoAgentsMiB: rssNoAgents.rss,
        rssIdleMiB: rssIdle.rss,
        rssAfterEditMiB: rssEdit.rss,
        rssAfterStormMiB: rssStorm.rss,
        rssEndMiB: rssEnd.rss,
        heapNoAgentsMiB: { committed: heapNoAgents.total, used: heapNoAgents.used, external: heapNoAgents.external },
        heapIdleMiB: { committed: heapIdle.total, used: heapIdle.used, external: heapIdle.external },
        hwmFirstProcessMiB: rssEdit.hwm,
        hwmSecondProcessMiB: rssEnd.hwm,
        idleCpuS: idleCpu,
        /** CPU seconds of the generator processes and of each control-plane process over the idle window. */
        idleOthersCpuS: idleOthersCpu,
        idleS,
        editCpuS: editCpu,
        afterEditCpuS: afterEditCpu,
        /** CPU seconds of the generator processes and of each control-plane process over the edit window. */
        editOthersCpuS: editOthersCpu,
        editWork,
        editWorkThroughInterval: afterEditWork,
        stormCpuS: stormCpu,
      },
      generatorsRssMiB: genIdle.rssMiB,
      statusWrites: {
        count: idleWrites,
        seconds: idleS,
        perSecond: idleWrites / idleS,
        perStreamPathPer10s: idleWrites / streamPathCount / (idleS / 10),
        watched: { ...spacing, tooClose: spacing.tooClose.slice(0, 10), toleranceMs: WATCH_JITTER_MS },
      },
      storm: { allConfiguredS: stormS, operatorReadyS: second.readyMs / 1000, tokenReviews: stormReviews, readyTransitions: flapped, notReadyBeforeStorm, moved: movedDetail, maxNotReady: notReadySeen, maxCountersBack: countersBack, events: stormEvents },
      webhook: {
        reviews: REVIEWS,
        perSecond: REVIEWS_PER_S,
        noAgents: { p50Ms: q(hookIdle.ms, 0.5), p99Ms: q(hookIdle.ms, 0.99) },
        withAgents: { p50Ms: q(hookBusy.ms, 0.5), p99Ms: q(hookBusy.ms, 0.99) },
      },
    };
    const ratio = result.webhook.withAgents.p99Ms / result.webhook.noAgents.p99Ms;
    const peak = Math.max(rssEdit.hwm, rssEnd.hwm);
    const rows: [string, string, string, string][] = [
      ['edit -> all agents p99', `${f0(result.propagationMs.p99)} ms (p50 ${f0(result.propagationMs.p50)}, max ${f0(result.propagationMs.max)})`, `<= ${TARGETS.propagationP99Ms} ms`, mark(result.propagationMs.p99 <= TARGETS.propagationP99Ms)],
      [
        'status writes of one StreamPath within 10 s (watched)',
        `${spacing.maxWithinInterval} (shortest gap ${Number.isFinite(spacing.minGapMs) ? `${f0(spacing.minGapMs)} ms` : '-'}, ${spacing.tooClose.length} StreamPaths closer than ${f0((STATUS_INTERVAL_MS - WATCH_JITTER_MS) / 1000)} s; ${spacing.writes} writes of ${spacing.streamPaths})`,
        `<= ${TARGETS.writesPerStreamPathPer10s}`,
        mark(spacing.maxWithinInterval <= TARGETS.writesPerStreamPathPer10s),
      ],
      ['status writes per StreamPath per 10 s (apiserver count / window)', `${f2(result.statusWrites.perStreamPathPer10s)} (${f1(result.statusWrites.perSecond)}/s over ${streamPathCount} StreamPaths)`, '-', '-'],
      ['operator peak RSS (VmHWM)', `${f0(peak)} MiB (idle ${f0(rssIdle.rss)}, 0 agents ${f0(rssNoAgents.rss)})`, `<= ${TARGETS.rssMiB} MiB`, mark(peak <= TARGETS.rssMiB)],
      [`webhook p99, N agents / 0 agents (${REVIEWS} reviews${REVIEWS_PER_S > 0 ? ` at ${REVIEWS_PER_S}/s` : ', 4 at a time'})`, `${f2(ratio)}x (${f2(result.webhook.withAgents.p99Ms)} / ${f2(result.webhook.noAgents.p99Ms)} ms)`, `<= ${TARGETS.webhookP99Ratio}x`, mark(ratio <= TARGETS.webhookP99Ratio)],
      ['operator CPU idle with N streams', `${f2(idleCpu / idleS)} cores (${f2(idleCpu)} s in ${f0(idleS)} s; meanwhile, cores: ${perCore(idleOthersCpu, idleS)})`, '-', '-'],
      ['operator CPU for the edit', `${f2(editCpu)} s (and ${f2(afterEditCpu)} s in the ${STATUS_INTERVAL_MS / 1000} s after; meanwhile ${Object.entries(editOthersCpu).map(([k, v]) => `${k} ${f2(v)} s`).join(', ')})`, '-', '-'],
      ['reconnect storm: all configured again', `${f1(stormS)} s after SIGKILL (operator ready ${f1(second.readyMs / 1000)} s, ${stormReviews} TokenReviews, CPU ${f2(stormCpu)} s)`, '-', '-'],
      // A moved lastTransitionTime with Ready never seen otherwise than True (polled every second, writes 10 s
      // apart) is a condition rewritten with a new time, not a False in between.
      ['reconnect storm: Ready lastTransitionTime moved', `${flapped} of ${streamPathCount} StreamPaths (not Ready just before the SIGKILL: ${notReadyBeforeStorm}; seen not Ready at once, 1 s polls: at most ${notReadySeen}; the .json names them)`, '0', mark(flapped === 0 && notReadySeen === 0)],
      ['reconnect storm: counters below the stored ones', `${countersBack} StreamPaths at most (1 s polls)`, '0', mark(countersBack === 0)],
      ['reconnect storm: StreamPath Events', `${stormEvents}`, '0', mark(stormEvents === 0)],
    ];
    const table = [
      '| figure | measured | target | |',
      '|:--|:--|:--|:--|',
      ...rows.map((r) => `| ${r.join(' | ')} |`),
    ].join('\n');
    console.log(`\n${N} agents (${GENERATORS} generator processes), ${nsCount} namespaces, ${streamPathCount} StreamPaths, counters changing every ${COUNTER_MS} ms:\n${table}`);
    const base = resultBase;
    writeFileSync(`${base}.json`, `${JSON.stringify(result, null, 2)}\n`);
    writeFileSync(
      `${base}.md`,
      [
        `# KStreams control plane at scale: ${N} agents on the feed`,
        '',
        `${result.startedAt} .. ${result.finishedAt}; ${result.machine.model}, ${result.machine.cpus} cores, kernel ${result.machine.kernel}, node ${result.machine.node}, commit ${result.commit}  `,
        `load average ${f2(loadBefore)} before, ${f2(result.machine.loadAfter)} after; kube-apiserver ${cp.binDir} + etcd on the same machine  `,
        `${N} agents = ${N} TLS connections (ALPN kstreams-feed/1, the operator's ${TRANSPORT} transport) of the sidecar's feed client in ${GENERATORS} processes at nice ${GENERATOR_NICE} (${f0(genIdle.rssMiB)} MiB together), each with a TokenRequest token bound to its pod; ${nsCount} namespace(s) of ${PER_NS} pods, ${apps.length} StreamPaths of ${APP_PODS} pods and one of all pods per namespace; counters change every ${COUNTER_MS} ms; operator compiled, one replica, ${CREDENTIALS === 'in-cluster' ? 'in-cluster credentials (as in a pod)' : 'a kubeconfig'}${OPERATOR_NODE_FLAGS ? `, node flags \`${OPERATOR_NODE_FLAGS}\`` : ''}, statusWriteIntervalMs ${STATUS_INTERVAL_MS}, statusWritesPerSecond ${WRITE_BUDGET ?? 'default (20)'}, warmupMs ${WARMUP_MS}  `,
        `setup: ${f0(N / tokensS)} TokenRequests/s; first connect of all agents ${f1(connectS)} s (${initialReviews} TokenReviews)`,
        '',
        table,
        '',
        'How to read this: docs/bench.md, "The control plane at scale".',
        '',
      ].join('\n'),
    );
    console.log(`\nwrote ${base}.md and .json`);
  } catch (err) {
    // Where it broke and why, with the figures measured up to there.
    const diag = await diagnose?.().catch((e: Error) => [`diagnosis failed: ${e.message}`]);
    writeFileSync(
      `${resultBase}-broken.md`,
      [
        `# KStreams control plane at scale: ${N} agents on the feed, did not finish`,
        '',
        `${startedAt.toISOString()} .. ${new Date().toISOString()}; ${cpus()[0]?.model ?? ''}, ${cpus().length} cores, load average ${f2(loadBefore)} before, ${f2(loadavg()[0] ?? 0)} at the failure; ${GENERATORS} generator processes at nice ${GENERATOR_NICE}, start ${START_PER_S}/s, counters every ${COUNTER_MS} ms`,
        '',
        `Broke with: ${(err as Error).message}`,
        '',
        '```',
        ...lines,
        '--- at the failure',
        ...(diag ?? []),
        '```',
        '',
      ].join('\n'),
    );
    console.error(`wrote ${resultBase}-broken.md`);
    throw err;
  } finally {
    await Promise.all(
      gens.map(async (g) => {
        if (g.child.exitCode !== null) return;
        g.child.send({ type: 'stop' });
        const t = setTimeout(() => g.child.kill('SIGKILL'), 15_000);
        await once(g.child, 'exit');
        clearTimeout(t);
      }),
    );
    if (operator && operator.exitCode === null) {
      operator.kill('SIGTERM');
      await once(operator, 'exit');
    }
    kube?.close();
    await cp?.stop();
    rmSync(tmp, { recursive: true, force: true });
    rmSync(outDir, { recursive: true, force: true });
    for (const d of podDirs) rmSync(d, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
