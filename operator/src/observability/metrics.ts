// The operator's Prometheus metrics, all in one registry that is passed in (the webhook registers its own
// metrics in the same registry, so /metrics shows both).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { InformerLifecycle } from '../../../runtime/src/informer.js';

export interface OperatorMetrics {
  registry: Registry;
  reconcileTotal: Counter<'result'>;
  reconcileDuration: Histogram<'result'>;
  reconcileErrors: Counter;
  queueDepth: Gauge;
  informerEvents: Counter<'resource' | 'event'>;
  informerRelists: Counter<'resource' | 'reason'>;
  informerObjects: Gauge<'resource'>;
  leader: Gauge;
  leaderTransitions: Counter<'event'>;
  statusWrites: Counter;
  apiRequests: Counter<'verb' | 'outcome'>;
  eventsEmitted: Counter<'type'>;
  feedStreams: Counter<'outcome'>;
  feedFrames: Counter<'frame'>;
  feedConnected: Gauge;
  feedConnections: Gauge<'tls'>;
  /** Where feedConnections reads its figures at each scrape (the running feed server's stats). */
  setFeedConnectionSource(source: (() => { handshakes: number; records: number; openssl: number }) | undefined): void;
  feedTokenChecks: Counter<'method' | 'result' | 'reason'>;
  recordLifecycle(resource: string, event: InformerLifecycle): void;
}

export function createMetrics(registry = new Registry(), opts: { defaultMetrics?: boolean } = {}): OperatorMetrics {
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  let feedConnectionSource: (() => { handshakes: number; records: number; openssl: number }) | undefined;
  const feedConnections = new Gauge({
    name: 'kstreams_operator_feed_connections',
    help: "TLS connections on this replica's feed port: tls=handshake (in progress), records (TLS 1.3, records sealed by the feed itself, ~0.2 KiB each), openssl (an SSL object each, ~14 KiB: TLS 1.2, feed.tlsRecords false, or Node's tls)",
    labelNames: ['tls'] as const,
    registers,
    collect() {
      const st = feedConnectionSource?.();
      this.reset();
      if (!st) return;
      this.set({ tls: 'handshake' }, st.handshakes);
      this.set({ tls: 'records' }, st.records);
      this.set({ tls: 'openssl' }, st.openssl);
    },
  });
  const informerEvents = new Counter({
    name: 'kstreams_operator_informer_events_total',
    help: 'Informer lifecycle events (list_started, listed, watch_started, watch_closed, expired, idle_timeout, failed, handler_failed, resync, stopped)',
    labelNames: ['resource', 'event'] as const,
    registers,
  });
  const informerRelists = new Counter({
    name: 'kstreams_operator_informer_relists_total',
    help: 'Full lists of an informer cache, by reason: initial (the first), expired (410 Gone), idle_timeout (a silent watch abandoned), failed (a list that failed, retried)',
    labelNames: ['resource', 'reason'] as const,
    registers,
  });
  const listCause = new Map<string, string>();
  const listed = new Set<string>();
  return {
    registry,
    reconcileTotal: new Counter({
      name: 'kstreams_operator_reconcile_total',
      help: 'StreamPath reconciles by result (changed = wrote, unchanged = computed and found nothing to write, skipped = inputs unchanged, error)',
      labelNames: ['result'] as const,
      registers,
    }),
    reconcileDuration: new Histogram({
      name: 'kstreams_operator_reconcile_duration_seconds',
      help: 'Duration of one StreamPath reconcile',
      labelNames: ['result'] as const,
      buckets: [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers,
    }),
    reconcileErrors: new Counter({ name: 'kstreams_operator_reconcile_errors_total', help: 'Reconciles that failed and were retried with backoff', registers }),
    queueDepth: new Gauge({ name: 'kstreams_operator_queue_depth', help: 'StreamPaths waiting in the reconcile queue', registers }),
    informerEvents,
    informerRelists,
    informerObjects: new Gauge({ name: 'kstreams_operator_informer_objects', help: 'Objects in each informer cache', labelNames: ['resource'] as const, registers }),
    leader: new Gauge({ name: 'kstreams_operator_leader', help: '1 when this replica holds the leader Lease and reconciles', registers }),
    leaderTransitions: new Counter({ name: 'kstreams_operator_leader_transitions_total', help: 'Leadership gained or lost by this replica', labelNames: ['event'] as const, registers }),
    statusWrites: new Counter({ name: 'kstreams_operator_status_writes_total', help: 'StreamPath status patches sent', registers }),
    apiRequests: new Counter({ name: 'kstreams_operator_api_requests_total', help: 'Requests to the apiserver (watches excluded)', labelNames: ['verb', 'outcome'] as const, registers }),
    eventsEmitted: new Counter({ name: 'kstreams_operator_events_total', help: 'Kubernetes Events created', labelNames: ['type'] as const, registers }),
    feedStreams: new Counter({
      name: 'kstreams_operator_feed_streams_total',
      help: 'Agent streams opened on the feed, by outcome (served by the leader, redirected to it, refused)',
      labelNames: ['outcome'] as const,
      registers,
    }),
    feedFrames: new Counter({ name: 'kstreams_operator_feed_frames_total', help: 'Feed frames: configs sent to agents, reports received', labelNames: ['frame'] as const, registers }),
    feedConnected: new Gauge({ name: 'kstreams_operator_feed_agents', help: 'Agents connected to this replica on the feed (the leader)', registers }),
    feedConnections,
    setFeedConnectionSource: (source) => {
      feedConnectionSource = source;
    },
    feedTokenChecks: new Counter({
      name: 'kstreams_operator_feed_token_checks_total',
      help: "Checks of agents' feed tokens: method local (signature and claims in the operator) or tokenreview; result accepted, refused, fallback (local could not decide, a TokenReview did) or error; reason says why",
      labelNames: ['method', 'result', 'reason'] as const,
      registers,
    }),
    recordLifecycle(resource, event) {
      informerEvents.inc({ resource, event });
      // A list's reason is what ended the watch before it; a list after nothing else is a retry of one
      // that failed.
      if (event === InformerLifecycle.Expired || event === InformerLifecycle.IdleTimeout) listCause.set(resource, event);
      if (event === InformerLifecycle.ListStarted) {
        const reason = listCause.get(resource) ?? (listed.has(resource) ? 'failed' : 'initial');
        listCause.delete(resource);
        listed.add(resource);
        informerRelists.inc({ resource, reason });
      }
    },
  };
}
