// The in-pod agent: watches its own Pod and the StreamPaths of its namespace, converges the data plane to
// the StreamPaths that select the pod, and serves /healthz, /readyz, /metrics and /v1/report.
import {
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  type V1Pod,
} from '@kubernetes/client-node';
import { pino, type Logger } from 'pino';
import type { AgentReport } from '../../../operator/src/api/agent.js';
import { GROUP, PLURAL, VERSION } from '../../../operator/src/api/streampath.js';
import { errSerializer } from '../../../operator/src/kube/errors.js';
import type { KernelFeatures } from '../../../native/lib/types.js';
import type { AgentConfig } from './config.js';
import { Reconciler, type World } from './converge.js';
import type { AgentDataPlane } from './dataplane.js';
import { createMetrics, type AgentMetrics } from './metrics.js';
import { planShutdown, type ShutdownPlan } from './shutdown.js';
import { serviceResolver } from './resolver.js';
import { configMapProgramReader } from './programs.js';
import { startAgentServer, type AgentHttpServer, type Readiness } from './server.js';
import { ResourceWatch, realTimers, type Timers } from './watch.js';

export interface AgentDeps {
  /** Default: in-cluster service account, else $KUBECONFIG (KubeConfig.loadFromDefault). */
  kubeConfig?: KubeConfig;
  /** Default: the native data plane (sidecar/src/dataplane/attach.ts). */
  dataPlane?: AgentDataPlane;
  /** Default: native/lib/kernel.ts probeKernelFeatures. */
  probeKernel?: () => KernelFeatures | Promise<KernelFeatures>;
  logger?: Logger;
  timers?: Timers;
}

type StreamPathObject = KubernetesObject & { spec?: unknown };

export class Agent {
  readonly logger: Logger;
  private readonly reconciler: Reconciler;
  private readonly metrics: AgentMetrics;
  private readonly podWatch: ResourceWatch<V1Pod>;
  private readonly streamPathWatch: ResourceWatch<StreamPathObject>;
  private readonly timers: Timers;
  private http: AgentHttpServer | undefined;
  private kernelProblems: string[] | undefined;
  private firstSyncDone = false;
  private stopping = false;
  private stopped: Promise<void> | undefined;
  // Converges run one at a time; events during one mark the world dirty for one more pass.
  private running: Promise<void> | undefined;
  private dirty = false;
  private retryFailed = false;
  private resyncTimer: unknown;
  private statsTimer: unknown;
  private readonly syncWaiters: Array<() => void> = [];

  constructor(
    readonly config: AgentConfig,
    private readonly deps: AgentDeps & { dataPlane: AgentDataPlane },
  ) {
    this.logger =
      deps.logger ??
      pino({ level: config.logLevel, base: { pod: config.podName, namespace: config.podNamespace }, serializers: { err: errSerializer } });
    this.timers = deps.timers ?? realTimers;
    const kc = deps.kubeConfig ?? defaultKubeConfig();
    const core = kc.makeApiClient(CoreV1Api);
    const custom = kc.makeApiClient(CustomObjectsApi);
    const ns = config.podNamespace;

    this.reconciler = new Reconciler({
      dataPlane: deps.dataPlane,
      ...(config.netnsPath !== undefined ? { netnsPath: config.netnsPath } : {}),
      resolve: serviceResolver(core, ns),
      readProgram: configMapProgramReader(core, ns),
      ...(config.mirrorBufferBudgetBytes !== undefined ? { mirrorBufferBudget: config.mirrorBufferBudgetBytes } : {}),
      onDrained: (_name, outcome) => this.metrics.drainDone(outcome),
      logger: this.logger,
    });
    this.metrics = createMetrics({
      snapshot: () => this.reconciler.snapshot(),
      ready: () => this.readiness().ready,
      drainsInProgress: () => this.reconciler.drainsInProgress(),
    });
    const onLifecycle = (resource: string) => (e: Parameters<AgentMetrics['watchEvent']>[1]) =>
      this.metrics.watchEvent(resource, e);

    this.podWatch = new ResourceWatch<V1Pod>({
      resource: 'pods',
      kubeConfig: kc,
      path: `/api/v1/namespaces/${ns}/pods`,
      fieldSelector: `metadata.name=${config.podName}`,
      list: () => core.listNamespacedPod({ namespace: ns, fieldSelector: `metadata.name=${config.podName}` }),
      onChange: () => this.schedule(),
      onLifecycle: onLifecycle('pods'),
      logger: this.logger,
      timers: this.timers,
    });
    this.streamPathWatch = new ResourceWatch<StreamPathObject>({
      resource: 'streampaths',
      kubeConfig: kc,
      path: `/apis/${GROUP}/${VERSION}/namespaces/${ns}/${PLURAL}`,
      list: async () =>
        (await custom.listNamespacedCustomObject({ group: GROUP, version: VERSION, namespace: ns, plural: PLURAL })) as KubernetesListObject<StreamPathObject>,
      onChange: () => this.schedule(),
      onLifecycle: onLifecycle('streampaths'),
      logger: this.logger,
      timers: this.timers,
    });
  }

