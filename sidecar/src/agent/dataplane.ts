// What the agent needs from the data plane, as an interface: the real one is attachStreamPath() in
// sidecar/src/dataplane/attach.ts (realDataPlane below); unit tests inject a fake. Keeping the seam this narrow lets the
// converge logic be tested without a kernel.
import type { MirrorTarget, StreamPathSpec, TargetCounters } from '../../../operator/src/api/streampath.js';
import type { Endpoint } from '../../../native/lib/types.js';
import { attachStreamPath } from '../dataplane/attach.js';

export interface AttachmentStats {
  connections: number;
  bytesPrimary: number;
  bytesMirrored: number;
  bytesDropped: number;
  targets: TargetCounters[];
}

/** One StreamPath programmed into the pod's network namespace. */
export interface Attachment {
  stats(): AttachmentStats | Promise<AttachmentStats>;
  /** Applies an edited spec live: connections in flight keep going. */
  update(spec: StreamPathSpec): Promise<void>;
  /** Re-resolves the targets (Service endpoints move); true when new connections now go elsewhere. */
  refreshTargets?(): Promise<boolean>;
  /** Removes everything this attachment created (links, maps, listener, threads). */
  detach(): Promise<void>;
}

/** Turns a mirror target given as a Service reference into a numeric endpoint. */
export type ServiceResolver = (target: MirrorTarget) => Promise<Endpoint>;

export interface AttachRequest {
  name: string;
  spec: StreamPathSpec;
  /** Network namespace to program; undefined = the agent's own (inside the pod). */
  netnsPath?: string;
  resolve?: ServiceResolver;
}

/** Attaches one StreamPath; rejects with an error carrying `reason` (AttachError) or `code` (errno-like). */
export type AgentDataPlane = (request: AttachRequest) => Promise<Attachment>;

/** The native data plane: an engine plus sk_lookup interception in the pod's network namespace. */
export const realDataPlane: AgentDataPlane = (request) => attachStreamPath(request);
