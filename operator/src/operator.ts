// One operator replica: the webhook, the agent feed's server and the health/metrics server run on every
// replica; the controller (informers, queue, reconciles, the agents' streams) runs only while this replica
// holds the leader Lease. The others redirect agents to the leader's address, published on the Lease.
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { Registry } from 'prom-client';
import type { Clock } from '../../runtime/src/clock.js';
import type { OperatorConfig } from './config.js';
import { Controller } from './controller/controller.js';
import { Backoff } from '../../runtime/src/backoff.js';
import { Informer, InformerLifecycle } from '../../runtime/src/informer.js';
import { sameSlimNamespace, slimNamespace, type SlimNamespace } from './kube/objects.js';
import { FEED_ADDRESS_ANNOTATION } from '../../api/src/feed.js';
import { FeedAuthError, reviewAgentToken, TokenReviewCache } from './feed/auth.js';
import { agentAuthenticator, LocalTokenVerifier, recordedReview, type TokenCheckRecorder } from './feed/local-auth.js';
import { startFeedServer, type RunningFeedServer } from './feed/server.js';
import type { TlsSource } from './webhook/tls-source.js';
import { CountingTransport, KubeRest, type KubeTransport } from '../../runtime/src/rest.js';
import { LeaderElector } from '../../runtime/src/election.js';
import { createMetrics, type OperatorMetrics } from './observability/metrics.js';
import { startHealthServer, type RunningHealthServer } from './observability/server.js';
import { startWebhook, type RunningWebhook } from './webhook/server.js';
import { sameSlimNode, slimNode, type SlimNode } from './webhook/sidecar-mode.js';

export interface OperatorDeps {
  config: OperatorConfig;
  log: Logger;
  clock: Clock;
  /** Defaults to a KubeRest built from config.kubeconfig. */
  rest?: KubeRest;
  registry?: Registry;
  /** TLS of the agent feed when the webhook is off (tests); with the webhook on, its certificate is used. */
  feedTls?: TlsSource;
}

export interface RunningOperator {
  metrics: OperatorMetrics;
  transport: CountingTransport;
  healthPort: number;
  webhook: RunningWebhook | undefined;
  /** The agent feed's server; undefined without TLS (webhook off and no feedTls). */
  feed: RunningFeedServer | undefined;
  /** host:port this replica publishes for agents while it leads. */
  feedAddress: string | undefined;
  isLeader(): boolean;
  /** The running controller while leading (tests and benchmarks look into its caches). */
  controller(): Controller | undefined;
  /** Stops reconciling, releases the Lease, closes the servers. */
  shutdown(): Promise<void>;
  /** The shutdown step under way ('' before shutdown()): named in the log when shutdown overruns its deadline. */
  shutdownStep(): string;
}

