// The StreamPath API (kstreams.io/v1alpha1): the single source of truth.
// The CRD in crds/streampath.yaml is generated from these schemas; the operator, the webhook, the sidecar
// and the `kstreams` CLI all parse StreamPaths with them, so a spec means the same thing everywhere.
import { z } from 'zod';

export const GROUP = 'kstreams.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = 'StreamPath';
export const PLURAL = 'streampaths';
export const SINGULAR = 'streampath';
export const SHORT_NAMES = ['sp'];

/** Limits that keep one StreamPath's data plane bounded on its node. */
export const LIMITS = {
  maxTargets: 16,
  maxOps: 32,
  minPipeSize: 4096,
  // fs.pipe-max-size: the kernel refuses larger pipes to a sidecar without CAP_SYS_RESOURCE.
  maxPipeSize: 1024 * 1024,
  // Pipe pages are accounted per uid, and every sidecar of a node runs as uid 0: with the default 64 MiB
  // budget (fs.pipe-user-pages-soft), 256 KiB lets ~113 mirrored connections run at full size at once
  // against ~28 at 1 MiB, for no measurable loss of throughput (docs/adr/0003-stream-engine.md).
  defaultPipeSize: 256 * 1024,
  // Turn pacing of mirrors: how long a mirror waits for its target's answer before releasing the next turn.
  maxTurnTimeoutMs: 60_000,
  defaultTurnTimeoutMs: 1000,
  // Send buffer a lagging mirror connection may grow to (kernel socket memory, not the per-uid pipe
  // budget), granted within an engine-wide budget (64 MiB by default, DEFAULT_MIRROR_BUFFER_BUDGET).
  minMirrorBufferSize: 64 * 1024,
  maxMirrorBufferSize: 64 * 1024 * 1024,
  defaultMirrorBufferSize: 4 * 1024 * 1024,
  // Detach: how long live connections are kept moving before the rest are reset.
  maxDrainTimeoutSeconds: 3600,
  defaultDrainTimeoutSeconds: 20,
  maxTokenLength: 256,
} as const;

const port = z.number().int().min(1).max(65535);

// DNS-1123 label/subdomain: what Kubernetes accepts for Service names and namespaces.
const dnsLabel = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'must be a DNS-1123 label (lower case letters, digits and -)');

