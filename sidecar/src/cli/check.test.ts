import { describe, expect, it } from 'vitest';
import { transformMark } from './check.js';

describe('kstreams check: the in-kernel transforms line', () => {
  it('says ok with what was loaded, unknown without the privilege to probe, and what is missing otherwise', () => {
    expect(transformMark({ available: true, unknown: false, missing: [] }, false)).toMatch(/^ok \(sk_msg on SOCKHASH, bpf_loop, sk_storage/);
    expect(transformMark({ available: false, unknown: true, missing: [] }, false)).toBe('unknown (cannot probe without CAP_BPF and CAP_NET_ADMIN)');
    // Without CAP_BPF every probe is refused: whatever the probe said, it is unknown.
    expect(transformMark({ available: false, unknown: false, missing: ['bpf_loop'] }, true)).toMatch(/^unknown/);
    expect(transformMark({ available: false, unknown: false, missing: [], needsCapability: 'CAP_PERFMON' }, false)).toBe(
      'MISSING (the verifier refuses the transform program without CAP_PERFMON): spec.transform is refused, mirroring works',
    );
    expect(transformMark({ available: false, unknown: false, missing: ['bpf_loop', 'sk_storage'] }, false)).toBe('MISSING (bpf_loop, sk_storage): spec.transform is refused, mirroring works');
    expect(transformMark({ available: false, unknown: false, missing: [], code: 'TransformFailed' }, false)).toMatch(/^MISSING \(TransformFailed\)/);
  });
});
