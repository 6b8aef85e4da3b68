// Who is at the other end of an agent stream: the pod whose projected ServiceAccount token (audience
// FEED_AUDIENCE, bound to the pod) it presents, as the apiserver says through a TokenReview. The pod comes
// from the token's own claims (the apiserver puts them in status.user.extra), never from what the agent says.
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
