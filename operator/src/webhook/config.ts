// The webhook's part of the operator config: parsed once by zod at start-up and passed in.
// Nested objects use .prefault({}) so that an absent section still gets every inner default (zod 4's
// .default() would return the literal {} unparsed).
import { z } from 'zod';
import { DEFAULT_AGENT_PORT } from '../../../api/src/agent.js';

const QuantitySchema = z.union([z.string().min(1), z.number()]).transform(String);
const ResourceListSchema = z.record(z.string(), QuantitySchema);

export const SidecarConfigSchema = z.object({
  image: z.string().min(1).default('kstreams/sidecar:0.1.0'),
  imagePullPolicy: z.enum(['Always', 'IfNotPresent', 'Never']).default('IfNotPresent'),
  resources: z
    .object({ requests: ResourceListSchema.optional(), limits: ResourceListSchema.optional() })
    .default({ requests: { cpu: '50m', memory: '64Mi' }, limits: { memory: '256Mi' } }),
  agentPort: z.number().int().min(1).max(65535).default(DEFAULT_AGENT_PORT),
  /** Only for kernels/runtimes where CAP_BPF + CAP_NET_ADMIN are not enough; off by default. */
  privileged: z.boolean().default(false),
  /** Start the app containers only once the data plane is attached (native sidecar or postStart wait). */
  holdApplicationUntilAttached: z.boolean().default(true),
  /** How long the postStart hook (clusters without native sidecars) waits for /readyz. */
  attachTimeoutSeconds: z.number().int().min(1).max(3600).default(120),
  /**
   * 'auto' uses native sidecars (initContainers with restartPolicy: Always) from Kubernetes 1.29, where
   * the SidecarContainers feature is on by default; 1.28 has it behind an alpha gate, and there an init
   * container that never exits would block the pod forever.
   */
  nativeSidecar: z.enum(['auto', 'always', 'never']).default('auto'),
  /**
   * The capture volume mounted in every injected sidecar at CAPTURE_MOUNT_PATH, where file targets write
   * (their paths are resolved under it): an emptyDir bounded by sizeLimit (the kubelet evicts a pod whose
   * volume outgrows it), or an existing PersistentVolumeClaim (ReadWriteMany when the pods of a workload
   * share it: every writer has its own session directory). enabled: false mounts nothing (file targets
   * then fail on the read-only root filesystem).
   */
  capture: z
    .strictObject({
      enabled: z.boolean().default(true),
      sizeLimit: QuantitySchema.default('2Gi'),
      claimName: z.string().min(1).optional(),
    })
    .prefault({}),
});

export const SelfManagedTlsSchema = z.object({
  mode: z.literal('self-managed'),
  /** Secret in the operator's namespace holding the CA and the serving cert, shared by all replicas. */
  secretName: z.string().min(1).default('kstreams-webhook-tls'),
  caValiditySeconds: z.number().int().positive().default(5 * 365 * 24 * 3600),
  certValiditySeconds: z.number().int().positive().default(365 * 24 * 3600),
  /** Re-issue a cert (or the CA) once less than this is left of its validity. */
  rotateBeforeSeconds: z.number().int().positive().default(30 * 24 * 3600),
  /** Extra subjectAltNames (DNS names or IP addresses), e.g. 127.0.0.1 when the apiserver calls a URL. */
  extraSANs: z.array(z.string().min(1)).default([]),
  /** Re-read the Secret this often even when the watch is quiet. */
  resyncSeconds: z.number().int().positive().default(300),
  /**
   * A CA rotation serves certs of the new CA only this long after a caBundle holding it was accepted by the
   * apiserver: every apiserver (each reloads webhook configurations through its own informer) must trust it
   * before it is used.
   */
  caPropagationSeconds: z.number().int().min(0).default(60),
});

export const CertManagerTlsSchema = z.object({
  mode: z.literal('cert-manager'),
  /** Mounted Secret written by cert-manager; its CA injector owns the caBundle. */
  certDir: z.string().min(1).default('/etc/kstreams/webhook-tls'),
  certFile: z.string().min(1).default('tls.crt'),
  keyFile: z.string().min(1).default('tls.key'),
  /** kubelet updates mounted Secrets in place; re-read the files this often. */
  reloadSeconds: z.number().int().positive().default(60),
});

