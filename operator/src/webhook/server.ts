// The HTTPS server every operator replica runs (not only the leader): POST <path> for AdmissionReviews,
// GET /healthz. Bodies are capped, header and request times bounded, TLS hot-reloaded.
import { createServer, type Server } from 'node:https';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type Socket } from 'node:net';
import { X509Certificate } from 'node:crypto';
import { CoreV1Api, VersionApi, type KubeConfig } from '@kubernetes/client-node';
import { formatApiError } from '../../../runtime/src/errors.js';
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { handleAdmissionReview, type AdmissionOutcome } from './admission.js';
import type { CertKeyPem } from './certs.js';
import type { WebhookConfig } from './config.js';
import { computePodPatch, parseServerVersion, sidecarContainer, type ServerVersion } from './patch.js';
import { chooseSidecarMode, type SlimNode } from './sidecar-mode.js';
import { describeVerdict, sidecarPodSecurity } from './pod-security.js';
import { MountedTls, SelfManagedTls, type TlsSource } from './tls-source.js';

export interface StartWebhookOptions {
  config: WebhookConfig;
  kube: KubeConfig;
  logger: Logger;
  registry: Registry;
  /** The apiserver's version; read from /version when absent. Picks native sidecars or the postStart wait. */
  serverVersion?: ServerVersion | { major?: string; minor?: string };
  /** Where the serving cert comes from; by default chosen by config.tls.mode. */
  tlsSource?: TlsSource;
  /**
   * The namespaces' labels (a cache the caller keeps): a pod injected where a Pod Security level forbids the
   * sidecar gets an AdmissionReview warning with the fix. Without it, no such warnings.
   */
  namespaces?: { get(name: string): { labels: Readonly<Record<string, string>> } | undefined };
  /**
   * The nodes' kubelet versions (a cache the caller keeps, used once synced): with sidecar.nativeSidecar=auto a
   * pod gets a native sidecar only where its kubelet will run one (sidecar-mode.ts). Without it, the
   * apiserver's version decides alone.
   */
  nodes?: { list(): Iterable<SlimNode>; readonly synced: boolean };
  /** Where injected agents reach the operator's feed (undefined: not serving yet; pods get no feed settings). */
  feed?: () => { addresses: string[]; serverName: string } | undefined;
}

export type DrainOutcome = 'endpoints-gone' | 'timeout' | 'not-routed' | 'aborted';

export interface RunningWebhook {
  port: number;
  tls: TlsSource;
  /** The certificate served now (the agent feed serves the same one). */
  servingPem(): CertKeyPem;
  /**
   * Keeps serving until the webhook Service's Endpoints no longer list this pod (plus a grace for the
   * apiserver to notice), bounded by shutdown.drainTimeoutMs. Call it once the replica reports not ready.
   */
  drain(signal?: AbortSignal): Promise<DrainOutcome>;
  close(): Promise<void>;
}

const METRIC = {
  requests: 'kstreams_webhook_admission_requests_total',
  duration: 'kstreams_webhook_admission_duration_seconds',
  certExpiry: 'kstreams_webhook_certificate_expiry_timestamp_seconds',
  handshakes: 'kstreams_webhook_tls_handshakes_total',
} as const;

export type Metrics = { requests: Counter<'result' | 'reason'>; duration: Histogram<'result'>; certExpiry: Gauge; handshakes: Counter };

/**
 * Registers once per registry: a second server in the same process (tests, restarts) reuses them.
 * Exported for the chart's dashboard test, which checks its queries against the names registered here.
 */
