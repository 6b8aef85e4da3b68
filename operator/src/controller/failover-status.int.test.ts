// A leader change must be invisible in StreamPath status: real operator processes against the real
// apiserver, agents on the feed played by the sidecar's real feed client in this test (their counters grow
// with every report, as live traffic makes them). The agents are redirected to the leader; when it dies
// they lose their stream and find the new leader themselves, which hears nothing from them meanwhile.
// Killing the leader (SIGKILL, no release) must cause no Ready transition, no counter going backwards and
// no second Attached Event; a StreamPath deleted across a leader change keeps its finalizer until the
// agents report it detached. A restart whose agents come back late (past the warm-up) must not move Ready
// either: a pod not heard yet keeps its part of the stored status until its agent reports.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import type { AgentReport } from '../../../api/src/agent.js';
import { KubeRest, isStatus } from '../../../runtime/src/rest.js';
import { FeedAgent } from '../testing/feed-agent.js';
import { condition, createNamespace, createPod, createStreamPath, eventually, exampleSpec, freeLoopbackPort, freshName, getStreamPath, installCrd } from '../testing/kube.js';
import { startOperator, type OperatorProcess } from '../testing/operator-process.js';
import { StaticTls } from '../webhook/testing/static-tls.js';
import { streamPathPath } from './reconciler.js';

const kubeconfig = inject('kubeconfig');
const LEASE_MS = 3_000;


/** Counters that grow with every report the agent builds. */
function growing(namespace: string, pod: string, attached: () => boolean): (r: AgentReport) => AgentReport {
  let answers = 0;
  return () => {
    const n = 10 + answers++;
    return {
      pod: { namespace, name: pod },
      ready: true,
      streamPaths: attached()
        ? [
            {
              name: 'shadow',
              generation: 1,
              attached: true,
              connections: n,
              bytesPrimary: n * 1000,
              bytesMirrored: n * 900,
              bytesDropped: n * 100,
              targets: [{ name: '127.0.0.1:9', connectionsMirrored: n, connectionsCut: 0, connectFailures: 0, bytesMirrored: n * 900, bytesDropped: n * 100 }],
            },
          ]
        : [],
    };
  };
}

let certDir: string;

function startReplica(identity: string, namespace: string, feedPort: number, extraEnv: Record<string, string> = {}): OperatorProcess {
  return startOperator(identity, {
    KUBECONFIG: kubeconfig,
    KSTREAMS_NAMESPACE: namespace,
    KSTREAMS_LEASE_DURATION_MS: String(LEASE_MS),
    KSTREAMS_RENEW_DEADLINE_MS: '2000',
    KSTREAMS_RETRY_PERIOD_MS: '300',
    KSTREAMS_WEBHOOK_ENABLED: 'false',
    KSTREAMS_METRICS_PORT: '0',
    KSTREAMS_FEED_PORT: String(feedPort),
    KSTREAMS_FEED_CERT_FILE: join(certDir, 'tls.crt'),
    KSTREAMS_FEED_KEY_FILE: join(certDir, 'tls.key'),
    KSTREAMS_STATUS_WRITE_INTERVAL_MS: '500',
    KSTREAMS_DETACH_TIMEOUT_MS: '60000',
    ...extraEnv,
  });
}

