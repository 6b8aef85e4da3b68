// The operator's one configuration object: parsed by zod at start-up from an optional YAML/JSON file
// (KSTREAMS_OPERATOR_CONFIG) overlaid with environment variables, then passed to every part. Nothing else
// in the operator reads process.env.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { DEFAULT_FEED_PORT } from '../../api/src/feed.js';
import { formatIssues } from '../../api/src/streampath.js';
import { WebhookConfigSchema } from './webhook/config.js';

const ms = z.number().int().positive();

export const LeaderElectionConfigSchema = z
  .strictObject({
    enabled: z.boolean().default(true),
    leaseName: z.string().min(1).default('kstreams-operator'),
    /** Defaults to the operator's namespace. */
    leaseNamespace: z.string().min(1).optional(),
    /** How long a lease is valid without renewal: followers take over after this. */
    leaseDurationMs: ms.default(15_000),
    /** The leader stops reconciling when it could not renew for this long (must be < leaseDurationMs). */
    renewDeadlineMs: ms.default(10_000),
    /** Interval between acquire/renew attempts. */
    retryPeriodMs: ms.default(2_000),
  })
  .refine((l) => l.renewDeadlineMs < l.leaseDurationMs, {
    message: 'renewDeadlineMs must be less than leaseDurationMs, or two leaders could overlap',
  })
  .refine((l) => l.retryPeriodMs < l.renewDeadlineMs, {
    message: 'retryPeriodMs must be less than renewDeadlineMs, or the leader cannot renew in time',
  });

/**
 * The agent feed (docs/adr/0008-agents-get-their-configuration-from-the-operator.md): every replica listens;
 * the leader serves the agents' streams, the others redirect them to it.
 */
export const FeedConfigSchema = z.strictObject({
  host: z.string().default('0.0.0.0'),
  /** TLS (the webhook's certificate), ALPN kstreams-feed/1. 0 picks a free port (tests). */
  port: z.number().int().min(0).max(65535).default(DEFAULT_FEED_PORT),
  /**
   * native: the addon's TLS transport (one thread, a few KiB per idle agent); node: Node's tls (~27 KiB per
   * agent); auto: native where the addon has it, else node with a warning.
   */
  transport: z.enum(['auto', 'native', 'node']).default('auto'),
  /**
   * The native transport: a TLS 1.3 connection leaves OpenSSL's per-connection object after its handshake and
   * the feed seals and opens its records itself (about 0.2 KiB per idle agent instead of 13.6; ADR 0008,
   * Costs). false keeps an SSL object per connection.
   */
  tlsRecords: z.boolean().default(true),
  /** host:port agents are sent to while this replica leads; default POD_IP and port. */
  advertiseAddress: z.string().min(1).optional(),
  /** A stream with no frame from its agent for this long is closed (agents report at least every 15 s). */
  idleTimeoutMs: ms.default(45_000),
  /** An agent whose stream closed counts as unreachable (AgentUnreachable) only after this long. */
  disconnectGraceMs: ms.default(10_000),
  /**
   * After becoming leader, a StreamPath's status is not written while some pod it selects has not reported
   * on the feed yet, for at most this long (the agents reconnect to the new leader meanwhile).
   */
  warmupMs: ms.default(30_000),
  /**
   * After becoming leader, a pod whose agent has not reconnected yet keeps the part it had in its StreamPaths'
   * stored status (attached, its counters) for at most this long, counted from the caches' sync, unless it is
   * gone: a restart's reconnect storm (agents with jittered backoff, a TLS handshake and a TokenReview each: 371 s
   * for 5000 agents on the loaded bench machine) moves no Ready condition and resets no counter. Past it, a pod
   * still unheard is waited for (Attaching).
   */
  reconnectGraceMs: ms.default(600_000),
  /**
   * How agents' tokens are checked. local: the signature with the issuer's published keys (OIDC discovery,
   * /openid/v1/jwks), the claims, the bound pod against the pod cache and the ServiceAccount's uid; a token the
   * operator cannot decide on (keys unavailable, not pod-bound, an unknown issuer or key) goes to a TokenReview.
   * tokenreview: a TokenReview for every token not remembered.
   */
  tokenVerification: z.enum(['local', 'tokenreview']).default('local'),
  /** An agent's token, once reviewed, is trusted again for this long (never past its exp) when it reconnects. */
  tokenReviewCacheMs: ms.default(300_000),
  /** At most this many TokenReviews in flight; more agents wait their turn. */
  tokenReviewConcurrency: z.number().int().min(1).max(256).default(16),
  /** Transform program ConfigMaps that agents use are read again this often. */
  programRefreshMs: ms.default(30_000),
  /** PEM files of the feed's certificate when the webhook is off (out of cluster, tests); else the webhook's. */
  certFile: z.string().min(1).optional(),
  keyFile: z.string().min(1).optional(),
});

