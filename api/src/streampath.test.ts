import { describe, expect, it } from 'vitest';
import YAML from 'yaml';
import {
  EXAMPLE_STREAMPATH_YAML,
  NO_MIRROR,
  StreamPathSpecSchema,
  byteMapTable,
  encodeOps,
  mirrorSettings,
  mirrorTargets,
  parseClusterSpec,
  parseStreamPath,
  patternBytes,
  targetName,
  type Transform,
} from './streampath.js';
import { INVALID_CASES, VALID_CASES, validSpec } from './invalid-streampaths.js';

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

  it.each(VALID_CASES)('accepts $name', (c) => {
    const spec = validSpec();
    c.mutate(spec);
    const r = parseStreamPath(wrap(spec));
    expect(r.ok, r.ok ? '' : r.errors.join('; ')).toBe(true);
  });

  it('reports a missing mirror as the operator does, naming spec.mirror', () => {
    const spec = validSpec();
    delete spec['mirror'];
    spec['transform'] = { ops: [{ replace: { from: 'a', to: 'b' } }] };
    const r = parseClusterSpec(spec);
    expect(r).toEqual({
      ok: false,
      errors: ['spec.mirror: required unless spec.transform.applyTo is primary (it is mirror: the transformed bytes go to the mirror targets)'],
    });
  });

  it('takes a program path in the CLI but not in a cluster', () => {
    const spec = validSpec();
    spec['transform'] = { ops: [{ mask: { after: 'a', until: 'b' } }, { program: { path: '/opt/bpf/mask.o', section: 'sk_msg' } }] };
    expect(parseStreamPath(wrap(spec)).ok).toBe(true);
    const r = parseClusterSpec(spec);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.errors).toEqual([expect.stringMatching(/^spec\.transform\.ops\[1\]\.program\.path: a file path is for `kstreams run` only; in a cluster give configMap and key/)]);
  });
});

describe('a spec without spec.mirror', () => {
  const primaryOnly = () => {
    const spec = validSpec();
    delete spec['mirror'];
    spec['transform'] = { applyTo: 'primary', ops: [{ replace: { from: 'a', to: 'b' } }] };
    return StreamPathSpecSchema.parse(spec);
  };

  it('has no targets and the default mirror settings', () => {
    const spec = primaryOnly();
    expect(spec.mirror).toBeUndefined();
    expect(mirrorTargets(spec)).toEqual([]);
    expect(mirrorSettings(spec)).toBe(NO_MIRROR);
    expect(NO_MIRROR).toMatchObject({ pipeSize: 256 * 1024, turnTimeoutMs: 1000, bufferSize: 4 * 1024 * 1024, sampling: { percent: 100 } });
  });

  it('keeps a mirror given beside a transform of the primary', () => {
    const spec = StreamPathSpecSchema.parse({ ...validSpec(), transform: { applyTo: 'primary', ops: [{ byteMap: { preset: 'uppercase' } }] } });
    expect(mirrorTargets(spec)).toEqual([{ address: '10.0.0.2:8080' }]);
    expect(mirrorSettings(spec)).toBe(spec.mirror);
  });
});

describe('encodeOps', () => {
  const parse = (transform: unknown): Transform => StreamPathSpecSchema.parse({ ...validSpec(), transform }).transform!;

  it('turns patterns into their UTF-8 bytes, multibyte characters included', () => {
    const ops = encodeOps(parse({ ops: [{ mask: { after: 'clé=', until: '€' } }, { replace: { from: 'naïve', to: '😀' } }] }));
    expect(ops).toEqual([
      { kind: 'mask', after: Uint8Array.from([0x63, 0x6c, 0xc3, 0xa9, 0x3d]), until: Uint8Array.from([0xe2, 0x82, 0xac]), with: 0x2a },
      { kind: 'replace', from: Uint8Array.from([0x6e, 0x61, 0xc3, 0xaf, 0x76, 0x65]), to: Uint8Array.from([0xf0, 0x9f, 0x98, 0x80]) },
    ]);
  });

  it('keeps an empty replacement and a control-character pattern byte for byte', () => {
    const [op] = encodeOps(parse({ ops: [{ replace: { from: 'X-Debug: 1\r\n', to: '' } }] }));
    expect(op).toEqual({ kind: 'replace', from: patternBytes('X-Debug: 1\r\n'), to: new Uint8Array(0) });
    expect(op?.kind === 'replace' && op.from.at(-2)).toBe(0x0d);
  });

  it('gives the mask byte as a number, default *', () => {
    const ops = encodeOps(parse({ ops: [{ mask: { after: 'a', until: 'b', with: '#' } }, { mask: { after: 'a', until: 'b', with: '\t' } }] }));
    expect(ops.map((o) => o.kind === 'mask' && o.with)).toEqual([0x23, 0x09]);
  });

  it('gives a byteMap as its table and a program as its source, in spec order', () => {
    const ops = encodeOps(
      parse({ applyTo: 'both', ops: [{ byteMap: { preset: 'uppercase' } }, { program: { configMap: 'bpf', key: 'x.o', section: 'sk_msg/x' } }] }),
    );
    expect(ops.map((o) => o.kind)).toEqual(['byteMap', 'program']);
    const [map] = ops;
    expect(map?.kind === 'byteMap' && map.table).toEqual(byteMapTable({ preset: 'uppercase' }));
    expect(ops[1]).toEqual({ kind: 'program', source: { configMap: 'bpf', key: 'x.o' }, section: 'sk_msg/x' });
    expect(encodeOps(parse({ ops: [{ program: { path: '/opt/x.o' } }] }))).toEqual([{ kind: 'program', source: { path: '/opt/x.o' } }]);
  });
});

describe('byteMapTable', () => {
  const identity = Uint8Array.from({ length: 256 }, (_, b) => b);

  it('is the identity, then the preset (ASCII letters only), then the pairs', () => {
    const up = byteMapTable({ preset: 'uppercase' });
    expect(up).toHaveLength(256);
    const changed = [...up.keys()].filter((b) => up[b] !== b);
    expect(changed).toEqual([...'abcdefghijklmnopqrstuvwxyz'].map((c) => c.charCodeAt(0)));
    expect(up[0x61]).toBe(0x41);
    expect(up[0xe9]).toBe(0xe9); // é's second byte is not a letter
    const down = byteMapTable({ preset: 'lowercase' });
    expect(down[0x5a]).toBe(0x7a);
    expect(down[0x7a]).toBe(0x7a);
    expect(down[0x5b]).toBe(0x5b);
  });

  it('lets pairs override the preset, in either spelling, any byte', () => {
    const t = byteMapTable({ preset: 'uppercase', pairs: { a: '0x00', '0xC1': 'A', '0xff': '0x0A', ' ': '_' } });
    expect(t[0x61]).toBe(0x00); // pair over the preset
    expect(t[0x62]).toBe(0x42); // preset
    expect(t[0xc1]).toBe(0x41);
    expect(t[0xff]).toBe(0x0a);
    expect(t[0x20]).toBe(0x5f);
  });

  it('is the identity for pairs that map bytes to themselves, and fresh on every call', () => {
    const t = byteMapTable({ pairs: { x: 'x' } });
    expect(t).toEqual(identity);
    t[0] = 1;
    expect(byteMapTable({ pairs: { x: 'x' } })[0]).toBe(0);
  });
});

