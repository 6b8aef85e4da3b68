// Local verification of the agents' projected ServiceAccount tokens: the signature with the issuer's public
// keys (OIDC discovery and JWKS, read from the apiserver), the claims, and the pod and ServiceAccount the token
// is bound to against the leader's pod cache and the live ServiceAccount. No TokenReview per agent: at 10k
// agents the apiserver reviewed only 7-60 tokens/s (docs/bench.md). Where the local path cannot decide (keys
// unavailable, not a pod-bound JWT, an issuer or key it does not know, a pod the cache never saw) the
// TokenReview decides, as before; where it can (bad signature, expired, other audience, deleted pod, uid
// mismatch) it refuses with the same FeedAuthError.
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, errors, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';
import type { Logger } from 'pino';
import { FEED_AUDIENCE } from '../../../api/src/feed.js';
import { isStatus, type KubeTransport } from '../../../runtime/src/rest.js';
import { FeedAuthError, type AgentIdentity, type TokenReviewCache } from './auth.js';

export const DISCOVERY_PATH = '/.well-known/openid-configuration';
export const JWKS_PATH = '/openid/v1/jwks';
/** The apiserver answers 406 to a plain application/json on the JWKS. */
const JWKS_ACCEPT = 'application/json, application/jwk-set+json';
/** Only asymmetric signatures: the apiserver signs with its RSA or EC service-account key. */
const ASYMMETRIC = new Set(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512']);

/** Why the local path refused a token (a label value of kstreams_operator_feed_token_checks_total). */
export type LocalRefusalReason =
  | 'signature'
  | 'expired'
  | 'not_yet_valid'
  | 'audience'
  | 'claims'
  | 'pod_gone'
  | 'pod_uid'
  | 'pod_service_account'
  | 'service_account_gone'
  | 'service_account_uid';

/** Why the local path left a token to the TokenReview. */
export type FallbackReason = 'not_jwt' | 'not_pod_bound' | 'pods_not_synced' | 'keys_unavailable' | 'issuer' | 'unknown_kid' | 'pod_not_seen' | 'service_account_unavailable';

/** A clear refusal of the local path: 401 like the apiserver's, with the reason for the metric. */
export class LocalRefusal extends FeedAuthError {
  constructor(
    readonly reason: LocalRefusalReason,
    message: string,
  ) {
    super(401, message);
  }
}

/** The local path cannot decide; the TokenReview does. */
export class LocalVerificationUnavailable extends Error {
  constructor(
    readonly reason: FallbackReason,
    message: string,
  ) {
    super(message);
    this.name = 'LocalVerificationUnavailable';
  }
}

/** What the verifier needs of the leader's pod cache. */
export interface PodCacheView {
  /** When the caches had synced; undefined before (the cache may lack pods that exist). */
  syncedAt: number | undefined;
  get(key: string): { uid: string; serviceAccount?: string } | undefined;
  /** Resolves when the caches have synced. */
  whenSynced?: Promise<void>;
}

export interface LocalTokenVerifierOptions {
  transport: KubeTransport;
  now(): number;
  /** The leader's pod cache; undefined while this replica does not lead. */
  pods(): PodCacheView | undefined;
  log?: Logger;
  /** Keys are fetched again for an unknown kid (or after a failed fetch) at most this often. */
  keyRefetchMinMs?: number;
  /** The issuer's keys are read again when older than this. */
  keysMaxAgeMs?: number;
  /** A ServiceAccount's uid, once read, is used for this long. */
  serviceAccountTtlMs?: number;
  /** exp and nbf are checked with this much leeway (clock skew between the apiserver and the operator). */
  leewaySeconds?: number;
  /** At most this many uids of deleted pods remembered (a token of one is refused without a TokenReview). */
  maxDeletedPods?: number;
  timeoutMs?: number;
  /**
   * A token that arrives before the pod cache synced (a new leader's reconnect storm) waits this long for the
   * sync before it goes to a TokenReview.
   */
  syncWaitMs?: number;
}

interface IssuerKeys {
  issuer: string;
  jwks: ReturnType<typeof createLocalJWKSet>;
  kids: Set<string>;
  algorithms: string[];
}

interface K8sClaims {
  namespace?: unknown;
  pod?: { name?: unknown; uid?: unknown };
  serviceaccount?: { name?: unknown; uid?: unknown };
}

const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

/** The algorithm a JWK signs with: its own `alg`, else what its key type implies. */
function algorithmOf(k: Record<string, unknown>): string | undefined {
  if (typeof k.alg === 'string') return k.alg;
  if (k.kty === 'RSA') return 'RS256';
  if (k.kty === 'EC') return ({ 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' } as Record<string, string>)[String(k.crv)];
  return undefined;
}

export class LocalTokenVerifier {
  private keys: IssuerKeys | undefined;
  /** When keys were last fetched (or tried): an unknown kid or a failure fetches again only after keyRefetchMinMs. */
  private keysFetchedAt = -Infinity;
  private keysError: string | undefined;
  private fetching: Promise<void> | undefined;
  private readonly serviceAccounts = new Map<string, { uid: string | null; at: number }>();
  private readonly saInFlight = new Map<string, Promise<string | null>>();
  /** ServiceAccounts that could not be read (no RBAC, apiserver trouble): when, and why; retried after keyRefetchMinMs. */
  private readonly saFailures = new Map<string, { at: number; error: string }>();
  private saWarnedAt = -Infinity;
  private readonly deletedPods = new Set<string>();
  keyFetches = 0;

  constructor(private readonly o: LocalTokenVerifierOptions) {}

  /** The pod cache saw this pod deleted: its tokens are refused from now on (their TokenReview would be too). */
  podDeleted(uid: string): void {
    if (!uid) return;
    this.deletedPods.add(uid);
    const max = this.o.maxDeletedPods ?? 50_000;
    while (this.deletedPods.size > max) this.deletedPods.delete(this.deletedPods.values().next().value!);
  }

  async verify(token: string): Promise<AgentIdentity> {
    let header: ReturnType<typeof decodeProtectedHeader>;
    let payload: JWTPayload;
    try {
      header = decodeProtectedHeader(token);
      payload = decodeJwt(token);
    } catch {
      throw new LocalVerificationUnavailable('not_jwt', 'the token is not a JWT');
    }
    const k8s = payload['kubernetes.io'] as K8sClaims | undefined;
    const namespace = str(k8s?.namespace);
    const pod = str(k8s?.pod?.name);
    const podUid = str(k8s?.pod?.uid);
    const serviceAccount = str(k8s?.serviceaccount?.name);
    const saUid = str(k8s?.serviceaccount?.uid);
    if (!namespace || !pod || !podUid || !serviceAccount || !saUid) throw new LocalVerificationUnavailable('not_pod_bound', 'the token is not a pod-bound ServiceAccount token');
    let pods = this.o.pods();
    if (pods && pods.syncedAt === undefined && pods.whenSynced) {
      // A new leader's caches list for a few seconds while every agent reconnects: waiting costs less than
      // sending them all to TokenReviews.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([pods.whenSynced, new Promise<void>((r) => (timer = setTimeout(r, this.o.syncWaitMs ?? 15_000).unref()))]);
      clearTimeout(timer);
      pods = this.o.pods();
    }
    if (pods?.syncedAt === undefined) throw new LocalVerificationUnavailable('pods_not_synced', 'the pod cache has not synced yet');

    let keys = await this.issuerKeys(false);
    // Another issuer: the apiserver may have been reconfigured (read again, rate-limited), or it trusts more
    // issuers than it publishes (legacy tokens, extra --service-account-issuer values): it decides.
    if (payload.iss !== keys.issuer) keys = await this.issuerKeys(true);
    if (payload.iss !== keys.issuer) throw new LocalVerificationUnavailable('issuer', `the token's issuer ${String(payload.iss)} is not the discovered ${keys.issuer}`);
    if (header.kid !== undefined && !keys.kids.has(header.kid)) {
      keys = await this.issuerKeys(true);
      if (!keys.kids.has(header.kid)) throw new LocalVerificationUnavailable('unknown_kid', `no published key has kid ${header.kid}`);
    }
    await this.checkSignatureAndClaims(token, keys);

    if (payload.sub !== `system:serviceaccount:${namespace}:${serviceAccount}`) throw new LocalRefusal('claims', `the token's subject ${String(payload.sub)} is not its ServiceAccount ${namespace}/${serviceAccount}`);
    const key = `${namespace}/${pod}`;
    const cached = pods.get(key);
    if (!cached) {
      if (this.deletedPods.has(podUid)) throw new LocalRefusal('pod_gone', `pod ${key} (uid ${podUid}) the token is bound to was deleted`);
      // A pod created a moment ago may not be in the cache yet: the apiserver knows.
      throw new LocalVerificationUnavailable('pod_not_seen', `pod ${key} is not in the pod cache`);
    }
    if (cached.uid !== podUid) throw new LocalRefusal('pod_uid', `pod ${key} has uid ${cached.uid}, the token is for uid ${podUid} (a deleted pod's)`);
    if (cached.serviceAccount !== undefined && cached.serviceAccount !== serviceAccount)
      throw new LocalRefusal('pod_service_account', `pod ${key} runs as ServiceAccount ${cached.serviceAccount}, the token is of ${serviceAccount}`);
    await this.checkServiceAccount(namespace, serviceAccount, saUid);
    return { namespace, serviceAccount, pod, podUid };
  }

  private async checkSignatureAndClaims(token: string, keys: IssuerKeys): Promise<void> {
    try {
      await jwtVerify(token, keys.jwks, {
        issuer: keys.issuer,
        audience: FEED_AUDIENCE,
        algorithms: keys.algorithms,
        clockTolerance: this.o.leewaySeconds ?? 60,
        currentDate: new Date(this.o.now()),
        requiredClaims: ['exp'],
      });
    } catch (err) {
      if (err instanceof errors.JWTExpired) throw new LocalRefusal('expired', `token expired at ${new Date(Number(err.payload.exp) * 1000).toISOString()}`);
      if (err instanceof errors.JWTClaimValidationFailed) {
        if (err.claim === 'aud') throw new LocalRefusal('audience', `token is not for audience ${FEED_AUDIENCE}`);
        if (err.claim === 'nbf') throw new LocalRefusal('not_yet_valid', 'token is not valid yet (nbf)');
        throw new LocalRefusal('claims', `token claim ${err.claim}: ${err.reason}`);
      }
      if (err instanceof errors.JWSSignatureVerificationFailed) throw new LocalRefusal('signature', "token signature does not verify with the issuer's key");
      if (err instanceof errors.JOSEAlgNotAllowed) throw new LocalRefusal('signature', `token is not signed with an algorithm of the issuer's keys (${keys.algorithms.join(', ')})`);
      if (err instanceof errors.JWKSNoMatchingKey) throw new LocalVerificationUnavailable('unknown_kid', 'no published key matches the token');
      // Malformed in a way decoding did not catch, a key that does not import: the apiserver decides.
      throw new LocalVerificationUnavailable('keys_unavailable', `local verification failed: ${(err as Error).message}`);
    }
  }

  /**
   * The issuer and its keys, read again when older than keysMaxAgeMs (a key the apiserver no longer publishes
   * stops being trusted) or on `refresh` (an unknown kid or issuer), never sooner than keyRefetchMinMs after
   * the last fetch. A failed fetch keeps the keys read before.
   */
  private async issuerKeys(refresh: boolean): Promise<IssuerKeys> {
    if (this.fetching) await this.fetching;
    const age = this.o.now() - this.keysFetchedAt;
    const due = age >= (this.o.keyRefetchMinMs ?? 30_000);
    if ((!this.keys || refresh || age >= (this.o.keysMaxAgeMs ?? 600_000)) && due) {
      this.fetching ??= this.fetchKeys().finally(() => (this.fetching = undefined));
      await this.fetching;
    }
    if (!this.keys) throw new LocalVerificationUnavailable('keys_unavailable', `the issuer's keys are not available: ${this.keysError ?? 'not fetched yet'}`);
    return this.keys;
  }

  private async fetchKeys(): Promise<void> {
    this.keysFetchedAt = this.o.now();
    this.keyFetches++;
    const timeoutMs = this.o.timeoutMs ?? 5_000;
    try {
      const discovery = await this.o.transport.request<{ issuer?: unknown }>('GET', DISCOVERY_PATH, { timeoutMs });
      const issuer = str(discovery?.issuer);
      if (!issuer) throw new Error(`${DISCOVERY_PATH} names no issuer`);
      const jwks = await this.o.transport.request<JSONWebKeySet>('GET', JWKS_PATH, { timeoutMs, accept: JWKS_ACCEPT });
      if (!Array.isArray(jwks?.keys)) throw new Error(`${JWKS_PATH} holds no keys`);
      const keys = jwks.keys as unknown as Record<string, unknown>[];
      const algorithms = [...new Set(keys.map(algorithmOf).filter((a): a is string => a !== undefined && ASYMMETRIC.has(a)))];
      if (algorithms.length === 0) throw new Error(`${JWKS_PATH} has no RSA or EC signing key`);
      const kids = new Set(keys.map((k) => k.kid).filter((k): k is string => typeof k === 'string'));
      const first = !this.keys;
      this.keys = { issuer, jwks: createLocalJWKSet(jwks), kids, algorithms };
      this.keysError = undefined;
      if (first) this.o.log?.info({ issuer, keys: kids.size, algorithms }, 'feed: verifying agent tokens locally with the issuer keys');
    } catch (err) {
      this.keysError = (err as Error).message;
      // Keys fetched before stay in use (an unknown kid then falls back); with none, every token does.
      this.o.log?.warn({ err: this.keysError, retryInMs: this.o.keyRefetchMinMs ?? 30_000 }, "feed: the issuer's keys could not be read; agent tokens go to TokenReview");
    }
  }

  private async checkServiceAccount(namespace: string, name: string, tokenUid: string): Promise<void> {
    const key = `${namespace}/${name}`;
    const ttl = this.o.serviceAccountTtlMs ?? 60_000;
    // A read that failed is not tried again for every agent of that ServiceAccount.
    const failed = this.saFailures.get(key);
    if (failed && this.o.now() - failed.at < (this.o.keyRefetchMinMs ?? 30_000)) throw new LocalVerificationUnavailable('service_account_unavailable', failed.error);
    let entry = this.serviceAccounts.get(key);
    let fresh = false;
    if (!entry || this.o.now() - entry.at >= ttl) {
      entry = { uid: await this.readServiceAccount(namespace, name), at: this.o.now() };
      fresh = true;
    }
    // A remembered answer that refuses is read again (at most once a second): the ServiceAccount may be new.
    if (entry.uid !== tokenUid && !fresh && this.o.now() - entry.at >= 1_000) entry = { uid: await this.readServiceAccount(namespace, name), at: this.o.now() };
    if (entry.uid === null) throw new LocalRefusal('service_account_gone', `ServiceAccount ${key} no longer exists`);
    if (entry.uid !== tokenUid) throw new LocalRefusal('service_account_uid', `ServiceAccount ${key} has uid ${entry.uid}, the token is for uid ${tokenUid} (a deleted one's)`);
  }

  /** The uid of a live ServiceAccount, null when it does not exist; shared by concurrent callers. */
  private readServiceAccount(namespace: string, name: string): Promise<string | null> {
    const key = `${namespace}/${name}`;
    let p = this.saInFlight.get(key);
    if (!p) {
      p = this.o.transport
        .request<{ metadata?: { uid?: string } }>('GET', `/api/v1/namespaces/${namespace}/serviceaccounts/${name}`, { timeoutMs: this.o.timeoutMs ?? 5_000 })
        .then(
          (sa) => sa.metadata?.uid ?? null,
          (err: unknown) => {
            if (isStatus(err, 404)) return null;
            const error = `ServiceAccount ${key} could not be read: ${(err as Error).message}`;
            this.saFailures.set(key, { at: this.o.now(), error });
            if (this.saFailures.size > 20_000) this.saFailures.clear();
            if (this.o.now() - this.saWarnedAt >= (this.o.keyRefetchMinMs ?? 30_000)) {
              this.saWarnedAt = this.o.now();
              this.o.log?.warn({ err: error }, 'feed: a ServiceAccount could not be read; its agents go to TokenReview (the operator needs get on serviceaccounts)');
            }
            throw new LocalVerificationUnavailable('service_account_unavailable', error);
          },
        )
        .then((uid) => {
          this.saFailures.delete(key);
          this.serviceAccounts.set(key, { uid, at: this.o.now() });
          if (this.serviceAccounts.size > 20_000) this.pruneServiceAccounts();
          return uid;
        })
        .finally(() => this.saInFlight.delete(key));
      this.saInFlight.set(key, p);
    }
    return p;
  }

  private pruneServiceAccounts(): void {
    const ttl = this.o.serviceAccountTtlMs ?? 60_000;
    const now = this.o.now();
    for (const [k, v] of this.serviceAccounts) if (now - v.at >= ttl) this.serviceAccounts.delete(k);
  }
}

/** One check of an agent's token, for kstreams_operator_feed_token_checks_total. */
export type TokenCheckRecorder = (method: 'local' | 'tokenreview', result: 'accepted' | 'refused' | 'fallback' | 'error', reason: string) => void;

export interface AgentAuthenticatorOptions {
  mode: 'local' | 'tokenreview';
  local: LocalTokenVerifier;
  tokenReviews: TokenReviewCache;
  /** Whether a remembered TokenReview may be used again (its pod still in the cache with that uid). */
  usable(id: AgentIdentity): boolean;
  record: TokenCheckRecorder;
}

/** The reason label of a TokenReview that refused or failed, from the FeedAuthError's status. */
function reviewOutcome(err: unknown): { result: 'refused' | 'error'; reason: string } {
  const status = err instanceof FeedAuthError ? err.status : 500;
  if (status === 401) return { result: 'refused', reason: 'unauthenticated' };
  if (status === 403) return { result: 'refused', reason: 'forbidden' };
  return { result: 'error', reason: 'apiserver' };
}

/**
 * The feed's authenticate(): local verification first (mode local), the TokenReview (and its cache) where it
 * cannot decide or in mode tokenreview. Every check is recorded; a TokenReview's own outcome is recorded by
 * the caller's review function (see startOperator), cache hits here.
 */
export function agentAuthenticator(o: AgentAuthenticatorOptions): (token: string) => Promise<AgentIdentity> {
  const review = async (token: string) => {
    let hit = true;
    const id = await o.tokenReviews.authenticate(token, o.usable, () => (hit = false));
    if (hit) o.record('tokenreview', 'accepted', 'cached');
    return id;
  };
  return async (token) => {
    if (o.mode === 'tokenreview') return review(token);
    try {
      const id = await o.local.verify(token);
      o.record('local', 'accepted', 'ok');
      return id;
    } catch (err) {
      if (err instanceof LocalRefusal) {
        o.record('local', 'refused', err.reason);
        throw err;
      }
      o.record('local', 'fallback', err instanceof LocalVerificationUnavailable ? err.reason : 'keys_unavailable');
      return review(token);
    }
  };
}

/** Wraps a TokenReview so that its outcome is recorded. */
export function recordedReview(review: (token: string) => Promise<AgentIdentity>, record: TokenCheckRecorder): (token: string) => Promise<AgentIdentity> {
  return async (token) => {
    try {
      const id = await review(token);
      record('tokenreview', 'accepted', 'reviewed');
      return id;
    } catch (err) {
      const { result, reason } = reviewOutcome(err);
      record('tokenreview', result, reason);
      throw err;
    }
  };
}
