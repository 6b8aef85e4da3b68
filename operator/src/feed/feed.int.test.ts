// The agent feed against the real apiserver: tokens minted by its TokenRequest and checked by its
// TokenReview, the operator's real feed server over TLS (ALPN kstreams-feed/1), the real feed client of the sidecar.
// What an agent receives (its StreamPaths, cross-namespace Service targets resolved, headless endpoints
// followed, program bytes), that it receives only its own, that its reports become status under the write
// bound, and that it keeps its configuration while the operator is away and reconnects.
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { FEED_AUDIENCE, programKey, serviceKey } from '../../../api/src/feed.js';
import { systemClock } from '../../../runtime/src/clock.js';
import { parseConfig, type OperatorConfigInput } from '../config.js';
import { KubeRest } from '../../../runtime/src/rest.js';
import { startOperator, type RunningOperator } from '../operator.js';
import { streamPathPath } from '../controller/reconciler.js';
import { FeedAgent, podToken } from '../testing/feed-agent.js';
import { condition, createNamespace, createPod, createStreamPath, eventually, exampleSpec, freeLoopbackPort, freshName, getStreamPath, installCrd } from '../testing/kube.js';
import { StaticTls } from '../webhook/testing/static-tls.js';
import { FeedAuthError, reviewAgentToken } from './auth.js';

const kubeconfig = inject('kubeconfig');
const SERVICE_NAME = 'kstreams-webhook.kstreams-system.svc';


