// Prometheus metrics of one agent, on a registry of its own (no global state: tests run several agents in
// one process). Data-plane counters are read at scrape time from the attachments, so a scrape always sees
// the kernel's latest totals; they are Prometheus counters, and a re-attach shows up as a counter reset.
// Names (docs/metrics.md): the traffic of the pod's StreamPaths is kstreams_* (per target kstreams_target_*),
// the agent's own workings kstreams_agent_*, and the process metrics carry no prefix; Prometheus adds the
// pod and namespace labels when it scrapes.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { AgentStreamPathReport } from '../../../api/src/agent.js';
import type { CaptureStats } from '../../../native/lib/types.js';
import type { LocalStats } from './converge.js';
import type { DrainOutcome } from './dataplane.js';

export type FeedEvent = 'connected' | 'config' | 'redirect' | 'refused' | 'error' | 'closed';

export interface AgentMetrics {
  registry: Registry;
  /** The operator feed: connected, config, redirect, refused, error, closed. */
  feedEvent(event: FeedEvent): void;
  convergeDone(result: 'ok' | 'error', seconds: number): void;
  /** A detach's drain ended: its connections count as drained or reset. */
  drainDone(outcome: DrainOutcome): void;
}

/** One StreamPath as a scrape sees it: its report, and the data plane's own figures. */
export interface MetricsEntry {
  report: AgentStreamPathReport;
  local?: LocalStats;
}

