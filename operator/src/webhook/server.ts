// The webhook every operator replica runs (not only the leader): POST <path> for AdmissionReviews, GET
// /healthz, GET /prestop, on one port. The server and the admission decisions (serving.ts) run in a worker
// thread by default (config.thread), fed by this thread with what admission reads; the TLS source, the drain
// and the metrics registry stay here. Bodies are capped, header and request times bounded, TLS hot-reloaded.
import { X509Certificate } from 'node:crypto';
import type { V1Endpoints, VersionInfo } from '@kubernetes/client-node';
import { formatApiError } from '../../../runtime/src/errors.js';
import type { KubeTransport } from '../../../runtime/src/rest.js';
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { CertKeyPem } from './certs.js';
import type { WebhookConfig } from './config.js';
import type { FeedInjection } from './feed-injection.js';
import { parseServerVersion, type ServerVersion } from './patch.js';
import { serveWebhook, type AdmissionInputs, type Serving, type ServingObserver } from './serving.js';
import type { SlimNode } from './sidecar-mode.js';
import { MountedTls, SelfManagedTls, type TlsSource } from './tls-source.js';
import { WebhookWorkerHost } from './worker-host.js';
import type { StateDelta } from './worker-protocol.js';

export { PRESTOP_PATH } from './serving.js';

/**
 * A cache the caller keeps (an Informer satisfies it): read directly with thread 'main', followed through
 * its handlers and copied into the worker with thread 'worker'.
 */
export interface WatchedCache<T> {
  get(name: string): T | undefined;
  list(): Iterable<T>;
  readonly synced: boolean;
  whenSynced(): Promise<void>;
  on(handlers: { add?(obj: T): void; update?(old: T, obj: T): void; delete?(obj: T): void }): void;
}

export interface StartWebhookOptions {
  config: WebhookConfig;
  /** The operator's transport (KubeRest): /version, the TLS Secret and webhook configuration, the drain's Endpoints. */
  kube: KubeTransport;
  logger: Logger;
  registry: Registry;
  /** The apiserver's version; read from /version when absent. Picks native sidecars or the postStart wait. */
  serverVersion?: ServerVersion | { major?: string; minor?: string };
  /** Where the serving cert comes from; by default chosen by config.tls.mode. */
  tlsSource?: TlsSource;
  /**
   * The namespaces' labels: a pod injected where a Pod Security level forbids the sidecar gets an
   * AdmissionReview warning with the fix. Without it, no such warnings.
   */
  namespaces?: WatchedCache<{ name: string; labels: Readonly<Record<string, string>> }>;
  /**
   * The nodes' kubelet versions (used once synced): with sidecar.nativeSidecar=auto a pod gets a native
   * sidecar only where its kubelet will run one (sidecar-mode.ts). Without it, the apiserver's version
   * decides alone.
   */
  nodes?: WatchedCache<SlimNode>;
  /** How often a worker posts its counts unasked (ms); a scrape of the registry asks anyway. */
  metricsFlushMs?: number;
}

export type DrainOutcome = 'endpoints-gone' | 'timeout' | 'not-routed' | 'aborted';

export interface RunningWebhook {
  port: number;
  tls: TlsSource;
  /** Where the server runs (config.thread). */
  thread: 'worker' | 'main';
  /** The certificate served now (the agent feed serves the same one). */
  servingPem(): CertKeyPem;
  /** Where injected agents reach the operator's feed (undefined: not serving; pods get no feed settings). */
  setFeed(feed: { addresses: string[]; serverName: string } | undefined): void;
  /** False while the worker is not listening (starting again after it exited), and once closing. */
  ready(): boolean;
  /**
   * Resolves once the server sees every change made so far (setFeed, the caches, the TLS source) and its
   * counts are in the registry: at once with thread 'main'; a round trip to the worker otherwise.
   */
  flush(): Promise<void>;
  /** Ends the worker thread as a crash would; it is started again (tests). No-op with thread 'main'. */
  killWorker(): Promise<void>;
  /**
   * Keeps serving until the webhook Service's Endpoints no longer list this pod (plus a grace for the
   * apiserver to notice), bounded by shutdown.drainTimeoutMs. Call it once the replica reports not ready.
   */
  drain(signal?: AbortSignal): Promise<DrainOutcome>;
  close(): Promise<void>;
}