export function metricsIn(registry: Registry): Metrics {
  const existing = registry.getSingleMetric(METRIC.requests);
  if (existing) {
    return {
      requests: existing as Counter<'result' | 'reason'>,
      duration: registry.getSingleMetric(METRIC.duration) as Histogram<'result'>,
      certExpiry: registry.getSingleMetric(METRIC.certExpiry) as Gauge,
      handshakes: registry.getSingleMetric(METRIC.handshakes) as Counter,
    };
  }
  return {
    requests: new Counter({
      name: METRIC.requests,
      help: 'AdmissionReviews answered by the webhook, by result (patched, allowed, invalid) and reason',
      labelNames: ['result', 'reason'],
      registers: [registry],
    }),
    duration: new Histogram({
      name: METRIC.duration,
      help: 'Time from the first byte of an admission request to its answer',
      labelNames: ['result'],
      buckets: [0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [registry],
    }),
    certExpiry: new Gauge({
      name: METRIC.certExpiry,
      help: 'notAfter of the serving certificate in use, as a Unix timestamp',
      registers: [registry],
    }),
    handshakes: new Counter({
      name: METRIC.handshakes,
      help: 'TLS connections accepted; far fewer than admissions when the apiserver reuses connections',
      registers: [registry],
    }),
  };
}

async function resolveServerVersion(opts: StartWebhookOptions): Promise<ServerVersion | undefined> {
  if (opts.serverVersion) {
    const v = opts.serverVersion;
    return typeof v.major === 'number' ? (v as ServerVersion) : parseServerVersion(v);
  }
  try {
    return parseServerVersion(await opts.kube.makeApiClient(VersionApi).getCode());
  } catch (e) {
    opts.logger.warn({ err: (e as Error).message }, 'cannot read the apiserver version; injecting classic sidecars');
    return undefined;
  }
}

/** GET <PRESTOP_PATH>?ms=N answers after N ms (at most PRESTOP_MAX_MS): the chart's preStop hook. */
export const PRESTOP_PATH = '/prestop';
const PRESTOP_MAX_MS = 60_000;
const PRESTOP_CONCURRENCY = 4;

function sendJson(res: ServerResponse, status: number, body: unknown, close = false): void {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(payload),
    ...(close ? { connection: 'close' } : {}),
  });
  res.end(payload);
}

function statusBody(code: number, reason: string, message: string) {
  return { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason, code, message };
}

