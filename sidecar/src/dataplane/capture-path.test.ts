// A file target's path in an injected sidecar: resolved under the capture volume, refused when `..`
// would leave it; as written without a volume (`kstreams run`).
import { describe, expect, it } from 'vitest';
import { AttachError } from './errors.js';
import { resolveCapturePath, resolveMirrors } from './targets.js';
import type { StreamPathSpec } from '../../../api/src/streampath.js';
import { parseStreamPath } from '../../../api/src/streampath.js';

const ROOT = '/var/lib/kstreams/capture';

describe('resolveCapturePath', () => {
  it('puts every path under the volume, normalized', () => {
    expect(resolveCapturePath('/shop', ROOT)).toBe(`${ROOT}/shop`);
    expect(resolveCapturePath('/', ROOT)).toBe(ROOT);
    expect(resolveCapturePath('/a/b/../c/', ROOT)).toBe(`${ROOT}/a/c`);
    expect(resolveCapturePath('/var/lib/kstreams/capture/x', ROOT)).toBe(`${ROOT}/var/lib/kstreams/capture/x`);
    expect(resolveCapturePath('/shop', `${ROOT}/`)).toBe(`${ROOT}/shop`);
  });

  it('refuses a path that leaves the volume, as CapturePathOutsideVolume naming the field', () => {
    for (const p of ['/..', '/../etc', '/a/../../etc', '/a/b/../../../var/lib/kstreams/capture2']) {
      let err: unknown;
      try {
        resolveCapturePath(p, ROOT, 'spec.mirror.targets[0].file.path');
      } catch (e) {
        err = e;
      }
      expect(err, p).toBeInstanceOf(AttachError);
      expect((err as AttachError).reason).toBe('CapturePathOutsideVolume');
      expect((err as AttachError).field).toBe('spec.mirror.targets[0].file.path');
      expect((err as AttachError).message).toMatch(new RegExp(`^spec\\.mirror\\.targets\\[0\\]\\.file\\.path: .* leaves the capture volume: .*${ROOT}`));
    }
  });

  it('takes the path as written without a volume', () => {
    expect(resolveCapturePath('/../etc', undefined)).toBe('/../etc');
  });

  it('resolveMirrors applies it to file targets only', async () => {
    const sp = parseStreamPath({
      apiVersion: 'kstreams.io/v1alpha1',
      kind: 'StreamPath',
      metadata: { name: 'x' },
      spec: { selector: {}, port: 8080, mirror: { targets: [{ address: '10.0.0.5:8080' }, { file: { path: '/shop' } }] } },
    });
    if (!sp.ok) throw new Error(sp.errors.join('; '));
    const spec: StreamPathSpec = sp.value.spec;
    const mirrors = await resolveMirrors(spec, { captureRoot: ROOT });
    expect(mirrors.map((m) => ('file' in m && m.file ? m.file.path : `${m.host}:${m.port}`))).toEqual(['10.0.0.5:8080', `${ROOT}/shop`]);
    expect((await resolveMirrors(spec)).map((m) => m.file?.path)).toEqual([undefined, '/shop']);
  });
});