const METRIC = {
  requests: 'kstreams_webhook_admission_requests_total',
  duration: 'kstreams_webhook_admission_duration_seconds',
  certExpiry: 'kstreams_webhook_certificate_expiry_timestamp_seconds',
  handshakes: 'kstreams_webhook_tls_handshakes_total',
  workerRestarts: 'kstreams_webhook_worker_restarts_total',
} as const;

export type Metrics = {
  requests: Counter<'result' | 'reason'>;
  duration: Histogram<'result'>;
  certExpiry: Gauge;
  handshakes: Counter;
  workerRestarts: Counter;
};

/** Per registry, the worker hosts whose counts a scrape first fetches (a worker posts them in batches). */
const flushers = new WeakMap<Registry, Set<() => Promise<void>>>();
function flushersOf(registry: Registry): Set<() => Promise<void>> {
  let set = flushers.get(registry);
  if (!set) flushers.set(registry, (set = new Set()));
  return set;
}

/**
 * Registers once per registry: a second server in the same process (tests, restarts) reuses them.
 * Exported for the chart's dashboard test, which checks its queries against the names registered here.
 */
export function metricsIn(registry: Registry): Metrics {
  const existing = registry.getSingleMetric(METRIC.requests);
  if (existing) {
    return {
      requests: existing as Counter<'result' | 'reason'>,
      duration: registry.getSingleMetric(METRIC.duration) as Histogram<'result'>,
      certExpiry: registry.getSingleMetric(METRIC.certExpiry) as Gauge,
      handshakes: registry.getSingleMetric(METRIC.handshakes) as Counter,
      workerRestarts: registry.getSingleMetric(METRIC.workerRestarts) as Counter,
    };
  }
  // A scrape reads what the workers counted up to now, not up to their last batch (bounded: worker-host.ts).
  const collect = async () => void (await Promise.all([...flushersOf(registry)].map((f) => f())));
  return {
    requests: new Counter({
      name: METRIC.requests,
      help: 'AdmissionReviews answered by the webhook, by result (patched, allowed, invalid) and reason',
      labelNames: ['result', 'reason'],
      registers: [registry],
      collect,
    }),
    duration: new Histogram({
      name: METRIC.duration,
      help: 'Time from the first byte of an admission request to its answer',
      labelNames: ['result'],
      buckets: [0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [registry],
      collect,
    }),
    certExpiry: new Gauge({
      name: METRIC.certExpiry,
      help: 'notAfter of the serving certificate in use, as a Unix timestamp',
      registers: [registry],
    }),
    handshakes: new Counter({
      name: METRIC.handshakes,
      help: 'TLS connections accepted; far fewer than admissions when the apiserver reuses connections',
      registers: [registry],
      collect,
    }),
    workerRestarts: new Counter({
      name: METRIC.workerRestarts,
      help: 'Times the webhook worker thread exited unasked (or a restarted one failed to listen) and was started again (thread: worker)',
      registers: [registry],
    }),
  };
}

async function resolveServerVersion(opts: StartWebhookOptions): Promise<ServerVersion | undefined> {
  if (opts.serverVersion) {
    const v = opts.serverVersion;
    return typeof v.major === 'number' ? (v as ServerVersion) : parseServerVersion(v);
  }
  try {
    return parseServerVersion(await opts.kube.request<VersionInfo>('GET', '/version', { timeoutMs: 10_000 }));
  } catch (e) {
    opts.logger.warn({ err: (e as Error).message }, 'cannot read the apiserver version; injecting classic sidecars');
    return undefined;
  }
}

export async function startWebhook(opts: StartWebhookOptions): Promise<RunningWebhook> {
  const { config, logger } = opts;
  const log = logger.child({ component: 'webhook' });
  const metrics = metricsIn(opts.registry);
  const version = await resolveServerVersion(opts);
  const tls: TlsSource =
    opts.tlsSource ??
    (config.tls.mode === 'self-managed'
      ? new SelfManagedTls({ config, kube: opts.kube, logger: log })
      : new MountedTls({ tls: config.tls, logger: log }));
  const pem = await tls.start();
  const setExpiry = (p: CertKeyPem) => {
    try {
      metrics.certExpiry.set(Date.parse(new X509Certificate(p.certPem).validTo) / 1000);
    } catch {
      // A cert Node cannot parse would already have failed setSecureContext.
    }
  };
  setExpiry(pem);
  /** What the TLS source serves now; `serving` once the server took it. */
  let latest = pem;
  let serving = pem;
  let feed: { addresses: string[]; serverName: string } | undefined;
  const observer: ServingObserver = {
    admission: (kind, reason, seconds) => {
      metrics.requests.inc({ result: kind, reason });
      metrics.duration.observe({ result: kind }, seconds);
    },
    handshake: () => metrics.handshakes.inc(),
  };

  const stopTls = async <T>(p: Promise<T>): Promise<T> => {
    try {
      return await p;
    } catch (e) {
      // Do not leave the Secret watch and timers of the TLS source running behind a server that never was.
      await tls.stop();
      throw e;
    }
  };

  let stopped = false;
  let port: number;
  let ready: () => boolean;
  let killWorker: () => Promise<void> = async () => {};
  let flush: () => Promise<void> = async () => {};
  let setFeed: (f: typeof feed) => void;
  let closeServer: () => Promise<void>;
  if (config.thread === 'main') {
    const inputs: AdmissionInputs = {
      namespaceLabels: (name) => opts.namespaces?.get(name)?.labels,
      nodes: () => (opts.nodes?.synced ? opts.nodes.list() : undefined),
      feed: (): FeedInjection | undefined => {
        const caPem = tls.trustPem?.();
        return feed && caPem ? { ...feed, caPem } : undefined;
      },
    };
    const server: Serving = await stopTls(serveWebhook({ config, version, log, inputs, observer, pem }));
    tls.onChange((next) => {
      if (!server.setTls(next)) return;
      serving = next;
      setExpiry(next);
    });
    port = server.port;
    ready = () => true;
    setFeed = (f) => void (feed = f);
    closeServer = () => server.close();
  } else {
    // Deltas are coalesced per object and posted once per turn of this loop (a relist of 10,000 namespaces
    // is one message); TLS changes go at once, after the deltas before them.
    let pending: { namespaces: Map<string, Record<string, string> | null>; nodes: Map<string, SlimNode | null>; rest: StateDelta } | undefined;
    let host: WebhookWorkerHost | undefined;
    const postPending = () => {
      const p = pending;
      pending = undefined;
      if (!p || !host) return;
      const delta: StateDelta = { ...p.rest };
      if (p.namespaces.size > 0) delta.namespaces = [...p.namespaces];
      if (p.nodes.size > 0) delta.nodes = [...p.nodes];
      host.post({ type: 'state', delta });
    };
    const change = (f: (p: NonNullable<typeof pending>) => void) => {
      if (stopped) return; // the caches outlive a closed webhook
      if (!pending) {
        pending = { namespaces: new Map(), nodes: new Map(), rest: {} };
        setImmediate(postPending);
      }
      f(pending);
    };
    const trust = () => tls.trustPem?.() ?? null;
    const nodesSynced = () => opts.nodes?.synced ?? false;
    const snapshot = (): StateDelta => {
      pending = undefined; // the snapshot holds every change not posted yet
      return {
        namespaces: [...(opts.namespaces?.list() ?? [])].map((n) => [n.name, { ...n.labels }]),
        nodes: [...(opts.nodes?.list() ?? [])].map((n) => [n.name, n]),
        nodesSynced: nodesSynced(),
        feed: feed ?? null,
        trustPem: trust(),
      };
    };
    opts.namespaces?.on({
      add: (n) => change((p) => p.namespaces.set(n.name, { ...n.labels })),
      update: (_old, n) => change((p) => p.namespaces.set(n.name, { ...n.labels })),
      delete: (n) => change((p) => p.namespaces.set(n.name, null)),
    });
    opts.nodes?.on({
      add: (n) => change((p) => p.nodes.set(n.name, n)),
      update: (_old, n) => change((p) => p.nodes.set(n.name, n)),
      delete: (n) => change((p) => p.nodes.set(n.name, null)),
    });
    void opts.nodes?.whenSynced().then(() => change((p) => (p.rest.nodesSynced = true)));
    // The CA agents trust changes with a CA rotation, before a cert of the new CA is served (tls-source.ts).
    tls.onTrustChange?.((pemText) => change((p) => (p.rest.trustPem = pemText)));
    host = new WebhookWorkerHost({
      start: {
        config,
        version: version ?? null,
        log: { level: log.level, bindings: log.bindings() },
        metricsFlushMs: opts.metricsFlushMs ?? 1000,
      },
      port: config.port,
      log,
      pem: () => latest,
      snapshot,
      observer,
      onTlsApplied: (next, applied) => {
        if (!applied || next !== latest) return;
        serving = next;
        setExpiry(next);
      },
      onRestart: () => metrics.workerRestarts.inc(),
    });
    tls.onChange((next) => {
      latest = next;
      postPending();
      host!.tls(next);
    });
    port = await stopTls(host.start());
    const flusher = () => host!.flush();
    flushersOf(opts.registry).add(flusher);
    ready = () => host!.ready();
    killWorker = () => host!.kill();
    flush = () => {
      postPending();
      return host!.flush();
    };
    setFeed = (f) => {
      feed = f;
      change((p) => (p.rest.feed = f ?? null));
    };
    closeServer = async () => {
      postPending();
      await host!.close();
      flushersOf(opts.registry).delete(flusher);
    };
  }
  let closing: Promise<void> | undefined;
  let draining: Promise<DrainOutcome> | undefined;
  const sleep = (ms: number, signal?: AbortSignal) =>
    new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
    });
  const drainOnce = async (signal?: AbortSignal): Promise<DrainOutcome> => {
    const { podIP, drainTimeoutMs, endpointsGraceMs, pollMs, blindDrainMs } = config.shutdown;
    if (!podIP) {
      log.info('webhook drain: no pod IP known (out of cluster), nothing routes here through Endpoints');
      return 'not-routed';
    }
    const started = performance.now();
    const object = `Endpoints ${config.namespace}/${config.serviceName}`;
    log.info({ podIP, endpoints: object, drainTimeoutMs }, 'webhook drain: serving until the Endpoints no longer list this pod');
    let warned = false;
    while (!signal?.aborted) {
      const left = drainTimeoutMs - (performance.now() - started);
      if (left <= 0) {
        log.warn({ podIP, endpoints: object, drainTimeoutMs }, 'webhook drain: this pod is still listed after the drain timeout; closing anyway');
        return 'timeout';
      }
      let listed = true;
      try {
        const ep = await opts.kube.request<V1Endpoints>('GET', `/api/v1/namespaces/${encodeURIComponent(config.namespace)}/endpoints/${encodeURIComponent(config.serviceName)}`, {
          // A read that hangs counts as one that failed once blindDrainMs passed (below).
          timeoutMs: Math.max(1_000, Math.min(left, blindDrainMs)),
        });
        listed = (ep.subsets ?? []).some((sub) => (sub.addresses ?? []).some((a) => a.ip === podIP));
      } catch (e) {
        if ((e as { statusCode?: unknown }).statusCode === 404) listed = false;
        else {
          // Blind: the endpoints controller drops a terminating pod within a moment; serve that long.
          if (!warned) log.warn({ err: formatApiError(e, { verb: 'get', object }), blindDrainMs }, 'webhook drain: cannot read the Endpoints; serving on for blindDrainMs');
          warned = true;
          if (performance.now() - started >= Math.min(blindDrainMs, drainTimeoutMs)) return 'timeout';
        }
      }
      if (!listed) {
        // The apiserver routes to Services through its own Endpoints informer: give it a moment.
        await sleep(Math.min(endpointsGraceMs, Math.max(0, left)), signal);
        log.info({ podIP, afterMs: Math.round(performance.now() - started) }, 'webhook drain: no longer in the Endpoints');
        return signal?.aborted ? 'aborted' : 'endpoints-gone';
      }
      await sleep(Math.min(pollMs, left), signal);
    }
    return 'aborted';
  };
  return {
    port,
    tls,
    thread: config.thread,
    servingPem: () => serving,
    setFeed: (f) => setFeed(f),
    ready: () => !stopped && ready(),
    killWorker: () => killWorker(),
    flush: () => flush(),
    drain(signal) {
      draining ??= drainOnce(signal);
      return draining;
    },
    close() {
      stopped = true;
      closing ??= (async () => {
        await tls.stop();
        await closeServer();
      })();
      return closing;
    },
  };
}
