// Who is at the other end of an agent stream: the pod whose projected ServiceAccount token (audience
// FEED_AUDIENCE, bound to the pod) it presents, as the apiserver says through a TokenReview. The pod comes
// from the token's own claims (the apiserver puts them in status.user.extra), never from what the agent says.
import { createHash } from 'node:crypto';
import { FEED_AUDIENCE } from '../../../api/src/feed.js';
import { formatApiError } from '../../../runtime/src/errors.js';
import type { KubeTransport } from '../../../runtime/src/rest.js';

export interface AgentIdentity {
  namespace: string;
  serviceAccount: string;
  pod: string;
  podUid: string;
}

/** An agent the operator refuses: HTTP status and a one-line reason (also what the agent logs). */
export class FeedAuthError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'FeedAuthError';
  }
}

const POD_NAME_EXTRA = 'authentication.kubernetes.io/pod-name';
const POD_UID_EXTRA = 'authentication.kubernetes.io/pod-uid';

interface TokenReviewStatus {
  authenticated?: boolean;
  error?: string;
  audiences?: string[];
  user?: { username?: string; extra?: Record<string, string[]> };
}

/** The kubernetes.io claims of a JWT the apiserver has already accepted (for apiservers that leave extra empty). */
function podClaims(token: string): { name?: string; uid?: string } {
  try {
    const payload = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as {
      'kubernetes.io'?: { pod?: { name?: string; uid?: string } };
    };
    return payload['kubernetes.io']?.pod ?? {};
  } catch {
    return {};
  }
}

export async function reviewAgentToken(transport: KubeTransport, token: string, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<AgentIdentity> {
  let review: { status?: TokenReviewStatus };
  try {
    review = await transport.request('POST', '/apis/authentication.k8s.io/v1/tokenreviews', {
      body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [FEED_AUDIENCE] } },
      timeoutMs: opts.timeoutMs ?? 5_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
  } catch (err) {
    // Our problem, not the agent's: it retries.
    throw new FeedAuthError(503, formatApiError(err, { verb: 'create', object: 'TokenReview', forbiddenHint: 'the operator ClusterRole needs create on tokenreviews.authentication.k8s.io' }));
  }
  const s = review.status ?? {};
  if (!s.authenticated) throw new FeedAuthError(401, `token refused by the apiserver: ${s.error ?? 'not authenticated'}`);
  if (s.audiences && !s.audiences.includes(FEED_AUDIENCE)) throw new FeedAuthError(401, `token is not for audience ${FEED_AUDIENCE}`);
  const m = /^system:serviceaccount:([^:]+):([^:]+)$/.exec(s.user?.username ?? '');
  if (!m) throw new FeedAuthError(403, `${s.user?.username ?? 'unknown user'} is not a ServiceAccount`);
  const claims = podClaims(token);
  const pod = s.user?.extra?.[POD_NAME_EXTRA]?.[0] ?? claims.name;
  const podUid = s.user?.extra?.[POD_UID_EXTRA]?.[0] ?? claims.uid;
  if (!pod || !podUid) throw new FeedAuthError(403, 'token is not bound to a pod (use the projected token the webhook mounts)');
  return { namespace: m[1]!, serviceAccount: m[2]!, pod, podUid };
}

export interface TokenReviewCacheOptions {
  review(token: string): Promise<AgentIdentity>;
  now(): number;
  /** A reviewed token is trusted again for at most this long (and never past its own exp). */
  ttlMs: number;
  /** At most this many tokens remembered (the oldest go first). */
  maxEntries: number;
  /** At most this many TokenReviews in flight; the others wait their turn (their timeout starts when sent). */
  concurrency: number;
}

interface CachedReview {
  identity: AgentIdentity;
  until: number;
}

/** The exp claim of a token, in ms (only ever used to shorten how long its review is trusted). */
function tokenExpiry(token: string): number | undefined {
  try {
    const exp = (JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { exp?: unknown }).exp;
    return typeof exp === 'number' ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Remembers the identities the apiserver gave agent tokens, keyed by a SHA-256 of the token (the token itself
 * is not kept), until the shorter of `ttlMs` and the token's expiry: an agent that reconnects (its stream broke,
 * a follower redirected it, it was replaced) costs no TokenReview. `usable` is asked before a remembered identity
 * is used (the caller checks the pod is still there with that uid: a deleted pod's token is reviewed again, and
 * the apiserver refuses it). Concurrent reviews of the same token share one request, and at most `concurrency`
 * are in flight, so a reconnect storm queues here instead of timing out at the apiserver.
 */
export class TokenReviewCache {
  private readonly entries = new Map<string, CachedReview>();
  private readonly inFlight = new Map<string, Promise<AgentIdentity>>();
  private readonly waiting: (() => void)[] = [];
  private running = 0;
  hits = 0;
  reviews = 0;

  constructor(private readonly o: TokenReviewCacheOptions) {}

  get size(): number {
    return this.entries.size;
  }

  /** `onMiss` is called when no remembered identity is used (the token is reviewed, or joins a review in flight). */
  async authenticate(token: string, usable: (id: AgentIdentity) => boolean = () => true, onMiss?: () => void): Promise<AgentIdentity> {
    const key = createHash('sha256').update(token).digest('base64');
    const now = this.o.now();
    const hit = this.entries.get(key);
    if (hit && hit.until > now && usable(hit.identity)) {
      this.hits++;
      return hit.identity;
    }
    onMiss?.();
    if (hit) this.entries.delete(key);
    let p = this.inFlight.get(key);
    if (!p) {
      p = this.reviewBounded(token).finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, p);
    }
    const identity = await p;
    const exp = tokenExpiry(token);
    const reviewedAt = this.o.now();
    const until = Math.min(reviewedAt + this.o.ttlMs, exp ?? Infinity);
    if (until > reviewedAt) {
      this.entries.delete(key);
      this.entries.set(key, { identity, until });
      while (this.entries.size > this.o.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    }
    return identity;
  }

  private async reviewBounded(token: string): Promise<AgentIdentity> {
    while (this.running >= this.o.concurrency) await new Promise<void>((r) => this.waiting.push(r));
    this.running++;
    this.reviews++;
    try {
      return await this.o.review(token);
    } finally {
      this.running--;
      this.waiting.shift()?.();
    }
  }
}
