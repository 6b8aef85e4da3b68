// The agent's whole configuration, parsed once at start-up from the environment the webhook (or a test)
// gives it, then passed in. Nothing else in the agent reads process.env.
import { z } from 'zod';
import { CAPTURE_DIR_ENV, DEFAULT_AGENT_PORT } from '../../../api/src/agent.js';

const intFromEnv = (def: number, min: number, max: number) =>
  z
    .string()
    .trim()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max))
    .optional()
    .transform((v) => v ?? def);

const optionalIntFromEnv = (min: number, max: number) =>
  z.string().trim().regex(/^\d+$/, 'must be a whole number').transform(Number).pipe(z.number().int().min(min).max(max)).optional();

/** Environment variables the agent reads, and the config field each one becomes. */
export const AGENT_ENV = {
  podName: 'POD_NAME',
  podNamespace: 'POD_NAMESPACE',
  podUid: 'POD_UID',
  port: 'KSTREAMS_AGENT_PORT',
  bindAddress: 'KSTREAMS_AGENT_BIND',
  netnsPath: 'KSTREAMS_NETNS',
  logLevel: 'KSTREAMS_LOG_LEVEL',
  resyncSeconds: 'KSTREAMS_RESYNC_SECONDS',
  statsIntervalSeconds: 'KSTREAMS_STATS_INTERVAL_SECONDS',
  shutdownTimeoutSeconds: 'KSTREAMS_SHUTDOWN_TIMEOUT_SECONDS',
  mirrorBufferBudgetBytes: 'KSTREAMS_MIRROR_BUFFER_BUDGET_BYTES',
  operatorAddresses: 'KSTREAMS_OPERATOR_ADDRESSES',
  operatorServerName: 'KSTREAMS_OPERATOR_SERVER_NAME',
  operatorCa: 'KSTREAMS_OPERATOR_CA',
  feedTokenFile: 'KSTREAMS_FEED_TOKEN_FILE',
  captureDir: CAPTURE_DIR_ENV,
} as const;

export const AgentConfigSchema = z.strictObject({
  /** The pod this agent serves (downward API metadata.name). */
  podName: z.string().min(1, 'is required (downward API metadata.name)'),
  /** Its namespace (downward API metadata.namespace). */
  podNamespace: z.string().min(1, 'is required (downward API metadata.namespace)'),
  /** Its uid (downward API metadata.uid): a pod recreated under the same name is not mistaken for ours. */
  podUid: z.string().min(1).optional(),
  /** Port of /healthz, /readyz, /metrics and /v1/report. 0 picks a free port (tests). */
  port: intFromEnv(DEFAULT_AGENT_PORT, 0, 65535),
  bindAddress: z.string().min(1).optional().transform((v) => v ?? '0.0.0.0'),
  /**
   * Network namespace to program, e.g. /run/netns/NAME: for running outside the pod (tests, a node-level
   * agent). Unset inside a pod: the agent's own namespace, which is the pod's.
   */
  netnsPath: z.string().startsWith('/', 'must be an absolute path such as /run/netns/NAME').optional(),
  logLevel: z
    .enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'])
    .optional()
    .transform((v) => v ?? 'info'),
  /** Every resync the agent re-converges its last configuration and retries StreamPaths that failed to attach. */
  resyncSeconds: intFromEnv(60, 1, 86_400),
  /** How often counters are sampled for /metrics and for spotting unreachable targets. */
  statsIntervalSeconds: intFromEnv(5, 1, 3600),
  /**
   * SIGTERM: a cap on the whole shutdown (drains included) before the agent exits anyway. Unset: the
   * pod's grace period less 2 s decides (sidecar/src/agent/shutdown.ts), or 20 s when none is known.
   */
  shutdownTimeoutSeconds: optionalIntFromEnv(1, 3600),
  /** Per StreamPath: cap on the send-buffer memory lagging mirror connections may grow into. Default 64 MiB. */
  mirrorBufferBudgetBytes: optionalIntFromEnv(0, 16 * 1024 ** 3),
  /**
   * Where the operator's feed is: host:port, comma-separated, tried in turn (the webhook puts the replica
   * that injected the pod first, then the feed Service). The agent gets its configuration there.
   */
  operatorAddresses: z
    .string({ error: 'is required (the kstreams webhook sets it): host:port of the operator feed, comma-separated' })
    .transform((v) => v.split(',').map((a) => a.trim()).filter(Boolean))
    .pipe(z.array(z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d+$/, 'each entry must be host:port')).min(1)),
  /** The name the operator's certificate is checked against (its Service's DNS name). */
  operatorServerName: z.string().min(1).optional(),
  /** PEM of the CA that signs the operator's certificate (set by the webhook). */
  operatorCa: z.string().includes('BEGIN CERTIFICATE', { message: 'must hold PEM certificates' }).optional(),
  /** The projected ServiceAccount token (audience kstreams.io/agent-feed) the agent presents; re-read on every connect. */
  feedTokenFile: z.string().startsWith('/').optional().transform((v) => v ?? '/var/run/secrets/kstreams.io/feed/token'),
  /**
   * The capture volume's mount (the webhook sets it when it mounts one): file targets' paths are resolved
   * under it, and a path that would leave it is refused. Unset: paths are taken as written.
   */
  captureDir: z.string().startsWith('/', 'must be an absolute path').optional(),
});

export type AgentConfig = z.output<typeof AgentConfigSchema>;

export class AgentConfigError extends Error {
  override readonly name = 'AgentConfigError';
  constructor(readonly problems: string[]) {
    super(`invalid agent configuration:\n  ${problems.join('\n  ')}`);
  }
}

/** Parses the agent's environment; throws AgentConfigError naming each bad variable. */
export function loadAgentConfig(env: Record<string, string | undefined>): AgentConfig {
  const raw: Record<string, string | undefined> = {};
  for (const [field, variable] of Object.entries(AGENT_ENV)) {
    const v = env[variable];
    // An empty variable is what a pod spec produces for "not set"; treat it as unset.
    if (v !== undefined && v !== '') raw[field] = v;
  }
  const r = AgentConfigSchema.safeParse(raw);
  if (r.success) return r.data;
  throw new AgentConfigError(
    r.error.issues.map((i) => {
      const field = String(i.path[0] ?? '');
      const variable = (AGENT_ENV as Record<string, string>)[field] ?? field;
      return `${variable}: ${i.message}`;
    }),
  );
}
