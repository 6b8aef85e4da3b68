// One operator replica: the webhook and the health/metrics server run on every replica; the controller
// (informers, queue, reconciles, agent polling) runs only while this replica holds the leader Lease.
import type { Logger } from 'pino';
import { Registry } from 'prom-client';
import type { Clock } from './clock.js';
import type { OperatorConfig } from './config.js';
import { Controller } from './controller/controller.js';
import type { AgentFetcher } from './controller/agents.js';
import { Backoff } from './kube/backoff.js';
import { Informer, InformerLifecycle } from './kube/informer.js';
import { sameSlimNamespace, slimNamespace, type SlimNamespace } from './kube/objects.js';
import { CountingTransport, KubeRest, type KubeTransport } from './kube/rest.js';
import { LeaderElector } from './leader/election.js';
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
  agentFetcher?: AgentFetcher;
}

export interface RunningOperator {
  metrics: OperatorMetrics;
  transport: CountingTransport;
  healthPort: number;
  webhook: RunningWebhook | undefined;
  isLeader(): boolean;
  /** The running controller while leading (tests and benchmarks look into its caches). */
  controller(): Controller | undefined;
  /** Stops reconciling, releases the Lease, closes the servers. */
  shutdown(): Promise<void>;
}

export async function startOperator(d: OperatorDeps): Promise<RunningOperator> {
  const { config, log, clock } = d;
  const registry = d.registry ?? new Registry();
  const metrics = createMetrics(registry);
  const rest = d.rest ?? (await KubeRest.create(config.kubeconfig));
  const transport = new CountingTransport(rest, (verb, _path, outcome) => metrics.apiRequests.inc({ verb, outcome }));

  let controller: Controller | undefined;
  let stopping: Promise<void> | undefined;
  let shuttingDown = false;
  const startController = (leaderSignal?: AbortSignal) => {
    const c = new Controller({ config, transport: transport as KubeTransport, clock, log, metrics, agentFetcher: d.agentFetcher });
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
  let webhook: RunningWebhook | undefined;
  try {
    webhook = config.webhook.enabled
      ? await startWebhook({ config: config.webhook, kube: rest.kubeConfig, logger: log.child({ component: 'webhook' }), registry, namespaces: webhookNamespaces, nodes: webhookNodes })
      : undefined;
  } catch (err) {
    await stopCaches();
    throw err;
  }

  const electionAbort = new AbortController();
  let elector: LeaderElector | undefined;
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
      // A follower is ready (it serves the webhook); a leader once its caches are synced; nobody once shutting
      // down (the Endpoints drop this pod while its webhook still serves).
      notReady: () => (shuttingDown ? ['shutting down'] : controller && !controller.synced ? ['caches not synced yet'] : []),
    });
  } catch (err) {
    electionAbort.abort();
    await election;
    await webhook?.close();
    await stopCaches();
    throw err;
  }

  return {
    metrics,
    transport,
    healthPort: health.port,
    webhook,
    isLeader: () => controller !== undefined,
    controller: () => controller,
    async shutdown() {
      // Not ready from now on; the webhook keeps serving until the Service's Endpoints no longer list this pod
      // (bounded), so that no pod created meanwhile passes uninjected under failurePolicy Ignore.
      shuttingDown = true;
      const drained = webhook?.drain();
      // Meanwhile: stop reconciling and wait for in-flight reconciles, then give the Lease up: a successor
      // never overlaps with this replica's last writes, and takes over without waiting for the drain.
      await stopController();
      electionAbort.abort();
      await election;
      const outcome = await drained;
      if (outcome) log.info({ outcome }, 'webhook drained');
      await webhook?.close();
      await stopCaches();
      await health.close();
      rest.close();
    },
  };
}
