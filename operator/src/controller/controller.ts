// The leader's machinery: three informers (StreamPaths, Pods, Namespaces) feed one reconcile queue; the
// agents' reports on the feed feed it too. Pod and Namespace events are mapped to the StreamPaths that
// select them. Two more informers (Services, Endpoints) and the program ConfigMaps feed the agents'
// configurations (feed/hub.ts), which follow every change of what they are computed from.
import type { Logger } from 'pino';
import { GROUP, PLURAL, VERSION } from '../../../api/src/streampath.js';
import type { Clock } from '../../../runtime/src/clock.js';
import type { OperatorConfig } from '../config.js';
import { Backoff } from '../../../runtime/src/backoff.js';
import { EventRecorder } from '../../../runtime/src/events.js';
import { Informer, InformerLifecycle } from '../../../runtime/src/informer.js';
import { podKey, sameSlimNamespace, sameSlimPod, selectorMatches, slimNamespace, slimPod, type SlimNamespace, type SlimPod } from '../kube/objects.js';
import type { KubeTransport } from '../../../runtime/src/rest.js';
import type { OperatorMetrics } from '../observability/metrics.js';
import { FeedHub } from '../feed/hub.js';
import { ProgramCache } from '../feed/programs.js';
import { sameJson, slimEndpoints, slimService, type SlimEndpoints, type SlimService } from '../feed/resolve.js';
import { WorkQueue } from '../../../runtime/src/queue.js';
import { Reconciler, type StreamPathObject } from './reconciler.js';
import { sidecarContainer } from '../webhook/patch.js';

export interface ControllerDeps {
  config: OperatorConfig;
  transport: KubeTransport;
  clock: Clock;
  log: Logger;
  metrics: OperatorMetrics;
  random?: () => number;
}

/** Reports that arrive within this window are taken into one reconcile of their StreamPath. */
const REPORT_WINDOW_MS = 1_000;
/**
 * Reconciles wait at most this long (from the start of the propagation, not of each wait) for the feed's
 * configurations to be sent and acknowledged.
 */
const FEED_FIRST_MS = 3_000;

type RawSelector = Parameters<typeof selectorMatches>[0];

function rawSelector(sp: StreamPathObject): RawSelector {
  return (sp.spec as { selector?: RawSelector } | undefined)?.selector;
}

/** A selector that is not even a selector (the spec is invalid: the reconcile says so) selects nothing. */
function matches(selector: RawSelector, labels: Record<string, string>): boolean {
  try {
    return selectorMatches(selector, labels);
  } catch {
    return false;
  }
}

function spKey(sp: { metadata: { namespace: string; name: string } }): string {
  return `${sp.metadata.namespace}/${sp.metadata.name}`;
}

/** Drops what the operator never reads (managedFields are often half of an object's size). */
function slimStreamPath(raw: Record<string, unknown>): StreamPathObject {
  const sp = raw as unknown as StreamPathObject & { metadata: { managedFields?: unknown; annotations?: unknown } };
  const { managedFields: _m, annotations: _a, ...metadata } = sp.metadata;
  return { ...sp, metadata };
}