export const WebhookTlsSchema = z.discriminatedUnion('mode', [SelfManagedTlsSchema, CertManagerTlsSchema]);

export const WebhookConfigSchema = z.object({
  enabled: z.boolean().default(true),
  /**
   * Where the HTTPS server and the admission decisions run: 'worker', a worker thread with its own event loop
   * and its own copy of what admission reads (posted by the main thread), so that the agent feed and the
   * controllers cannot delay admissions; 'main', the operator's own event loop (tests, fallback).
   */
  thread: z.enum(['worker', 'main']).default('worker'),
  port: z.number().int().min(0).max(65535).default(9443),
  host: z.string().min(1).default('0.0.0.0'),
  /** The operator's own namespace: holds the TLS Secret and is never injected. */
  namespace: z.string().min(1).default('kstreams-system'),
  serviceName: z.string().min(1).default('kstreams-webhook'),
  servicePort: z.number().int().min(1).max(65535).default(443),
  /** When set, the apiserver calls this URL instead of the Service (out-of-cluster runs and tests). */
  url: z.url({ protocol: /^https$/ }).optional(),
  path: z.string().startsWith('/').default('/mutate-pods'),
  webhookConfigurationName: z.string().min(1).default('kstreams-sidecar-injector'),
  /** Name of the webhook entry inside the MutatingWebhookConfiguration (must be a qualified name). */
  webhookName: z.string().min(1).default('sidecar-injector.kstreams.io'),
  /** Create/update the MutatingWebhookConfiguration (self-managed TLS only). */
  manageWebhookConfiguration: z.boolean().default(true),
  tls: WebhookTlsSchema.prefault({ mode: 'self-managed' }),
  /** Ignore: a broken or absent operator never blocks pod creation. */
  failurePolicy: z.enum(['Ignore', 'Fail']).default('Ignore'),
  timeoutSeconds: z.number().int().min(1).max(30).default(5),
  maxBodyBytes: z.number().int().min(1024).default(1024 * 1024),
  /** Time to receive a whole request; the apiserver gives up after timeoutSeconds anyway. */
  requestTimeoutMs: z.number().int().positive().default(10_000),
  headersTimeoutMs: z.number().int().positive().default(5_000),
  keepAliveTimeoutMs: z.number().int().positive().default(30_000),
  /**
   * Graceful shutdown (SIGTERM): the replica stops being ready at once but keeps serving until the webhook
   * Service's Endpoints no longer list podIP (then endpointsGraceMs more, for the apiserver to see it), at
   * most drainTimeoutMs; only then does it close. Without podIP (out of cluster) it closes at once.
   */
  shutdown: z
    .strictObject({
      /** This pod's IP (the chart sets POD_IP from the downward API). */
      podIP: z.string().min(1).optional(),
      drainTimeoutMs: z.number().int().min(0).default(8_000),
      /** When the Endpoints cannot be read (e.g. RBAC already removed by an uninstall), serve on this long only. */
      blindDrainMs: z.number().int().min(0).default(3_000),
      endpointsGraceMs: z.number().int().min(0).default(1_000),
      pollMs: z.number().int().positive().default(250),
    })
    .prefault({}),
  /** Never injected, in addition to kube-system, kube-public, kube-node-lease and the own namespace. */
  excludedNamespaces: z.array(z.string().min(1)).default([]),
  sidecar: SidecarConfigSchema.prefault({}),
});

export type WebhookConfig = z.infer<typeof WebhookConfigSchema>;
export type WebhookConfigInput = z.input<typeof WebhookConfigSchema>;
export type SidecarConfig = z.infer<typeof SidecarConfigSchema>;
export type SelfManagedTls = z.infer<typeof SelfManagedTlsSchema>;
export type CertManagerTls = z.infer<typeof CertManagerTlsSchema>;
