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
  // Transforms: how long bytes that may start a split pattern wait for the rest.
  maxHoldMs: 10_000,
  defaultHoldMs: 20,
  // Captures (file targets): a capture is bounded, whatever the disk has room for.
  defaultCaptureMaxBytes: 1024 * 1024 * 1024,
  maxCaptureMaxBytes: 1024 * 1024 * 1024 * 1024,
  maxPathLength: 1024,
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

const captureBytes = z.number().int().min(1).max(LIMITS.maxCaptureMaxBytes);

export const FileTargetSchema = z
  .strictObject({
    path: z
      .string()
      .min(2)
      .max(LIMITS.maxPathLength)
      .regex(/^\/[^\0]*$/, 'must be an absolute directory path')
      .describe(
        'Directory the capture is written to, in the filesystem of the process that mirrors (the sidecar, ' +
          'kstreams run); made if missing. Each writer makes its own session directory in it (docs/capture.md)',
      ),
    responses: z
      .boolean()
      .default(false)
      .describe("Also record the app's answers (app -> client bytes) and their offsets at each turn"),
    maxBytes: captureBytes
      .default(LIMITS.defaultCaptureMaxBytes)
      .describe(
        'Data bytes the capture may hold, both directions of all its connections (default 1 GiB, at most ' +
          '1 TiB). Once reached, new connections are not recorded and live ones are cut cleanly at exactly ' +
          'this many bytes; the primary never notices',
      ),
    maxConnectionBytes: captureBytes
      .optional()
      .describe("Data bytes one connection's record may hold, both directions; then that capture is cut"),
  })
  .describe(
    'Record the sampled connections into files (a capture, docs/capture.md) instead of sending them to a ' +
      'socket: stream bytes go socket -> pipe -> file with splice, never through user space. A slow, full ' +
      'or failing disk cuts the capture of a connection, never the primary',
  );

export const MirrorTargetSchema = z
  .strictObject({
    name: dnsLabel.optional().describe('Name of this target in counters and status; defaults to its address'),
    address: hostPort.optional().describe('host:port of the target'),
    service: ServiceRefSchema.optional().describe('A Service to mirror to, resolved through the API'),
    file: FileTargetSchema.optional(),
    compareResponses: z
      .boolean()
      .optional()
      .describe(
        "Compare this target's answers with the app's answers of the same connection, byte by byte (read on " +
          'the mirror side only: the primary stays zero-copy); connections whose answers differ are counted in ' +
          'status.targets[].responsesDiverged. Address and service targets only',
      ),
  })
  .describe('Where mirrored bytes go: exactly one of address, service or file.');

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

// spec.transform. Every op works on bytes: an op's strings are UTF-8 text, and a pattern is exactly the
// bytes of its UTF-8 encoding ("é" is the two bytes 0xC3 0xA9). Lengths are counted in those bytes.
const utf8 = new TextEncoder();

/** The bytes a pattern stands for: its UTF-8 encoding. */
export function patternBytes(text: string): Uint8Array {
  return utf8.encode(text);
}

/**
 * A byte pattern written as text, `min` to `max` bytes as UTF-8. zod counts the bytes. The CRD can only
 * bound characters (the apiserver counts code points): it gets maxLength `max`, which never refuses a
 * pattern zod accepts (a character is at least one byte); a pattern over `max` bytes in fewer characters
 * is refused by zod alone.
 */
function bytePattern(min: number, max: number) {
  const range = `${min === 0 ? 'up to' : `${min} to`} ${max} bytes as UTF-8`;
  let s = z.string({ error: (iss) => (iss.input === undefined ? `required (${range})` : `must be a string (${range})`) });
  if (min > 0) s = s.min(min, `must not be empty (${range})`);
  return s.max(max, `must be at most ${max} bytes as UTF-8`).superRefine((text, ctx) => {
    if (text.length > max) return; // already reported by max()
    const n = patternBytes(text).length;
    if (n > max) {
      ctx.addIssue({
        code: 'custom',
        message: `is ${n} bytes as UTF-8, at most ${max} allowed (${[...text].length} characters: outside ASCII a character takes 2 to 4 bytes)`,
      });
    }
  });
}

const BYTES = `${LIMITS.maxTokenLength}`;

// One byte of a byteMap: a single ASCII character, or 0xNN for any byte.
const BYTE_SPEC = /^([\x00-\x7F]|0x[0-9A-Fa-f]{2})$/;
const BYTE_SPEC_MESSAGE = 'must be one ASCII character or 0xNN (0x and two hex digits, any byte 0x00-0xFF)';