// host:port, where host is an IPv4 address, a [bracketed] IPv6 address or a DNS name.
const hostPort = z
  .string()
  .min(3)
  .max(253 + 6)
  .regex(
    /^(\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$/,
    'must be host:port (IPv4, [IPv6] or DNS name, port 1-65535)',
  );

const labelKey = z.string().min(1).max(317).regex(/^([a-z0-9]([-a-z0-9.]*[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/, 'must be a valid label key');
const labelValue = z.string().max(63).regex(/^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/, 'must be a valid label value');

export const LabelSelectorSchema = z
  .strictObject({
    matchLabels: z.record(labelKey, labelValue).optional(),
    matchExpressions: z
      .array(
        z.strictObject({
          key: labelKey,
          operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']),
          values: z.array(labelValue).optional(),
        }),
      )
      .optional(),
  })
  .describe('Selects the pods of this namespace whose inbound port is tapped. An empty selector selects no pod.');

export const ServiceRefSchema = z.strictObject({
  name: dnsLabel.describe('Service name'),
  namespace: dnsLabel.optional().describe('Service namespace; defaults to the StreamPath namespace'),
  port: port.describe('Service port'),
});

export const MirrorTargetSchema = z
  .strictObject({
    name: dnsLabel.optional().describe('Name of this target in counters and status; defaults to its address'),
    address: hostPort.optional().describe('host:port of the target'),
    service: ServiceRefSchema.optional().describe('A Service to mirror to, resolved through the API'),
  })
  .describe('Where mirrored bytes go: exactly one of address or service.');

export const SamplingSchema = z.strictObject({
  percent: z
    .number()
    .min(0)
    .max(100)
    .default(100)
    .describe('Share of connections mirrored, chosen by a consistent hash of the connection 4-tuple'),
});

export const MirrorSchema = z.strictObject({
  targets: z.array(MirrorTargetSchema).min(1).max(LIMITS.maxTargets).describe('Mirror targets, 1 to 16'),
  sampling: SamplingSchema.default({ percent: 100 }),
  onOverflow: z
    .enum(['cut'])
    .default('cut')
    .describe('What happens when a mirror cannot keep up: cut closes that mirror connection; the primary never waits'),
  pipeSize: z
    .number()
    .int()
    .min(LIMITS.minPipeSize)
    .max(LIMITS.maxPipeSize)
    .default(LIMITS.defaultPipeSize)
    .describe(
      'Bytes of kernel pipe buffer per mirror connection (4 KiB to 1 MiB); bounds memory per connection. ' +
        'A live edit applies to new connections; open ones keep their pipes until they end',
    ),
  turnTimeoutMs: z
    .number()
    .int()
    .min(0)
    .max(LIMITS.maxTurnTimeoutMs)
    .default(LIMITS.defaultTurnTimeoutMs)
    .describe(
      'Turn pacing, in milliseconds (0 to 60000). What the client sends after the app has answered (the next ' +
        'request on a keep-alive connection) is released to a mirror only once that mirror\'s target has answered ' +
        'the previous turn, or after this long (counted in status.targets[].turnWaitsExpired): the target sees ' +
        'the conversation in the turns the app saw, not the requests of many turns at once. The primary never ' +
        'waits; held bytes stay in the mirror\'s pipe and send buffer, and a mirror that falls too far behind is ' +
        'cut. 0 turns pacing off (bytes go to the mirror as soon as they are copied): use it for targets that ' +
        'never answer, such as a recorder or a discard sink, which would otherwise cost this long at every turn. ' +
        'A live edit applies to new connections',
    ),
  bufferSize: z
    .number()
    .int()
    .min(LIMITS.minMirrorBufferSize)
    .max(LIMITS.maxMirrorBufferSize)
    .default(LIMITS.defaultMirrorBufferSize)
    .describe(
      'Send buffer, in bytes (65536 to 67108864, i.e. 64 KiB to 64 MiB), that a mirror connection falling behind ' +
        'its target may grow to: its slack beyond the pipe, so that a pause of the target (a GC, a busy CPU) does ' +
        'not cut the mirror. It is kernel socket memory (the kernel doubles the value for its bookkeeping), taken ' +
        'only while a mirror lags and granted within an engine-wide budget (by default 64 MiB per StreamPath and pod); a grow ' +
        'the budget cannot grant is refused and the mirror keeps its buffer. Default 4194304 (4 MiB). 67108864 ' +
        '(64 MiB) is the bulk setting, for mirrors of line-rate bulk streams (raise the budget with it). A live ' +
        'edit applies to new connections',
    ),
});

const token = z.string().min(1).max(LIMITS.maxTokenLength);

export const MaskOpSchema = z.strictObject({
  mask: z.strictObject({
    after: token.describe('Bytes after which masking starts'),
    until: token.describe('Bytes at which masking stops'),
    with: z.string().length(1).default('*').describe('The single character written over masked bytes'),
  }),
});
export const ReplaceOpSchema = z.strictObject({
  replace: z.strictObject({
    from: token,
    to: z.string().max(LIMITS.maxTokenLength),
  }),
});
export const ByteMapOpSchema = z.strictObject({
  byteMap: z.strictObject({
    preset: z.enum(['uppercase', 'lowercase']).optional(),
    pairs: z.record(z.string().length(1), z.string().length(1)).optional(),
  }),
});
export const ProgramOpSchema = z.strictObject({
  program: z.strictObject({
    configMap: dnsLabel.describe('ConfigMap holding the BPF object'),
    key: z.string().min(1).max(253).describe('Key of the BPF object in the ConfigMap (binaryData)'),
    section: z.string().min(1).max(128).optional().describe('Program section; defaults to the first sk_msg program'),
  }),
});

export const TransformOpSchema = z.union([MaskOpSchema, ReplaceOpSchema, ByteMapOpSchema, ProgramOpSchema]);

export const TransformSchema = z.strictObject({
  applyTo: z.enum(['mirror', 'primary', 'both']).default('mirror'),
  ops: z.array(TransformOpSchema).min(1).max(LIMITS.maxOps),
});

export const StreamPathSpecSchema = z
  .strictObject({
    selector: LabelSelectorSchema,
    port: port.describe("The app's inbound TCP port to tap"),
    mirror: MirrorSchema,
    drainTimeoutSeconds: z
      .number()
      .int()
      .min(0)
      .max(LIMITS.maxDrainTimeoutSeconds)
      .default(LIMITS.defaultDrainTimeoutSeconds)
      .describe(
        'Seconds (0 to 3600) that live connections keep being forwarded and mirrored on detach: the StreamPath ' +
          'deleted or no longer selecting the pod, the pod terminating (bounded by its ' +
          'terminationGracePeriodSeconds less 2 s), `kstreams run` stopped. New connections go straight to the ' +
          'app at once; connections still open at the deadline are reset (RST to the client, the app and the ' +
          'mirror targets), never closed with FIN, so that no side takes a truncated stream for a complete one. ' +
          '0 resets them at once. Default 20',
      ),
    transform: TransformSchema.optional(),
  })
  .superRefine((spec, ctx) => {
    spec.mirror.targets.forEach((t, i) => {
      if ((t.address === undefined) === (t.service === undefined)) {
        ctx.addIssue({
          code: 'custom',
          path: ['mirror', 'targets', i],
          message: 'exactly one of address or service must be set',
        });
      }
    });
  });

export const ConditionSchema = z.object({
  type: z.string(),
  status: z.enum(['True', 'False', 'Unknown']),
  reason: z.string(),
  message: z.string(),
  observedGeneration: z.number().int().optional(),
  lastTransitionTime: z.string(),
});

export const TargetCountersSchema = z.object({
  name: z.string(),
  connectionsMirrored: z.number().int(),
  connectionsCut: z.number().int(),
  connectFailures: z.number().int(),
  /** Sampled connections not mirrored because the node's pipe budget ran out (the primary went on). */
  connectionsSkipped: z.number().int().optional(),
  bytesMirrored: z.number().int(),
  bytesDropped: z.number().int(),
  /** Turns released to this target without its answer to the previous one (spec.mirror.turnTimeoutMs). */
  turnWaitsExpired: z
    .number()
    .int()
    .optional()
    .describe("Turns released to this target after spec.mirror.turnTimeoutMs without its answer to the previous turn"),
});

export const StreamPathStatusSchema = z.object({
  observedGeneration: z.number().int().optional(),
  podsSelected: z.number().int().optional(),
  podsAttached: z.number().int().optional(),
  connections: z.number().int().optional(),
  bytesPrimary: z.number().int().optional(),
  bytesMirrored: z.number().int().optional(),
  bytesDropped: z.number().int().optional(),
  /** Connections reset because they were still open when a detach's drain ended (spec.drainTimeoutSeconds). */
  connectionsReset: z
    .number()
    .int()
    .optional()
    .describe('Connections reset (RST both ways) because they were still open when a detach ran out of spec.drainTimeoutSeconds'),
  targets: z.array(TargetCountersSchema).optional(),
  conditions: z.array(ConditionSchema).optional(),
});

export const ObjectMetaSchema = z
  .object({
    name: z.string().optional(),
    namespace: z.string().optional(),
    generation: z.number().int().optional(),
    resourceVersion: z.string().optional(),
    uid: z.string().optional(),
    labels: z.record(z.string(), z.string()).optional(),
    annotations: z.record(z.string(), z.string()).optional(),
    finalizers: z.array(z.string()).optional(),
    deletionTimestamp: z.string().optional(),
  })
  .loose();

export const StreamPathSchema = z.object({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal(KIND),
  metadata: ObjectMetaSchema,
  spec: StreamPathSpecSchema,
  status: StreamPathStatusSchema.optional(),
});

export type LabelSelector = z.infer<typeof LabelSelectorSchema>;
export type MirrorTarget = z.infer<typeof MirrorTargetSchema>;
export type TransformOp = z.infer<typeof TransformOpSchema>;
export type StreamPathSpec = z.infer<typeof StreamPathSpecSchema>;
export type StreamPathSpecInput = z.input<typeof StreamPathSpecSchema>;
export type StreamPathStatus = z.infer<typeof StreamPathStatusSchema>;
export type StreamPath = z.infer<typeof StreamPathSchema>;
export type Condition = z.infer<typeof ConditionSchema>;
export type TargetCounters = z.infer<typeof TargetCountersSchema>;

/** One line per problem, each naming the field: `spec.mirror.targets[0].address: must be host:port ...`. */
export function formatIssues(error: z.ZodError, prefix = ''): string[] {
  return error.issues.map((issue) => {
    const path = issue.path
      .map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`))
      .join('');
    const where = [prefix, path].filter(Boolean).join(prefix && path && !path.startsWith('[') ? '.' : '');
    return `${where || '(root)'}: ${issue.message}`;
  });
}

export type ParseResult<T> = { ok: true; value: T } | { ok: false; errors: string[] };

/** Parses a whole StreamPath object (as read from YAML or the API). */
export function parseStreamPath(input: unknown): ParseResult<StreamPath> {
  const r = StreamPathSchema.safeParse(input);
  return r.success ? { ok: true, value: r.data } : { ok: false, errors: formatIssues(r.error) };
}

/** A target's display name: its explicit name, else its address or service reference. */
export function targetName(t: MirrorTarget): string {
  if (t.name) return t.name;
  if (t.address) return t.address;
  const s = t.service!;
  return `${s.name}${s.namespace ? `.${s.namespace}` : ''}:${s.port}`;
}

/** A small, valid StreamPath: the embedded default for a first try and for the demo. */
export const EXAMPLE_STREAMPATH_YAML = `apiVersion: kstreams.io/v1alpha1
kind: StreamPath
metadata:
  name: checkout-shadow
  namespace: shop
spec:
  selector:
    matchLabels:
      app: checkout
  port: 8080
  mirror:
    targets:
      - address: 10.0.0.2:8080
    sampling:
      percent: 100
    onOverflow: cut
`;