export class Controller {
  readonly streamPaths: Informer<StreamPathObject>;
  readonly pods: Informer<SlimPod>;
  readonly namespaces: Informer<SlimNamespace>;
  readonly services: Informer<SlimService>;
  readonly endpoints: Informer<SlimEndpoints>;
  readonly queue: WorkQueue;
  /** The agents' streams: their configurations out, their reports in. */
  readonly feed: FeedHub;
  readonly programs: ProgramCache;
  readonly reconciler: Reconciler;
  /** namespace -> pod name -> pod, so a reconcile looks only at its own namespace. */
  private readonly podsByNamespace = new Map<string, Map<string, SlimPod>>();
  /** namespace -> StreamPath keys, to map pod events to StreamPaths. */
  private readonly spByNamespace = new Map<string, Set<string>>();
  /**
   * StreamPath key -> the pods its selector matches (pod name -> pod), and pod key -> those StreamPath keys:
   * a status is computed from its own pods and a report reaches its own StreamPaths without looking at
   * every pod or StreamPath of the namespace. Kept by the pod and StreamPath events.
   */
  private readonly podsBySp = new Map<string, Map<string, SlimPod>>();
  private readonly spsByPod = new Map<string, Set<string>>();
  /** StreamPaths being deleted: they wait on the agents of any pod of their namespace. */
  private readonly deleting = new Set<string>();
  private readonly abort = new AbortController();
  private timers: NodeJS.Timeout[] = [];
  private started = false;
  /** When the caches synced and reconciles began (the warm-up for the first agent reports counts from here). */
  private reconcilingSince: number | undefined;
  private markSynced!: () => void;
  /** Resolves when every cache has synced (never, when stopped before). */
  readonly whenSynced = new Promise<void>((resolve) => (this.markSynced = resolve));