/** The byte a byteMap key or value stands for: 'A' is 0x41, '0x0a' is 0x0A. */
export function byteOf(spec: string): number {
  if (!BYTE_SPEC.test(spec)) throw new Error(`not a byte: ${JSON.stringify(spec)} (${BYTE_SPEC_MESSAGE})`);
  return spec.length === 1 ? spec.charCodeAt(0) : parseInt(spec.slice(2), 16);
}

export const MaskSchema = z
  .strictObject({
    after: bytePattern(1, LIMITS.maxTokenLength).describe(
      `Bytes after which masking starts (1 to ${BYTES} bytes: the UTF-8 bytes of this text); they are kept`,
    ),
    until: bytePattern(1, LIMITS.maxTokenLength).describe(
      `Bytes at which masking stops (1 to ${BYTES} bytes as UTF-8); they are kept. Must not contain the mask byte`,
    ),
    with: z
      .string({ error: 'must be exactly one ASCII character (one byte)' })
      .regex(/^[\x00-\x7F]$/, 'must be exactly one ASCII character (one byte)')
      .default('*')
      .describe('The byte written over every masked byte: exactly one ASCII character. Default "*"'),
  })
  .superRefine((m, ctx) => {
    if (m.until.includes(m.with)) {
      ctx.addIssue({
        code: 'custom',
        path: ['with'],
        message: `${JSON.stringify(m.with)} occurs in until ${JSON.stringify(m.until)}: the masked bytes would end the mask early; pick a byte that until does not contain`,
      });
    }
  })
  .describe(
    'Overwrites, after each occurrence of `after`, every byte up to but not including the next `until` with ' +
      '`with` (one byte for one byte: the length does not change). An `after` whose `until` has not come yet ' +
      'masks to the end of the stream',
  );

export const ReplaceSchema = z
  .strictObject({
    from: bytePattern(1, LIMITS.maxTokenLength).describe(`Bytes to find (1 to ${BYTES} bytes as UTF-8)`),
    to: bytePattern(0, LIMITS.maxTokenLength).describe(
      `Bytes written instead (0 to ${BYTES} bytes as UTF-8; empty deletes). May differ in length from \`from\``,
    ),
  })
  .describe(
    'Rewrites each leftmost non-overlapping occurrence of `from` to `to`. Length-changing replacements are ' +
      'allowed: the stream grows or shrinks (the byte counters, bytesPrimary and bytesMirrored, count the bytes ' +
      'read from the client, before any transform)',
  );

export const ByteMapSchema = z
  .strictObject({
    preset: z
      .enum(['uppercase', 'lowercase'])
      .optional()
      .describe('uppercase maps a-z to A-Z, lowercase A-Z to a-z: ASCII letters only, every other byte is kept'),
    pairs: z
      // Keys are checked below, so that a bad key is reported with the same message as a bad value.
      .record(z.string(), z.string().regex(BYTE_SPEC, `value ${BYTE_SPEC_MESSAGE}`))
      .optional()
      .describe(
        'Byte to byte, applied over the preset. Each key and value is one ASCII character ("a") or 0xNN, any ' +
          'byte 0x00-0xFF ("0xC1"), so binary conversions such as EBCDIC are expressible; a byte may be a key once ' +
          '("A" and "0x41" are the same key)',
      ),
  })
  .superRefine((b, ctx) => {
    if (b.preset === undefined && b.pairs === undefined) {
      ctx.addIssue({ code: 'custom', message: 'give preset, pairs or both' });
    }
    if (b.pairs === undefined) return;
    const keys = Object.keys(b.pairs);
    if (keys.length === 0) ctx.addIssue({ code: 'custom', path: ['pairs'], message: 'must map at least one byte (leave pairs out to use the preset alone)' });
    const seen = new Map<number, string>();
    for (const key of keys) {
      if (!BYTE_SPEC.test(key)) {
        ctx.addIssue({ code: 'custom', path: ['pairs', key], message: `key ${BYTE_SPEC_MESSAGE}` });
        continue;
      }
      const byte = byteOf(key);
      const first = seen.get(byte);
      if (first !== undefined) {
        // Named by both spellings: the apiserver stores keys sorted, so "first" is not what the user wrote first.
        ctx.addIssue({
          code: 'custom',
          path: ['pairs'],
          message: `${JSON.stringify(first)} and ${JSON.stringify(key)} are the same byte (0x${byte.toString(16).padStart(2, '0')}): a byte may be a key once`,
        });
      } else seen.set(byte, key);
    }
  })
  .describe('Maps every byte through a table: identity, then the preset, then the pairs. The length does not change');

