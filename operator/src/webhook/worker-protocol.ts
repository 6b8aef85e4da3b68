// The messages between the operator's main thread and the webhook's worker thread (worker.ts). Plain data
// only (structured clone), checked by zod on arrival: a message that does not parse is a bug on the other
// side, logged and dropped, never half applied.
//
// What crosses is exactly what admission reads (serving.ts, AdmissionInputs), and the serving certificate:
//   - the labels of every namespace (Pod Security warnings);
//   - the nodes' kubelet versions and cordons, and whether that cache has synced (sidecar.nativeSidecar auto);
//   - the feed's addresses and TLS name (set once the feed serves) and the CA agents trust for it;
//   - the serving cert and key, each time the TLS source serves a new one (after its caBundle was accepted).
// The first three arrive whole in the worker's start data, then as deltas.
import { z } from 'zod';

export const PemSchema = z.object({ certPem: z.string().min(1), keyPem: z.string().min(1) });

const VersionSchema = z.object({ major: z.number(), minor: z.number() });

export const SlimNodeSchema = z.object({
  name: z.string(),
  kubelet: VersionSchema.optional(),
  kubeletVersion: z.string().optional(),
  unschedulable: z.boolean().optional(),
});

const LabelsSchema = z.record(z.string(), z.string());
const FeedSchema = z.object({ addresses: z.array(z.string()), serverName: z.string() });

/** A change of the admission inputs; absent fields are unchanged. */
export const StateDeltaSchema = z.object({
  /** name -> labels; null: the namespace is gone. */
  namespaces: z.array(z.tuple([z.string(), LabelsSchema.nullable()])).optional(),
  /** name -> node; null: the node is gone. */
  nodes: z.array(z.tuple([z.string(), SlimNodeSchema.nullable()])).optional(),
  nodesSynced: z.boolean().optional(),
  feed: FeedSchema.nullable().optional(),
  trustPem: z.string().nullable().optional(),
});
export type StateDelta = z.infer<typeof StateDeltaSchema>;

export const WorkerStartSchema = z.object({
  /** A WebhookConfig, parsed again in the worker. */
  config: z.unknown(),
  version: VersionSchema.nullable(),
  /** Where to listen: the port the first worker got (config.port may be 0). */
  port: z.number().int().min(0).max(65535),
  log: z.object({ level: z.string(), bindings: z.record(z.string(), z.unknown()) }),
  pem: PemSchema,
  state: StateDeltaSchema,
  /** How often the worker posts its counts when nobody asks (ms). */
  metricsFlushMs: z.number().int().positive(),
});
export type WorkerStart = z.infer<typeof WorkerStartSchema>;

export const ToWorkerSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('state'), delta: StateDeltaSchema }),
  z.object({ type: z.literal('tls'), seq: z.number().int(), pem: PemSchema }),
  z.object({ type: z.literal('flush'), seq: z.number().int() }),
  z.object({ type: z.literal('close') }),
]);
export type ToWorker = z.infer<typeof ToWorkerSchema>;

/** [result kind, reason, seconds] per admission answered since the last batch. */
const AdmissionObservation = z.tuple([z.enum(['patched', 'allowed', 'invalid']), z.string(), z.number()]);

export const FromWorkerSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('listening'), port: z.number().int() }),
  z.object({ type: z.literal('failed'), message: z.string() }),
  z.object({ type: z.literal('tls'), seq: z.number().int(), applied: z.boolean() }),
  /** seq: the flush this answers, when it answers one. */
  z.object({ type: z.literal('metrics'), seq: z.number().int().optional(), admissions: z.array(AdmissionObservation), handshakes: z.number().int().min(0) }),
  z.object({ type: z.literal('closed') }),
]);
export type FromWorker = z.infer<typeof FromWorkerSchema>;