  constructor(private readonly d: ControllerDeps) {
    const { config, transport, clock, log, metrics } = d;
    const informerBackoff = () => new Backoff({ initialMs: 500, maxMs: 30_000, random: d.random });
    const lifecycle = (resource: string) => (event: InformerLifecycle, detail: { error?: unknown; delayMs?: number; count?: number; handler?: string }) => {
      metrics.recordLifecycle(resource, event);
      if (event === InformerLifecycle.HandlerFailed) {
        log.error({ resource, handler: detail.handler, err: detail.error }, `${resource} informer: ${detail.handler} handler threw; skipped for this object, the watch goes on`);
      } else if (event === InformerLifecycle.IdleTimeout) {
        log.warn({ resource, delayMs: detail.delayMs, err: detail.error }, `${resource} informer: watch silent past its timeout, relisting`);
      } else if (event === InformerLifecycle.Failed || event === InformerLifecycle.Expired) {
        log.warn({ resource, event, delayMs: detail.delayMs, err: detail.error }, `${resource} informer: ${event}, retrying after backoff`);
      } else if (event === InformerLifecycle.Listed) {
        metrics.informerObjects.set({ resource }, detail.count ?? 0);
        log.debug({ resource, count: detail.count }, `${resource} listed`);
      }
    };
    this.streamPaths = new Informer<StreamPathObject>({
      name: PLURAL,
      transport,
      path: `/apis/${GROUP}/${VERSION}/${PLURAL}`,
      transform: slimStreamPath,
      key: spKey,
      // The operator's own status writes come back as events; only a new resourceVersion is news.
      equal: (a, b) => a.metadata.resourceVersion === b.metadata.resourceVersion,
      clock,
      backoff: informerBackoff(),
      resyncPeriodMs: config.resyncPeriodMs,
      onLifecycle: lifecycle(PLURAL),
    });
    this.pods = new Informer<SlimPod>({
      name: 'pods',
      transport,
      path: '/api/v1/pods',
      transform: slimPod,
      key: podKey,
      equal: sameSlimPod,
      clock,
      backoff: informerBackoff(),
      resyncPeriodMs: config.resyncPeriodMs,
      onLifecycle: lifecycle('pods'),
    });
    this.namespaces = new Informer<SlimNamespace>({
      name: 'namespaces',
      transport,
      path: '/api/v1/namespaces',
      transform: slimNamespace,
      key: (n) => n.name,
      equal: sameSlimNamespace,
      clock,
      backoff: informerBackoff(),
      resyncPeriodMs: config.resyncPeriodMs,
      onLifecycle: lifecycle('namespaces'),
    });

    const nsName = (o: { namespace: string; name: string }) => `${o.namespace}/${o.name}`;
    this.services = new Informer<SlimService>({
      name: 'services',
      transport,
      path: '/api/v1/services',
      transform: slimService,
      key: nsName,
      equal: sameJson,
      clock,
      backoff: informerBackoff(),
      resyncPeriodMs: config.resyncPeriodMs,
      onLifecycle: lifecycle('services'),
    });
    this.endpoints = new Informer<SlimEndpoints>({
      name: 'endpoints',
      transport,
      path: '/api/v1/endpoints',
      transform: slimEndpoints,
      key: nsName,
      equal: sameJson,
      clock,
      backoff: informerBackoff(),
      resyncPeriodMs: config.resyncPeriodMs,
      onLifecycle: lifecycle('endpoints'),
    });
    this.programs = new ProgramCache({
      transport,
      log,
      onChange: (ns, name) => this.feed.configMapChanged(ns, name),
    });
    this.feed = new FeedHub({
      clock,
      log: log.child({ component: 'feed' }),
      getPod: (key) => this.pods.get(key),
      streamPathsIn: (ns) => this.streamPathsIn(ns),
      streamPathsSelecting: (pod) => this.streamPathsSelecting(pod),
      getService: (ns, name) => this.services.get(`${ns}/${name}`),
      getEndpoints: (ns, name) => this.endpoints.get(`${ns}/${name}`),
      programs: this.programs,
      onObservation: (pod, changed, countersOnly) => this.enqueueReported(pod, changed, countersOnly),
      disconnectGraceMs: config.feed.disconnectGraceMs,
      // Admission reviews wait for a slice only when the webhook shares this event loop.
      flushSliceMs: config.webhook.enabled && config.webhook.thread === 'main' ? 10 : 50,
      onConfigSent: () => metrics.feedFrames.inc({ frame: 'config' }),
      onReport: () => metrics.feedFrames.inc({ frame: 'report' }),
    });

    const events = new EventRecorder({
      transport,
      clock,
      component: 'kstreams-operator',
      instance: config.identity,
      onEmit: (type) => metrics.eventsEmitted.inc({ type }),
      onError: (err) => log.warn({ err }, 'could not create an Event'),
    });

    this.reconciler = new Reconciler({
      transport,
      clock,
      log,
      events,
      getStreamPath: (key) => this.streamPaths.get(key),
      storeStreamPath: (obj) => this.storeWritten(obj),
      podsInNamespace: (ns) => this.podsByNamespace.get(ns)?.values() ?? [],
      podsSelectedBy: (key) => this.podsBySp.get(key)?.values() ?? [],
      getNamespace: (name) => this.namespaces.get(name),
      observe: (pod) => this.feed.observe(pod),
      detachTimeoutMs: config.detachTimeoutMs,
      // Native or not, the sidecar's securityContext is the same: that is what Pod Security judges.
      sidecar: sidecarContainer(config.webhook.sidecar, false),
      detachRecheckMs: 1_000,
      onStatusWrite: () => metrics.statusWrites.inc(),
      onResult: (result) => metrics.reconcileTotal.inc({ result }),
      statusWriteIntervalMs: config.statusWriteIntervalMs,
      statusWritesPerSecond: config.statusWritesPerSecond,
      streamPathCount: () => this.streamPaths.size,
      // A new leader (or a restarted one) first hears every selected agent once, for at most feed.warmupMs.
      warmingUp: () => this.reconcilingSince === undefined || clock.now() - this.reconcilingSince < config.feed.warmupMs,
      presumeUnheard: () => (this.reconcilingSince === undefined ? config.feed.reconnectGraceMs : Math.max(0, this.reconcilingSince + config.feed.reconnectGraceMs - clock.now())),
    });

    this.queue = new WorkQueue({
      concurrency: config.reconcileConcurrency,
      clock,
      retryInitialMs: config.retryInitialMs,
      retryMaxMs: config.retryMaxMs,
      random: d.random,
      process: async (key, signal) => {
        // Agents' configurations first (an edit of a StreamPath of 10,000 pods): a status can wait a moment,
        // within its write bound, until the edit's frames are sent and acknowledged. Each reconcile's write
        // would take CPU from the frames still to be sent, and (where the apiserver or the agents share the
        // operator's cores) from the agents still reading theirs.
        if (this.feed.propagating) await this.feed.whenPropagated(FEED_FIRST_MS);
        const end = metrics.reconcileDuration.startTimer();
        try {
          const r = await this.reconciler.reconcile(key, signal);
          end({ result: 'ok' });
          return r;
        } catch (err) {
          end({ result: 'error' });
          throw err;
        }
      },
      onError: (key, err, retryInMs) => {
        metrics.reconcileErrors.inc();
        metrics.reconcileTotal.inc({ result: 'error' });
        log.warn({ streamPath: key, err, retryInMs }, 'reconcile failed, retrying with backoff');
      },
      onDepth: (depth) => metrics.queueDepth.set(depth),
    });

    this.wireHandlers();
  }