/** `snapshot` returns the per-StreamPath entries; it is called once per scrape. */
export function createMetrics(opts: {
  snapshot: () => Promise<MetricsEntry[]>;
  ready: () => boolean;
  /** Detaches still draining (default none). */
  drainsInProgress?: () => number;
  defaultMetrics?: boolean;
}): AgentMetrics {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });

  // One snapshot per scrape, shared by every metric's collect().
  let pending: Promise<MetricsEntry[]> | undefined;
  const entries = () => {
    pending ??= opts.snapshot().finally(() => {
      setImmediate(() => (pending = undefined));
    });
    return pending;
  };
  const reports = async () => (await entries()).map((e) => e.report);

  const perStreamPath = (
    name: string,
    help: string,
    pick: (r: AgentStreamPathReport) => number,
  ) =>
    new Counter({
      name,
      help,
      labelNames: ['streampath'] as const,
      registers: [registry],
      async collect() {
        this.reset();
        for (const r of await reports()) this.inc({ streampath: r.name }, pick(r));
      },
    });
  perStreamPath('kstreams_connections_total', 'Connections intercepted on the tapped port', (r) => r.connections);
  perStreamPath('kstreams_primary_bytes_total', 'Client-to-app bytes delivered to the app', (r) => r.bytesPrimary);
  perStreamPath('kstreams_mirrored_bytes_total', 'Bytes that reached the mirror targets, all targets', (r) => r.bytesMirrored);
  perStreamPath('kstreams_dropped_bytes_total', 'Primary bytes that sampled mirror connections did not get', (r) => r.bytesDropped);
  perStreamPath(
    'kstreams_connections_reset_total',
    'Connections reset (RST both ways) because they were still open when a detach ran out of spec.drainTimeoutSeconds',
    (r) => r.connectionsReset ?? 0,
  );

  // The data plane's own figures: not in the StreamPath status.
  const localValues = async (pick: (l: LocalStats) => number | undefined) => {
    const out: Array<[string, number]> = [];
    for (const e of await entries()) {
      const v = e.local ? pick(e.local) : undefined;
      if (v !== undefined) out.push([e.report.name, v]);
    }
    return out;
  };
  const perLocal = (kind: 'counter' | 'gauge', name: string, help: string, pick: (l: LocalStats) => number | undefined) => {
    if (kind === 'counter') {
      new Counter({
        name,
        help,
        labelNames: ['streampath'] as const,
        registers: [registry],
        async collect() {
          this.reset();
          for (const [streampath, v] of await localValues(pick)) this.inc({ streampath }, v);
        },
      });
    } else {
      new Gauge({
        name,
        help,
        labelNames: ['streampath'] as const,
        registers: [registry],
        async collect() {
          this.reset();
          for (const [streampath, v] of await localValues(pick)) this.set({ streampath }, v);
        },
      });
    }
  };
  perLocal('counter', 'kstreams_setup_failures_total', 'Intercepted connections reset because the engine lacked a resource (fds, pipes, memory)', (l) => l.setupFailures);
  perLocal('gauge', 'kstreams_connections_active', 'Connections open now', (l) => l.connectionsActive);
  perLocal('gauge', 'kstreams_pipes_in_use', 'Kernel pipes held by connections now', (l) => l.memory?.pipesInUse);
  perLocal('gauge', 'kstreams_pipes_pooled', "Idle kernel pipes in the engine's pools", (l) => l.memory?.pipesPooled);
  perLocal('gauge', 'kstreams_pipe_in_use_bytes', "Capacity of the pipes in use: the engine's share of the node's per-uid pipe budget", (l) => l.memory?.pipeBytesInUse);
  perLocal('gauge', 'kstreams_pipe_pooled_bytes', 'Capacity of the pooled pipes', (l) => l.memory?.pipeBytesPooled);
  perLocal('gauge', 'kstreams_mirror_buffer_in_use_bytes', 'Send-buffer bytes granted to lagging mirror connections now', (l) => l.memory?.mirrorBufferInUse);
  perLocal('gauge', 'kstreams_mirror_buffer_budget_bytes', 'Cap on that send-buffer growth (KSTREAMS_MIRROR_BUFFER_BUDGET_BYTES)', (l) => l.memory?.mirrorBufferBudget);
  perLocal('counter', 'kstreams_transform_failures_total', 'Connections reset because the transform of their bytes to the app (spec.transform) could not be applied', (l) => l.transformFailures);
  perLocal('counter', 'kstreams_mirror_buffer_denied_total', 'Send-buffer grows of lagging mirrors refused because the budget was used up', (l) => l.memory?.mirrorBufferDenied);

  const perTarget = (
    name: string,
    help: string,
    pick: (t: AgentStreamPathReport['targets'][number]) => number,
  ) =>
    new Counter({
      name,
      help,
      labelNames: ['streampath', 'target'] as const,
      registers: [registry],
      async collect() {
        this.reset();
        for (const r of await reports()) {
          for (const t of r.targets) this.inc({ streampath: r.name, target: t.name }, pick(t));
        }
      },
    });
  perTarget('kstreams_target_connections_mirrored_total', 'Primary connections mirrored to this target', (t) => t.connectionsMirrored);
  perTarget('kstreams_target_connections_cut_total', 'Mirror connections cut because the target could not keep up', (t) => t.connectionsCut);
  perTarget('kstreams_target_connect_failures_total', 'Mirror connections that failed to connect', (t) => t.connectFailures);
  perTarget('kstreams_target_connections_skipped_total', "Sampled connections not mirrored because the node's pipe budget ran out", (t) => t.connectionsSkipped ?? 0);
  perTarget('kstreams_target_mirrored_bytes_total', 'Bytes that reached this target', (t) => t.bytesMirrored);
  perTarget('kstreams_target_dropped_bytes_total', 'Primary bytes this target did not get', (t) => t.bytesDropped);
  perTarget(
    'kstreams_target_turn_waits_expired_total',
    "Turns released to this target after spec.mirror.turnTimeoutMs without its answer to the previous one",
    (t) => t.turnWaitsExpired ?? 0,
  );
  perTarget(
    'kstreams_target_responses_compared_total',
    "Mirror connections whose answers were compared with the app's (compareResponses)",
    (t) => t.responsesCompared ?? 0,
  );
  perTarget(
    'kstreams_target_responses_diverged_total',
    "Mirror connections whose answers differed from the app's (compareResponses)",
    (t) => t.responsesDiverged ?? 0,
  );

  new Counter({
    name: 'kstreams_target_transform_failures_total',
    help: 'Mirror connections to this target reset, or never opened, because their transform could not be applied (never sent untransformed)',
    labelNames: ['streampath', 'target'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const e of await entries()) {
        for (const [target, v] of Object.entries(e.local?.targetTransformFailures ?? {})) this.inc({ streampath: e.report.name, target }, v);
      }
    },
  });

  // File targets (captures, docs/capture.md): the target's other counters mean the same as for a socket
  // (bytesMirrored: client bytes written to the files); these say what only a capture has.
  const perCapture = (name: string, help: string, pick: (c: CaptureStats) => number) =>
    new Counter({
      name,
      help,
      labelNames: ['streampath', 'target'] as const,
      registers: [registry],
      async collect() {
        this.reset();
        for (const e of await entries()) {
          for (const [target, c] of Object.entries(e.local?.captures ?? {})) this.inc({ streampath: e.report.name, target }, pick(c));
        }
      },
    });
  perCapture('kstreams_target_capture_response_bytes_total', "App -> client bytes a capture wrote (file.responses)", (c) => c.responseBytes);
  perCapture('kstreams_target_capture_not_recorded_total', 'Sampled connections a capture did not record because it was full (maxBytes, or the disk)', (c) => c.connectionsNotRecorded);
  new Counter({
    name: 'kstreams_target_capture_cuts_total',
    help: 'Captures of connections cut: reason full (maxBytes, maxConnectionBytes), slow (the disk fell behind) or disk (a write failed)',
    labelNames: ['streampath', 'target', 'reason'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const e of await entries()) {
        for (const [target, c] of Object.entries(e.local?.captures ?? {})) {
          const labels = { streampath: e.report.name, target };
          this.inc({ ...labels, reason: 'full' }, c.cutsFull);
          this.inc({ ...labels, reason: 'slow' }, c.cutsSlow);
          this.inc({ ...labels, reason: 'disk' }, c.cutsDisk);
        }
      }
    },
  });

  new Gauge({
    name: 'kstreams_agent_streampath_attached',
    help: '1 when the StreamPath is attached to this pod, 0 when it selects the pod but is not attached',
    labelNames: ['streampath'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const r of await reports()) this.set({ streampath: r.name }, r.attached ? 1 : 0);
    },
  });
  new Gauge({
    name: 'kstreams_agent_streampath_generation',
    help: 'metadata.generation of the StreamPath the agent has applied (or last tried)',
    labelNames: ['streampath'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const r of await reports()) this.set({ streampath: r.name }, r.generation);
    },
  });
  new Gauge({
    name: 'kstreams_agent_streampath_problem',
    help: '1 for each StreamPath that has a problem, labelled by its reason',
    labelNames: ['streampath', 'reason'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const r of await reports()) if (r.problem) this.set({ streampath: r.name, reason: r.problem.reason }, 1);
    },
  });
  new Gauge({
    name: 'kstreams_agent_ready',
    help: '1 once the first sync is done and the kernel offers what the data plane needs',
    registers: [registry],
    collect() {
      this.set(opts.ready() ? 1 : 0);
    },
  });

  new Gauge({
    name: 'kstreams_agent_drains_in_progress',
    help: 'Detached StreamPaths whose live connections are still draining',
    registers: [registry],
    collect() {
      this.set(opts.drainsInProgress?.() ?? 0);
    },
  });
  const drainConnections = new Counter({
    name: 'kstreams_agent_drain_connections_total',
    help: 'Connections of detached StreamPaths: drained (ended by themselves) or reset (still open at the deadline)',
    labelNames: ['result'] as const,
    registers: [registry],
  });

  const feedEvents = new Counter({
    name: 'kstreams_agent_feed_events_total',
    help: 'Events of the stream to the operator (connected, config, redirect, refused, error, closed)',
    labelNames: ['event'] as const,
    registers: [registry],
  });
  const converges = new Counter({
    name: 'kstreams_agent_converge_total',
    help: 'Converge passes of the data plane towards the selected StreamPaths',
    labelNames: ['result'] as const,
    registers: [registry],
  });
  const convergeSeconds = new Counter({
    name: 'kstreams_agent_converge_seconds_total',
    help: 'Time spent converging',
    registers: [registry],
  });

  return {
    registry,
    feedEvent: (event) => feedEvents.inc({ event }),
    convergeDone: (result, seconds) => {
      converges.inc({ result });
      convergeSeconds.inc(seconds);
    },
    drainDone: (outcome) => {
      drainConnections.inc({ result: 'drained' }, outcome.drained);
      drainConnections.inc({ result: 'reset' }, outcome.reset);
    },
  };
}
