// The real agent as a child process, fed by a real operator against a real kube-apiserver, on the real
// kernel: a Pod object (it stays Pending, there is no kubelet) stands for the pod, a network namespace we
// made stands for its network, and the agent programs that namespace (KSTREAMS_NETNS). The agent has no
// kubeconfig at all: everything it knows comes from the operator's feed, authenticated by a token the
// apiserver bound to the pod. Every step is checked where a user would look: traffic at the servers,
// /v1/report, /metrics, and bpftool for links left on the namespace.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { CoreV1Api, CustomObjectsApi, KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { DEFAULT_BIN_DIR } from '../../../e2e/cluster/local/controlplane.js';
import { AgentReportSchema, type AgentReport } from '../../../api/src/agent.js';
import { API_VERSION, GROUP, KIND, PLURAL, VERSION } from '../../../api/src/streampath.js';
import { HttpServer, nodeScript, repoRoot, startScene, waitFor, type Scene } from '../demo/scenario.js';
import { KeepAlive } from '../dataplane/keep-alive-client.js';
import { INJECTED_ANNOTATION } from '../../../api/src/agent.js';
import { systemClock } from '../../../runtime/src/clock.js';
import { parseConfig } from '../../../operator/src/config.js';
import { KubeRest } from '../../../runtime/src/rest.js';
import { startOperator, type RunningOperator } from '../../../operator/src/operator.js';
import { podToken } from '../../../operator/src/testing/feed-agent.js';
import { freeLoopbackPort } from '../../../operator/src/testing/kube.js';
import { StaticTls } from '../../../operator/src/webhook/testing/static-tls.js';

const crdFile = fileURLToPath(new URL('../../../crds/streampath.yaml', import.meta.url));
const kubectlBin = `${process.env['KSTREAMS_K8S_BIN'] ?? DEFAULT_BIN_DIR}/kubectl`;
const namespace = `agent-int-${process.pid}-${Date.now().toString(36)}`;
const PORT = 8080;
const SECOND_TARGET_PORT = 8081;

interface BpfLink {
  attach_type?: string;
  netns_ino?: number;
}