  private *streamPathsIn(namespace: string): Iterable<StreamPathObject> {
    for (const key of this.spByNamespace.get(namespace) ?? []) {
      const sp = this.streamPaths.get(key);
      if (sp) yield sp;
    }
  }

  private *streamPathsSelecting(pod: SlimPod): Iterable<StreamPathObject> {
    for (const key of this.spsByPod.get(podKey(pod)) ?? []) {
      const sp = this.streamPaths.get(key);
      if (sp) yield sp;
    }
  }

  private wireHandlers(): void {
    this.streamPaths.on({
      add: (sp) => {
        this.indexStreamPath(sp, true);
        this.selectPods(sp);
        this.enqueue(spKey(sp));
        this.feed.streamPathsChanged(sp.metadata.namespace);
      },
      update: (old, sp) => {
        this.selectPods(sp, old);
        this.enqueue(spKey(sp));
        // Status writes come back as updates too: only a spec, generation or deletion is news for the agents.
        if (old.metadata.generation !== sp.metadata.generation || old.metadata.deletionTimestamp !== sp.metadata.deletionTimestamp || old.metadata.uid !== sp.metadata.uid) {
          this.feed.streamPathsChanged(sp.metadata.namespace);
        }
      },
      delete: (sp) => {
        this.indexStreamPath(sp, false);
        this.unselectPods(spKey(sp));
        this.reconciler.forget(spKey(sp));
        this.feed.streamPathsChanged(sp.metadata.namespace);
      },
      resync: () => {
        this.reconciler.forgetAll();
        for (const sp of this.streamPaths.list()) this.enqueue(spKey(sp));
      },
    });
    this.pods.on({
      add: (pod) => {
        this.indexPod(pod, true);
        this.feed.podChanged(pod);
        this.enqueueForPod(pod);
      },
      update: (old, pod) => {
        this.indexPod(pod, true);
        this.feed.podChanged(pod);
        this.enqueueForPod(pod, old);
      },
      delete: (pod) => {
        this.indexPod(pod, false);
        this.feed.podDeleted(pod);
        this.enqueueForPod(pod);
      },
    });
    const nsChanged = (ns: SlimNamespace) => {
      for (const key of this.spByNamespace.get(ns.name) ?? []) this.enqueue(key);
    };
    this.namespaces.on({ add: nsChanged, update: (_o, ns) => nsChanged(ns), delete: nsChanged });

    const svcChanged = (o: { namespace: string; name: string }) => this.feed.serviceChanged(o.namespace, o.name);
    this.services.on({ add: svcChanged, update: (_o, x) => svcChanged(x), delete: svcChanged });
    this.endpoints.on({ add: svcChanged, update: (_o, x) => svcChanged(x), delete: svcChanged });
  }

  private storeWritten(obj: StreamPathObject): void {
    // Write-through: the next reconcile of this key compares against what was just written, even before
    // the watch event arrives, so it does not write the same status twice.
    this.streamPaths.upsertLocal(slimStreamPath(obj as unknown as Record<string, unknown>));
  }

