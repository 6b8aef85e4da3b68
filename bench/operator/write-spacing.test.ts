import { describe, expect, it } from 'vitest';
import { writeSpacing } from './write-spacing.js';

describe('writeSpacing', () => {
  it('writes a full interval apart are within the bound, even when a window holds three at its edges', () => {
    const s = writeSpacing(new Map([['a', [0, 10_000, 20_000]], ['b', [500, 10_480]]]), 10_000, 500);
    expect(s.maxWithinInterval).toBe(1);
    expect(s.minGapMs).toBe(9_980);
    expect(s.tooClose).toEqual([]);
    expect(s.writes).toBe(5);
  });

  it('names a StreamPath written twice within the interval', () => {
    const s = writeSpacing(new Map([['ok', [0, 10_000]], ['bad', [30_000, 1_000, 5_000]]]), 10_000, 500);
    expect(s.maxWithinInterval).toBe(2);
    expect(s.minGapMs).toBe(4_000);
    expect(s.tooClose).toEqual(['bad']);
  });

  it('no writes, or one each: nothing too close', () => {
    expect(writeSpacing(new Map(), 10_000, 500)).toMatchObject({ writes: 0, maxWithinInterval: 0, minGapMs: Infinity });
    expect(writeSpacing(new Map([['a', [7]]]), 10_000, 500)).toMatchObject({ maxWithinInterval: 1, tooClose: [] });
  });
});
