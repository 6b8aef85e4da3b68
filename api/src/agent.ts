// The contract between the operator, its webhook and the sidecar agent in each pod.
import { z } from 'zod';
import { TargetCountersSchema } from './streampath.js';

/** Namespace label that opts a namespace in to injection. */
export const INJECT_NAMESPACE_LABEL = 'kstreams.io/inject';
export const INJECT_NAMESPACE_VALUE = 'enabled';
/** Pod label that opts a pod out: `kstreams.io/inject: "false"`. */
export const INJECT_POD_LABEL = 'kstreams.io/inject';
/** Set by the webhook on pods it injected; its value is the injector's version. */
export const INJECTED_ANNOTATION = 'kstreams.io/injected';
/** Set by the webhook on pods it injected, so that monitoring can select them (the chart's PodMonitor). */
export const INJECTED_POD_LABEL = 'kstreams.io/injected';
export const INJECTED_POD_LABEL_VALUE = 'true';
/** Port of the agent's HTTP server (/healthz, /readyz, /metrics, /v1/report), set by the webhook. */
export const AGENT_PORT_ANNOTATION = 'kstreams.io/agent-port';
export const DEFAULT_AGENT_PORT = 15090;
export const SIDECAR_CONTAINER_NAME = 'kstreams-sidecar';
/**
 * Where the webhook mounts the capture volume in the sidecar (docs/capture.md "In a cluster"). A file
 * target's path is resolved under it: `path: /shop` writes into /var/lib/kstreams/capture/shop.
 */
export const CAPTURE_MOUNT_PATH = '/var/lib/kstreams/capture';
/** The pod volume the webhook adds for it. */
export const CAPTURE_VOLUME_NAME = 'kstreams-capture';
/** Tells the agent where the capture volume is mounted; unset: file target paths are taken as written. */
export const CAPTURE_DIR_ENV = 'KSTREAMS_CAPTURE_DIR';
/** Finalizer the operator puts on StreamPaths so that delete detaches everything first. */
export const FINALIZER = 'kstreams.io/detach';
/** Namespaces the webhook never touches, whatever their labels say (plus the operator's own). */
export const ALWAYS_EXCLUDED_NAMESPACES = ['kube-system', 'kube-public', 'kube-node-lease'] as const;

/** What the agent says about one StreamPath that selects its pod. */
export const AgentStreamPathReportSchema = z.object({
  name: z.string(),
  /** metadata.generation of the StreamPath the agent has applied. */
  generation: z.number().int(),
  attached: z.boolean(),
  /** When not attached, or attached in a degraded way: why, as a condition reason and a message. */
  problem: z.object({ reason: z.string(), message: z.string() }).optional(),
  connections: z.number().int(),
  bytesPrimary: z.number().int(),
  bytesMirrored: z.number().int(),
  bytesDropped: z.number().int(),
  /**
   * Connections the data plane reset because they were still open when a detach's drain ended
   * (spec.drainTimeoutSeconds). Optional: agents before it do not send it.
   */
  connectionsReset: z.number().int().optional(),
  targets: z.array(TargetCountersSchema),
});

/** GET /v1/report on the agent: everything the operator aggregates into StreamPath status. */
export const AgentReportSchema = z.object({
  pod: z.object({ namespace: z.string(), name: z.string(), uid: z.string().optional() }),
  /** The agent's data plane is usable (kernel features present, privileges sufficient). */
  ready: z.boolean(),
  streamPaths: z.array(AgentStreamPathReportSchema),
});

export type AgentStreamPathReport = z.infer<typeof AgentStreamPathReportSchema>;
export type AgentReport = z.infer<typeof AgentReportSchema>;
