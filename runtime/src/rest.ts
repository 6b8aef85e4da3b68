// A small REST transport to the apiserver: one keep-alive HTTPS agent for every request (client-node 1.4
// builds a fresh agent per call, which costs a TLS handshake each time at 10k-object scale), and streaming
// watches read line by line. Credentials: in a pod, the ServiceAccount's own (in-cluster.ts), read here
// without @kubernetes/client-node, whose generated API models all load with it (62 MiB of the operator's RSS);
// a kubeconfig file is read by client-node, imported only then, for its full support (exec plugins, OIDC,
// client certificates, impersonation).
import { existsSync } from 'node:fs';
import { Agent as HttpAgent, request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest, type RequestOptions } from 'node:https';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { formatApiError } from './errors.js';
import { inClusterCredentials, SERVICEACCOUNT_DIR, type KubeCredentials } from './in-cluster.js';

export { NotInClusterError, SERVICEACCOUNT_DIR, type KubeCredentials } from './in-cluster.js';

export class ApiError extends Error {
  constructor(
    public readonly statusCode: number,
    public readonly method: string,
    public readonly path: string,
    public readonly body: string,
  ) {
    super('');
    this.name = 'ApiError';
    // The one readable line (verb, object, status, reason, message, fix), also for whoever prints .message.
    this.message = formatApiError(this);
  }
}

/** A request the apiserver did not answer within its deadline (the socket is destroyed). */
export class TimeoutError extends Error {
  readonly code = 'ETIMEDOUT';
  constructor(
    public readonly method: string,
    public readonly path: string,
    public readonly timeoutMs: number,
  ) {
    super(`no answer within ${timeoutMs} ms`);
    this.name = 'TimeoutError';
  }
}

export function isStatus(err: unknown, code: number): boolean {
  return err instanceof ApiError && err.statusCode === code;
}

export type PatchType = 'merge' | 'json' | 'strategic';
const PATCH_CONTENT_TYPE: Record<PatchType, string> = {
  merge: 'application/merge-patch+json',
  json: 'application/json-patch+json',
  strategic: 'application/strategic-merge-patch+json',
};

export interface WatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: Record<string, unknown>;
}

export interface KubeRequestOptions {
  body?: unknown;
  patch?: PatchType;
  /** Deadline of the whole request, answer body included (default 30 s): the socket is destroyed when it passes. */
  timeoutMs?: number;
  /** Aborts the request in flight (the socket is destroyed; the promise rejects with an AbortError). */
  signal?: AbortSignal;
  /**
   * The Accept header (default application/json). Some endpoints refuse that one: the apiserver answers 406 to
   * it on /openid/v1/jwks, which it serves as application/jwk-set+json. The answer is parsed as JSON either way.
   */
  accept?: string;
}

/** What the operator needs from the apiserver; wrapped in tests to count writes. */
export interface KubeTransport {
  request<T = unknown>(method: string, path: string, opts?: KubeRequestOptions): Promise<T>;
  /** Streams watch events until the server closes the stream (resolves) or it fails (rejects). */
  watch(path: string, query: Record<string, string>, onEvent: (e: WatchEvent) => void, signal: AbortSignal): Promise<void>;
}

/** Where KubeRest.create looks for credentials besides an explicit kubeconfig path (tests inject them). */
export interface CredentialSources {
  /** Default process.env: KUBECONFIG, KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT, HOME. */
  env?: Record<string, string | undefined>;
  /** The ServiceAccount's token and ca.crt; default /var/run/secrets/kubernetes.io/serviceaccount. */
  serviceAccountDir?: string;
}

/** How long the auth headers (and with them a rotating token) are reused; client-go re-reads its token file as often. */
const HEADERS_TTL_MS = 60_000;

export class KubeRest implements KubeTransport {
  private readonly agent: HttpAgent | HttpsAgent;
  private readonly base: URL;
  private readonly tls: KubeCredentials['tls'];
  private headers: Record<string, string> = {};
  private headersAt = -Infinity;