/** sk_lookup links on one network namespace: ours are the only ones that can be there. */
function skLookupLinks(netnsPath: string): BpfLink[] {
  const ino = statSync(netnsPath).ino;
  const r = spawnSync('bpftool', ['-j', 'link', 'list'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bpftool link list: ${r.stderr.trim()}`);
  return (JSON.parse(r.stdout || '[]') as BpfLink[]).filter((l) => l.attach_type === 'sk_lookup' && l.netns_ino === ino);
}

/** The agent process and the JSON lines it logs. */
class AgentProcess {
  readonly logs: Array<Record<string, unknown>> = [];
  stderr = '';
  readonly exited: Promise<[number | null, NodeJS.Signals | null]>;

  constructor(readonly child: ChildProcess) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        this.logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        this.stderr += `${line}\n`;
      }
    });
    child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async port(): Promise<number> {
    const line = await waitFor('the agent to listen', () => {
      if (!this.running) throw new Error(`the agent exited: ${this.stderr.trim()}`);
      return this.logs.find((l) => l['msg'] === 'agent listening');
    }, 60_000);
    return line['port'] as number;
  }

  async kill(): Promise<void> {
    if (this.running) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }
}


async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text() };
}

async function report(port: number): Promise<AgentReport> {
  const r = await get(port, '/v1/report');
  expect(r.status).toBe(200);
  return AgentReportSchema.parse(JSON.parse(r.body));
}

/** Polls /v1/report until `pred` holds; fails with the last report. */
async function reportUntil(port: number, what: string, pred: (r: AgentReport) => boolean, timeoutMs = 30_000): Promise<AgentReport> {
  const deadline = Date.now() + timeoutMs;
  let last: AgentReport | undefined;
  for (;;) {
    last = await report(port);
    if (pred(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last report: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('the agent fed by the operator, on a real apiserver and kernel', () => {
  let kc: KubeConfig;
  let kube: KubeRest;
  let op: RunningOperator | undefined;
  let startOp: () => Promise<RunningOperator>;
  let feedPort: number;
  let tokenDir: string;
  let core: CoreV1Api;
  let custom: CustomObjectsApi;
  let scene: Scene;
  let secondTarget: HttpServer;
  let agent: AgentProcess;
  let port: number;

  const streamPath = (name: string, targets: Array<{ name: string; address: string }>, selector = { app: 'checkout' }, extra: Record<string, unknown> = {}) => ({
    apiVersion: API_VERSION,
    kind: KIND,
    metadata: { name, namespace },
    spec: { selector: { matchLabels: selector }, port: PORT, mirror: { targets, sampling: { percent: 100 } }, ...extra },
  });
  const createStreamPath = (body: object) =>
    custom.createNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL, body });
  const deleteStreamPath = (name: string) =>
    custom.deleteNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL, name });
  const setPodLabels = async (labels: Record<string, string>) => {
    const pod = await core.readNamespacedPod({ name: 'checkout-0', namespace });
    pod.metadata!.labels = labels;
    await core.replaceNamespacedPod({ name: 'checkout-0', namespace, body: pod });
  };
  const staging = () => `${scene.stagingAddress}:${PORT}`;
  const entry = (r: AgentReport, name: string) => r.streamPaths.find((s) => s.name === name);

  beforeAll(async () => {
    kc = new KubeConfig();
    kc.loadFromFile(inject('kubeconfig'));
    core = kc.makeApiClient(CoreV1Api);
    custom = kc.makeApiClient(CustomObjectsApi);

    const applied = spawnSync(kubectlBin, ['--kubeconfig', inject('kubeconfig'), 'apply', '-f', crdFile], { encoding: 'utf8' });
    expect(applied.status, applied.stderr).toBe(0);
    const established = spawnSync(
      kubectlBin,
      ['--kubeconfig', inject('kubeconfig'), 'wait', '--for=condition=Established', '--timeout=60s', `crd/${PLURAL}.${GROUP}`],
      { encoding: 'utf8' },
    );
    expect(established.status, established.stderr).toBe(0);

    await core.createNamespace({ body: { metadata: { name: namespace } } });
    // Without kube-controller-manager nobody creates the default ServiceAccount; the pod admission needs it.
    await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: 'default' } } });
    const pod: V1Pod = {
      metadata: { name: 'checkout-0', namespace, labels: { app: 'checkout' }, annotations: { [INJECTED_ANNOTATION]: 'test' } },
      spec: {
        automountServiceAccountToken: false,
        containers: [{ name: 'app', image: 'kstreams-test/none:0', imagePullPolicy: 'Never' }],
      },
    };
    await core.createNamespacedPod({ namespace, body: pod });

    // The operator, with its feed on a free port of loopback (the webhook is off: the test sets what it would inject).
    kube = await KubeRest.create(inject('kubeconfig'));
    const serverName = 'kstreams-webhook.kstreams-system.svc';
    const tls = await StaticTls.create([serverName, '127.0.0.1']);
    feedPort = await freeLoopbackPort();
    startOp = () => startOperator({
      config: parseConfig({
        identity: 'agent-int-operator',
        kubeconfig: inject('kubeconfig'),
        logLevel: 'warn',
        leaderElection: { enabled: false },
        statusWriteIntervalMs: 500,
        server: { host: '127.0.0.1', port: 0 },
        webhook: { enabled: false },
        feed: { host: '127.0.0.1', port: feedPort },
      }),
      log: pino({ level: 'warn' }),
      clock: systemClock,
      feedTls: tls,
    });
    op = await startOp();
    tokenDir = mkdtempSync(join(tmpdir(), 'kstreams-agent-int-'));
    writeFileSync(join(tokenDir, 'token'), await podToken(kube, namespace, 'checkout-0'));

    scene = await startScene(PORT);
    secondTarget = await HttpServer.start(scene.staging, 'staging-2', SECOND_TARGET_PORT);

    // The production entry point: the `kstreams agent` subcommand the webhook puts in the sidecar.
    const [cmd, ...args] = nodeScript('cli/main.js', ['agent']);
    agent = new AgentProcess(
      spawn(cmd!, args, {
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          ...process.env,
          // No API access: a kubeconfig that does not exist and no in-cluster variables.
          KUBECONFIG: '/nonexistent/kubeconfig',
          KUBERNETES_SERVICE_HOST: '',
          POD_NAME: 'checkout-0',
          POD_NAMESPACE: namespace,
          KSTREAMS_NETNS: scene.app.path,
          KSTREAMS_AGENT_PORT: '0',
          KSTREAMS_AGENT_BIND: '127.0.0.1',
          KSTREAMS_STATS_INTERVAL_SECONDS: '1',
          KSTREAMS_LOG_LEVEL: 'debug',
          KSTREAMS_OPERATOR_ADDRESSES: `127.0.0.1:${feedPort}`,
          KSTREAMS_OPERATOR_SERVER_NAME: serverName,
          KSTREAMS_OPERATOR_CA: tls.caPem,
          KSTREAMS_FEED_TOKEN_FILE: join(tokenDir, 'token'),
        },
      }),
    );
    port = await agent.port();
  });

  afterAll(async () => {
    await agent?.kill();
    await scene?.destroy();
    await op?.shutdown();
    kube?.close();
    if (tokenDir) rmSync(tokenDir, { recursive: true, force: true });
  });

  it('serves /healthz at once and /readyz after the first configuration from the operator and the kernel probe', async () => {
    expect((await get(port, '/healthz')).status).toBe(200);
    const deadline = Date.now() + 30_000;
    for (let r = await get(port, '/readyz'); r.status !== 200; r = await get(port, '/readyz')) {
      expect(r.status).toBe(503);
      if (Date.now() > deadline) throw new Error(`still not ready after 30 s: ${r.body}`);
      await new Promise((res) => setTimeout(res, 100));
    }
    const r = await report(port);
    expect(r).toMatchObject({ pod: { namespace, name: 'checkout-0' }, ready: true, streamPaths: [] });
    expect(skLookupLinks(scene.app.path)).toEqual([]);
  });

  it('attaches a StreamPath that selects the pod: client traffic is mirrored and counted', async () => {
    await createStreamPath(streamPath('shadow', [{ name: 'staging', address: staging() }]));
    const r = await reportUntil(port, 'shadow attached', (x) => entry(x, 'shadow')?.attached === true);
    expect(entry(r, 'shadow')).toMatchObject({ generation: 1, connections: 0 });
    expect(entry(r, 'shadow')!.problem).toBeUndefined();
    expect(skLookupLinks(scene.app.path)).toHaveLength(1);

    const N = 5;
    for (let i = 0; i < N; i++) expect(await scene.curl(`/shadow/${i}`, { body: `request-${i}-`.repeat(100) })).toBe(200);
    await waitFor('staging to see every mirrored connection close', () => scene.stagingServer.closedConnections().length >= N, 20_000);
    await waitFor('the app to see every connection close', () => scene.appServer.closedConnections().length >= N, 20_000);
    const appBytes = scene.appServer.bytesReceived();
    expect(scene.stagingServer.bytesReceived()).toBe(appBytes);
    // The engine's upstream connections come from the bypass source, not from the client.
    expect(scene.appServer.requests().every((q) => !q.remote!.startsWith(`${scene.clientAddress}:`))).toBe(true);

    const counted = await reportUntil(port, 'counters to catch up', (x) => entry(x, 'shadow')!.bytesMirrored === appBytes);
    expect(entry(counted, 'shadow')).toMatchObject({
      attached: true,
      connections: N,
      bytesPrimary: appBytes,
      bytesMirrored: appBytes,
      bytesDropped: 0,
      targets: [{ name: 'staging', connectionsMirrored: N, connectFailures: 0, bytesMirrored: appBytes }],
    });

    const metrics = await get(port, '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.body).toContain(`kstreams_mirrored_bytes_total{streampath="shadow"} ${appBytes}`);
    expect(metrics.body).toContain(`kstreams_target_mirrored_bytes_total{streampath="shadow",target="staging"} ${appBytes}`);
    expect(metrics.body).toContain('kstreams_agent_streampath_attached{streampath="shadow"} 1');
    expect(metrics.body).toMatch(/kstreams_agent_feed_events_total\{event="config"\} [1-9]/);
    expect(metrics.body).toMatch(/^process_cpu_seconds_total \d/m);
    expect(metrics.body).toMatch(/^kstreams_connections_total\{streampath="shadow"\} [1-9]/m);
  });

  it('applies an edit live: a second target gets traffic, same agent process, new generation', async () => {
    const pid = agent.child.pid;
    const current = (await custom.getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL, name: 'shadow' })) as {
      spec: { mirror: { targets: unknown[] } };
    };
    current.spec.mirror.targets.push({ name: 'staging-2', address: `${scene.stagingAddress}:${SECOND_TARGET_PORT}` });
    await custom.replaceNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: PLURAL, name: 'shadow', body: current });
    const r = await reportUntil(port, 'generation 2 applied', (x) => entry(x, 'shadow')?.generation === 2);
    expect(entry(r, 'shadow')).toMatchObject({ attached: true });
    expect(entry(r, 'shadow')!.targets.map((t) => t.name)).toEqual(['staging', 'staging-2']);

    const before = scene.stagingServer.requests().length;
    expect(await scene.curl('/after-edit')).toBe(200);
    await waitFor('the second target to get the request', () => secondTarget.requests().some((q) => q.requestLine === 'GET /after-edit HTTP/1.1'), 20_000);
    await waitFor('the first target to get it too', () => scene.stagingServer.requests().length === before + 1, 20_000);
    expect(agent.running).toBe(true);
    expect(agent.child.pid).toBe(pid);
    expect(agent.logs.filter((l) => l['msg'] === 'agent listening')).toHaveLength(1);
    expect(skLookupLinks(scene.app.path)).toHaveLength(1);
  });

  it('fail-static: with the operator gone it keeps mirroring, and it takes edits again once the operator is back', async () => {
    await op!.shutdown();
    op = undefined;
    await waitFor('the agent to notice', () => agent.logs.find((l) => String(l['msg']).startsWith('operator feed closed')), 20_000);
    const before = secondTarget.requests().length;
    expect(await scene.curl('/operator-away')).toBe(200);
    await waitFor('the mirror to go on without the operator', () => secondTarget.requests().length === before + 1, 20_000);
    expect(entry(await report(port), 'shadow')).toMatchObject({ attached: true, generation: 2 });
    expect((await get(port, '/readyz')).status).toBe(200);
    op = await startOp();
    await createStreamPath(streamPath('after-return', [{ name: 'staging', address: staging() }], undefined, { port: 9998 }));
    await reportUntil(port, 'an edit made after the operator came back', (x) => entry(x, 'after-return')?.attached === true, 40_000);
    await deleteStreamPath('after-return');
    await reportUntil(port, 'after-return gone', (x) => entry(x, 'after-return') === undefined);
  });

  it('gives a second StreamPath on the same port a PortConflict and leaves the first running', async () => {
    await createStreamPath(streamPath('clash', [{ name: 'staging', address: staging() }]));
    const r = await reportUntil(port, 'clash reported', (x) => entry(x, 'clash') !== undefined);
    expect(entry(r, 'clash')).toMatchObject({ attached: false, problem: { reason: 'PortConflict' } });
    expect(entry(r, 'clash')!.problem!.message).toContain('shadow');
    expect(entry(r, 'shadow')).toMatchObject({ attached: true, generation: 2 });
    expect(await scene.curl('/still-mirrored')).toBe(200);
    await waitFor('the mirror to still work', () => secondTarget.requests().some((q) => q.requestLine === 'GET /still-mirrored HTTP/1.1'), 20_000);
    await deleteStreamPath('clash');
    await reportUntil(port, 'clash gone from the report', (x) => entry(x, 'clash') === undefined);
  });

  it('reports a spec it cannot apply (a transform program whose ConfigMap does not exist) without breaking anything', async () => {
    const body = streamPath('masked', [{ name: 'staging', address: staging() }]) as { spec: Record<string, unknown> };
    body.spec['port'] = 9999;
    body.spec['transform'] = { applyTo: 'mirror', ops: [{ program: { configMap: 'no-such-programs', key: 'mask.o' } }] };
    await createStreamPath(body);
    const r = await reportUntil(port, 'masked reported', (x) => entry(x, 'masked')?.problem !== undefined);
    expect(entry(r, 'masked')).toMatchObject({ attached: false, generation: 1, problem: { reason: 'ProgramRejected' } });
    expect(entry(r, 'masked')!.problem!.message).toMatch(/ConfigMap .*\/no-such-programs does not exist/);
    expect(entry(r, 'shadow')!.attached).toBe(true);
    await deleteStreamPath('masked');
    await reportUntil(port, 'masked gone', (x) => entry(x, 'masked') === undefined);
  });

  it('detaches when the pod labels stop matching: no link left, the client reaches the app directly', async () => {
    await setPodLabels({ app: 'checkout-canary' });
    await reportUntil(port, 'nothing attached', (x) => x.streamPaths.length === 0);
    expect(skLookupLinks(scene.app.path)).toEqual([]);
    const mirroredBefore = scene.stagingServer.requests().length;
    expect(await scene.curl('/direct')).toBe(200);
    const last = scene.appServer.requests().at(-1)!;
    expect(last.requestLine).toBe('GET /direct HTTP/1.1');
    expect(last.remote!.startsWith(`${scene.clientAddress}:`)).toBe(true);
    expect(scene.stagingServer.requests()).toHaveLength(mirroredBefore);
  });

  it('attaches again when the labels match again, and detaches when the StreamPath is deleted', async () => {
    await setPodLabels({ app: 'checkout' });
    const r = await reportUntil(port, 'shadow attached again', (x) => entry(x, 'shadow')?.attached === true);
    expect(entry(r, 'shadow')!.generation).toBe(2);
    expect(skLookupLinks(scene.app.path)).toHaveLength(1);
    await deleteStreamPath('shadow');
    await reportUntil(port, 'nothing attached', (x) => x.streamPaths.length === 0);
    expect(skLookupLinks(scene.app.path)).toEqual([]);
    expect(await scene.curl('/after-delete')).toBe(200);
    expect(scene.appServer.requests().at(-1)!.remote!.startsWith(`${scene.clientAddress}:`)).toBe(true);
  });

  it('a deleted StreamPath is released at once while its live connections drain to their end', async () => {
    await createStreamPath(streamPath('drainer', [{ name: 'staging', address: staging() }], undefined, { drainTimeoutSeconds: 60 }));
    await reportUntil(port, 'drainer attached', (x) => entry(x, 'drainer')?.attached === true);
    const conn = KeepAlive.open(scene);
    try {
      expect(await conn.request('/drainer/1')).toBe(200);
      await deleteStreamPath('drainer');
      await reportUntil(port, 'drainer gone from the report', (x) => entry(x, 'drainer') === undefined);
      expect(skLookupLinks(scene.app.path)).toEqual([]);
      expect(await conn.request('/drainer/2')).toBe(200);
      await waitFor('staging to get /drainer/2', () => scene.stagingServer.requests().some((q) => q.requestLine === 'GET /drainer/2 HTTP/1.1'), 20_000);
      expect((await get(port, '/metrics')).body).toContain('kstreams_agent_drains_in_progress 1');
      conn.close();
      expect(await conn.ended()).toBe('closed by us');
      const done = await waitFor('the drain to end', () => agent.logs.find((l) => l['msg'] === 'StreamPath detached' && l['streamPath'] === 'drainer'));
      expect(done).toMatchObject({ drained: 1, reset: 0, timeoutMs: 60_000 });
      expect((await get(port, '/metrics')).body).toContain('kstreams_agent_drain_connections_total{result="drained"} 1');
    } finally {
      conn.kill();
    }
  });

  it('on SIGTERM drains within the pod grace period, resets what is left, and exits 0', async () => {
    await createStreamPath(streamPath('last', [{ name: 'staging', address: staging() }], undefined, { drainTimeoutSeconds: 2 }));
    await reportUntil(port, 'last attached', (x) => entry(x, 'last')?.attached === true);
    expect(skLookupLinks(scene.app.path)).toHaveLength(1);
    const conn = KeepAlive.open(scene);
    expect(await conn.request('/held-at-exit')).toBe(200);
    agent.child.kill('SIGTERM');
    const [code, signal] = await agent.exited;
    expect({ code, signal }).toEqual({ code: 0, signal: null });
    // The apiserver defaults terminationGracePeriodSeconds to 30: drains may take 28 s, this one 2 s.
    expect(agent.logs.find((l) => l['msg'] === 'shutdown budget')).toMatchObject({ drainBudgetMs: 28_000 });
    expect(agent.logs.find((l) => l['msg'] === 'StreamPath detached' && l['streamPath'] === 'last')).toMatchObject({ timeoutMs: 2000, reset: 1 });
    expect(await conn.ended()).toBe('ECONNRESET');
    expect(skLookupLinks(scene.app.path)).toEqual([]);
    expect(await scene.curl('/after-exit')).toBe(200);
  });
});
