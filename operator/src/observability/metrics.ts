// The operator's Prometheus metrics, all in one registry that is passed in (the webhook registers its own
// metrics in the same registry, so /metrics shows both).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { InformerLifecycle } from '../kube/informer.js';

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
  agentPolls: Counter<'outcome'>;
  eventsEmitted: Counter<'type'>;
  sidecarBindingWrites: Counter<'action'>;
  sidecarBindingErrors: Counter;
  sidecarBindingReconciles: Counter<'result'>;
  recordLifecycle(resource: string, event: InformerLifecycle): void;
}

export function createMetrics(registry = new Registry(), opts: { defaultMetrics?: boolean } = {}): OperatorMetrics {
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  const registers = [registry];
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
    agentPolls: new Counter({ name: 'kstreams_operator_agent_polls_total', help: 'Agent report polls by outcome', labelNames: ['outcome'] as const, registers }),
    eventsEmitted: new Counter({ name: 'kstreams_operator_events_total', help: 'Kubernetes Events created', labelNames: ['type'] as const, registers }),
    sidecarBindingWrites: new Counter({
      name: 'kstreams_operator_sidecar_rolebinding_writes_total',
      help: 'Writes to the sidecar RoleBindings of opted-in namespaces (create, update, delete)',
      labelNames: ['action'] as const,
      registers,
    }),
    sidecarBindingErrors: new Counter({
      name: 'kstreams_operator_sidecar_rolebinding_errors_total',
      help: 'Sidecar RoleBinding reconciles that failed and were retried with backoff',
      registers,
    }),
    sidecarBindingReconciles: new Counter({
      name: 'kstreams_operator_sidecar_rolebinding_reconciles_total',
      help: 'Sidecar RoleBinding reconciles by plan: create, update, recreate, delete, or why nothing was done (up-to-date, not-enabled, excluded, foreign, namespace-gone)',
      labelNames: ['result'] as const,
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
