import { describe, expect, it } from 'vitest';
import { Backoff } from './backoff.js';

describe('Backoff', () => {
  it('doubles up to the maximum and stays within the jitter band', () => {
    const b = new Backoff({ initialMs: 100, maxMs: 1000, jitter: 0.5, random: () => 0.999999 });
    expect([b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([100, 200, 400, 800, 1000]);
    const low = new Backoff({ initialMs: 100, maxMs: 1000, jitter: 0.5, random: () => 0 });
    expect([low.next(), low.next(), low.next()]).toEqual([50, 100, 200]);
  });

  it('starts over after reset()', () => {
    const b = new Backoff({ initialMs: 100, maxMs: 1000, jitter: 0, random: () => 0.5 });
    b.next();
    b.next();
    b.reset();
    expect(b.next()).toBe(100);
  });

  it('spreads retries of replicas that fail together (jitter)', () => {
    let seed = 1;
    const random = () => ((seed = (seed * 16807) % 2147483647) - 1) / 2147483646;
    const delays = new Set(Array.from({ length: 20 }, () => new Backoff({ initialMs: 1000, maxMs: 10_000, random }).next()));
    expect(delays.size).toBeGreaterThan(10);
  });

  it('stays finite after very many consecutive failures', () => {
    const b = new Backoff({ initialMs: 100, maxMs: 30_000, random: () => 0.5 });
    for (let i = 0; i < 5000; i++) b.next();
    expect(b.next()).toBe(22_500);
  });
});
