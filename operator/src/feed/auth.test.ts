import { describe, expect, it } from 'vitest';
import { FeedAuthError, TokenReviewCache, type AgentIdentity } from './auth.js';

const jwt = (claims: Record<string, unknown>) => `h.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.s`;
const id = (pod: string): AgentIdentity => ({ namespace: 'shop', serviceAccount: 'default', pod, podUid: `uid-${pod}` });

function setup(o: { ttlMs?: number; maxEntries?: number; concurrency?: number } = {}) {
  let now = 1_700_000_000_000;
  const calls: string[] = [];
  let release: (() => void)[] = [];
  let hold = false;
  const cache = new TokenReviewCache({
    now: () => now,
    ttlMs: o.ttlMs ?? 60_000,
    maxEntries: o.maxEntries ?? 100,
    concurrency: o.concurrency ?? 4,
    review: async (token) => {
      calls.push(token);
      if (hold) await new Promise<void>((r) => release.push(r));
      const pod = (JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { pod: string }).pod;
      if (pod === 'bad') throw new FeedAuthError(401, 'refused');
      return id(pod);
    },
  });
  return {
    cache,
    calls,
    advance: (ms: number) => (now += ms),
    now: () => now,
    hold: (h: boolean) => (hold = h),
    releaseAll: () => {
      const r = release;
      release = [];
      for (const f of r) f();
    },
  };
}

describe('TokenReviewCache', () => {
  it('reviews a token once and trusts it again until the TTL', async () => {
    const t = setup();
    const token = jwt({ pod: 'a' });
    expect(await t.cache.authenticate(token)).toEqual(id('a'));
    expect(await t.cache.authenticate(token)).toEqual(id('a'));
    expect(t.calls).toHaveLength(1);
    t.advance(60_001);
    await t.cache.authenticate(token);
    expect(t.calls).toHaveLength(2);
  });

  it('never past the token exp, never when the caller says the pod is not there, never a refusal', async () => {
    const t = setup();
    const token = jwt({ pod: 'a', exp: Math.floor(t.now() / 1000) + 10 });
    await t.cache.authenticate(token);
    t.advance(11_000);
    await t.cache.authenticate(token);
    expect(t.calls).toHaveLength(2);
    const b = jwt({ pod: 'b' });
    await t.cache.authenticate(b);
    await t.cache.authenticate(b, () => false);
    expect(t.calls).toHaveLength(4);
    const bad = jwt({ pod: 'bad' });
    await expect(t.cache.authenticate(bad)).rejects.toThrow('refused');
    await expect(t.cache.authenticate(bad)).rejects.toThrow('refused');
    expect(t.calls).toHaveLength(6);
  });

  it('holds at most maxEntries, the oldest go first', async () => {
    const t = setup({ maxEntries: 2 });
    for (const p of ['a', 'b', 'c']) await t.cache.authenticate(jwt({ pod: p }));
    expect(t.cache.size).toBe(2);
    await t.cache.authenticate(jwt({ pod: 'a' }));
    expect(t.calls).toEqual([jwt({ pod: 'a' }), jwt({ pod: 'b' }), jwt({ pod: 'c' }), jwt({ pod: 'a' })]);
  });

  it('shares one review between concurrent requests of a token and runs at most `concurrency` at once', async () => {
    const t = setup({ concurrency: 2 });
    t.hold(true);
    const same = [t.cache.authenticate(jwt({ pod: 'a' })), t.cache.authenticate(jwt({ pod: 'a' }))];
    const others = ['b', 'c', 'd'].map((p) => t.cache.authenticate(jwt({ pod: p })));
    await new Promise((r) => setImmediate(r));
    expect(t.calls).toHaveLength(2);
    t.hold(false);
    t.releaseAll();
    expect(await Promise.all([...same, ...others])).toEqual([id('a'), id('a'), id('b'), id('c'), id('d')]);
    t.releaseAll();
    expect(t.calls).toHaveLength(4);
  });
});