  private indexStreamPath(sp: StreamPathObject, present: boolean): void {
    const ns = sp.metadata.namespace;
    let set = this.spByNamespace.get(ns);
    if (present) {
      if (!set) this.spByNamespace.set(ns, (set = new Set()));
      set.add(spKey(sp));
    } else if (set) {
      set.delete(spKey(sp));
      if (set.size === 0) this.spByNamespace.delete(ns);
    }
  }

  /** (Re)computes which pods a StreamPath selects: when it appears and when its selector changes. */
  private selectPods(sp: StreamPathObject, old?: StreamPathObject): void {
    const key = spKey(sp);
    if (sp.metadata.deletionTimestamp) this.deleting.add(key);
    else this.deleting.delete(key);
    const selector = rawSelector(sp);
    if (old && this.podsBySp.has(key) && JSON.stringify(rawSelector(old)) === JSON.stringify(selector)) return;
    this.unselectPods(key, false);
    const selected = new Map<string, SlimPod>();
    this.podsBySp.set(key, selected);
    for (const pod of this.podsByNamespace.get(sp.metadata.namespace)?.values() ?? []) {
      if (matches(selector, pod.labels)) this.link(key, pod, selected);
    }
  }

  private unselectPods(key: string, forget = true): void {
    const selected = this.podsBySp.get(key);
    if (forget) this.deleting.delete(key);
    if (!selected) return;
    this.podsBySp.delete(key);
    for (const pod of selected.values()) {
      const pk = podKey(pod);
      const sps = this.spsByPod.get(pk);
      sps?.delete(key);
      if (sps?.size === 0) this.spsByPod.delete(pk);
    }
  }

  private link(key: string, pod: SlimPod, selected: Map<string, SlimPod>): void {
    selected.set(pod.name, pod);
    const pk = podKey(pod);
    let sps = this.spsByPod.get(pk);
    if (!sps) this.spsByPod.set(pk, (sps = new Set()));
    sps.add(key);
  }

  /** A pod appeared, changed or went: its place in every StreamPath's selection of its namespace. */
  private reselectPod(pod: SlimPod, present: boolean): void {
    const pk = podKey(pod);
    for (const key of present ? (this.spByNamespace.get(pod.namespace) ?? []) : [...(this.spsByPod.get(pk) ?? [])]) {
      const sp = this.streamPaths.get(key);
      const selected = this.podsBySp.get(key);
      if (!sp || !selected) continue;
      if (present && matches(rawSelector(sp), pod.labels)) this.link(key, pod, selected);
      else if (selected.delete(pod.name)) {
        const sps = this.spsByPod.get(pk);
        sps?.delete(key);
        if (sps?.size === 0) this.spsByPod.delete(pk);
      }
    }
  }

  /**
   * An agent's report changed: its StreamPaths are reconciled after the report window, not at once, so a
   * StreamPath of 1000 pods whose counters move every second is computed about once a second (and once per
   * status write interval when its status keeps changing), not 1000 times. Only the StreamPaths whose part
   * of the report changed (`changed`, by name; all when undefined): an agent acknowledging an edit of one
   * StreamPath does not make the others of its pod computed again. A change of counters alone
   * (`countersOnly`) is not worth a reconcile before the counter interval lets it be written.
   */
  private enqueueReported(pod: SlimPod, changed?: ReadonlySet<string>, countersOnly?: ReadonlySet<string>): void {
    for (const key of this.spsByPod.get(podKey(pod)) ?? []) {
      const name = key.slice(pod.namespace.length + 1);
      if (changed && !changed.has(name)) continue;
      this.queue.addAfter(key, this.reconciler.nextWriteInMs(key, REPORT_WINDOW_MS, countersOnly?.has(name) ?? false));
    }
    for (const key of this.deleting) if (key.startsWith(`${pod.namespace}/`)) this.queue.addAfter(key, REPORT_WINDOW_MS);
  }