export const OperatorConfigSchema = z.strictObject({
  /** Namespace the operator runs in (its Lease lives here; the webhook never touches it). */
  namespace: z.string().min(1).default('kstreams-system'),
  /** This replica's identity in the Lease and in logs. */
  identity: z.string().min(1),
  /** Path of a kubeconfig; unset: in-cluster service account, else the default kubeconfig loading rules. */
  kubeconfig: z.string().optional(),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  leaderElection: LeaderElectionConfigSchema.default(LeaderElectionConfigSchema.parse({})),
  /** Every StreamPath is reconciled again this often even when nothing changed (level-triggered safety net). */
  resyncPeriodMs: ms.default(300_000),
  /** Parallel reconciles (different keys; one key is never reconciled twice at once). */
  reconcileConcurrency: z.number().int().min(1).max(64).default(4),
  /** Retry backoff of a failing reconcile. */
  retryInitialMs: ms.default(500),
  retryMaxMs: ms.default(60_000),
  feed: FeedConfigSchema.prefault({}),
  /**
   * At most one status write per StreamPath per this interval, whatever the agents report (counters change
   * every second): later changes are written together when it has passed.
   */
  statusWriteIntervalMs: ms.default(10_000),
  /**
   * Status writes per second that changes of counters alone may cost, all StreamPaths together (0: no such
   * budget). With N StreamPaths, such a write of one waits max(statusWriteIntervalMs, N / this seconds);
   * a change of a condition, the generation or the pod counts still goes out within statusWriteIntervalMs.
   * Each write costs the apiserver CPU (and etcd a revision): this keeps a large fleet from crowding it.
   */
  statusWritesPerSecond: z.number().int().min(0).max(10_000).default(20),
  /** How long a deleted StreamPath waits for agents to report it detached before the finalizer goes anyway. */
  detachTimeoutMs: ms.default(60_000),
  /** Shutdown on SIGTERM must finish within this, then the process exits regardless. */
  shutdownTimeoutMs: ms.default(10_000),
  server: z
    .strictObject({
      host: z.string().default('0.0.0.0'),
      /** /metrics, /healthz, /readyz. 0 picks a free port (tests). */
      port: z.number().int().min(0).max(65535).default(8080),
    })
    .default({ host: '0.0.0.0', port: 8080 }),
  /** The mutating webhook (served by every replica), validated by the webhook module's own schema. */
  webhook: WebhookConfigSchema.prefault({}),
});

export type OperatorConfig = z.infer<typeof OperatorConfigSchema>;
export type FeedConfig = z.infer<typeof FeedConfigSchema>;
export type OperatorConfigInput = z.input<typeof OperatorConfigSchema>;

