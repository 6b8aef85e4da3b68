// The webhook's HTTPS front and its admission decisions, as one unit that runs wherever it is started: on
// the operator's main thread (thread: 'main') or in the webhook's worker thread (thread: 'worker', worker.ts).
// Everything it reads about the cluster comes through AdmissionInputs; everything it counts goes out through
// ServingObserver; the TLS source, the drain and the registry stay with the caller (server.ts).
import { createServer, type Server } from 'node:https';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { handleAdmissionReview, type AdmissionOutcome } from './admission.js';
import type { CertKeyPem } from './certs.js';
import type { WebhookConfig } from './config.js';
import type { FeedInjection } from './feed-injection.js';
import { computePodPatch, sidecarContainer, type ServerVersion } from './patch.js';
import { chooseSidecarMode, type SlimNode } from './sidecar-mode.js';
import { describeVerdict, sidecarPodSecurity } from './pod-security.js';

/** What admission reads of the cluster and of the operator, and nothing else. */
export interface AdmissionInputs {
  /** A namespace's labels (its Pod Security levels) when known: an injected pod then gets warnings. */
  namespaceLabels(name: string): Readonly<Record<string, string>> | undefined;
  /** The nodes once their cache has synced; undefined when unknown (sidecar-mode.ts). */
  nodes(): Iterable<SlimNode> | undefined;
  /** Where injected agents reach the feed, with the CA they trust; undefined while there is none. */
  feed(): FeedInjection | undefined;
}

export type AdmissionResultKind = AdmissionOutcome['result']['kind'];

/** Where the server's counts go: the registry on the main thread, a batch posted to it from the worker. */
export interface ServingObserver {
  admission(kind: AdmissionResultKind, reason: string, seconds: number): void;
  handshake(): void;
}

export interface ServingOptions {
  config: WebhookConfig;
  /** The apiserver's version (read once by the caller). */
  version: ServerVersion | undefined;
  log: Logger;
  inputs: AdmissionInputs;
  observer: ServingObserver;
  pem: CertKeyPem;
  /** Overrides config.port (a restarted worker listens where the first one did). */
  port?: number;
}

export interface Serving {
  port: number;
  /** Serves `pem` to new connections; false (and the previous one kept) when it is rejected. */
  setTls(pem: CertKeyPem): boolean;
  close(): Promise<void>;
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

/** Listens and serves until close(); rejects with "webhook cannot listen on host:port: ..." when it cannot. */
export async function serveWebhook(opts: ServingOptions): Promise<Serving> {
  const { config, version, log, inputs, observer, pem } = opts;
  const modeFor = (nodeName?: string) => chooseSidecarMode(config.sidecar.nativeSidecar, version, inputs.nodes(), nodeName);
  const initialMode = modeFor();

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
    const result = computePodPatch(pod, { name: namespace }, mode.native ? forced.always : forced.never, version, inputs.feed());
    const labels = result.reason === 'injected' ? inputs.namespaceLabels(namespace) : undefined;
    if (!labels) return result;
    const warnings = sidecarPodSecurity(labels, sidecarShape).map((v) => describeVerdict(namespace, v, true));
    return warnings.length > 0 ? { ...result, warnings } : result;
  };

  const observe = (started: bigint, result: AdmissionOutcome['result'] | { kind: 'invalid'; reason: string }) => {
    observer.admission(result.kind, result.reason, Number(process.hrtime.bigint() - started) / 1e9);
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
  server.on('secureConnection', () => observer.handshake());
  server.on('tlsClientError', (err) => log.debug({ err: err.message }, 'TLS handshake failed'));

  const port = opts.port ?? config.port;
  try {
    await new Promise<void>((resolve, reject) => {
      front.once('error', reject);
      front.listen(port, config.host, () => {
        front.off('error', reject);
        resolve();
      });
    });
  } catch (e) {
    throw new Error(`webhook cannot listen on ${config.host}:${port}: ${(e as Error).message}`);
  }
  // The two servers get their connections from `front` and never listen themselves: start their
  // header/request timeout checks (Node starts them on 'listening') by hand.
  server.emit('listening');
  plain.emit('listening');
  const address = front.address();
  const bound = typeof address === 'object' && address ? address.port : port;
  log.info({ port: bound, host: config.host, path: config.path, nativeSidecar: initialMode.native, why: initialMode.why, version }, 'webhook listening');

  let closing: Promise<void> | undefined;
  return {
    port: bound,
    setTls(next) {
      try {
        server.setSecureContext({ key: next.keyPem, cert: next.certPem, minVersion: 'TLSv1.2' });
        log.info('webhook TLS context reloaded');
        return true;
      } catch (e) {
        log.error({ err: (e as Error).message }, 'new webhook certificate rejected; still serving the previous one');
        return false;
      }
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
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
      return closing;
    },
  };
}