  private constructor(
    private readonly credentials: KubeCredentials,
    /** Where the credentials came from: "in-cluster" or "kubeconfig <path>". */
    readonly source: string,
  ) {
    this.base = new URL(credentials.server);
    this.tls = credentials.tls;
    const agentOpts = { keepAlive: true, maxSockets: 64, ...this.tls };
    this.agent = this.base.protocol === 'https:' ? new HttpsAgent(agentOpts) : new HttpAgent({ keepAlive: true, maxSockets: 64 });
  }

  /**
   * The loading rules of client-go and client-node: an explicit kubeconfig path; else the files in KUBECONFIG;
   * else ~/.kube/config when it exists; else the in-cluster ServiceAccount (KUBERNETES_SERVICE_HOST/PORT and
   * its token); else NotInClusterError. Only the kubeconfig cases load @kubernetes/client-node.
   */
  static async create(kubeconfig?: string, sources: CredentialSources = {}): Promise<KubeRest> {
    const env = sources.env ?? process.env;
    const file = kubeconfig || env.KUBECONFIG || defaultKubeconfig(env);
    const rest = file
      ? new KubeRest(await kubeconfigCredentials(file), `kubeconfig ${file}`)
      : new KubeRest(inClusterCredentials(env, sources.serviceAccountDir ?? SERVICEACCOUNT_DIR), 'in-cluster');
    await rest.authHeaders();
    return rest;
  }

  /** Problems with the credentials that did not stop them working (a ServiceAccount ca.crt not readable). */
  get warnings(): readonly string[] {
    return this.credentials.warnings ?? [];
  }

  /** From credentials at hand (tests: a server and a token without any file). */
  static fromCredentials(credentials: KubeCredentials, source = 'given credentials'): KubeRest {
    return new KubeRest(credentials, source);
  }

  // Tokens rotate (projected ServiceAccount tokens, exec plugins): the headers are rebuilt every minute, and
  // at once after a 401 (client-go does the same for its token file).
  private async authHeaders(): Promise<Record<string, string>> {
    if (Date.now() - this.headersAt > HEADERS_TTL_MS) {
      this.headers = await this.credentials.headers();
      this.headersAt = Date.now();
    }
    return this.headers;
  }