// Kubernetes names: a ConfigMap name is a DNS-1123 subdomain, a key letters, digits, -, _ and .
const dnsSubdomain = z
  .string()
  .min(1)
  .max(253)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/, 'must be a DNS-1123 subdomain (lower case letters, digits, - and .)');
const configMapKey = z
  .string()
  .min(1)
  .max(253)
  .regex(/^[-._a-zA-Z0-9]+$/, 'must be a ConfigMap key (letters, digits, -, _ and .)');

export const ProgramSchema = z
  .strictObject({
    configMap: dnsSubdomain.optional().describe("ConfigMap, in the pod's namespace, whose binaryData[key] is the BPF object file (ELF)"),
    key: configMapKey.optional().describe('Key of the BPF object in the ConfigMap binaryData'),
    path: z
      .string()
      .max(4096)
      .regex(/^\/[^\0]*$/, 'must be an absolute file path')
      .optional()
      .describe(
        'Absolute path of the BPF object file: `kstreams run` only. In a cluster the sidecar\'s filesystem is not ' +
          "the user's: path is not part of the CRD (kubectl refuses it as an unknown field, the apiserver prunes it) " +
          'and the operator reports a spec holding one as InvalidSpec',
      ),
    section: z
      .string()
      .min(1)
      .max(128)
      .regex(/^[\x21-\x7E]+$/, 'must be an ELF section name (printable ASCII, no spaces)')
      .optional()
      .describe('ELF section of the sk_msg program to run; default: the first program of type sk_msg in the object'),
  })
  .superRefine((p, ctx) => {
    const fromConfigMap = p.configMap !== undefined || p.key !== undefined;
    if (fromConfigMap && p.path !== undefined) {
      ctx.addIssue({ code: 'custom', message: "give either configMap and key (a ConfigMap in the pod's namespace) or path (kstreams run only), not both" });
    } else if (!fromConfigMap && p.path === undefined) {
      ctx.addIssue({ code: 'custom', message: "give configMap and key (a ConfigMap in the pod's namespace), or path (kstreams run only)" });
    } else if (fromConfigMap) {
      if (p.configMap === undefined) ctx.addIssue({ code: 'custom', path: ['configMap'], message: 'required with key: the ConfigMap that holds the BPF object' });
      if (p.key === undefined) ctx.addIssue({ code: 'custom', path: ['key'], message: 'required with configMap: the binaryData key of the BPF object' });
    }
  })
  .describe(
    'A user sk_msg program, from configMap + key (in a cluster) or path (kstreams run), run on each message ' +
      'after the built-in ops: at most one per transform, and it must be the last op',
  );

const OP_KINDS = ['mask', 'replace', 'byteMap', 'program'] as const;

export const TransformOpSchema = z
  .strictObject({
    mask: MaskSchema.optional(),
    replace: ReplaceSchema.optional(),
    byteMap: ByteMapSchema.optional(),
    program: ProgramSchema.optional(),
  })
  .superRefine((op, ctx) => {
    const kinds = OP_KINDS.filter((k) => op[k] !== undefined);
    if (kinds.length !== 1) {
      ctx.addIssue({
        code: 'custom',
        message: `each op is exactly one of mask, replace, byteMap or program${kinds.length ? ` (this one has ${kinds.join(' and ')}: give each its own list item)` : ''}`,
      });
    }
  })
  .describe('One op: exactly one of mask, replace, byteMap or program');

