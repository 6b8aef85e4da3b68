import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CRD_CHART_COPY, CRD_SOURCE, chartCrdIsCurrent } from './generate.js';

describe('the chart copy of the StreamPath CRD', () => {
  it('is byte for byte crds/streampath.yaml (else run `npx tsx charts/kstreams/generate.ts`)', () => {
    // Compared as text first so that a failure shows the diff, then through the function CI uses.
    expect(readFileSync(CRD_CHART_COPY, 'utf8')).toBe(readFileSync(CRD_SOURCE, 'utf8'));
    expect(chartCrdIsCurrent()).toBe(true);
  });
});