describe('status across leader changes', () => {
  let kube: KubeRest;
  const replicas: OperatorProcess[] = [];
  const agents: FeedAgent[] = [];
  let tls: StaticTls;

  /** What the replicas and the agents did, for whoever reads a failure (any wait of these tests). */
  afterEach((ctx) => {
    if (ctx.task.result?.state !== 'fail') return;
    for (const r of replicas) console.log(`[failover-status] ${r.identity} (exit ${r.child.exitCode ?? r.child.signalCode ?? 'running'}):\n${r.lines.slice(-25).map((l) => JSON.stringify(l)).join('\n')}`);
    for (const a of agents) console.log(`[failover-status] agent ${a.pod}: connected ${a.connected}, ${a.configs.length} configs\n${a.logs.slice(-15).join('\n')}`);
  });

  beforeAll(async () => {
    kube = await KubeRest.create(kubeconfig);
    await installCrd(kube);
    tls = await StaticTls.create(['kstreams-webhook.kstreams-system.svc', '127.0.0.1']);
    certDir = mkdtempSync(join(tmpdir(), 'kstreams-failover-'));
    writeFileSync(join(certDir, 'tls.crt'), tls.pem.certPem);
    writeFileSync(join(certDir, 'tls.key'), tls.pem.keyPem);
  });

  afterAll(async () => {
    for (const r of replicas) await r.kill();
    await Promise.all(agents.map((a) => a.stop()));
    kube?.close();
    if (certDir) rmSync(certDir, { recursive: true, force: true });
  });

  it('a killed leader: no Ready transition, no counter backwards, one Attached Event; a delete across a change waits for the agents', async () => {
    const opNs = freshName('ksh3-op');
    const ns = freshName('ksh3-sp');
    await createNamespace(kube, opNs);
    await createNamespace(kube, ns);
    const ports = [await freeLoopbackPort(), await freeLoopbackPort(), await freeLoopbackPort()];
    const addresses = ports.map((p) => `127.0.0.1:${p}`);
    let attached = true;
    for (const name of ['p1', 'p2']) {
      await createPod(kube, ns, name, { labels: { app: 'checkout' }, agentPort: 15090, podIP: '127.0.0.1' });
      const agent = new FeedAgent(ns, name);
      agent.onReport = growing(ns, name, () => attached);
      agents.push(agent);
    }
    await createStreamPath(kube, ns, 'shadow', exampleSpec('checkout'));
    const leasePath = `/apis/coordination.k8s.io/v1/namespaces/${opNs}/leases/kstreams-operator`;
    const holder = async () => {
      try {
        return (await kube.request<{ spec?: { holderIdentity?: string } }>('GET', leasePath)).spec?.holderIdentity ?? '';
      } catch (err) {
        if (isStatus(err, 404)) return '';
        throw err;
      }
    };
    const attachedEvents = async () => {
      const list = await kube.request<{ items: { involvedObject: { name: string }; reason: string; type: string; message: string }[] }>('GET', `/api/v1/namespaces/${ns}/events`);
      return list.items.filter((e) => e.involvedObject.name === 'shadow');
    };

    replicas.push(startReplica('ksh3-a', opNs, ports[0]!), startReplica('ksh3-b', opNs, ports[1]!));
    // Every agent knows every replica; whichever it reaches sends it to the leader.
    for (const a of agents) await a.connect(kube, addresses, tls.caPem);
    await eventually('Ready with both pods attached', async () => {
      const sp = await getStreamPath(kube, ns, 'shadow');
      return condition(sp, 'Ready')?.status === 'True' && sp?.status?.podsAttached === 2;
    }, 40_000);
    // The Event follows the status write that made Ready true: wait for it rather than race it.
    await eventually('the Attached Event', async () => (await attachedEvents()).some((e) => e.reason === 'Attached'), 10_000);
    expect((await attachedEvents()).filter((e) => e.reason === 'Attached')).toHaveLength(1);

    // Watch the status the whole time, as a user's dashboard would.
    const samples: { ready?: string; reason?: string; connections?: number; bytesMirrored?: number; target?: number }[] = [];
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const sp = await getStreamPath(kube, ns, 'shadow');
        const ready = condition(sp, 'Ready');
        samples.push({ ready: ready?.status, reason: ready?.reason, connections: sp?.status?.connections, bytesMirrored: sp?.status?.bytesMirrored, target: sp?.status?.targets?.[0]?.connectionsMirrored });
        await new Promise((r) => setTimeout(r, 50));
      }
    })();

    const first = await holder();
    const leader = replicas.find((r) => r.identity === first)!;
    const follower = replicas.find((r) => r.identity !== first)!;
    leader.child.kill('SIGKILL');
    await leader.exit;
    await eventually('the follower to reconcile', async () => follower.lines.some((l) => l.msg === 'caches synced, reconciling'), LEASE_MS + 15_000);
    // The new leader writes the growing counters once it heard the agents, which find it with full-jitter
    // backoff (up to 10 s between attempts while no leader answers); a few rounds of that.
    await eventually('the new leader to write status', async () => follower.lines.filter((l) => l.msg === 'status written').length >= 2, 30_000);
    watching = false;
    await watcher;

    console.log(
      `[failover-status] ${samples.length} samples over the leader change, all Ready/Attached; connections ${samples[0]?.connections} -> ${samples.at(-1)?.connections}`,
    );
    expect(samples.length).toBeGreaterThan(20);
    expect(samples.filter((s) => s.ready !== 'True' || s.reason !== 'Attached')).toEqual([]);
    for (let i = 1; i < samples.length; i++) {
      expect(samples[i]!.connections!).toBeGreaterThanOrEqual(samples[i - 1]!.connections!);
      expect(samples[i]!.bytesMirrored!).toBeGreaterThanOrEqual(samples[i - 1]!.bytesMirrored!);
      expect(samples[i]!.target!).toBeGreaterThanOrEqual(samples[i - 1]!.target!);
    }
    const events = await attachedEvents();
    expect(events.filter((e) => e.reason === 'Attached')).toHaveLength(1);
    expect(events.filter((e) => e.type === 'Warning')).toEqual([]);

    // A delete across a leader change: the finalizer stays until the agents say detached.
    const third = startReplica('ksh3-c', opNs, ports[2]!);
    replicas.push(third);
    await eventually('the third replica to stand by', async () => third.lines.some((l) => l.msg === 'kstreams operator running'), 40_000);
    follower.child.kill('SIGKILL');
    await follower.exit;
    await kube.request('DELETE', streamPathPath(ns, 'shadow'));
    await eventually('the third replica to reconcile', async () => third.lines.some((l) => l.msg === 'caches synced, reconciling'), LEASE_MS + 15_000);
    const syncedAt = Date.now();
    // Well past its first reconcile and its first poll round: still held, since the agents report it attached.
    await new Promise((r) => setTimeout(r, 2_500));
    const held = await getStreamPath(kube, ns, 'shadow');
    expect(held?.metadata.deletionTimestamp).toBeDefined();
    expect(held?.metadata.finalizers).toContain('kstreams.io/detach');
    attached = false;
    await eventually('the StreamPath to go once the agents detached', async () => (await getStreamPath(kube, ns, 'shadow')) === undefined, 15_000);
    console.log(`[failover-status] deleted across a leader change: finalizer removed ${Date.now() - syncedAt} ms after the new leader synced, once the agents reported detached`);
  });

  it('a restart with an agent that reconnects only after the warm-up: no Ready transition, no counter reset, no second Event', async () => {
    const opNs = freshName('ksh4-op');
    const ns = freshName('ksh4-sp');
    await createNamespace(kube, opNs);
    await createNamespace(kube, ns);
    const ports = [await freeLoopbackPort(), await freeLoopbackPort()];
    const addresses = ports.map((p) => `127.0.0.1:${p}`);
    const mine: FeedAgent[] = [];
    // One report source per pod, kept across its agent's reconnect: the same sidecar comes back, with the
    // counters it had (a fresh source would be a sidecar restart, whose counters start again).
    const reporters = new Map<string, (r: AgentReport) => AgentReport>();
    const newAgent = (name: string) => {
      const agent = new FeedAgent(ns, name);
      if (!reporters.has(name)) reporters.set(name, growing(ns, name, () => true));
      agent.onReport = reporters.get(name)!;
      agents.push(agent);
      mine.push(agent);
      return agent;
    };
    for (const name of ['p1', 'p2']) await createPod(kube, ns, name, { labels: { app: 'checkout' }, agentPort: 15090, podIP: '127.0.0.1' });
    await createStreamPath(kube, ns, 'shadow', exampleSpec('checkout'));
    // A short warm-up, so that the late agent comes back well after it.
    const env = { KSTREAMS_FEED_WARMUP_MS: '1500', KSTREAMS_FEED_RECONNECT_GRACE_MS: '120000' };
    const first = startReplica('ksh4-a', opNs, ports[0]!, env);
    replicas.push(first);
    for (const name of ['p1', 'p2']) await newAgent(name).connect(kube, addresses, tls.caPem);
    await eventually('Ready with both pods attached', async () => {
      const sp = await getStreamPath(kube, ns, 'shadow');
      return condition(sp, 'Ready')?.status === 'True' && sp?.status?.podsAttached === 2;
    }, 40_000);
    const before = await getStreamPath(kube, ns, 'shadow');
    const readySince = condition(before, 'Ready')?.lastTransitionTime;
    const events = async () => (await kube.request<{ items: { involvedObject: { name: string }; reason: string; type: string }[] }>('GET', `/api/v1/namespaces/${ns}/events`)).items.filter((e) => e.involvedObject.name === 'shadow');
    await eventually('the Attached Event', async () => (await events()).some((e) => e.reason === 'Attached'), 10_000);
    expect((await events()).filter((e) => e.reason === 'Attached')).toHaveLength(1);

    const samples: { ready?: string; since?: string; attached?: number; connections?: number; bytesMirrored?: number }[] = [];
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const sp = await getStreamPath(kube, ns, 'shadow');
        const ready = condition(sp, 'Ready');
        samples.push({ ready: ready?.status, since: ready?.lastTransitionTime, attached: sp?.status?.podsAttached, connections: sp?.status?.connections, bytesMirrored: sp?.status?.bytesMirrored });
        await new Promise((r) => setTimeout(r, 50));
      }
    })();

    // The operator dies; p2's agent is away (its stream gone with it) and comes back only later.
    first.child.kill('SIGKILL');
    await first.exit;
    await mine[1]!.stop();
    const second = startReplica('ksh4-b', opNs, ports[1]!, env);
    replicas.push(second);
    await eventually('the restarted operator to reconcile', async () => second.lines.some((l) => l.msg === 'caches synced, reconciling'), LEASE_MS + 15_000);
    // Past the warm-up, with p1 heard (it reconnects by itself) and p2 not.
    await eventually('p1 to be served by the new operator', async () => (mine[0]!.configs.length ?? 0) >= 2 && mine[0]!.connected, 20_000);
    await new Promise((r) => setTimeout(r, 3_000));
    const peak = Math.max(...samples.map((x) => x.connections ?? 0));
    await newAgent('p2').connect(kube, addresses, tls.caPem);
    await eventually('the counters to grow again once p2 reported', async () => ((await getStreamPath(kube, ns, 'shadow'))?.status?.connections ?? 0) > peak, 30_000);
    watching = false;
    await watcher;

    console.log(`[failover-status] restart with a late agent: ${samples.length} samples, connections ${samples[0]?.connections} -> ${samples.at(-1)?.connections}`);
    expect(samples.length).toBeGreaterThan(20);
    expect(samples.filter((x) => x.ready !== 'True' || x.since !== readySince || x.attached !== 2)).toEqual([]);
    for (let i = 1; i < samples.length; i++) {
      expect(samples[i]!.connections!).toBeGreaterThanOrEqual(samples[i - 1]!.connections!);
      expect(samples[i]!.bytesMirrored!).toBeGreaterThanOrEqual(samples[i - 1]!.bytesMirrored!);
    }
    const after = await events();
    expect(after.filter((e) => e.reason === 'Attached')).toHaveLength(1);
    expect(after.filter((e) => e.type === 'Warning')).toEqual([]);
    second.child.kill('SIGKILL');
    await second.exit;
  });
});
