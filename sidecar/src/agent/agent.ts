// The in-pod agent: gets its configuration from the operator's feed (the StreamPaths that select its pod,
// their Service targets resolved, their transform programs), converges the data plane to it, reports back
// on the same stream, and serves /healthz, /readyz, /metrics and /v1/report. It makes no API request of its
// own: the pod's ServiceAccount needs no rights (docs/adr/0008-agents-get-their-configuration-from-the-operator.md).
import { pino, type Logger } from 'pino';
import type { AgentReport } from '../../../api/src/agent.js';
import { programKey, serviceKey, type ConfigFrame } from '../../../api/src/feed.js';
import type { MirrorTarget } from '../../../api/src/streampath.js';
import { errSerializer } from '../../../runtime/src/errors.js';
import type { KernelFeatures } from '../../../native/lib/types.js';
import type { AgentConfig } from './config.js';
import { Reconciler, type World } from './converge.js';
import type { AgentDataPlane } from './dataplane.js';
import { FeedClient } from './feed-client.js';
import { createMetrics, type AgentMetrics } from './metrics.js';
import { planShutdown, type ShutdownPlan } from './shutdown.js';
import type { ProgramSource } from '../dataplane/transform.js';
import { startAgentServer, type AgentHttpServer, type Readiness } from './server.js';

export interface Timers {
  setTimeout(fn: () => void, ms: number): { unref?: () => unknown } | unknown;
  clearTimeout(handle: unknown): void;
}

export const realTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface AgentDeps {
  /** Default: the native data plane (sidecar/src/dataplane/attach.ts). */
  dataPlane?: AgentDataPlane;
  /** Default: native/lib/kernel.ts probeKernelFeatures. */
  probeKernel?: () => KernelFeatures | Promise<KernelFeatures>;
  logger?: Logger;
  timers?: Timers;
}

export class Agent {
  readonly logger: Logger;
  private readonly reconciler: Reconciler;
  private readonly metrics: AgentMetrics;
  private readonly feed: FeedClient;
  private readonly timers: Timers;
  /** The last configuration from the operator: kept when the stream breaks (fail-static). */
  private config_: ConfigFrame | undefined;
  private servicesKey = '';
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

