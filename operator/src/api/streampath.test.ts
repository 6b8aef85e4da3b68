import { describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { EXAMPLE_STREAMPATH_YAML, parseStreamPath, targetName } from './streampath.js';
import { INVALID_CASES, validSpec } from './invalid-streampaths.js';

const wrap = (spec: unknown) => ({ apiVersion: 'kstreams.io/v1alpha1', kind: 'StreamPath', metadata: { name: 'x' }, spec });

describe('the StreamPath schema', () => {
  it('accepts the embedded example and fills in defaults', () => {
    const r = parseStreamPath(YAML.parse(EXAMPLE_STREAMPATH_YAML));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value.spec.mirror?.onOverflow).toBe('cut');
    expect(r.value.spec.mirror?.pipeSize).toBe(256 * 1024);
    expect(r.value.spec.mirror?.turnTimeoutMs).toBe(1000);
    expect(r.value.spec.mirror?.bufferSize).toBe(4 * 1024 * 1024);
    expect(r.value.spec.drainTimeoutSeconds).toBe(20);
  });

  it('accepts the ends of the pacing, buffer and drain ranges', () => {
    for (const [turnTimeoutMs, bufferSize, drainTimeoutSeconds] of [
      [0, 65536, 0],
      [60_000, 64 * 1024 * 1024, 3600],
    ]) {
      const spec = validSpec();
      Object.assign(spec['mirror'], { turnTimeoutMs, bufferSize });
      spec['drainTimeoutSeconds'] = drainTimeoutSeconds;
      const r = parseStreamPath(wrap(spec));
      expect(r.ok, r.ok ? '' : r.errors.join('; ')).toBe(true);
      if (!r.ok) return;
      expect(r.value.spec.mirror).toMatchObject({ turnTimeoutMs, bufferSize });
      expect(r.value.spec.drainTimeoutSeconds).toBe(drainTimeoutSeconds);
    }
  });

  it('accepts the valid base spec of the invalid table', () => {
    expect(parseStreamPath(wrap(validSpec())).ok).toBe(true);
  });

  it.each(INVALID_CASES)('rejects $name with a message naming the field', (c) => {
    const spec = validSpec();
    c.mutate(spec);
    const r = parseStreamPath(wrap(spec));
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.errors.join('\n')).toMatch(c.mentions);
  });

  it('names targets by name, else address, else service', () => {
    expect(targetName({ name: 'shadow', address: 'a:1' })).toBe('shadow');
    expect(targetName({ address: '10.0.0.1:80' })).toBe('10.0.0.1:80');
    expect(targetName({ service: { name: 'web', namespace: 'staging', port: 80 } })).toBe('web.staging:80');
  });
});
