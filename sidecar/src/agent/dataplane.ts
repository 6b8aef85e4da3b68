// What the agent needs from the data plane, as an interface: the real one is attachStreamPath() in
// sidecar/src/dataplane/attach.ts (realDataPlane below); unit tests inject a fake. Keeping the seam this narrow lets the
// converge logic be tested without a kernel.
import type { MirrorTarget, StreamPathSpec, TargetCounters } from '../../../api/src/streampath.js';
import type { CaptureStats, Endpoint } from '../../../native/lib/types.js';
import type { ProgramReader } from '../dataplane/transform.js';
import { attachStreamPath, type AttachmentMemory, type DetachOptions } from '../dataplane/attach.js';

export interface AttachmentStats {
  connections: number;
  bytesPrimary: number;
  bytesMirrored: number;
  bytesDropped: number;
  /** Connections reset at the end of a detach's drain. */
  connectionsReset?: number;
  targets: TargetCounters[];
  /** For /metrics only (not in the report). */
  connectionsActive?: number;
  setupFailures?: number;
  memory?: AttachmentMemory;
  /** Connections reset because their transform could not be applied: the primary's, and per target. */
  transformFailures?: number;
  targetTransformFailures?: Record<string, number>;
  /** File targets: what each capture wrote and cut. */
  captures?: Record<string, CaptureStats>;
}

/** How a detach's drain ended. */
export interface DrainOutcome {
  timeoutMs: number;
  drained: number;
  reset: number;
  ms: number;
  cutShort: boolean;
}

/** One StreamPath programmed into the pod's network namespace. */
export interface Attachment {
  stats(): AttachmentStats | Promise<AttachmentStats>;
  /** Applies an edited spec live (to new connections): connections in flight keep going. */
  update(spec: StreamPathSpec): Promise<void>;
  /** Re-resolves the targets (Service endpoints move); true when new connections now go elsewhere. */
  refreshTargets?(): Promise<boolean>;
  /**
   * Releases the interception (new connections go straight to the app; `onDraining` is called then),
   * drains live connections up to the timeout (default spec.drainTimeoutSeconds), resets the rest and
   * removes everything this attachment created (links, maps, listener, threads).
   */
  detach(opts?: DetachOptions): Promise<DrainOutcome | void>;
  /** Resets live connections now (cuts a drain short). */
  abort?(): Promise<unknown>;
}

/** Turns a mirror target given as a Service reference into a numeric endpoint. */
export type ServiceResolver = (target: MirrorTarget) => Promise<Endpoint>;

export interface AttachRequest {
  name: string;
  spec: StreamPathSpec;
  /** Network namespace to program; undefined = the agent's own (inside the pod). */
  netnsPath?: string;
  resolve?: ServiceResolver;
  /** Engine-wide cap on mirror send-buffer growth, bytes (default 64 MiB). */
  mirrorBufferBudget?: number;
  /** The capture volume's mount: file targets' paths are resolved under it (CapturePathOutsideVolume when one leaves it). */
  captureRoot?: string;
  /** Reads a transform program op's BPF object (the agent: from a ConfigMap). */
  readProgram?: ProgramReader;
}

/** Attaches one StreamPath; rejects with an error carrying `reason` (AttachError) or `code` (errno-like). */
export type AgentDataPlane = (request: AttachRequest) => Promise<Attachment>;

/** The native data plane: an engine plus sk_lookup interception in the pod's network namespace. */
export const realDataPlane: AgentDataPlane = (request) => attachStreamPath(request);