export class ConfigError extends Error {
  constructor(public readonly problems: string[]) {
    super(`invalid operator configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/** Environment variables and the config fields they set (env wins over the file). */
const ENV_FIELDS: { env: string; path: string[]; type: 'string' | 'int' | 'bool' }[] = [
  { env: 'KSTREAMS_NAMESPACE', path: ['namespace'], type: 'string' },
  { env: 'POD_NAMESPACE', path: ['namespace'], type: 'string' },
  { env: 'KSTREAMS_IDENTITY', path: ['identity'], type: 'string' },
  { env: 'POD_NAME', path: ['identity'], type: 'string' },
  { env: 'KUBECONFIG', path: ['kubeconfig'], type: 'string' },
  { env: 'KSTREAMS_LOG_LEVEL', path: ['logLevel'], type: 'string' },
  { env: 'KSTREAMS_LEADER_ELECTION', path: ['leaderElection', 'enabled'], type: 'bool' },
  { env: 'KSTREAMS_LEASE_NAME', path: ['leaderElection', 'leaseName'], type: 'string' },
  { env: 'KSTREAMS_LEASE_DURATION_MS', path: ['leaderElection', 'leaseDurationMs'], type: 'int' },
  { env: 'KSTREAMS_RENEW_DEADLINE_MS', path: ['leaderElection', 'renewDeadlineMs'], type: 'int' },
  { env: 'KSTREAMS_RETRY_PERIOD_MS', path: ['leaderElection', 'retryPeriodMs'], type: 'int' },
  { env: 'KSTREAMS_RESYNC_PERIOD_MS', path: ['resyncPeriodMs'], type: 'int' },
  { env: 'KSTREAMS_RECONCILE_CONCURRENCY', path: ['reconcileConcurrency'], type: 'int' },
  { env: 'KSTREAMS_FEED_PORT', path: ['feed', 'port'], type: 'int' },
  { env: 'KSTREAMS_FEED_TRANSPORT', path: ['feed', 'transport'], type: 'string' },
  { env: 'KSTREAMS_FEED_TLS_RECORDS', path: ['feed', 'tlsRecords'], type: 'bool' },
  { env: 'KSTREAMS_FEED_CERT_FILE', path: ['feed', 'certFile'], type: 'string' },
  { env: 'KSTREAMS_FEED_KEY_FILE', path: ['feed', 'keyFile'], type: 'string' },
  { env: 'KSTREAMS_FEED_WARMUP_MS', path: ['feed', 'warmupMs'], type: 'int' },
  { env: 'KSTREAMS_FEED_RECONNECT_GRACE_MS', path: ['feed', 'reconnectGraceMs'], type: 'int' },
  { env: 'KSTREAMS_FEED_TOKEN_VERIFICATION', path: ['feed', 'tokenVerification'], type: 'string' },
  { env: 'KSTREAMS_STATUS_WRITE_INTERVAL_MS', path: ['statusWriteIntervalMs'], type: 'int' },
  { env: 'KSTREAMS_STATUS_WRITES_PER_SECOND', path: ['statusWritesPerSecond'], type: 'int' },
  { env: 'KSTREAMS_DETACH_TIMEOUT_MS', path: ['detachTimeoutMs'], type: 'int' },
  { env: 'KSTREAMS_SHUTDOWN_TIMEOUT_MS', path: ['shutdownTimeoutMs'], type: 'int' },
  { env: 'KSTREAMS_METRICS_PORT', path: ['server', 'port'], type: 'int' },
  { env: 'KSTREAMS_WEBHOOK_ENABLED', path: ['webhook', 'enabled'], type: 'bool' },
  { env: 'KSTREAMS_WEBHOOK_PORT', path: ['webhook', 'port'], type: 'int' },
  { env: 'KSTREAMS_WEBHOOK_URL', path: ['webhook', 'url'], type: 'string' },
  { env: 'KSTREAMS_WEBHOOK_THREAD', path: ['webhook', 'thread'], type: 'string' },
  { env: 'POD_IP', path: ['webhook', 'shutdown', 'podIP'], type: 'string' },
];

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    const child = node[key];
    if (typeof child !== 'object' || child === null) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]!] = value;
}

/**
 * Builds the config from a file (path in KSTREAMS_OPERATOR_CONFIG) and the environment. Throws ConfigError
 * naming every bad field and where it came from.
 */
export function loadConfig(env: Record<string, string | undefined>, readFile = (p: string) => readFileSync(p, 'utf8')): OperatorConfig {
  const problems: string[] = [];
  let raw: Record<string, unknown> = {};
  const file = env.KSTREAMS_OPERATOR_CONFIG;
  if (file) {
    try {
      const parsed: unknown = parseYaml(readFile(file));
      if (parsed !== null && parsed !== undefined) {
        if (typeof parsed !== 'object' || Array.isArray(parsed)) problems.push(`${file}: must hold a mapping`);
        else raw = parsed as Record<string, unknown>;
      }
    } catch (err) {
      problems.push(`${file}: ${(err as Error).message}`);
    }
  }
  // Later entries of ENV_FIELDS for the same path are the Kubernetes downward-API fallbacks: only used
  // when the KSTREAMS_ name is unset.
  const setFromEnv = new Set<string>();
  for (const f of ENV_FIELDS) {
    const v = env[f.env];
    const key = f.path.join('.');
    if (v === undefined || v === '' || setFromEnv.has(key)) continue;
    let value: unknown = v;
    if (f.type === 'int') {
      if (!/^-?\d+$/.test(v)) {
        problems.push(`${f.env}=${v}: must be an integer`);
        continue;
      }
      value = Number(v);
    } else if (f.type === 'bool') {
      if (!['true', 'false', '1', '0'].includes(v)) {
        problems.push(`${f.env}=${v}: must be true or false`);
        continue;
      }
      value = v === 'true' || v === '1';
    }
    setPath(raw, f.path, value);
    setFromEnv.add(key);
  }
  if (raw.identity === undefined) raw.identity = `${hostname()}-${process.pid}`;
  // The webhook's TLS Secret lives in, and injection skips, the operator's own namespace unless told otherwise.
  if (typeof raw.namespace === 'string') {
    const webhook = (raw.webhook ?? {}) as Record<string, unknown>;
    if (webhook.namespace === undefined) raw.webhook = { ...webhook, namespace: raw.namespace };
  }
  if (problems.length) throw new ConfigError(problems);
  return parseConfig(raw);
}

export function parseConfig(input: unknown): OperatorConfig {
  const r = OperatorConfigSchema.safeParse(input);
  if (!r.success) throw new ConfigError(formatIssues(r.error));
  return r.data;
}
