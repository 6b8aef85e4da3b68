// One readable line for any error of a call to the apiserver, wherever it ends up (a condition, an Event,
// a log line): the verb, the object, the HTTP status and reason with the apiserver's own message, and the
// fix when the cause says what it is. Understands the operator's own transport (ApiError from rest.ts),
// @kubernetes/client-node 1.4 (ApiException, whose message is a dump of the body and the headers, and
// node-fetch's FetchError for network failures) and plain Node socket errors. The hint follows the actual
// cause: an apiserver that cannot be reached is a network problem, never missing RBAC.

export type ErrorCause = 'http' | 'unreachable' | 'timeout' | 'tls' | 'aborted' | 'other';

export interface DescribedError {
  cause: ErrorCause;
  /** HTTP status (cause http). */
  status?: number;
  /** Status.reason from the apiserver (Forbidden, NotFound, ...), or the socket error code (ECONNREFUSED). */
  reason?: string;
  /** The apiserver's message, or the network error's, on one line. */
  message: string;
  /** From the request when known: verb (get, list, create...) and object ("secrets kstreams-system/tls"). */
  verb?: string;
  object?: string;
  /** Parsed from a Forbidden message: who may not do what where. */
  forbidden?: { user: string; verb: string; resource: string; group: string; namespace?: string };
}

