import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { selectorMatches } from './selector.js';

describe('selectorMatches', () => {
  const pod = { app: 'checkout', tier: 'web', 'kstreams.io/x': '' };

  it('selects no pod with an empty selector, unlike Kubernetes, so nothing is tapped by accident', () => {
    expect(selectorMatches({}, pod)).toBe(false);
    expect(selectorMatches({ matchLabels: {}, matchExpressions: [] }, pod)).toBe(false);
  });

  it('requires every matchLabels pair', () => {
    expect(selectorMatches({ matchLabels: { app: 'checkout' } }, pod)).toBe(true);
    expect(selectorMatches({ matchLabels: { app: 'checkout', tier: 'web' } }, pod)).toBe(true);
    expect(selectorMatches({ matchLabels: { app: 'checkout', tier: 'db' } }, pod)).toBe(false);
    expect(selectorMatches({ matchLabels: { missing: 'x' } }, pod)).toBe(false);
  });

  it('tells an empty label value apart from a missing label', () => {
    expect(selectorMatches({ matchLabels: { 'kstreams.io/x': '' } }, pod)).toBe(true);
    expect(selectorMatches({ matchLabels: { 'kstreams.io/y': '' } }, pod)).toBe(false);
  });

  it('does not match inherited object properties as labels', () => {
    expect(selectorMatches({ matchExpressions: [{ key: 'constructor', operator: 'Exists' }] }, pod)).toBe(false);
    expect(selectorMatches({ matchExpressions: [{ key: 'toString', operator: 'DoesNotExist' }] }, pod)).toBe(true);
  });

  it('In needs the label with one of the values; no values never matches', () => {
    expect(selectorMatches({ matchExpressions: [{ key: 'tier', operator: 'In', values: ['db', 'web'] }] }, pod)).toBe(true);
    expect(selectorMatches({ matchExpressions: [{ key: 'tier', operator: 'In', values: ['db'] }] }, pod)).toBe(false);
    expect(selectorMatches({ matchExpressions: [{ key: 'nope', operator: 'In', values: [''] }] }, pod)).toBe(false);
    expect(selectorMatches({ matchExpressions: [{ key: 'tier', operator: 'In' }] }, pod)).toBe(false);
  });

  it('NotIn is satisfied by a pod without the label, as in Kubernetes', () => {
    expect(selectorMatches({ matchExpressions: [{ key: 'tier', operator: 'NotIn', values: ['web'] }] }, pod)).toBe(false);
    expect(selectorMatches({ matchExpressions: [{ key: 'tier', operator: 'NotIn', values: ['db'] }] }, pod)).toBe(true);
    expect(selectorMatches({ matchExpressions: [{ key: 'zone', operator: 'NotIn', values: ['a'] }] }, pod)).toBe(true);
  });

  it('Exists and DoesNotExist ignore values', () => {
    expect(selectorMatches({ matchExpressions: [{ key: 'app', operator: 'Exists', values: ['ignored'] }] }, pod)).toBe(true);
    expect(selectorMatches({ matchExpressions: [{ key: 'app', operator: 'DoesNotExist' }] }, pod)).toBe(false);
    expect(selectorMatches({ matchExpressions: [{ key: 'zone', operator: 'DoesNotExist' }] }, pod)).toBe(true);
  });

  it('ANDs matchLabels with every expression', () => {
    const sel = {
      matchLabels: { app: 'checkout' },
      matchExpressions: [
        { key: 'tier', operator: 'In' as const, values: ['web'] },
        { key: 'canary', operator: 'DoesNotExist' as const },
      ],
    };
    expect(selectorMatches(sel, pod)).toBe(true);
    expect(selectorMatches(sel, { ...pod, canary: 'true' })).toBe(false);
    expect(selectorMatches(sel, { ...pod, app: 'cart' })).toBe(false);
  });

  it('a pod always matches a selector made of its own labels, and adding a label it lacks breaks the match', () => {
    const labels = fc.dictionary(fc.stringMatching(/^[a-z][a-z0-9]{0,8}$/), fc.stringMatching(/^[a-z0-9]{0,8}$/), {
      minKeys: 1,
    });
    fc.assert(
      fc.property(labels, (l) => {
        expect(selectorMatches({ matchLabels: l }, l)).toBe(true);
        expect(selectorMatches({ matchLabels: { ...l, 'zz-not-there': 'v' } }, l)).toBe(false);
      }),
    );
  });
});