  private async open(method: string, path: string, body: string | undefined, contentType: string | undefined, signal?: AbortSignal, accept = 'application/json'): Promise<{ res: IncomingMessage; req: ClientRequest }> {
    const headers: Record<string, string> = { ...(await this.authHeaders()), Accept: accept };
    if (body !== undefined) {
      headers['Content-Type'] = contentType ?? 'application/json';
      headers['Content-Length'] = String(Buffer.byteLength(body));
    }
    const url = new URL(path, this.base);
    const doRequest = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = doRequest(url, { method, headers, agent: this.agent, signal, ...this.tls }, (res) => resolve({ res, req }));
      req.on('error', reject);
      req.end(body);
    });
  }

  async request<T>(method: string, path: string, opts: KubeRequestOptions = {}): Promise<T> {
    const body = opts.body === undefined ? undefined : JSON.stringify(opts.body);
    const timeoutMs = opts.timeoutMs ?? 30_000;
    // One deadline for connect, answer and body together (req.setTimeout only measures idleness), and the
    // caller's signal: either destroys the socket, so a stalled connection never outlives its deadline.
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(new TimeoutError(method, path, timeoutMs)), timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, deadline.signal]) : deadline.signal;
    try {
      const { res } = await this.open(method, path, body, opts.patch ? PATCH_CONTENT_TYPE[opts.patch] : undefined, signal, opts.accept);
      const chunks: Buffer[] = [];
      for await (const c of res) chunks.push(c as Buffer);
      const text = Buffer.concat(chunks).toString('utf8');
      if ((res.statusCode ?? 0) >= 300) {
        if (res.statusCode === 401) this.headersAt = -Infinity;
        throw new ApiError(res.statusCode ?? 0, method, path, text);
      }
      return (text ? JSON.parse(text) : undefined) as T;
    } catch (err) {
      if (deadline.signal.aborted) throw deadline.signal.reason as Error;
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  async watch(path: string, query: Record<string, string>, onEvent: (e: WatchEvent) => void, signal: AbortSignal): Promise<void> {
    const qs = new URLSearchParams({ ...query, watch: 'true' }).toString();
    const full = `${path}?${qs}`;
    const { res } = await this.open('GET', full, undefined, undefined, signal);
    if ((res.statusCode ?? 0) !== 200) {
      if (res.statusCode === 401) this.headersAt = -Infinity;
      const chunks: Buffer[] = [];
      for await (const c of res) chunks.push(c as Buffer);
      throw new ApiError(res.statusCode ?? 0, 'GET', full, Buffer.concat(chunks).toString('utf8'));
    }
    const lines = createInterface({ input: res, crlfDelay: Infinity });
    // A destroyed response emits 'close' but never 'end', which readline waits for: close both on abort,
    // or the line loop would hang on an idle watch.
    const onAbort = () => {
      lines.close();
      res.destroy();
    };
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    res.once('close', () => lines.close());
    try {
      for await (const line of lines) {
        if (!line) continue;
        onEvent(JSON.parse(line) as WatchEvent);
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      lines.close();
      res.destroy();
    }
  }

  close(): void {
    this.agent.destroy();
  }
}

/** ~/.kube/config when it exists (client-node's rule: $HOME, else the account's home directory). */
function defaultKubeconfig(env: Record<string, string | undefined>): string | undefined {
  const home = env.HOME || homedir();
  const file = home ? join(home, '.kube', 'config') : undefined;
  return file && existsSync(file) ? file : undefined;
}

/**
 * Credentials from kubeconfig files (several joined by ':' as in KUBECONFIG, merged), through client-node,
 * imported here and only here: every auth method it knows, refreshed on each headers() call.
 */
async function kubeconfigCredentials(files: string): Promise<KubeCredentials> {
  const { KubeConfig } = await import('@kubernetes/client-node');
  const paths = files.split(':').filter(Boolean);
  const kc = new KubeConfig();
  kc.loadFromFile(paths[0]!);
  for (const more of paths.slice(1)) {
    const next = new KubeConfig();
    next.loadFromFile(more);
    kc.mergeConfig(next);
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error(`kubeconfig ${files} has no current cluster (current-context ${JSON.stringify(kc.getCurrentContext())})`);
  const opts: RequestOptions = {};
  await kc.applyToHTTPSOptions(opts);
  return {
    server: cluster.server,
    tls: {
      ca: opts.ca,
      cert: opts.cert,
      key: opts.key,
      rejectUnauthorized: cluster.skipTLSVerify ? false : undefined,
      servername: cluster.tlsServerName,
    },
    headers: async () => {
      const h: { headers?: Record<string, string> } = { headers: {} };
      await kc.applyToHTTPSOptions(h as RequestOptions);
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(h.headers ?? {})) headers[k] = String(v);
      return headers;
    },
  };
}

/** Wraps a transport and counts what goes through it: the "zero writes when nothing changed" test and metrics use it. */
export class CountingTransport implements KubeTransport {
  readonly counts = new Map<string, number>();
  writes = 0;
  constructor(
    private readonly inner: KubeTransport,
    private readonly onRequest?: (method: string, path: string, outcome: string) => void,
  ) {}

  async request<T>(method: string, path: string, opts?: KubeRequestOptions): Promise<T> {
    const key = `${method} ${path.split('?')[0]}`;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    if (method !== 'GET') this.writes++;
    try {
      const r = await this.inner.request<T>(method, path, opts);
      this.onRequest?.(method, path, 'ok');
      return r;
    } catch (err) {
      this.onRequest?.(method, path, err instanceof ApiError ? String(err.statusCode) : 'error');
      throw err;
    }
  }

  watch(path: string, query: Record<string, string>, onEvent: (e: WatchEvent) => void, signal: AbortSignal): Promise<void> {
    return this.inner.watch(path, query, onEvent, signal);
  }

  /** Writes whose path contains `fragment`. */
  writesTo(fragment: string): number {
    let n = 0;
    for (const [k, v] of this.counts) if (!k.startsWith('GET ') && k.includes(fragment)) n += v;
    return n;
  }
}