  private indexPod(pod: SlimPod, present: boolean): void {
    this.reselectPod(pod, present);
    let byName = this.podsByNamespace.get(pod.namespace);
    if (present) {
      if (!byName) this.podsByNamespace.set(pod.namespace, (byName = new Map()));
      byName.set(pod.name, pod);
    } else if (byName) {
      byName.delete(pod.name);
      if (byName.size === 0) this.podsByNamespace.delete(pod.namespace);
    }
  }

  /** StreamPaths whose selector matches the pod now or before the change (a relabel leaves one, joins another). */
  private enqueueForPod(pod: SlimPod, old?: SlimPod): void {
    for (const key of this.spByNamespace.get(pod.namespace) ?? []) {
      const sp = this.streamPaths.get(key);
      if (!sp) continue;
      const selector = (sp.spec as { selector?: Parameters<typeof selectorMatches>[0] } | undefined)?.selector;
      // A deleting StreamPath waits on agents of any pod, so it hears about every pod of its namespace.
      if (sp.metadata.deletionTimestamp || selectorMatches(selector, pod.labels) || (old && selectorMatches(selector, old.labels))) {
        this.enqueue(key);
      }
    }
  }

  private enqueue(key: string): void {
    this.queue.add(key);
  }

  /** Starts the informers; reconciles and agent configurations begin once every cache holds a full list. */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    this.queue.pause();
    this.namespaces.start();
    this.pods.start();
    this.streamPaths.start();
    this.services.start();
    this.endpoints.start();
    // One timer each for all agents: disconnected agents turn unreachable after the grace; program
    // ConfigMaps in use are read again.
    this.timers.push(setInterval(() => this.feed.sweep(), 1_000));
    this.timers.push(setInterval(() => void this.programs.refresh(this.feed.configMapsInUse()), this.d.config.feed.programRefreshMs));
    for (const t of this.timers) t.unref();
    await Promise.race([
      Promise.all([this.namespaces.whenSynced(), this.pods.whenSynced(), this.streamPaths.whenSynced(), this.services.whenSynced(), this.endpoints.whenSynced()]),
      new Promise<void>((resolve) => this.abort.signal.addEventListener('abort', () => resolve(), { once: true })),
    ]);
    if (this.abort.signal.aborted) return;
    this.d.log.info(
      { streamPaths: this.streamPaths.size, pods: this.pods.size, namespaces: this.namespaces.size },
      'caches synced, reconciling',
    );
    this.reconcilingSince = this.d.clock.now();
    this.markSynced();
    this.feed.setSynced();
    this.queue.resume();
  }

  /** When every cache had synced (undefined before): a pod that existed from then on is in the pod cache. */
  get syncedAt(): number | undefined {
    return this.reconcilingSince;
  }

  get synced(): boolean {
    return this.streamPaths.synced && this.pods.synced && this.namespaces.synced && this.services.synced && this.endpoints.synced;
  }

  /** Stops at once: no reconcile starts and in-flight ones see their signal aborted before any write. */
  async stop(): Promise<void> {
    this.abort.abort();
    for (const t of this.timers) clearInterval(t);
    this.feed.stop();
    this.stopping = 'waiting for in-flight reconciles';
    await this.queue.stop();
    const informers = { streampaths: this.streamPaths, pods: this.pods, namespaces: this.namespaces, services: this.services, endpoints: this.endpoints };
    const pending = new Set(Object.keys(informers));
    this.stopping = () => `stopping the ${[...pending].join(', ')} informers`;
    await Promise.all(Object.entries(informers).map(([name, i]) => i.stop().then(() => pending.delete(name))));
    this.stopping = 'stopped';
  }

  /** Where stop() is (the operator names it when its shutdown overruns). */
  stopStage(): string {
    return typeof this.stopping === 'function' ? this.stopping() : this.stopping;
  }

  private stopping: string | (() => string) = 'not stopping';
}