export async function startWebhook(opts: StartWebhookOptions): Promise<RunningWebhook> {
  const { config, logger } = opts;
  const log = logger.child({ component: 'webhook' });
  const metrics = metricsIn(opts.registry);
  const version = await resolveServerVersion(opts);
  const modeFor = (nodeName?: string) =>
    chooseSidecarMode(config.sidecar.nativeSidecar, version, opts.nodes?.synced ? opts.nodes.list() : undefined, nodeName);
  const initialMode = modeFor();
  const tls: TlsSource =
    opts.tlsSource ??
    (config.tls.mode === 'self-managed'
      ? new SelfManagedTls({ config, kube: opts.kube, logger: log })
      : new MountedTls({ tls: config.tls, logger: log }));
  const pem = await tls.start();
  const setExpiry = (p: CertKeyPem) => {
    try {
      metrics.certExpiry.set(Date.parse(new X509Certificate(p.certPem).validTo) / 1000);
    } catch {
      // A cert Node cannot parse would already have failed setSecureContext.
    }
  };
  setExpiry(pem);

  let serving = pem;
  const feedSettings = () => {
    const f = opts.feed?.();
    const caPem = tls.trustPem?.();
    return f && caPem ? { ...f, caPem } : undefined;
  };
  // The pod is injected even where Pod Security forbids the sidecar: the apiserver then rejects it with an
  // error that names the kstreams-sidecar container, which the user sees (or the ReplicaSet's FailedCreate
  // Event shows), instead of a pod that runs unmirrored without a word (docs/webhook.md, Pod Security).
  const sidecarShape = sidecarContainer(config.sidecar, false);
  // The mode is decided here, per pod, and handed to computePodPatch as a forced one.
  const forced = { never: { ...config, sidecar: { ...config.sidecar, nativeSidecar: 'never' as const } }, always: { ...config, sidecar: { ...config.sidecar, nativeSidecar: 'always' as const } } };
  let lastNative = initialMode.native;
  const mutate = (pod: unknown, namespace: string) => {
    const spec = (pod as { spec?: { nodeName?: unknown } } | null)?.spec;
    const mode = modeFor(typeof spec?.nodeName === 'string' && spec.nodeName !== '' ? spec.nodeName : undefined);
    if (mode.native !== lastNative && spec?.nodeName === undefined) {
      lastNative = mode.native;
      log.info({ nativeSidecar: mode.native, why: mode.why }, 'sidecar mode for new pods changed');
    }
    const result = computePodPatch(pod, { name: namespace }, mode.native ? forced.always : forced.never, version, feedSettings());
    const ns = result.reason === 'injected' ? opts.namespaces?.get(namespace) : undefined;
    if (!ns) return result;
    const warnings = sidecarPodSecurity(ns.labels, sidecarShape).map((v) => describeVerdict(namespace, v, true));
    return warnings.length > 0 ? { ...result, warnings } : result;
  };

  const observe = (started: bigint, result: AdmissionOutcome['result'] | { kind: 'invalid'; reason: string }) => {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    metrics.requests.inc({ result: result.kind, reason: result.reason });
    metrics.duration.observe({ result: result.kind }, seconds);
  };

  const handleMutate = (req: IncomingMessage, res: ServerResponse) => {
    const started = process.hrtime.bigint();
    const reject = (status: number, reason: string, message: string) => {
      observe(started, { kind: 'invalid', reason });
      log.warn({ status, reason, remote: req.socket.remoteAddress }, message);
      sendJson(res, status, statusBody(status, reason, message), true);
    };
    const contentType = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
    if (contentType !== 'application/json') {
      req.resume();
      return reject(415, 'UnsupportedMediaType', `content-type must be application/json, got ${JSON.stringify(contentType ?? '')}`);
    }
    const declared = Number(req.headers['content-length'] ?? '0');
    const tooLarge = `request body exceeds the webhook's limit of ${config.maxBodyBytes} bytes`;
    if (declared > config.maxBodyBytes) {
      // Drain instead of resetting, so the client reads the 413; requestTimeout bounds the drain.
      req.resume();
      return reject(413, 'RequestEntityTooLarge', tooLarge);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (chunk: Buffer) => {
      if (over) return;
      size += chunk.length;
      if (size > config.maxBodyBytes) {
        over = true;
        chunks.length = 0;
        reject(413, 'RequestEntityTooLarge', tooLarge);
        return;
      }
      chunks.push(chunk);
    });
    req.on('error', () => {
      // Client went away or the request timed out: nothing to answer.
    });
    req.on('end', () => {
      if (over || res.headersSent) return;
      const outcome = handleAdmissionReview(Buffer.concat(chunks, size).toString('utf8'), mutate);
      observe(started, outcome.result);
      if (outcome.result.kind === 'invalid') log.warn({ status: outcome.status, reason: outcome.result.reason }, 'malformed AdmissionReview');
      else log.debug({ ...outcome.request, result: outcome.result }, 'admission');
      sendJson(res, outcome.status, outcome.body, outcome.status >= 400);
    });
  };

  // The kubelet's preStop hook (an httpGet, so nothing is exec'd in the container): answers after the
  // requested wait, while the terminating pod is dropped from the Service's Endpoints and still serves.
  // It changes nothing, so whoever else calls it gains nothing; a few at a time, the rest get 429.
  let preStopWaiting = 0;
  const preStopWait = (req: IncomingMessage, res: ServerResponse) => {
    const asked = Number(new URL(req.url ?? '/', 'https://webhook').searchParams.get('ms') ?? '0');
    const ms = Number.isFinite(asked) ? Math.min(PRESTOP_MAX_MS, Math.max(0, asked)) : 0;
    if (preStopWaiting >= PRESTOP_CONCURRENCY) return sendJson(res, 429, statusBody(429, 'TooManyRequests', 'preStop waits already running'), true);
    preStopWaiting++;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      preStopWaiting--;
      clearTimeout(timer);
    };
    const timer = setTimeout(() => {
      finish();
      res.writeHead(200, { 'content-type': 'text/plain', connection: 'close' });
      res.end(`waited ${ms} ms`);
    }, ms);
    res.on('close', finish);
    log.info({ ms }, 'preStop: waiting while the Endpoints drop this pod');
  };

  const server: Server = createServer(
    {
      key: pem.keyPem,
      cert: pem.certPem,
      minVersion: 'TLSv1.2',
      requestTimeout: config.requestTimeoutMs,
      headersTimeout: config.headersTimeoutMs,
      keepAliveTimeout: config.keepAliveTimeoutMs,
      // Node enforces requestTimeout/headersTimeout only at this interval (30 s by default).
      connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(config.headersTimeoutMs / 2))),
    },
    (req, res) => {
      try {
        const path = (req.url ?? '/').split('?')[0];
        if (path === config.path) {
          if (req.method !== 'POST') {
            req.resume();
            return sendJson(res, 405, statusBody(405, 'MethodNotAllowed', `use POST on ${config.path}`));
          }
          return handleMutate(req, res);
        }
        req.resume();
        if (path === '/healthz' && (req.method === 'GET' || req.method === 'HEAD')) {
          res.writeHead(200, { 'content-type': 'text/plain' });
          return res.end('ok');
        }
        if (path === PRESTOP_PATH && req.method === 'GET') return preStopWait(req, res);
        sendJson(res, 404, statusBody(404, 'NotFound', `no such path; the webhook serves POST ${config.path}, GET /healthz and GET ${PRESTOP_PATH}`));
      } catch (e) {
        log.error({ err: (e as Error).message }, 'webhook request handler failed');
        if (!res.headersSent) sendJson(res, 500, statusBody(500, 'InternalError', 'internal error'), true);
      }
    },
  );
  // One port, two protocols: TLS for admissions (the first byte of a ClientHello is 0x16), plain HTTP for
  // the kubelet's preStop httpGet only (kubelets before 1.23 ignore the hook's scheme and always speak HTTP).
  const plain = createHttpServer(
    { requestTimeout: config.requestTimeoutMs, headersTimeout: config.headersTimeoutMs, keepAliveTimeout: 1000 },
    (req, res) => {
      req.resume();
      const path = (req.url ?? '/').split('?')[0];
      if (path === PRESTOP_PATH && req.method === 'GET') return preStopWait(req, res);
      sendJson(res, 400, statusBody(400, 'BadRequest', `plain HTTP serves only GET ${PRESTOP_PATH}; admissions need TLS`), true);
    },
  );
  const front = createNetServer((socket: Socket) => {
    socket.on('error', () => {});
    socket.once('data', (first: Buffer) => {
      socket.pause();
      socket.unshift(first);
      (first[0] === 0x16 ? server : plain).emit('connection', socket);
      process.nextTick(() => socket.resume());
    });
  });
  server.on('secureConnection', () => metrics.handshakes.inc());
  server.on('tlsClientError', (err) => log.debug({ err: err.message }, 'TLS handshake failed'));

  tls.onChange((next) => {
    try {
      server.setSecureContext({ key: next.keyPem, cert: next.certPem, minVersion: 'TLSv1.2' });
      serving = next;
      setExpiry(next);
      log.info('webhook TLS context reloaded');
    } catch (e) {
      log.error({ err: (e as Error).message }, 'new webhook certificate rejected; still serving the previous one');
    }
  });

  try {
    await new Promise<void>((resolve, reject) => {
      front.once('error', reject);
      front.listen(config.port, config.host, () => {
        front.off('error', reject);
        resolve();
      });
    });
  } catch (e) {
    // Do not leave the Secret watch and timers of the TLS source running behind a server that never was.
    await tls.stop();
    throw new Error(`webhook cannot listen on ${config.host}:${config.port}: ${(e as Error).message}`);
  }
  // The two servers get their connections from `front` and never listen themselves: start their
  // header/request timeout checks (Node starts them on 'listening') by hand.
  server.emit('listening');
  plain.emit('listening');
  const address = front.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  log.info({ port, host: config.host, path: config.path, nativeSidecar: initialMode.native, why: initialMode.why, version }, 'webhook listening');

  let closing: Promise<void> | undefined;
  let draining: Promise<DrainOutcome> | undefined;
  const sleep = (ms: number, signal?: AbortSignal) =>
    new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
    });
  const drainOnce = async (signal?: AbortSignal): Promise<DrainOutcome> => {
    const { podIP, drainTimeoutMs, endpointsGraceMs, pollMs, blindDrainMs } = config.shutdown;
    if (!podIP) {
      log.info('webhook drain: no pod IP known (out of cluster), nothing routes here through Endpoints');
      return 'not-routed';
    }
    const core = opts.kube.makeApiClient(CoreV1Api);
    const started = performance.now();
    const object = `Endpoints ${config.namespace}/${config.serviceName}`;
    log.info({ podIP, endpoints: object, drainTimeoutMs }, 'webhook drain: serving until the Endpoints no longer list this pod');
    let warned = false;
    while (!signal?.aborted) {
      const left = drainTimeoutMs - (performance.now() - started);
      if (left <= 0) {
        log.warn({ podIP, endpoints: object, drainTimeoutMs }, 'webhook drain: this pod is still listed after the drain timeout; closing anyway');
        return 'timeout';
      }
      let listed = true;
      try {
        const ep = await core.readNamespacedEndpoints({ name: config.serviceName, namespace: config.namespace });
        listed = (ep.subsets ?? []).some((sub) => (sub.addresses ?? []).some((a) => a.ip === podIP));
      } catch (e) {
        if ((e as { code?: unknown }).code === 404) listed = false;
        else {
          // Blind: the endpoints controller drops a terminating pod within a moment; serve that long.
          if (!warned) log.warn({ err: formatApiError(e, { verb: 'get', object }), blindDrainMs }, 'webhook drain: cannot read the Endpoints; serving on for blindDrainMs');
          warned = true;
          if (performance.now() - started >= Math.min(blindDrainMs, drainTimeoutMs)) return 'timeout';
        }
      }
      if (!listed) {
        // The apiserver routes to Services through its own Endpoints informer: give it a moment.
        await sleep(Math.min(endpointsGraceMs, Math.max(0, left)), signal);
        log.info({ podIP, afterMs: Math.round(performance.now() - started) }, 'webhook drain: no longer in the Endpoints');
        return signal?.aborted ? 'aborted' : 'endpoints-gone';
      }
      await sleep(Math.min(pollMs, left), signal);
    }
    return 'aborted';
  };
  return {
    port,
    tls,
    servingPem: () => serving,
    drain(signal) {
      draining ??= drainOnce(signal);
      return draining;
    },
    close() {
      closing ??= (async () => {
        await tls.stop();
        await new Promise<void>((resolve) => {
          front.close(() => resolve());
          // Stops their timeout checks (they were never listening: the callbacks get ERR_SERVER_NOT_RUNNING).
          server.close(() => undefined);
          plain.close(() => undefined);
          // Keep-alive connections from the apiserver would hold close() open.
          server.closeIdleConnections();
          plain.closeIdleConnections();
          const t = setTimeout(() => {
            server.closeAllConnections();
            plain.closeAllConnections();
          }, 2000);
          t.unref();
          front.once('close', () => clearTimeout(t));
        });
      })();
      return closing;
    },
  };
}