export const TransformSchema = z
  .strictObject({
    applyTo: z
      .enum(['mirror', 'primary', 'both'])
      .default('mirror')
      .describe(
        'Which stream the ops rewrite: mirror (what the mirror targets get; the app gets the bytes as sent), ' +
          'primary (what the app gets; mirrors, if any, get the bytes as sent, and spec.mirror may be left out) ' +
          'or both (the app and the mirrors get the transformed bytes). Default mirror',
      ),
    holdMs: z
      .number()
      .int()
      .min(0)
      .max(LIMITS.maxHoldMs)
      .default(LIMITS.defaultHoldMs)
      .describe(
        'Milliseconds (0 to 10000) that bytes at the end of a send which may start a pattern (an op\'s ' +
          '`after`, `until` or `from` cut by a packet or batch boundary) wait for the client\'s next bytes, so ' +
          'that a pattern split across packets is still found; then they are sent as they are. A mirror also ' +
          'sends them as soon as the app has answered the turn, and everything is sent at the client\'s end. ' +
          'Only such bytes wait, only while the client is quiet: with applyTo primary or both, a request that ' +
          'ends with the start of a pattern reaches the app this much later. 0 sends them as soon as the client ' +
          'is quiet (patterns split across packets that arrive apart are then not found). Default 20',
      ),
    ops: z
      .array(TransformOpSchema)
      .min(1, 'must hold at least one op')
      .max(LIMITS.maxOps, `must hold at most ${LIMITS.maxOps} ops`)
      .describe(
        `1 to ${LIMITS.maxOps} ops, applied in order on the client-to-app byte stream, each to the output of the ` +
          'previous one; patterns match across packet and batch boundaries',
      ),
  })
  .superRefine((t, ctx) => {
    const programs = t.ops.flatMap((op, i) => (op.program !== undefined ? [i] : []));
    programs.forEach((i, n) => {
      if (n > 0) {
        ctx.addIssue({
          code: 'custom',
          path: ['ops', i, 'program'],
          message: `at most one program op per transform (ops[${programs[0]}] is one already)`,
        });
      } else if (i !== t.ops.length - 1) {
        ctx.addIssue({
          code: 'custom',
          path: ['ops', i, 'program'],
          message: `a program op must be the last op (this is ops[${i}] of ${t.ops.length}): the program runs on each message after the built-in ops, so no op can follow it`,
        });
      }
    });
  })
  .describe(
    'In-kernel rewriting of the client-to-app stream, bytes-exact: every string is UTF-8 text and a pattern is ' +
      'the bytes of its UTF-8 encoding',
  );