  /** Our pod as the watch sees it; a pod of the same name with another uid is not ours. */
  private ownPod(): V1Pod | undefined {
    const pod = this.podWatch.list().find((p) => p.metadata?.name === this.config.podName);
    if (pod && this.config.podUid && pod.metadata?.uid !== this.config.podUid) return undefined;
    return pod;
  }

  private world(): World {
    const pod = this.ownPod();
    return { podLabels: pod ? (pod.metadata?.labels ?? {}) : undefined, streamPaths: this.streamPathWatch.list() };
  }

  /** Asks for a converge soon; many events in a burst make one pass. */
  schedule(retryFailed = false): void {
    if (this.stopping) return;
    this.dirty = true;
    this.retryFailed ||= retryFailed;
    if (this.running) return;
    this.running = new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.loop());
  }

  private async loop(): Promise<void> {
    try {
      while (this.dirty && !this.stopping) {
        if (!this.podWatch.synced || !this.streamPathWatch.synced) return;
        this.dirty = false;
        const retryFailed = this.retryFailed;
        this.retryFailed = false;
        const started = process.hrtime.bigint();
        try {
          await this.reconciler.converge(this.world(), { retryFailed });
          if (retryFailed) {
            const moved = await this.reconciler.refreshTargets();
            if (moved.length) this.logger.info({ streamPaths: moved }, 'mirror targets re-resolved to new endpoints');
          }
          this.metrics.convergeDone('ok', Number(process.hrtime.bigint() - started) / 1e9);
        } catch (err) {
          this.metrics.convergeDone('error', Number(process.hrtime.bigint() - started) / 1e9);
          this.logger.error({ err }, 'converge failed');
        }
        if (!this.firstSyncDone) {
          this.firstSyncDone = true;
          this.logger.info({ attached: this.reconciler.attachedNames() }, 'first sync done');
          for (const w of this.syncWaiters.splice(0)) w();
        }
      }
    } finally {
      this.running = undefined;
    }
  }

  readiness(): Readiness {
    const reasons: string[] = [];
    if (!this.firstSyncDone) reasons.push('first sync with the API not done yet');
    else if (!this.ownPod()) reasons.push(`pod ${this.config.podNamespace}/${this.config.podName} not found`);
    if (this.kernelProblems === undefined) reasons.push('kernel features not probed yet');
    else reasons.push(...this.kernelProblems);
    if (this.stopping) reasons.push('shutting down');
    return { ready: reasons.length === 0, reasons };
  }

  async report(): Promise<AgentReport> {
    return {
      pod: {
        namespace: this.config.podNamespace,
        name: this.config.podName,
        ...(this.config.podUid ? { uid: this.config.podUid } : {}),
      },
      ready: this.readiness().ready,
      streamPaths: (await this.reconciler.snapshot()).map((s) => s.report),
    };
  }

  get port(): number | undefined {
    return this.http?.port;
  }

  /** Resolves once the first converge after both watches listed has run. */
  firstSync(): Promise<void> {
    if (this.firstSyncDone) return Promise.resolve();
    return new Promise((resolve) => this.syncWaiters.push(resolve));
  }

  async start(): Promise<void> {
    this.http = await startAgentServer(
      {
        readiness: () => this.readiness(),
        report: () => this.report(),
        registry: this.metrics.registry,
        logger: this.logger,
      },
      this.config.port,
      this.config.bindAddress,
    );
    this.logger.info(
      { port: this.http.port, netns: this.config.netnsPath ?? '(own)', resyncSeconds: this.config.resyncSeconds },
      'agent listening',
    );
    await this.probeKernel();
    this.podWatch.start();
    this.streamPathWatch.start();
    this.armResync();
    this.armStats();
  }

  private async probeKernel(): Promise<void> {
    try {
      const probe = this.deps.probeKernel ?? (await import('../../../native/lib/kernel.js')).probeKernelFeatures;
      const features = await probe();
      this.kernelProblems = features.problems;
      if (features.problems.length) this.logger.warn({ problems: features.problems }, 'kernel lacks features');
    } catch (err) {
      this.kernelProblems = [`kernel probe failed: ${(err as Error).message}`];
      this.logger.error({ err }, 'kernel probe failed');
    }
  }

  private armResync(): void {
    this.resyncTimer = this.timers.setTimeout(() => {
      if (this.stopping) return;
      this.schedule(true);
      this.armResync();
    }, this.config.resyncSeconds * 1000);
    (this.resyncTimer as { unref?: () => void }).unref?.();
  }

  private armStats(): void {
    this.statsTimer = this.timers.setTimeout(() => {
      if (this.stopping) return;
      this.reconciler
        .sampleHealth()
        .catch((err: unknown) => this.logger.warn({ err }, 'sampling counters failed'))
        .finally(() => this.armStats());
    }, this.config.statsIntervalSeconds * 1000);
    (this.statsTimer as { unref?: () => void }).unref?.();
  }

  /**
   * How long a shutdown that starts now may drain (pod termination): from what the watch last saw of
   * our Pod (grace period, deletionTimestamp) and KSTREAMS_SHUTDOWN_TIMEOUT_SECONDS.
   */
  shutdownPlan(now = Date.now()): ShutdownPlan {
    const pod = this.ownPod();
    return planShutdown({
      now,
      ...(pod
        ? {
            pod: {
              deletionTimestamp: pod.metadata?.deletionTimestamp,
              deletionGracePeriodSeconds: pod.metadata?.deletionGracePeriodSeconds,
              terminationGracePeriodSeconds: pod.spec?.terminationGracePeriodSeconds,
            },
          }
        : {}),
      shutdownTimeoutSeconds: this.config.shutdownTimeoutSeconds,
    });
  }

  /**
   * Stops watching, detaches every StreamPath (all at once: interceptions released, then live
   * connections drained for up to min(spec.drainTimeoutSeconds, drainTimeoutMs) and the rest reset),
   * closes the HTTP server. Idempotent.
   */
  stop(why = 'agent stopping', opts: { drainTimeoutMs?: number } = {}): Promise<void> {
    this.stopped ??= this.shutdown(why, opts.drainTimeoutMs);
    return this.stopped;
  }

  /** Resets every live connection now (a second signal): running drains end at once. */
  abort(): Promise<void> {
    return this.reconciler.abortAll();
  }

  private async shutdown(why: string, drainTimeoutMs: number | undefined): Promise<void> {
    this.stopping = true;
    this.logger.info({ why, attached: this.reconciler.attachedNames(), drainTimeoutMs }, 'stopping: detaching everything');
    this.podWatch.stop();
    this.streamPathWatch.stop();
    this.timers.clearTimeout(this.resyncTimer);
    this.timers.clearTimeout(this.statsTimer);
    await this.running;
    await this.reconciler.detachAll(why, drainTimeoutMs !== undefined ? { timeoutMs: drainTimeoutMs } : {});
    await this.http?.close();
    this.logger.info('stopped');
  }
}

function defaultKubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromDefault();
  return kc;
}
