// The controller against the real kube-apiserver: status, conditions, events, finalizers and write counts.
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { FINALIZER } from '../../../api/src/agent.js';
import { systemClock } from '../../../runtime/src/clock.js';
import { parseConfig } from '../config.js';
import { KubeRest } from '../../../runtime/src/rest.js';
import { startOperator, type RunningOperator } from '../operator.js';
import { streamPathPath } from './reconciler.js';
import { FeedAgent } from '../testing/feed-agent.js';
import { StaticTls } from '../webhook/testing/static-tls.js';
import {
  condition,
  createNamespace,
  createPod,
  createStreamPath,
  eventually,
  exampleSpec,
  freshName,
  getStreamPath,
  installCrd,
} from '../testing/kube.js';

const kubeconfig = inject('kubeconfig');

describe('the operator against a real apiserver', () => {
  let kube: KubeRest;
  let op: RunningOperator;
  let tls: StaticTls;
  const agents: FeedAgent[] = [];

  beforeAll(async () => {
    kube = await KubeRest.create(kubeconfig);
    await installCrd(kube);
    tls = await StaticTls.create(['kstreams-webhook.kstreams-system.svc', '127.0.0.1']);
    const config = parseConfig({
      identity: 'int-test',
      namespace: 'kstreams-system',
      kubeconfig,
      logLevel: 'warn',
      leaderElection: { enabled: false },
      resyncPeriodMs: 600_000,
      statusWriteIntervalMs: 200,
      feed: { host: '127.0.0.1', port: 0, warmupMs: 1_000 },
      detachTimeoutMs: 3_000,
      server: { host: '127.0.0.1', port: 0 },
      webhook: { enabled: false },
    });
    op = await startOperator({ config, log: pino({ level: 'warn' }), clock: systemClock, feedTls: tls });
    await eventually('caches synced', async () => op.controller()?.synced);
  });

  afterAll(async () => {
    await op?.shutdown();
    await Promise.all(agents.map((a) => a.stop()));
    kube?.close();
  });

  /** An agent on the feed for a pod that exists (its token is bound to the pod). */
  async function newAgent(ns: string, pod: string): Promise<FeedAgent> {
    const a = new FeedAgent(ns, pod);
    agents.push(a);
    return a;
  }
  const connect = (a: FeedAgent) => a.connect(kube, [`127.0.0.1:${op.feed!.port}`], tls.caPem);

  it('walks NoPodsMatched -> PodsNotInjected -> Ready with counters, and follows edits', async () => {
    const ns = freshName('op-status');
    await createNamespace(kube, ns);
    await createStreamPath(kube, ns, 'shadow', exampleSpec('checkout'));

    const noPods = await eventually('NoPodsMatched', async () => {
      const sp = await getStreamPath(kube, ns, 'shadow');
      return condition(sp, 'Degraded')?.reason === 'NoPodsMatched' ? sp : undefined;
    });
    expect(noPods.metadata.finalizers).toContain(FINALIZER);
    expect(noPods.status).toMatchObject({ observedGeneration: 1, podsSelected: 0, podsAttached: 0 });
    expect(condition(noPods, 'Ready')).toMatchObject({ status: 'False', observedGeneration: 1 });

    await createPod(kube, ns, 'plain', { labels: { app: 'checkout' } });
    const notInjected = await eventually('PodsNotInjected', async () => {
      const sp = await getStreamPath(kube, ns, 'shadow');
      return condition(sp, 'Degraded')?.reason === 'PodsNotInjected' ? sp : undefined;
    });
    expect(notInjected.status?.podsSelected).toBe(1);
    expect(condition(notInjected, 'Degraded')!.message).toContain(`namespace ${ns} is not labelled kstreams.io/inject=enabled`);

    // The un-injected pod leaves the selection; an injected one with a real agent joins it.
    await kube.request('PATCH', `/api/v1/namespaces/${ns}/pods/plain`, { body: { metadata: { labels: { app: 'other' } } }, patch: 'merge' });
    const agent = await newAgent(ns, 'injected');
    agent.attach('shadow', 1);
    await createPod(kube, ns, 'injected', { labels: { app: 'checkout' }, agentPort: 15090, podIP: '127.0.0.1' });
    await connect(agent);
    const ready = await eventually('Ready', async () => {
      const sp = await getStreamPath(kube, ns, 'shadow');
      return condition(sp, 'Ready')?.status === 'True' ? sp : undefined;
    });
    expect(ready.status).toMatchObject({ observedGeneration: 1, podsSelected: 1, podsAttached: 1, connections: 3, bytesPrimary: 3000, bytesMirrored: 2500, bytesDropped: 500 });
    expect(ready.status?.targets).toEqual([{ name: '127.0.0.1:9', connectionsMirrored: 3, connectionsCut: 1, connectFailures: 0, bytesMirrored: 2500, bytesDropped: 500 }]);

    // New counters from the agent reach the status.
    agent.attach('shadow', 1, { bytesMirrored: 7000 });
    await eventually('counters updated', async () => (await getStreamPath(kube, ns, 'shadow'))?.status?.bytesMirrored === 7000);

    // Resets at detach and expired turn waits reach the status too: the CRD's status schema keeps them
    // (the apiserver would prune fields it does not know).
    agent.attach('shadow', 1, {
      bytesMirrored: 7000,
      connectionsReset: 2,
      targets: [{ name: '127.0.0.1:9', connectionsMirrored: 3, connectionsCut: 1, connectFailures: 0, bytesMirrored: 7000, bytesDropped: 500, turnWaitsExpired: 4 }],
    });
    const withResets = await eventually('connectionsReset in the status', async () => {
      const sp = await getStreamPath(kube, ns, 'shadow');
      return sp?.status?.connectionsReset === 2 ? sp : undefined;
    });
    expect(withResets.status?.targets?.[0]).toMatchObject({ turnWaitsExpired: 4 });

    // An edit bumps the generation: observedGeneration follows at once, Ready waits for the agent.
    await kube.request('PATCH', streamPathPath(ns, 'shadow'), { body: { spec: { port: 9090 } }, patch: 'merge' });
    const attaching = await eventually('observedGeneration 2', async () => {
      const sp = await getStreamPath(kube, ns, 'shadow');
      return sp?.status?.observedGeneration === 2 ? sp : undefined;
    });
    expect(attaching.metadata.generation).toBe(2);
    expect(condition(attaching, 'Ready')).toMatchObject({ status: 'False', reason: 'Attaching', observedGeneration: 2 });
    agent.attach('shadow', 2);
    await eventually('Ready at generation 2', async () => condition(await getStreamPath(kube, ns, 'shadow'), 'Ready')?.status === 'True');

    // What happened is in the Events, once each.
    const events = await kube.request<{ items: { type: string; reason: string; involvedObject: { name: string } }[] }>('GET', `/api/v1/namespaces/${ns}/events`);
    const reasons = events.items.filter((e) => e.involvedObject.name === 'shadow').map((e) => `${e.type}/${e.reason}`);
    expect(reasons).toEqual(expect.arrayContaining(['Warning/NoPodsMatched', 'Warning/PodsNotInjected', 'Normal/Recovered', 'Normal/Attached']));
    expect(reasons.filter((r) => r === 'Warning/NoPodsMatched')).toHaveLength(1);
  });

  it('a namespace whose Pod Security enforce level forbids the sidecar: PodSecurityForbidsSidecar with the fix and an Event, cleared by the label', async () => {
    // 1.20 has no PodSecurity admission: the label is a plain label here, but it is what the operator reads.
    const ns = freshName('op-psa');
    await createNamespace(kube, ns, { 'kstreams.io/inject': 'enabled', 'pod-security.kubernetes.io/enforce': 'baseline' });
    await createStreamPath(kube, ns, 'shadow', exampleSpec('checkout'));
    const forbidden = await eventually('PodSecurityForbidsSidecar', async () => {
      const sp = await getStreamPath(kube, ns, 'shadow');
      return condition(sp, 'Ready')?.reason === 'PodSecurityForbidsSidecar' ? sp : undefined;
    });
    expect(condition(forbidden, 'Ready')?.status).toBe('False');
    expect(condition(forbidden, 'Degraded')?.message).toContain(`kubectl label --overwrite ns ${ns} pod-security.kubernetes.io/enforce=privileged`);
    const events = await kube.request<{ items: { type: string; reason: string; message: string }[] }>('GET', `/api/v1/namespaces/${ns}/events`);
    const event = events.items.find((e) => e.reason === 'PodSecurityForbidsSidecar');
    expect(event?.type).toBe('Warning');
    expect(event?.message).toContain('capabilities NET_ADMIN, BPF');

    // The fix the message gives: the namespace watch brings the change, the condition follows.
    await kube.request('PATCH', `/api/v1/namespaces/${ns}`, { body: { metadata: { labels: { 'pod-security.kubernetes.io/enforce': 'privileged' } } }, patch: 'merge' });
    await eventually('back to NoPodsMatched', async () => condition(await getStreamPath(kube, ns, 'shadow'), 'Ready')?.reason === 'NoPodsMatched');
  });

  it('a second reconcile with nothing changed makes zero writes', async () => {
    const ns = freshName('op-writes');
    await createNamespace(kube, ns);
    const agent = await newAgent(ns, 'p');
    agent.attach('quiet', 1);
    await createPod(kube, ns, 'p', { labels: { app: 'quiet' }, agentPort: 15090, podIP: '127.0.0.1' });
    await connect(agent);
    await createStreamPath(kube, ns, 'quiet', exampleSpec('quiet'));
    await eventually('Ready', async () => condition(await getStreamPath(kube, ns, 'quiet'), 'Ready')?.status === 'True');
    const controller = op.controller()!;
    // Several report checks pass without change; then reconcile again on purpose, fully (memo forgotten).
    const polls = agent.reportsBuilt;
    await eventually('two more report checks', async () => agent.reportsBuilt >= polls + 2);
    await controller.queue.idle();
    const writes = op.transport.writes;
    // prom-client hands out its live label objects: copy the numbers now.
    const count = async (result: string) => (await op.metrics.reconcileTotal.get()).values.find((v) => v.labels.result === result)?.value ?? 0;
    const unchangedBefore = await count('unchanged');
    const skippedBefore = await count('skipped');
    controller.reconciler.forget(`${ns}/quiet`);
    controller.queue.add(`${ns}/quiet`);
    controller.queue.add(`${ns}/quiet`);
    await controller.queue.idle();
    controller.queue.add(`${ns}/quiet`);
    await controller.queue.idle();
    expect(op.transport.writes - writes).toBe(0);
    // It did reconcile: once fully (found the status equal), then skipped on unchanged inputs.
    expect(await count('unchanged')).toBeGreaterThan(unchangedBefore);
    expect(await count('skipped')).toBeGreaterThan(skippedBefore);
  });

  it('on delete, waits until agents detach, then removes the finalizer', async () => {
    const ns = freshName('op-delete');
    await createNamespace(kube, ns);
    const agent = await newAgent(ns, 'p');
    agent.attach('gone', 1);
    await createPod(kube, ns, 'p', { labels: { app: 'gone' }, agentPort: 15090, podIP: '127.0.0.1' });
    await connect(agent);
    await createStreamPath(kube, ns, 'gone', exampleSpec('gone'));
    await eventually('Ready', async () => condition(await getStreamPath(kube, ns, 'gone'), 'Ready')?.status === 'True');

    await kube.request('DELETE', streamPathPath(ns, 'gone'));
    const deleting = await getStreamPath(kube, ns, 'gone');
    expect(deleting?.metadata.deletionTimestamp).toBeDefined();
    // The agent still reports it attached: the object must stay.
    const polls = agent.reportsBuilt;
    await eventually('two more report checks', async () => agent.reportsBuilt >= polls + 2);
    await op.controller()!.queue.idle();
    expect(await getStreamPath(kube, ns, 'gone')).toBeDefined();
    agent.detach('gone');
    await eventually('StreamPath gone', async () => (await getStreamPath(kube, ns, 'gone')) === undefined);
  });

  it('removes the finalizer after the detach timeout with a Warning when an agent never detaches', async () => {
    const ns = freshName('op-stuck');
    await createNamespace(kube, ns);
    const agent = await newAgent(ns, 'p');
    agent.attach('stuck', 1);
    await createPod(kube, ns, 'p', { labels: { app: 'stuck' }, agentPort: 15090, podIP: '127.0.0.1' });
    await connect(agent);
    await createStreamPath(kube, ns, 'stuck', exampleSpec('stuck'));
    await eventually('Ready', async () => condition(await getStreamPath(kube, ns, 'stuck'), 'Ready')?.status === 'True');
    const t0 = Date.now();
    await kube.request('DELETE', streamPathPath(ns, 'stuck'));
    await eventually('StreamPath gone', async () => (await getStreamPath(kube, ns, 'stuck')) === undefined, 20_000);
    // The 3 s detach timeout counts from deletionTimestamp, which the apiserver truncates to the second.
    expect(Date.now() - t0).toBeGreaterThanOrEqual(2_000);
    const events = await kube.request<{ items: { type: string; reason: string; message: string }[] }>('GET', `/api/v1/namespaces/${ns}/events`);
    const timedOut = events.items.find((e) => e.reason === 'DetachTimedOut');
    expect(timedOut?.type).toBe('Warning');
    expect(timedOut?.message).toContain('(p)');
  });

  it('serves /metrics, /healthz and /readyz', async () => {
    const get = async (path: string) => {
      const res = await fetch(`http://127.0.0.1:${op.healthPort}${path}`);
      return { status: res.status, text: await res.text() };
    };
    expect((await get('/healthz')).status).toBe(200);
    expect((await get('/readyz')).status).toBe(200);
    const metrics = (await get('/metrics')).text;
    for (const name of ['kstreams_operator_reconcile_total', 'kstreams_operator_reconcile_duration_seconds', 'kstreams_operator_queue_depth', 'kstreams_operator_informer_events_total', 'kstreams_operator_informer_relists_total', 'kstreams_operator_leader 1', 'process_cpu_seconds_total']) {
      expect(metrics).toContain(name);
    }
  });
});