export const StreamPathSpecSchema = z
  .strictObject({
    selector: LabelSelectorSchema,
    port: port.describe("The app's inbound TCP port to tap"),
    mirror: MirrorSchema.optional().describe(
      "Where a copy of the client's bytes goes. Required unless spec.transform.applyTo is primary (a " +
        'StreamPath that only transforms the primary stream); with applyTo primary a mirror may still be given, and ' +
        'gets the bytes untransformed. The structural schema cannot state "required unless": the apiserver refuses a ' +
        'spec with neither mirror nor transform; a transform of the mirror (or both) without a mirror is refused by ' +
        'zod only: by kstreams validate and run, by the agent, and by the operator (status condition Degraded, ' +
        'reason InvalidSpec, naming spec.mirror)',
    ),
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
    if (spec.mirror === undefined && spec.transform?.applyTo !== 'primary') {
      ctx.addIssue({
        code: 'custom',
        path: ['mirror'],
        message: spec.transform
          ? `required unless spec.transform.applyTo is primary (it is ${spec.transform.applyTo}: the transformed bytes go to the mirror targets)`
          : 'required unless spec.transform.applyTo is primary (a StreamPath without a transform only mirrors)',
      });
    }
    spec.mirror?.targets.forEach((t, i) => {
      const kinds = [t.address, t.service, t.file].filter((k) => k !== undefined).length;
      if (kinds !== 1) {
        ctx.addIssue({
          code: 'custom',
          path: ['mirror', 'targets', i],
          message: 'exactly one of address, service or file must be set',
        });
      }
      if (t.compareResponses && t.file !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['mirror', 'targets', i, 'compareResponses'],
          message: 'a file target has no answers to compare; set it on an address or service target',
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
  /** compareResponses: mirror connections whose answers were compared with the app's to the end, and those that differed. */
  responsesCompared: z
    .number()
    .int()
    .optional()
    .describe("With compareResponses: mirror connections whose answers were compared with the app's to the end"),
  responsesDiverged: z
    .number()
    .int()
    .optional()
    .describe("With compareResponses: mirror connections whose answers differed from the app's (a byte, or the length)"),
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
export type Mirror = z.infer<typeof MirrorSchema>;
export type MirrorTarget = z.infer<typeof MirrorTargetSchema>;
export type Mask = z.infer<typeof MaskSchema>;
export type Replace = z.infer<typeof ReplaceSchema>;
export type ByteMap = z.infer<typeof ByteMapSchema>;
export type Program = z.infer<typeof ProgramSchema>;
export type TransformOp = z.infer<typeof TransformOpSchema>;
export type Transform = z.infer<typeof TransformSchema>;
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

/** One op as the data plane applies it: patterns as bytes, a byteMap as its 256-entry table. */
export type EncodedOp =
  | { kind: 'mask'; after: Uint8Array; until: Uint8Array; with: number }
  | { kind: 'replace'; from: Uint8Array; to: Uint8Array }
  | { kind: 'byteMap'; table: Uint8Array }
  | { kind: 'program'; source: { configMap: string; key: string } | { path: string }; section?: string };

const ASCII_A = 0x41;
const ASCII_Z = 0x5a;
const ASCII_a = 0x61;
const ASCII_z = 0x7a;

/**
 * The 256-byte table of a byteMap op: table[b] is what byte b becomes. Identity, then the preset (ASCII
 * letters only), then the pairs, which override the preset.
 */
export function byteMapTable(op: ByteMap): Uint8Array {
  const table = new Uint8Array(256);
  for (let b = 0; b < 256; b++) table[b] = b;
  if (op.preset === 'uppercase') for (let b = ASCII_a; b <= ASCII_z; b++) table[b] = b - 0x20;
  if (op.preset === 'lowercase') for (let b = ASCII_A; b <= ASCII_Z; b++) table[b] = b + 0x20;
  for (const [from, to] of Object.entries(op.pairs ?? {})) table[byteOf(from)] = byteOf(to);
  return table;
}

/**
 * The ops of a transform (as zod parsed it: defaults filled in) normalized for the data plane, in order:
 * patterns as their UTF-8 bytes, the mask byte as a number, a byteMap as its table, a program as its source.
 */
export function encodeOps(transform: Pick<Transform, 'ops'>): EncodedOp[] {
  return transform.ops.map((op, i): EncodedOp => {
    if (op.mask) {
      return { kind: 'mask', after: patternBytes(op.mask.after), until: patternBytes(op.mask.until), with: byteOf(op.mask.with) };
    }
    if (op.replace) return { kind: 'replace', from: patternBytes(op.replace.from), to: patternBytes(op.replace.to) };
    if (op.byteMap) return { kind: 'byteMap', table: byteMapTable(op.byteMap) };
    if (op.program) {
      const p = op.program;
      const source =
        p.path !== undefined ? { path: p.path } : p.configMap !== undefined && p.key !== undefined ? { configMap: p.configMap, key: p.key } : undefined;
      if (!source) throw new Error(`spec.transform.ops[${i}].program: neither configMap and key nor path (parse the spec with the schema first)`);
      return { kind: 'program', source, ...(p.section !== undefined ? { section: p.section } : {}) };
    }
    throw new Error(`spec.transform.ops[${i}]: no op (parse the spec with the schema first)`);
  });
}

/**
 * Parses a spec the way the operator does in a cluster: the schema, plus what only a cluster refuses (a
 * program given by path: the sidecar's filesystem is not the user's). Errors name the field from `spec.`.
 */
export function parseClusterSpec(spec: unknown): ParseResult<StreamPathSpec> {
  const r = StreamPathSpecSchema.safeParse(spec);
  if (!r.success) return { ok: false, errors: formatIssues(r.error, 'spec') };
  const errors = (r.data.transform?.ops ?? []).flatMap((op, i) =>
    op.program?.path !== undefined
      ? [`spec.transform.ops[${i}].program.path: a file path is for \`kstreams run\` only; in a cluster give configMap and key (a ConfigMap in the StreamPath's namespace)`]
      : [],
  );
  return errors.length ? { ok: false, errors } : { ok: true, value: r.data };
}

/**
 * What a spec without spec.mirror (a primary-only transform) means for the mirror settings: no targets,
 * and the defaults for the rest (the engine still takes a pipe size, pacing and buffer size).
 */
export const NO_MIRROR: Readonly<Mirror> = Object.freeze({
  targets: [],
  sampling: { percent: 100 },
  onOverflow: 'cut',
  pipeSize: LIMITS.defaultPipeSize,
  turnTimeoutMs: LIMITS.defaultTurnTimeoutMs,
  bufferSize: LIMITS.defaultMirrorBufferSize,
});

/** spec.mirror, or NO_MIRROR when the spec has none: every reader of the mirror settings goes through this. */
export function mirrorSettings(spec: Pick<StreamPathSpec, 'mirror'>): Readonly<Mirror> {
  return spec.mirror ?? NO_MIRROR;
}

/** The mirror targets of a spec; none when spec.mirror is absent (a primary-only transform). */
export function mirrorTargets(spec: Pick<StreamPathSpec, 'mirror'>): readonly MirrorTarget[] {
  return spec.mirror?.targets ?? [];
}

/** A target's display name: its explicit name, else its address or service reference. */
export function targetName(t: MirrorTarget): string {
  if (t.name) return t.name;
  if (t.address) return t.address;
  if (t.file) return `file:${t.file.path}`;
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
