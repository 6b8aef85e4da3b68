import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { FEED_AUDIENCE } from '../../../api/src/feed.js';
import { ApiError, type KubeRequestOptions, type KubeTransport } from '../../../runtime/src/rest.js';
import { FeedAuthError, TokenReviewCache, type AgentIdentity } from './auth.js';
import { agentAuthenticator, DISCOVERY_PATH, JWKS_PATH, LocalRefusal, LocalTokenVerifier, LocalVerificationUnavailable, recordedReview } from './local-auth.js';

const ISSUER = 'https://kubernetes.default.svc.cluster.local';
const T0 = 1_800_000_000_000;

interface Signer {
  kid: string;
  alg: 'RS256' | 'ES256';
  privateKey: CryptoKey;
  jwk: JWK;
}

async function signer(kid: string, alg: 'RS256' | 'ES256' = 'RS256'): Promise<Signer> {
  const { publicKey, privateKey } = await generateKeyPair(alg);
  return { kid, alg, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

interface TokenOptions {
  signer: Signer;
  /** Signed by this key but naming signer's kid (a forged token). */
  signWith?: Signer;
  aud?: string[];
  iss?: string;
  /** exp relative to the test clock, in seconds. */
  expIn?: number;
  nbfIn?: number;
  pod?: string;
  podUid?: string;
  sa?: string;
  saUid?: string;
  bound?: boolean;
}

/** A token shaped as the 1.20 apiserver's TokenRequest makes them for a pod. */
async function token(nowMs: number, o: TokenOptions): Promise<string> {
  const now = Math.floor(nowMs / 1000);
  const sa = o.sa ?? 'default';
  const claims: Record<string, unknown> = { sub: `system:serviceaccount:shop:${sa}`, iat: now, nbf: now + (o.nbfIn ?? 0) };
  if (o.bound !== false)
    claims['kubernetes.io'] = { namespace: 'shop', pod: { name: o.pod ?? 'p', uid: o.podUid ?? 'pod-uid' }, serviceaccount: { name: sa, uid: o.saUid ?? 'sa-uid' } };
  return new SignJWT(claims)
    .setProtectedHeader({ alg: o.signer.alg, kid: o.signer.kid })
    .setIssuer(o.iss ?? ISSUER)
    .setAudience(o.aud ?? [FEED_AUDIENCE])
    .setExpirationTime(now + (o.expIn ?? 3600))
    .sign((o.signWith ?? o.signer).privateKey);
}

/** The apiserver as the verifier sees it: discovery, JWKS (406 unless asked for jwk-set+json), ServiceAccounts. */
class FakeApi implements KubeTransport {
  published: JWK[] = [];
  jwksFails = false;
  serviceAccountsForbidden = false;
  serviceAccounts = new Map<string, string>([['shop/default', 'sa-uid']]);
  readonly calls: string[] = [];

  async request<T>(method: string, path: string, opts: KubeRequestOptions = {}): Promise<T> {
    this.calls.push(`${method} ${path}`);
    if (path === DISCOVERY_PATH) return { issuer: ISSUER, jwks_uri: `${ISSUER}${JWKS_PATH}` } as T;
    if (path === JWKS_PATH) {
      if (this.jwksFails) throw new ApiError(503, method, path, 'unavailable');
      if (!opts.accept?.includes('application/jwk-set+json')) throw new ApiError(406, method, path, 'Not Acceptable');
      return { keys: this.published } as T;
    }
    const m = /^\/api\/v1\/namespaces\/([^/]+)\/serviceaccounts\/([^/]+)$/.exec(path);
    if (m) {
      if (this.serviceAccountsForbidden) throw new ApiError(403, method, path, '{"kind":"Status","reason":"Forbidden"}');
      const uid = this.serviceAccounts.get(`${m[1]}/${m[2]}`);
      if (!uid) throw new ApiError(404, method, path, '{"kind":"Status","reason":"NotFound"}');
      return { metadata: { name: m[2], namespace: m[1], uid } } as T;
    }
    throw new ApiError(404, method, path, 'not found');
  }

  async watch(): Promise<void> {}

  count(fragment: string): number {
    return this.calls.filter((c) => c.includes(fragment)).length;
  }
}

function setup(o: { mode?: 'local' | 'tokenreview'; syncWaitMs?: number } = {}) {
  let now = T0;
  const api = new FakeApi();
  const pods = new Map<string, { uid: string; serviceAccount?: string }>([['shop/p', { uid: 'pod-uid', serviceAccount: 'default' }]]);
  let syncedAt: number | undefined = T0 - 60_000;
  let markSynced = () => {};
  let whenSynced = Promise.resolve();
  const verifier = new LocalTokenVerifier({
    transport: api,
    now: () => now,
    pods: () => ({ syncedAt, get: (k) => pods.get(k), whenSynced }),
    ...(o.syncWaitMs !== undefined ? { syncWaitMs: o.syncWaitMs } : {}),
  });
  const reviews: string[] = [];
  const checks: string[] = [];
  const record = (method: string, result: string, reason: string) => checks.push(`${method} ${result} ${reason}`);
  const tokenReviews = new TokenReviewCache({
    now: () => now,
    ttlMs: 60_000,
    maxEntries: 100,
    concurrency: 4,
    review: recordedReview(async (t) => {
      reviews.push(t);
      if (t === 'refused-by-apiserver') throw new FeedAuthError(401, 'token refused by the apiserver: invalid');
      return { namespace: 'shop', serviceAccount: 'default', pod: 'p', podUid: 'pod-uid' };
    }, record),
  });
  const authenticate = agentAuthenticator({ mode: o.mode ?? 'local', local: verifier, tokenReviews, usable: () => true, record });
  return {
    api,
    pods,
    verifier,
    reviews,
    checks,
    authenticate,
    now: () => now,
    advance: (ms: number) => (now += ms),
    unsync: () => {
      syncedAt = undefined;
      whenSynced = new Promise<void>((r) => (markSynced = r));
    },
    sync: () => {
      syncedAt = now;
      markSynced();
    },
  };
}

const identity: AgentIdentity = { namespace: 'shop', serviceAccount: 'default', pod: 'p', podUid: 'pod-uid' };

describe('LocalTokenVerifier', () => {
  let k1: Signer;
  let k2: Signer;
  let other: Signer;
  let ec: Signer;
  beforeAll(async () => {
    [k1, k2, other, ec] = await Promise.all([signer('k1'), signer('k2'), signer('k1'), signer('e1', 'ES256')]);
  });

  it('accepts a valid pod-bound token without a TokenReview, and reads the keys and the ServiceAccount once', async () => {
    const t = setup();
    t.api.published = [k1.jwk];
    const tok = await token(t.now(), { signer: k1 });
    expect(await t.authenticate(tok)).toEqual(identity);
    expect(await t.authenticate(tok)).toEqual(identity);
    expect(t.reviews).toEqual([]);
    expect(t.checks).toEqual(['local accepted ok', 'local accepted ok']);
    expect(t.api.count(JWKS_PATH)).toBe(1);
    expect(t.api.count(DISCOVERY_PATH)).toBe(1);
    expect(t.api.count('/serviceaccounts/default')).toBe(1);
    // Past the ServiceAccount TTL it is read again.
    t.advance(61_000);
    await t.authenticate(tok);
    expect(t.api.count('/serviceaccounts/default')).toBe(2);
  });

  it('verifies ES256 tokens when the issuer publishes an EC key', async () => {
    const t = setup();
    t.api.published = [ec.jwk];
    expect(await t.verifier.verify(await token(t.now(), { signer: ec }))).toEqual(identity);
  });

  it('refuses a token of another audience, a forged signature, and an expired one (past the 60 s leeway), with 401', async () => {
    const t = setup();
    t.api.published = [k1.jwk];
    const refusal = async (tok: string) => t.authenticate(tok).then(() => undefined, (e: unknown) => e as LocalRefusal);
    const aud = await refusal(await token(t.now(), { signer: k1, aud: ['https://kubernetes.default.svc'] }));
    expect(aud).toBeInstanceOf(LocalRefusal);
    expect(aud).toMatchObject({ status: 401, reason: 'audience', message: `token is not for audience ${FEED_AUDIENCE}` });
    expect(await refusal(await token(t.now(), { signer: k1, signWith: other }))).toMatchObject({ status: 401, reason: 'signature' });
    expect(await refusal(await token(t.now(), { signer: k1, expIn: -61 }))).toMatchObject({ status: 401, reason: 'expired' });
    expect(await refusal(await token(t.now(), { signer: k1, nbfIn: 120 }))).toMatchObject({ status: 401, reason: 'not_yet_valid' });
    // Within the leeway: accepted.
    expect(await t.authenticate(await token(t.now(), { signer: k1, expIn: -30 }))).toEqual(identity);
    expect(t.reviews).toEqual([]);
    expect(t.checks).toEqual(['local refused audience', 'local refused signature', 'local refused expired', 'local refused not_yet_valid', 'local accepted ok']);
  });

  it('leaves a token of another issuer to the TokenReview', async () => {
    const t = setup();
    t.api.published = [k1.jwk];
    const tok = await token(t.now(), { signer: k1, iss: 'https://elsewhere.example' });
    const err = await t.verifier.verify(tok).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LocalVerificationUnavailable);
    expect(err).toMatchObject({ reason: 'issuer' });
    expect(await t.authenticate(tok)).toEqual(identity);
    expect(t.reviews).toEqual([tok]);
    expect(t.checks).toEqual(['local fallback issuer', 'tokenreview accepted reviewed']);
  });

  it('fetches the keys again for an unknown kid, at most once per 30 s, and accepts a rotated key', async () => {
    const t = setup();
    t.api.published = [k1.jwk];
    expect(await t.verifier.verify(await token(t.now(), { signer: k1 }))).toEqual(identity);
    expect(t.api.count(JWKS_PATH)).toBe(1);
    // k2 is not published yet: one refetch, then the TokenReview decides.
    t.advance(31_000);
    const tok2 = await token(t.now(), { signer: k2 });
    await expect(t.verifier.verify(tok2)).rejects.toMatchObject({ reason: 'unknown_kid' });
    expect(t.api.count(JWKS_PATH)).toBe(2);
    // Published now, but the last fetch was less than 30 s ago: no refetch, still unknown.
    t.api.published = [k1.jwk, k2.jwk];
    t.advance(10_000);
    for (let i = 0; i < 5; i++) await expect(t.verifier.verify(tok2)).rejects.toMatchObject({ reason: 'unknown_kid' });
    expect(t.api.count(JWKS_PATH)).toBe(2);
    t.advance(20_001);
    expect(await t.verifier.verify(tok2)).toEqual(identity);
    expect(t.api.count(JWKS_PATH)).toBe(3);
  });

  it('refuses the token of a pod seen deleted, of a pod recreated under its name, and of another ServiceAccount', async () => {
    const t = setup();
    t.api.published = [k1.jwk];
    // Not in the cache, never seen deleted: maybe just created; the apiserver decides.
    const gone = await token(t.now(), { signer: k1, pod: 'q', podUid: 'q-uid' });
    await expect(t.verifier.verify(gone)).rejects.toMatchObject({ reason: 'pod_not_seen' });
    t.verifier.podDeleted('q-uid');
    await expect(t.verifier.verify(gone)).rejects.toMatchObject({ status: 401, reason: 'pod_gone' });
    // The pod's name reused by a new pod.
    t.pods.set('shop/p', { uid: 'new-uid', serviceAccount: 'default' });
    await expect(t.verifier.verify(await token(t.now(), { signer: k1 }))).rejects.toMatchObject({ status: 401, reason: 'pod_uid', message: 'pod shop/p has uid new-uid, the token is for uid pod-uid (a deleted pod\'s)' });
    t.pods.set('shop/p', { uid: 'pod-uid', serviceAccount: 'builder' });
    await expect(t.verifier.verify(await token(t.now(), { signer: k1 }))).rejects.toMatchObject({ reason: 'pod_service_account' });
  });

  it('refuses the token of a ServiceAccount deleted or recreated since (its uid), reading it again before refusing', async () => {
    const t = setup();
    t.api.published = [k1.jwk];
    const tok = await token(t.now(), { signer: k1 });
    expect(await t.verifier.verify(tok)).toEqual(identity);
    t.api.serviceAccounts.set('shop/default', 'recreated-uid');
    t.advance(2_000);
    // The cached uid still matched: accepted until the TTL.
    expect(await t.verifier.verify(tok)).toEqual(identity);
    t.advance(60_000);
    await expect(t.verifier.verify(tok)).rejects.toMatchObject({ status: 401, reason: 'service_account_uid' });
    t.api.serviceAccounts.delete('shop/default');
    t.advance(2_000);
    await expect(t.verifier.verify(tok)).rejects.toMatchObject({ status: 401, reason: 'service_account_gone' });
  });

  it('falls back to the TokenReview when the ServiceAccount cannot be read (no RBAC), and reads it again only after 30 s', async () => {
    const t = setup();
    t.api.published = [k1.jwk];
    t.api.serviceAccountsForbidden = true;
    const tok = await token(t.now(), { signer: k1 });
    for (let i = 0; i < 3; i++) expect(await t.authenticate(tok)).toEqual(identity);
    expect(t.checks.filter((c) => c.startsWith('local'))).toEqual(Array(3).fill('local fallback service_account_unavailable'));
    expect(t.api.count('/serviceaccounts/default')).toBe(1);
    t.api.serviceAccountsForbidden = false;
    t.advance(30_000);
    expect(await t.verifier.verify(tok)).toEqual(identity);
    expect(t.api.count('/serviceaccounts/default')).toBe(2);
  });

  it('falls back to the TokenReview when the JWKS cannot be read, and tries again only after 30 s', async () => {
    const t = setup();
    t.api.published = [k1.jwk];
    t.api.jwksFails = true;
    const tok = await token(t.now(), { signer: k1 });
    expect(await t.authenticate(tok)).toEqual(identity);
    expect(await t.authenticate(tok)).toEqual(identity);
    expect(t.reviews).toEqual([tok]);
    expect(t.checks).toEqual(['local fallback keys_unavailable', 'tokenreview accepted reviewed', 'local fallback keys_unavailable', 'tokenreview accepted cached']);
    expect(t.api.count(JWKS_PATH)).toBe(1);
    t.api.jwksFails = false;
    t.advance(30_000);
    expect(await t.verifier.verify(tok)).toEqual(identity);
    expect(t.api.count(JWKS_PATH)).toBe(2);
  });

  it('leaves to the TokenReview what is not a pod-bound JWT, and everything before the pod cache synced', async () => {
    const t = setup();
    t.api.published = [k1.jwk];
    await expect(t.verifier.verify('not-a-jwt')).rejects.toMatchObject({ reason: 'not_jwt' });
    await expect(t.verifier.verify(await token(t.now(), { signer: k1, bound: false }))).rejects.toMatchObject({ reason: 'not_pod_bound' });
    await expect(t.verifier.verify('not-a-jwt')).rejects.toMatchObject({ reason: 'not_jwt' });
    // The apiserver's refusal is the answer then.
    await expect(t.authenticate('refused-by-apiserver')).rejects.toMatchObject({ status: 401 });
    expect(t.checks.slice(-2)).toEqual(['local fallback not_jwt', 'tokenreview refused unauthenticated']);
    expect(t.api.count(JWKS_PATH)).toBe(0);
  });

  it('a token that arrives before the pod cache synced waits for the sync, for at most syncWaitMs', async () => {
    const t = setup({ syncWaitMs: 50 });
    t.api.published = [k1.jwk];
    const tok = await token(t.now(), { signer: k1 });
    t.unsync();
    await expect(t.verifier.verify(tok)).rejects.toMatchObject({ reason: 'pods_not_synced' });
    const waiting = t.verifier.verify(tok);
    t.sync();
    expect(await waiting).toEqual(identity);
    expect(t.reviews).toEqual([]);
  });

  it('tokenVerification tokenreview never verifies locally', async () => {
    const t = setup({ mode: 'tokenreview' });
    t.api.published = [k1.jwk];
    const tok = await token(t.now(), { signer: k1 });
    expect(await t.authenticate(tok)).toEqual(identity);
    expect(t.reviews).toEqual([tok]);
    expect(t.api.calls).toEqual([]);
  });
});