    this.reconciler = new Reconciler({
      dataPlane: deps.dataPlane,
      ...(config.netnsPath !== undefined ? { netnsPath: config.netnsPath } : {}),
      resolve: (target) => this.resolveService(target),
      readProgram: (source) => this.readProgram(source),
      ...(config.mirrorBufferBudgetBytes !== undefined ? { mirrorBufferBudget: config.mirrorBufferBudgetBytes } : {}),
      ...(config.captureDir !== undefined ? { captureRoot: config.captureDir } : {}),
      onDrained: (_name, outcome) => this.metrics.drainDone(outcome),
      logger: this.logger,
    });
    this.metrics = createMetrics({
      snapshot: () => this.reconciler.snapshot(),
      ready: () => this.readiness().ready,
      drainsInProgress: () => this.reconciler.drainsInProgress(),
    });
    this.feed = new FeedClient({
      addresses: config.operatorAddresses,
      ...(config.operatorServerName ? { serverName: config.operatorServerName } : {}),
      ...(config.operatorCa ? { caPem: config.operatorCa } : {}),
      tokenFile: config.feedTokenFile,
      logger: this.logger,
      onConfig: (frame) => this.applyConfig(frame),
      report: () => this.report(),
      onEvent: (e) => this.metrics.feedEvent(e),
    });
  }

  /** A `service:` target, as the operator resolved it for this configuration. */
  private async resolveService(target: MirrorTarget) {
    const ref = target.service;
    if (!ref) throw new Error('target has no service reference');
    const key = serviceKey(ref.namespace ?? this.config.podNamespace, ref.name, ref.port);
    const got = this.config_?.services[key];
    if (!got) throw new Error(`the operator sent no resolution for Service ${key}`);
    if ('error' in got) throw new Error(got.error);
    return got;
  }

  /** A transform program's bytes, as the operator read them from the ConfigMap. */
  private async readProgram(source: ProgramSource): Promise<Uint8Array> {
    if (!('configMap' in source)) {
      throw new Error(`program.path ${source.path} is a file of the kstreams CLI's machine; in a cluster give configMap and key`);
    }
    const got = this.config_?.programs[programKey(source.configMap, source.key)];
    if (!got) throw new Error(`the operator sent no program for ConfigMap ${this.config_ ? `${this.config.podNamespace}/${source.configMap}` : source.configMap} key ${source.key}`);
    if ('error' in got) throw new Error(got.error);
    if (!('data' in got)) throw new Error(`the operator sent program ${source.configMap}/${source.key} by hash only, and the feed client did not have it`);
    return new Uint8Array(Buffer.from(got.data, 'base64'));
  }

  /** A configuration from the operator: converge to it; targets are re-resolved when their addresses moved. */
  private async applyConfig(frame: ConfigFrame): Promise<void> {
    this.config_ = frame;
    this.schedule();
    await this.settled();
  }

  /** Resolves once no converge runs or is due. */
  private async settled(): Promise<void> {
    while (this.running) await this.running;
  }

  private world(): World {
    const c = this.config_;
    return { podLabels: c?.pod.labels, streamPaths: c?.streamPaths ?? [] };
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
        if (!this.config_) return;
        this.dirty = false;
        const retryFailed = this.retryFailed;
        this.retryFailed = false;
        const started = process.hrtime.bigint();
        try {
          const version = this.config_.version;
          await this.reconciler.converge(this.world(), { retryFailed });
          // The operator follows the Services' addresses: when they moved, running attachments follow too.
          const servicesKey = JSON.stringify(this.config_.services);
          if (servicesKey !== this.servicesKey) {
            this.servicesKey = servicesKey;
            const moved = await this.reconciler.refreshTargets();
            if (moved.length) this.logger.info({ streamPaths: moved }, 'mirror targets follow their Services to new addresses');
          }
          this.logger.debug({ version }, 'configuration applied');
          this.metrics.convergeDone('ok', Number(process.hrtime.bigint() - started) / 1e9);
        } catch (err) {
          this.metrics.convergeDone('error', Number(process.hrtime.bigint() - started) / 1e9);
          this.logger.error({ err }, 'converge failed');
        }
        if (!this.firstSyncDone) {
          this.firstSyncDone = true;
          this.logger.info({ attached: this.reconciler.attachedNames() }, 'first configuration from the operator applied');
          for (const w of this.syncWaiters.splice(0)) w();
        }
      }
    } finally {
      this.running = undefined;
    }
  }

  readiness(): Readiness {
    const reasons: string[] = [];
    if (!this.firstSyncDone) reasons.push('no configuration from the operator yet');
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

  /** Resolves once the first configuration from the operator has been applied. */
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
    this.feed.start();
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
   * How long a shutdown that starts now may drain (pod termination): from what the operator last said of
   * our Pod (grace period, deletionTimestamp) and KSTREAMS_SHUTDOWN_TIMEOUT_SECONDS.
   */
  shutdownPlan(now = Date.now()): ShutdownPlan {
    const pod = this.config_?.pod.termination;
    return planShutdown({ now, ...(pod ? { pod } : {}), shutdownTimeoutSeconds: this.config.shutdownTimeoutSeconds });
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
    this.timers.clearTimeout(this.resyncTimer);
    this.timers.clearTimeout(this.statsTimer);
    await this.running;
    await this.reconciler.detachAll(why, drainTimeoutMs !== undefined ? { timeoutMs: drainTimeoutMs } : {});
    // The operator hears that nothing is attached any more (a deleted StreamPath's finalizer waits for it).
    await this.feed.flush();
    await this.feed.stop();
    await this.http?.close();
    this.logger.info('stopped');
  }
}