export async function startOperator(d: OperatorDeps): Promise<RunningOperator> {
  const { config, log, clock } = d;
  const registry = d.registry ?? new Registry();
  const metrics = createMetrics(registry);
  const rest = d.rest ?? (await KubeRest.create(config.kubeconfig));
  log.info({ credentials: rest.source }, 'apiserver credentials loaded');
  for (const warning of rest.warnings) log.warn({ credentials: rest.source }, warning);
  const transport = new CountingTransport(rest, (verb, _path, outcome) => metrics.apiRequests.inc({ verb, outcome }));

  let controller: Controller | undefined;
  let stopping: Promise<void> | undefined;
  let shuttingDown = false;
  let step = '';
  let stopDetail: (() => string) | undefined;
  const startController = (leaderSignal?: AbortSignal) => {
    const c = new Controller({ config, transport: transport as KubeTransport, clock, log, metrics });
    // Tokens of pods this leader saw deleted are refused without a TokenReview.
    c.pods.on({ delete: (pod) => localTokens.podDeleted(pod.uid) });
    controller = c;
    metrics.leader.set(1);
    metrics.leaderTransitions.inc({ event: 'started' });
    c.start().catch((err) => log.error({ err }, 'controller failed to start'));
    leaderSignal?.addEventListener('abort', () => void stopController(), { once: true });
  };
  const stopController = (): Promise<void> => {
    const c = controller;
    controller = undefined;
    if (!c) return stopping ?? Promise.resolve();
    metrics.leader.set(0);
    metrics.leaderTransitions.inc({ event: 'stopped' });
    stopDetail = () => c.stopStage();
    stopping = c.stop().then(() => log.info('controller stopped'));
    return stopping;
  };

  // Every replica's webhook keeps its own caches (the leader's controller has others, which live only while it
  // leads): the namespaces' Pod Security labels, and with nativeSidecar auto the nodes' kubelet versions,
  // which decide native or classic sidecars per pod. Admissions never wait for them to sync.
  const webhookCache = <T extends { name: string }>(resource: string, transform: (raw: Record<string, unknown>) => T, equal: (a: T, b: T) => boolean) => {
    const informer = new Informer<T>({
      name: resource,
      transport,
      path: `/api/v1/${resource}`,
      transform,
      key: (o) => o.name,
      equal,
      clock,
      backoff: new Backoff({ initialMs: 500, maxMs: 30_000 }),
      resyncPeriodMs: config.resyncPeriodMs,
      onLifecycle: (event, detail) => {
        metrics.recordLifecycle(`webhook_${resource}`, event);
        if (event === InformerLifecycle.Failed || event === InformerLifecycle.Expired)
          log.warn({ event, delayMs: detail.delayMs, err: detail.error }, `webhook ${resource} informer: retrying after backoff`);
      },
    });
    informer.start();
    return informer;
  };
  const webhookNamespaces = config.webhook.enabled ? webhookCache<SlimNamespace>('namespaces', slimNamespace, sameSlimNamespace) : undefined;
  const webhookNodes =
    config.webhook.enabled && config.webhook.sidecar.nativeSidecar === 'auto' ? webhookCache<SlimNode>('nodes', slimNode, sameSlimNode) : undefined;
  const stopCaches = () => Promise.all([webhookNamespaces?.stop(), webhookNodes?.stop()]);
  let feedAddress: string | undefined;
  let feed: RunningFeedServer | undefined;
  const feedServiceName = `${config.webhook.serviceName}.${config.webhook.namespace}.svc`;
  let webhook: RunningWebhook | undefined;
  try {
    webhook = config.webhook.enabled
      ? await startWebhook({
          config: config.webhook,
          kube: rest,
          logger: log.child({ component: 'webhook' }),
          registry,
          namespaces: webhookNamespaces,
          nodes: webhookNodes,
        })
      : undefined;
  } catch (err) {
    await stopCaches();
    throw err;
  }

  let elector: LeaderElector | undefined;
  const certFile = config.feed.certFile;
  const keyFile = config.feed.keyFile;
  const fileTls: TlsSource | undefined =
    certFile && keyFile
      ? {
          start: async () => ({ certPem: readFileSync(certFile, 'utf8'), keyPem: readFileSync(keyFile, 'utf8') }),
          onChange: () => {},
          stop: async () => {},
        }
      : undefined;
  const feedTls = webhook?.tls ?? d.feedTls ?? fileTls;
  const recordCheck: TokenCheckRecorder = (method, result, reason) => metrics.feedTokenChecks.inc({ method, result, reason });
  const tokenReviews = new TokenReviewCache({
    review: recordedReview((token) => reviewAgentToken(transport, token), recordCheck),
    now: () => clock.now(),
    ttlMs: config.feed.tokenReviewCacheMs,
    maxEntries: 50_000,
    concurrency: config.feed.tokenReviewConcurrency,
  });
  const localTokens = new LocalTokenVerifier({
    transport,
    now: () => clock.now(),
    log: log.child({ component: 'feed' }),
    pods: () => {
      const c = controller;
      return c && { syncedAt: c.syncedAt, get: (key: string) => c.pods.get(key), whenSynced: c.whenSynced };
    },
  });
  const authenticate = agentAuthenticator({
    mode: config.feed.tokenVerification,
    local: localTokens,
    tokenReviews,
    usable: (id) => controller?.pods.get(`${id.namespace}/${id.pod}`)?.uid === id.podUid,
    record: recordCheck,
  });
  if (feedTls) {
    const pem = webhook ? webhook.servingPem() : await feedTls.start();
    feed = await startFeedServer({
      host: config.feed.host,
      port: config.feed.port,
      tls: pem,
      log: log.child({ component: 'feed' }),
      idleTimeoutMs: config.feed.idleTimeoutMs,
      transport: config.feed.transport,
      tlsRecords: config.feed.tlsRecords,
      onStream: (outcome) => metrics.feedStreams.inc({ outcome }),
      backend: {
        leaderAddress: () => {
          if (controller) return undefined;
          const seen = elector?.observedLeader();
          return seen?.identity ? (seen.annotations[FEED_ADDRESS_ANNOTATION] ?? null) : null;
        },
        // Verified locally (feed.tokenVerification local), else by TokenReview; reconnects of agents this
        // process reviewed already cost no TokenReview (a remembered identity is used only while its pod is in
        // the leader's cache with that uid).
        authenticate,
        attach: (identity, conn) => {
          const c = controller;
          if (!c) throw new FeedAuthError(503, 'this replica stopped leading; reconnect');
          const handlers = c.feed.attach(identity, conn);
          metrics.feedConnected.set(c.feed.connected);
          return {
            frame: handlers.frame,
            ...(handlers.later ? { later: handlers.later } : {}),
            closed: () => {
              handlers.closed();
              metrics.feedConnected.set(c.feed.connected);
            },
          };
        },
      },
    });
    feedTls.onChange((next) => feed?.setTls(next));
    const running = feed;
    metrics.setFeedConnectionSource(() => running.stats());
    feedAddress = config.feed.advertiseAddress ?? `${config.webhook.shutdown.podIP ?? '127.0.0.1'}:${feed.port}`;
    // Where injected agents find the operator: this replica first (no DNS or kube-proxy needed), then the
    // Service; the TLS name to check is the Service's, which the serving cert carries.
    webhook?.setFeed({ addresses: [feedAddress, `${feedServiceName}:${feed.port}`], serverName: feedServiceName });
  }

  const electionAbort = new AbortController();
  let election: Promise<void> | undefined;
  if (config.leaderElection.enabled) {
    const le = config.leaderElection;
    elector = new LeaderElector({
      transport,
      clock,
      log: log.child({ component: 'leader-election' }),
      namespace: le.leaseNamespace ?? config.namespace,
      name: le.leaseName,
      identity: config.identity,
      leaseDurationMs: le.leaseDurationMs,
      renewDeadlineMs: le.renewDeadlineMs,
      retryPeriodMs: le.retryPeriodMs,
      ...(feedAddress ? { annotations: { [FEED_ADDRESS_ANNOTATION]: feedAddress } } : {}),
      onStartedLeading: (signal) => startController(signal),
      onStoppedLeading: () => stopController(),
      onNewLeader: (holder) => log.info({ leader: holder }, 'leader observed'),
    });
    election = elector.run(electionAbort.signal);
  } else {
    startController();
  }

  let health: RunningHealthServer;
  try {
    health = await startHealthServer({
      host: config.server.host,
      port: config.server.port,
      registry,
      healthy: () => true,
      // A follower is ready (it serves the webhook); a leader once its caches are synced; nobody while the
      // webhook's worker is being started again, or once shutting down (the Endpoints drop this pod while its
      // webhook still serves).
      notReady: () => {
        if (shuttingDown) return ['shutting down'];
        const reasons: string[] = [];
        if (webhook && !webhook.ready()) reasons.push('webhook worker not listening (restarting)');
        if (controller && !controller.synced) reasons.push('caches not synced yet');
        return reasons;
      },
    });
  } catch (err) {
    electionAbort.abort();
    await election;
    await feed?.close();
    await webhook?.close();
    await stopCaches();
    throw err;
  }

  return {
    metrics,
    transport,
    healthPort: health.port,
    webhook,
    feed,
    feedAddress,
    isLeader: () => controller !== undefined,
    controller: () => controller,
    async shutdown() {
      // Not ready from now on; the webhook keeps serving until the Service's Endpoints no longer list this pod
      // (bounded), so that no pod created meanwhile passes uninjected under failurePolicy Ignore.
      shuttingDown = true;
      const drained = webhook?.drain();
      // Meanwhile: stop reconciling and wait for in-flight reconciles, then give the Lease up: a successor
      // never overlaps with this replica's last writes, and takes over without waiting for the drain.
      step = 'stopping the controller';
      await stopController();
      step = 'releasing the Lease';
      electionAbort.abort();
      await election;
      step = 'closing the agent feed';
      metrics.setFeedConnectionSource(undefined);
      await feed?.close();
      step = 'draining the webhook';
      const outcome = await drained;
      if (outcome) log.info({ outcome }, 'webhook drained');
      step = 'closing the webhook';
      await webhook?.close();
      step = 'stopping the webhook caches';
      await stopCaches();
      step = 'closing the health server';
      await health.close();
      rest.close();
      step = 'done';
    },
    shutdownStep: () => (step === 'stopping the controller' && stopDetail ? `${step} (${stopDetail()})` : step),
  };
}