describe('the agent feed', () => {
  let kube: KubeRest;
  let tls: StaticTls;
  let op: RunningOperator | undefined;
  let feedPort: number;
  const agents: FeedAgent[] = [];

  const start = async (overrides: Partial<OperatorConfigInput> = {}) => {
    const config = parseConfig({
      identity: 'feed-int-test',
      namespace: 'kstreams-system',
      kubeconfig,
      logLevel: 'warn',
      leaderElection: { enabled: false },
      resyncPeriodMs: 600_000,
      statusWriteIntervalMs: 300,
      detachTimeoutMs: 3_000,
      server: { host: '127.0.0.1', port: 0 },
      webhook: { enabled: false },
      feed: { host: '127.0.0.1', port: feedPort, disconnectGraceMs: 1_000, warmupMs: 2_000, programRefreshMs: 300 },
      ...overrides,
    });
    op = await startOperator({ config, log: pino({ level: 'warn' }), clock: systemClock, feedTls: tls });
    await eventually('caches synced', async () => op!.controller()?.synced);
    return op;
  };

  const agentFor = async (ns: string, pod: string, opts: { token?: string } = {}) => {
    const a = new FeedAgent(ns, pod);
    agents.push(a);
    await a.connect(kube, [`127.0.0.1:${feedPort}`], tls.caPem, opts);
    return a;
  };

  beforeAll(async () => {
    kube = await KubeRest.create(kubeconfig);
    await installCrd(kube);
    tls = await StaticTls.create([SERVICE_NAME, '127.0.0.1']);
    feedPort = await freeLoopbackPort();
    await start();
  });

  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await op?.shutdown();
    kube?.close();
  });

  it('TokenReview names the pod the token is bound to; a token for another audience is refused', async () => {
    const ns = freshName('feed-auth');
    await createNamespace(kube, ns);
    await createPod(kube, ns, 'p', { labels: { app: 'a' }, agentPort: 15090 });
    const pod = await kube.request<{ metadata: { uid: string } }>('GET', `/api/v1/namespaces/${ns}/pods/p`);
    const id = await reviewAgentToken(kube, await podToken(kube, ns, 'p'));
    expect(id).toEqual({ namespace: ns, serviceAccount: 'default', pod: 'p', podUid: pod.metadata.uid });
    const other = reviewAgentToken(kube, await podToken(kube, ns, 'p', { audience: 'https://kubernetes.default.svc' }));
    await expect(other).rejects.toBeInstanceOf(FeedAuthError);
    await expect(other).rejects.toMatchObject({ status: 401 });
    expect(FEED_AUDIENCE).toBe('kstreams.io/agent-feed');
  });

  it("verifies a real TokenRequest token locally (no TokenReview), and refuses a deleted pod's and a recreated pod's", async () => {
    const ns = freshName('feed-local');
    await createNamespace(kube, ns);
    await createPod(kube, ns, 'p', { labels: { app: 'l' }, agentPort: 15090, podIP: '127.0.0.1' });
    await createPod(kube, ns, 'gone', { labels: { app: 'l' }, agentPort: 15090, podIP: '127.0.0.1' });
    const goneToken = await podToken(kube, ns, 'gone');
    const reviews = () => op!.transport.counts.get('POST /apis/authentication.k8s.io/v1/tokenreviews') ?? 0;
    const checks = async (result: string, reason: string) =>
      (await op!.metrics.feedTokenChecks.get()).values.find((v) => v.labels.method === 'local' && v.labels.result === result && v.labels.reason === reason)?.value ?? 0;
    const reviewsBefore = reviews();
    const acceptedBefore = await checks('accepted', 'ok');

    const agent = await agentFor(ns, 'p');
    await eventually('configured', async () => agent.lastConfig);
    expect(await checks('accepted', 'ok')).toBe(acceptedBefore + 1);
    expect(reviews()).toBe(reviewsBefore);
    // The keys came from the apiserver's discovery and JWKS through the operator's transport.
    expect(op!.transport.counts.get('GET /openid/v1/jwks')).toBeGreaterThanOrEqual(1);

    // The pod is deleted (no kubelet: at once); once the operator's cache saw it go, its token is refused.
    await eventually('the pod in the cache', async () => op!.controller()?.pods.get(`${ns}/gone`));
    await kube.request('DELETE', `/api/v1/namespaces/${ns}/pods/gone`, { body: { apiVersion: 'v1', kind: 'DeleteOptions', gracePeriodSeconds: 0 } });
    await eventually('the pod gone from the cache', async () => !op!.controller()?.pods.get(`${ns}/gone`));
    const goneBefore = await checks('refused', 'pod_gone');
    const deleted = await agentFor(ns, 'gone', { token: goneToken });
    await eventually("the deleted pod's token refused", async () => (await checks('refused', 'pod_gone')) > goneBefore);
    // A new pod under the same name: the old token is for the old uid.
    await createPod(kube, ns, 'gone', { labels: { app: 'l' }, agentPort: 15090, podIP: '127.0.0.1' });
    await eventually('the new pod in the cache', async () => op!.controller()?.pods.get(`${ns}/gone`));
    await eventually("the old pod's token refused for its uid", async () => (await checks('refused', 'pod_uid')) > 0, 20_000);
    expect(deleted.configs).toEqual([]);
    expect(reviews()).toBe(reviewsBefore);
  });

  it('an agent gets its StreamPaths with a Service of another namespace resolved, and follows a headless one as its endpoints move', async () => {
    const shop = freshName('feed-shop');
    const staging = freshName('feed-staging');
    await createNamespace(kube, shop);
    await createNamespace(kube, staging);
    await kube.request('POST', `/api/v1/namespaces/${staging}/services`, {
      body: { apiVersion: 'v1', kind: 'Service', metadata: { name: 'checkout' }, spec: { ports: [{ port: 8080 }] } },
    });
    await kube.request('POST', `/api/v1/namespaces/${staging}/services`, {
      body: { apiVersion: 'v1', kind: 'Service', metadata: { name: 'recorder' }, spec: { clusterIP: 'None', ports: [{ name: 'http', port: 8080 }] } },
    });
    const endpoints = (ip: string) => ({ apiVersion: 'v1', kind: 'Endpoints', metadata: { name: 'recorder' }, subsets: [{ addresses: [{ ip }], ports: [{ name: 'http', port: 8080 }] }] });
    await kube.request('POST', `/api/v1/namespaces/${staging}/endpoints`, { body: endpoints('10.244.0.7') });
    const clusterIP = (await kube.request<{ spec: { clusterIP: string } }>('GET', `/api/v1/namespaces/${staging}/services/checkout`)).spec.clusterIP;

    await createPod(kube, shop, 'checkout-1', { labels: { app: 'checkout' }, agentPort: 15090, podIP: '127.0.0.1' });
    await createPod(kube, shop, 'cart-1', { labels: { app: 'cart' }, agentPort: 15090, podIP: '127.0.0.1' });
    await createStreamPath(kube, shop, 'shadow', {
      selector: { matchLabels: { app: 'checkout' } },
      port: 8080,
      mirror: {
        targets: [
          { service: { name: 'checkout', namespace: staging, port: 8080 } },
          { service: { name: 'recorder', namespace: staging, port: 8080 } },
          { service: { name: 'missing', namespace: staging, port: 8080 } },
        ],
      },
    });
    const checkout = await agentFor(shop, 'checkout-1');
    const cart = await agentFor(shop, 'cart-1');

    const first = await eventually('a config with the StreamPath', async () => (checkout.lastConfig?.streamPaths.length === 1 ? checkout.lastConfig : undefined));
    expect(first.pod.labels).toEqual({ app: 'checkout' });
    expect(first.streamPaths[0]!.metadata).toMatchObject({ name: 'shadow', generation: 1 });
    expect(first.services).toEqual({
      [serviceKey(staging, 'checkout', 8080)]: { host: clusterIP, port: 8080 },
      [serviceKey(staging, 'recorder', 8080)]: { host: '10.244.0.7', port: 8080 },
      [serviceKey(staging, 'missing', 8080)]: { error: `Service ${staging}/missing does not exist` },
    });
    // The other pod of the namespace is not selected: it hears of no StreamPath and no Service.
    await eventually('cart configured', async () => cart.lastConfig);
    expect(cart.lastConfig).toMatchObject({ streamPaths: [], services: {} });

    // The recorder moves: the agent gets the new address without any edit of the StreamPath.
    const sentAt = Date.now();
    await kube.request('PUT', `/api/v1/namespaces/${staging}/endpoints/recorder`, { body: endpoints('10.244.0.9') });
    const moved = await eventually('the new endpoint', async () =>
      checkout.lastConfig?.services[serviceKey(staging, 'recorder', 8080)] &&
      'host' in checkout.lastConfig.services[serviceKey(staging, 'recorder', 8080)]! &&
      (checkout.lastConfig.services[serviceKey(staging, 'recorder', 8080)] as { host: string }).host === '10.244.0.9'
        ? checkout.lastConfig
        : undefined,
    );
    console.log(`[feed] endpoints change reached the agent in ${Date.now() - sentAt} ms (config version ${moved.version})`);
    // Nothing else changed: the unselected pod got nothing new.
    expect(cart.configs).toHaveLength(1);
  });

  it('delivers a transform program from its ConfigMap, or says why not, and follows a ConfigMap created later', async () => {
    const ns = freshName('feed-prog');
    await createNamespace(kube, ns);
    await createPod(kube, ns, 'p', { labels: { app: 'p' }, agentPort: 15090, podIP: '127.0.0.1' });
    await createStreamPath(kube, ns, 'masked', {
      ...exampleSpec('p'),
      transform: { applyTo: 'mirror', ops: [{ program: { configMap: 'progs', key: 'mask.o' } }] },
    });
    const agent = await agentFor(ns, 'p');
    const key = programKey('progs', 'mask.o');
    const missing = await eventually('the program error', async () => agent.lastConfig?.programs[key]);
    expect(missing).toEqual({ error: `ConfigMap ${ns}/progs does not exist (kubectl create configmap progs --from-file=mask.o=PROGRAM.o -n ${ns})` });
    const bytes = Buffer.from([0x7f, 0x45, 0x4c, 0x46, 1, 2, 3]);
    await kube.request('POST', `/api/v1/namespaces/${ns}/configmaps`, {
      body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'progs' }, binaryData: { 'mask.o': bytes.toString('base64') } },
    });
    const delivered = await eventually('the program bytes', async () => {
      const p = agent.lastConfig?.programs[key];
      return p && 'data' in p ? p : undefined;
    });
    expect(Buffer.from(delivered.data, 'base64')).toEqual(bytes);
  });

  it('refuses a token of a pod the webhook did not inject, and one of another audience', async () => {
    const ns = freshName('feed-refuse');
    await createNamespace(kube, ns);
    await createPod(kube, ns, 'plain', { labels: { app: 'x' } });
    const metrics = () => op!.metrics.feedStreams.get().then((m) => m.values.find((v) => v.labels.outcome === 'refused')?.value ?? 0);
    const before = await metrics();
    const plain = await agentFor(ns, 'plain');
    await createPod(kube, ns, 'injected', { labels: { app: 'x' }, agentPort: 15090 });
    const wrong = await agentFor(ns, 'injected', { token: await podToken(kube, ns, 'injected', { audience: 'https://kubernetes.default.svc' }) });
    await eventually('two refusals', async () => (await metrics()) >= before + 2);
    expect(plain.configs).toEqual([]);
    expect(wrong.configs).toEqual([]);
  });

  it('reports become status, written at most once per interval per StreamPath however often the counters change', async () => {
    const ns = freshName('feed-status');
    await createNamespace(kube, ns);
    await createPod(kube, ns, 'p', { labels: { app: 'busy' }, agentPort: 15090, podIP: '127.0.0.1' });
    await createStreamPath(kube, ns, 'busy', exampleSpec('busy'));
    const agent = await agentFor(ns, 'p');
    agent.attach('busy', 1);
    await eventually('Ready', async () => condition(await getStreamPath(kube, ns, 'busy'), 'Ready')?.status === 'True');

    // Counters change with every report (one each 100 ms); record every status write as the watch sees it.
    let n = 0;
    agent.onReport = (r) => ({ ...r, streamPaths: r.streamPaths.map((s) => ({ ...s, bytesMirrored: 1000 + ++n })) });
    const writes: number[] = [];
    let last = (await getStreamPath(kube, ns, 'busy'))?.status?.bytesMirrored;
    const t0 = Date.now();
    while (Date.now() - t0 < 3_000) {
      const b = (await getStreamPath(kube, ns, 'busy'))?.status?.bytesMirrored;
      if (b !== last) {
        writes.push(Date.now());
        last = b;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    agent.onReport = undefined;
    console.log(`[feed] ${n} changing reports in 3 s -> ${writes.length} status writes, gaps ${writes.slice(1).map((t, i) => t - writes[i]!).join(', ')} ms`);
    expect(n).toBeGreaterThan(15);
    // The status keeps following the counters (a report is folded in after the controller's 1 s report window,
    // so about three writes in 3 s; two leave room for a loaded machine), at most 3 s / 300 ms + 1 writes, and
    // never two closer than the 300 ms bound (less the polling slack).
    expect(writes.length).toBeGreaterThanOrEqual(2);
    expect(writes.length).toBeLessThanOrEqual(11);
    for (let i = 1; i < writes.length; i++) expect(writes[i]! - writes[i - 1]!).toBeGreaterThanOrEqual(300 - 60);
  });

  it('fail-static: the agent keeps its configuration while the operator is gone, reconnects, and gets edits again', async () => {
    const ns = freshName('feed-static');
    await createNamespace(kube, ns);
    await createPod(kube, ns, 'p', { labels: { app: 's' }, agentPort: 15090, podIP: '127.0.0.1' });
    await createStreamPath(kube, ns, 's', exampleSpec('s'));
    const agent = await agentFor(ns, 'p');
    agent.attach('s', 1);
    await eventually('Ready', async () => condition(await getStreamPath(kube, ns, 's'), 'Ready')?.status === 'True');
    const configured = agent.configs.length;
    await op!.shutdown();
    op = undefined;
    await eventually('the stream closed', async () => !agent.connected);
    // The operator is away: an edit is made meanwhile; the agent keeps what it had.
    await kube.request('PATCH', streamPathPath(ns, 's'), { body: { spec: { port: 9090 } }, patch: 'merge' });
    expect(agent.configs).toHaveLength(configured);
    await start();
    const edited = await eventually('the edit after reconnecting', async () =>
      (agent.lastConfig?.streamPaths[0]?.spec as { port?: number } | undefined)?.port === 9090 ? agent.lastConfig : undefined,
      20_000,
    );
    expect(edited.streamPaths[0]!.metadata.generation).toBe(2);
    agent.attach('s', 2);
    await eventually('Ready at generation 2', async () => {
      const sp = await getStreamPath(kube, ns, 's');
      return condition(sp, 'Ready')?.status === 'True' && sp?.status?.observedGeneration === 2;
    });
  });
});