export interface ErrorContext {
  /** What was being done, e.g. "get" or "create". */
  verb?: string;
  /** On what, e.g. "Secret kstreams-system/kstreams-webhook-tls". */
  object?: string;
  /** The fix when the apiserver answers 403 (e.g. which Role or RoleBinding grants it). */
  forbiddenHint?: string;
  /** The fix when it answers 404 (e.g. which CRD to install). */
  notFoundHint?: string;
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENETUNREACH', 'EHOSTUNREACH', 'EHOSTDOWN', 'ENETDOWN', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT']);
const TIMEOUT = new Set(['ETIMEDOUT', 'ESOCKETTIMEDOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);
const TLS = /^(ERR_TLS_|CERT_|UNABLE_TO_|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|ERR_SSL_)/;

const HTTP_REASON: Record<number, string> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  409: 'Conflict',
  410: 'Gone',
  413: 'RequestEntityTooLarge',
  415: 'UnsupportedMediaType',
  422: 'Invalid',
  429: 'TooManyRequests',
  500: 'InternalError',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

type Bag = Record<string, unknown>;

function oneLine(s: string, max = 400): string {
  const flat = s.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/** A Kubernetes Status object from a body that is JSON text, an object, or neither. */
function statusOf(body: unknown): { message?: string; reason?: string; code?: number; details?: { name?: string; kind?: string; group?: string } } | undefined {
  let v = body;
  if (typeof v === 'string') {
    try {
      v = JSON.parse(v);
    } catch {
      return undefined;
    }
  }
  if (v && typeof v === 'object' && ((v as Bag).kind === 'Status' || typeof (v as Bag).message === 'string')) return v as never;
  return undefined;
}

/** "GET /api/v1/namespaces/ns/secrets/name?watch=true" -> verb watch, object "secrets ns/name". */
export function describeRequest(method: string, path: string): { verb: string; object: string } {
  const [p = '', q = ''] = path.split('?');
  const parts = p.split('/').filter(Boolean).map(decodeURIComponent);
  // /api/v1/... or /apis/<group>/<version>/...
  let rest = parts[0] === 'api' ? parts.slice(2) : parts[0] === 'apis' ? parts.slice(3) : parts;
  const group = parts[0] === 'apis' ? parts[1] : undefined;
  let namespace: string | undefined;
  if (rest[0] === 'namespaces' && rest.length >= 3) {
    namespace = rest[1];
    rest = rest.slice(2);
  }
  const [resource = p, name, sub] = rest;
  const qualified = group ? `${resource}.${group}` : resource;
  const id = name ? (namespace ? `${namespace}/${name}` : name) : namespace ? `in namespace ${namespace}` : '(cluster-wide)';
  const watch = /(^|&)watch=(true|1)/.test(q);
  const verb =
    method === 'GET' ? (watch ? 'watch' : name ? 'get' : 'list') : method === 'POST' ? 'create' : method === 'PUT' ? 'update' : method === 'PATCH' ? 'patch' : method === 'DELETE' ? 'delete' : method.toLowerCase();
  return { verb, object: `${qualified}${sub ? `/${sub}` : ''} ${id}` };
}

function parseForbidden(message: string): DescribedError['forbidden'] {
  const m = /User "([^"]*)" cannot (\S+) resource "([^"]*)" in API group "([^"]*)"(?: in the namespace "([^"]*)")?/.exec(message);
  if (!m) return undefined;
  return { user: m[1]!, verb: m[2]!, resource: m[3]!, group: m[4]!, ...(m[5] ? { namespace: m[5] } : {}) };
}

function codeOf(e: Bag): string | undefined {
  for (const c of [e.code, e.errno, (e.cause as Bag | undefined)?.code]) if (typeof c === 'string' && c) return c;
  return undefined;
}

/** Classifies an error; never throws, whatever it is given. */
export function describeError(err: unknown): DescribedError {
  if (typeof err !== 'object' || err === null) return { cause: 'other', message: oneLine(String(err)) };
  if (err instanceof KubeCallError) return err.described;
  const e = err as Bag & { message?: unknown; name?: unknown };
  const rawMessage = typeof e.message === 'string' ? e.message : String(err);

  // HTTP answers: our ApiError (statusCode, method, path, body) or client-node's ApiException (code, body).
  const status = typeof e.statusCode === 'number' ? e.statusCode : typeof e.code === 'number' ? e.code : undefined;
  if (status !== undefined && status >= 300) {
    const st = statusOf(e.body);
    const message = oneLine(st?.message ?? (typeof e.body === 'string' && e.body ? e.body : HTTP_REASON[status] ?? `HTTP ${status}`));
    const out: DescribedError = { cause: 'http', status, reason: st?.reason || HTTP_REASON[status] || `HTTP${status}`, message };
    if (typeof e.method === 'string' && typeof e.path === 'string') Object.assign(out, describeRequest(e.method, e.path));
    if (status === 403) {
      const f = parseForbidden(message);
      if (f) out.forbidden = f;
    }
    return out;
  }

  if (e.name === 'AbortError' || codeOf(e) === 'ABORT_ERR') return { cause: 'aborted', message: oneLine(rawMessage) };
  const code = codeOf(e);
  // node-fetch: "request to https://host/path failed, reason: connect ECONNREFUSED 127.0.0.1:6443"
  const fetchMatch = /^request to (\S+) failed, reason: (.*)$/s.exec(rawMessage);
  const detail = oneLine(fetchMatch ? fetchMatch[2]! : rawMessage).replace(/ - Local \([^)]*\)$/, '');
  const base: Partial<DescribedError> = {};
  if (typeof e.method === 'string' && typeof e.path === 'string') Object.assign(base, describeRequest(e.method, e.path));
  else if (fetchMatch) {
    try {
      const u = new URL(fetchMatch[1]!);
      base.object = describeRequest('GET', u.pathname + u.search).object;
    } catch {
      // not a URL: leave the object out
    }
  }
  if (code && TIMEOUT.has(code)) return { ...base, cause: 'timeout', reason: code, message: detail };
  if (code && UNREACHABLE.has(code)) return { ...base, cause: 'unreachable', reason: code, message: detail };
  if (code && TLS.test(code)) return { ...base, cause: 'tls', reason: code, message: detail };
  if (/no answer within \d+ ?ms|timed? ?out/i.test(rawMessage)) return { ...base, cause: 'timeout', ...(code ? { reason: code } : {}), message: detail };
  return { ...base, cause: 'other', ...(code ? { reason: code } : {}), message: detail };
}

function defaultForbiddenHint(f: NonNullable<DescribedError['forbidden']>): string {
  const what = `"${f.verb}" on ${f.group ? `${f.resource}.${f.group}` : f.resource}`;
  const where = f.namespace ? `in namespace ${f.namespace} (a Role and a RoleBinding)` : 'cluster-wide (a ClusterRole and a ClusterRoleBinding)';
  return `grant ${f.user} ${what} ${where}`;
}

/** The fix for a cause, when it is known. */
function hintFor(d: DescribedError, ctx: ErrorContext): string | undefined {
  switch (d.cause) {
    case 'unreachable':
      return 'the apiserver cannot be reached from here: check that it is up and that this pod may connect to it (NetworkPolicy egress to the kubernetes Service, KUBERNETES_SERVICE_HOST/PORT, or the kubeconfig server)';
    case 'timeout':
      return 'the apiserver did not answer in time: it may be overloaded, or the connection is blackholed (NetworkPolicy, firewall); retried with backoff';
    case 'tls':
      return "the apiserver's certificate is not trusted: the CA of the kubeconfig or of the ServiceAccount does not match the cluster";
    case 'http':
      if (d.status === 401) return 'the apiserver refused the credentials: the ServiceAccount token or the kubeconfig user is missing, expired or from another cluster';
      if (d.status === 403) return ctx.forbiddenHint ?? (d.forbidden ? defaultForbiddenHint(d.forbidden) : undefined);
      if (d.status === 404) return ctx.notFoundHint;
      if (d.status === 429 || (d.status !== undefined && d.status >= 500)) return 'the apiserver is overloaded or failing; retried with backoff';
      return undefined;
    default:
      return undefined;
  }
}

/**
 * One line: "<verb> <object>: HTTP 403 Forbidden: <message>; fix: <hint>", or for a network failure
 * "<verb> <object>: apiserver unreachable (ECONNREFUSED): connect ECONNREFUSED 10.96.0.1:443; fix: ...".
 */
export function formatApiError(err: unknown, ctx: ErrorContext = {}): string {
  if (err instanceof KubeCallError && !ctx.verb && !ctx.object) return err.message;
  const d = describeError(err);
  const verb = ctx.verb ?? d.verb;
  const object = ctx.object ?? d.object;
  const head = [verb, object].filter(Boolean).join(' ');
  let what: string;
  switch (d.cause) {
    case 'http':
      what = `HTTP ${d.status} ${d.reason}: ${d.message}`;
      break;
    case 'unreachable':
      what = `apiserver unreachable (${d.reason}): ${d.message}`;
      break;
    case 'timeout':
      what = `apiserver timeout${d.reason ? ` (${d.reason})` : ''}: ${d.message}`;
      break;
    case 'tls':
      what = `TLS to the apiserver failed (${d.reason}): ${d.message}`;
      break;
    case 'aborted':
      what = `aborted: ${d.message}`;
      break;
    default:
      what = d.message;
  }
  const hint = hintFor(d, ctx);
  return `${head ? `${head}: ` : ''}${what}${hint ? `; fix: ${hint}` : ''}`;
}

/**
 * pino's `err` serializer for the operator and the agent: the formatted line as the message, plus the
 * fields to filter on, and no body or headers dump.
 */
export function errSerializer(err: unknown): Record<string, unknown> {
  if (typeof err !== 'object' || err === null) return { message: String(err) };
  const d = describeError(err);
  const out: Record<string, unknown> = { type: (err as Error).name ?? 'Error', message: formatApiError(err), cause: d.cause };
  if (d.status !== undefined) out.status = d.status;
  if (d.reason) out.reason = d.reason;
  const stack = (err as Error).stack;
  if (d.cause === 'other' && stack) out.stack = stack;
  return out;
}

/**
 * An apiserver error wrapped with what was being done: its message is the formatted line, `code` and
 * `statusCode` stay those of the HTTP answer (so 404/409 checks keep working), `cause` is the original.
 */
export class KubeCallError extends Error {
  readonly code: number | string | undefined;
  readonly statusCode: number | undefined;
  readonly described: DescribedError;
  constructor(err: unknown, ctx: ErrorContext) {
    super(formatApiError(err, ctx), { cause: err });
    this.name = 'KubeCallError';
    const d = describeError(err);
    this.described = { ...d, ...(ctx.verb ? { verb: ctx.verb } : {}), ...(ctx.object ? { object: ctx.object } : {}) };
    this.statusCode = d.status;
    this.code = d.status ?? d.reason;
  }
}

/** Runs one API call; a failure is rethrown as a KubeCallError naming `ctx`. */
export async function kubeCall<T>(ctx: ErrorContext, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof KubeCallError) throw err;
    throw new KubeCallError(err, ctx);
  }
}
