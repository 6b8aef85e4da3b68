import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import {
  EXAMPLE_STREAMPATH_YAML,
  parseStreamPath,
  type StreamPathSpec,
} from '../../../operator/src/api/streampath.js';
import type { EngineConfig, EngineStats, InterceptionConfig, MirrorConfig } from '../../../native/lib/types.js';
import { attachStreamPath, toCounters, type DataPlane, type EngineHandle } from './attach.js';
import { AttachError, classifyNativeError } from './errors.js';
import { splitHostPort } from './targets.js';

function spec(patch: (s: Record<string, any>) => void = () => {}): StreamPathSpec {
  const doc = parse(EXAMPLE_STREAMPATH_YAML) as Record<string, any>;
  patch(doc['spec']);
  const r = parseStreamPath(doc);
  if (!r.ok) throw new Error(r.errors.join('\n'));
  return r.value.spec;
}

function stats(mirrors: MirrorConfig[], n = 1): EngineStats {
  // Asserted rather than annotated: the engine's counters grow (acceptPauses) and this fake keeps compiling.
  return {
    acceptPauses: 0,
    connectionsAccepted: n,
    connectionsActive: 0,
    connectionsClosed: n,
    upstreamConnectFailures: 0,
    bytesClientToApp: 100 * n,
    bytesAppToClient: 50 * n,
    targets: mirrors.map((m) => ({
      name: m.name,
      connectionsMirrored: n,
      connectionsCut: 0,
      connectFailures: 0,
      connectionsActive: 0,
      bytesMirrored: 90 * n,
      bytesDropped: 10 * n,
    })),
  } as EngineStats;
}

/** Records every call in order, so tests can assert on the sequence the data plane saw. */
class FakeDataPlane implements DataPlane {
  log: string[] = [];
  engines: EngineConfig[] = [];
  interceptions: InterceptionConfig[] = [];
  failInterception: unknown;
  failEngine: unknown;
  private fd = 10;

  startEngine(config: EngineConfig): EngineHandle {
    if (this.failEngine) throw this.failEngine;
    this.engines.push(config);
    const fd = this.fd++;
    let mirrors = config.mirrors;
    this.log.push(`engine.start fd=${fd}`);
    return {
      listenerFd: fd,
      stats: () => stats(mirrors),
      updateMirrors: (m) => {
        mirrors = m;
        this.log.push(`engine.update fd=${fd} ${m.map((x) => `${x.name}@${x.host}:${x.port}/${x.samplingPercent}`).join(',')}`);
      },
      stop: async () => {
        this.log.push(`engine.stop fd=${fd}`);
      },
    };
  }

  attachInterception(config: InterceptionConfig) {
    if (this.failInterception) throw this.failInterception;
    this.interceptions.push(config);
    this.log.push(`intercept port=${config.port} fd=${config.listenerFd}`);
    return {
      detach: () => {
        this.log.push(`unintercept port=${config.port} fd=${config.listenerFd}`);
      },
    };
  }
}

describe('attachStreamPath', () => {
  it('starts the engine with the spec and steers the port to its listener', async () => {
    const dp = new FakeDataPlane();
    const s = spec((x) => {
      x.mirror.pipeSize = 65536;
      x.mirror.sampling = { percent: 25 };
      x.mirror.targets = [{ address: '10.1.2.3:9000' }, { name: 'local', address: 'localhost:9001' }];
    });
    const a = await attachStreamPath({
      name: 'sp',
      spec: s,
      netnsPath: '/proc/self/ns/net',
      dataPlane: dp,
      lookup: async (h) => (h === 'localhost' ? '127.0.0.1' : Promise.reject(new Error('nx'))),
    });
    expect(dp.engines[0]).toMatchObject({
      netnsPath: '/proc/self/ns/net',
      upstream: 'original-destination',
      pipeSize: 65536,
      mirrorConnectTimeoutMs: 2000,
      mirrors: [
        { name: '10.1.2.3:9000', host: '10.1.2.3', port: 9000, samplingPercent: 25 },
        { name: 'local', host: '127.0.0.1', port: 9001, samplingPercent: 25 },
      ],
    });
    expect(dp.interceptions[0]).toEqual({ netnsPath: '/proc/self/ns/net', port: 8080, listenerFd: 10 });
    await a.detach();
    expect(dp.log).toEqual(['engine.start fd=10', 'intercept port=8080 fd=10', 'unintercept port=8080 fd=10', 'engine.stop fd=10']);
  });

  it('maps engine counters to the status shape and keeps them after detach', async () => {
    const dp = new FakeDataPlane();
    const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
    const expected = {
      connections: 1,
      bytesPrimary: 100,
      bytesMirrored: 90,
      bytesDropped: 10,
      targets: [{ name: '10.0.0.2:8080', connectionsMirrored: 1, connectionsCut: 0, connectFailures: 0, connectionsSkipped: 0, bytesMirrored: 90, bytesDropped: 10 }],
      connectionsActive: 0,
      appConnectFailures: 0,
    };
    expect(a.stats()).toEqual(expected);
    await a.detach();
    await a.detach();
    expect(a.stats()).toEqual(expected);
    expect(dp.log.filter((l) => l.startsWith('engine.stop'))).toHaveLength(1);
  });

  it('when interception fails, it stops the engine and reports the failure', async () => {
    const dp = new FakeDataPlane();
    dp.failInterception = Object.assign(new Error('bpf_link_create: Operation not permitted'), { code: 'EPERM' });
    const err = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AttachError);
    expect((err as AttachError).reason).toBe('InsufficientPrivileges');
    expect(dp.log).toEqual(['engine.start fd=10', 'engine.stop fd=10']);
  });

  it('refuses spec.transform before starting anything', async () => {
    const dp = new FakeDataPlane();
    const s = spec((x) => {
      x.transform = { ops: [{ replace: { from: 'a', to: 'b' } }] };
    });
    const err = (await attachStreamPath({ name: 'sp', spec: s, dataPlane: dp }).catch((e: unknown) => e)) as AttachError;
    expect(err.reason).toBe('TransformUnsupported');
    expect(err.field).toBe('spec.transform');
    expect(err.message).toContain('mirroring without the transform would send unmasked bytes');
    expect(dp.log).toEqual([]);
  });

  it('refuses Service targets without a resolver, naming the field', async () => {
    const dp = new FakeDataPlane();
    const s = spec((x) => {
      x.mirror.targets = [{ address: '10.0.0.9:80' }, { service: { name: 'checkout', port: 80 } }];
    });
    const err = (await attachStreamPath({ name: 'sp', spec: s, dataPlane: dp }).catch((e: unknown) => e)) as AttachError;
    expect(err.message).toBe('spec.mirror.targets[1].service: service targets need a cluster; give address: host:port');
    expect(err.field).toBe('spec.mirror.targets[1].service');
    expect(dp.log).toEqual([]);
  });

  it('resolves Service targets through the injected resolver', async () => {
    const dp = new FakeDataPlane();
    const s = spec((x) => {
      x.mirror.targets = [{ service: { name: 'checkout', namespace: 'staging', port: 80 } }];
    });
    await attachStreamPath({ name: 'sp', spec: s, dataPlane: dp, resolve: async () => ({ host: '10.96.0.7', port: 8080 }) });
    expect(dp.engines[0]!.mirrors).toEqual([{ name: 'checkout.staging:80', host: '10.96.0.7', port: 8080, samplingPercent: 100 }]);
  });

  it('refreshTargets follows a Service whose endpoint moved, and changes nothing when it did not', async () => {
    const dp = new FakeDataPlane();
    const s = spec((x) => {
      x.mirror.targets = [{ service: { name: 'checkout', namespace: 'staging', port: 80 } }];
    });
    let host = '10.244.0.7';
    const a = await attachStreamPath({ name: 'sp', spec: s, dataPlane: dp, resolve: async () => ({ host, port: 8080 }) });
    expect(await a.refreshTargets()).toBe(false);
    expect(dp.log.filter((l) => l.startsWith('engine.update'))).toEqual([]);
    host = '10.244.0.9';
    expect(await a.refreshTargets()).toBe(true);
    expect(dp.log.filter((l) => l.startsWith('engine.update'))).toEqual(['engine.update fd=10 checkout.staging:80@10.244.0.9:8080/100']);
    expect(await a.refreshTargets()).toBe(false);
    await a.detach();
    expect(await a.refreshTargets()).toBe(false);
  });

  it('refreshTargets keeps the old endpoints when the Service no longer resolves', async () => {
    const dp = new FakeDataPlane();
    const s = spec((x) => {
      x.mirror.targets = [{ service: { name: 'checkout', namespace: 'staging', port: 80 } }];
    });
    let fail = false;
    const a = await attachStreamPath({
      name: 'sp',
      spec: s,
      dataPlane: dp,
      resolve: async () => {
        if (fail) throw new Error('service staging/checkout has no ready endpoints');
        return { host: '10.244.0.7', port: 8080 };
      },
    });
    fail = true;
    await expect(a.refreshTargets()).rejects.toThrow(/no ready endpoints/);
    expect(dp.log.filter((l) => l.startsWith('engine.update'))).toEqual([]);
    expect(dp.engines[0]!.mirrors).toEqual([{ name: 'checkout.staging:80', host: '10.244.0.7', port: 8080, samplingPercent: 100 }]);
  });

  it('names the field of a target whose host name does not resolve', async () => {
    const s = spec((x) => {
      x.mirror.targets = [{ address: 'nowhere.invalid:80' }];
    });
    const err = (await attachStreamPath({
      name: 'sp',
      spec: s,
      dataPlane: new FakeDataPlane(),
      lookup: async () => {
        throw new Error('ENOTFOUND');
      },
    }).catch((e: unknown) => e)) as AttachError;
    expect(err.reason).toBe('TargetUnresolvable');
    expect(err.message).toMatch(/^spec\.mirror\.targets\[0\]\.address: cannot resolve nowhere\.invalid/);
  });

  it('refuses a namespace path that does not exist', async () => {
    const err = (await attachStreamPath({
      name: 'sp',
      spec: spec(),
      netnsPath: '/run/netns/ks-does-not-exist',
      dataPlane: new FakeDataPlane(),
    }).catch((e: unknown) => e)) as AttachError;
    expect(err.reason).toBe('NetnsNotFound');
  });

  describe('update', () => {
    it('applies a new mirror set and sampling in place', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      await a.update(spec((x) => {
        x.mirror.targets = [{ address: '10.0.0.3:81' }];
        x.mirror.sampling = { percent: 5 };
      }));
      expect(dp.log.slice(2)).toEqual(['engine.update fd=10 10.0.0.3:81@10.0.0.3:81/5']);
      expect(a.stats().targets.map((t) => t.name)).toEqual(['10.0.0.3:81']);
    });

    it('moves to a changed port: the new port is tapped before the old one is released', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      await a.update(spec((x) => {
        x.port = 9090;
      }));
      expect(a.port).toBe(9090);
      expect(dp.log.slice(2)).toEqual(['intercept port=9090 fd=10', 'engine.update fd=10 10.0.0.2:8080@10.0.0.2:8080/100', 'unintercept port=8080 fd=10']);
      await a.detach();
      expect(dp.log.at(-2)).toBe('unintercept port=9090 fd=10');
    });

    it('swaps engines for a new pipe size and keeps the totals', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      await a.update(spec((x) => {
        x.mirror.pipeSize = 8192;
      }));
      expect(dp.log.slice(2)).toEqual(['engine.start fd=11', 'intercept port=8080 fd=11', 'unintercept port=8080 fd=10', 'engine.stop fd=10']);
      expect(dp.engines[1]!.pipeSize).toBe(8192);
      expect(a.stats()).toMatchObject({ connections: 2, bytesPrimary: 200, bytesMirrored: 180, bytesDropped: 20 });
      expect(a.stats().targets[0]).toMatchObject({ connectionsMirrored: 2, bytesMirrored: 180 });
    });

    it('leaves port and mirrors as they were when the new port cannot be tapped', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      dp.failInterception = Object.assign(new Error('port taken'), { code: 'EEXIST' });
      await expect(a.update(spec((x) => {
        x.port = 9090;
        x.mirror.targets = [{ address: '10.0.0.3:81' }];
      }))).rejects.toThrow(/intercepting port 9090/);
      expect(a.port).toBe(8080);
      expect(dp.log).toHaveLength(2);
      expect(a.stats().targets.map((t) => t.name)).toEqual(['10.0.0.2:8080']);
    });

    it('refuses a transform in an update and leaves the attachment as it was', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      await expect(a.update(spec((x) => {
        x.transform = { ops: [{ byteMap: { preset: 'uppercase' } }] };
      }))).rejects.toThrow(/spec\.transform/);
      expect(dp.log).toHaveLength(2);
      expect(a.port).toBe(8080);
    });

    it('is refused after detach', async () => {
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: new FakeDataPlane() });
      await a.detach();
      await expect(a.update(spec())).rejects.toThrow(/detached/);
    });
  });
});

describe('toCounters', () => {
  it('keeps bytes of removed targets in the totals', () => {
    const base = toCounters(stats([{ name: 'old', host: '10.0.0.1', port: 1, samplingPercent: 100 }]));
    const c = toCounters(stats([{ name: 'new', host: '10.0.0.2', port: 2, samplingPercent: 100 }]), base);
    expect(c.bytesMirrored).toBe(180);
    expect(c.targets.map((t) => [t.name, t.bytesMirrored])).toEqual([['new', 90]]);
  });
});

describe('classifyNativeError', () => {
  it.each([
    ['EPERM', 'InsufficientPrivileges'],
    ['EACCES', 'InsufficientPrivileges'],
    ['ENOSYS', 'KernelFeatureMissing'],
    ['EKSTREAMS_NO_SK_LOOKUP', 'KernelFeatureMissing'],
    ['EKSTREAMS_NO_ADDON', 'DataPlaneError'],
    ['EADDRINUSE', 'DataPlaneError'],
  ])('%s -> %s', (code, reason) => {
    expect(classifyNativeError(Object.assign(new Error('x'), { code }), 'step').reason).toBe(reason);
  });
});

describe('splitHostPort', () => {
  it('splits IPv4, names and bracketed IPv6', () => {
    expect(splitHostPort('10.0.0.1:80')).toEqual({ host: '10.0.0.1', port: 80 });
    expect(splitHostPort('a.b:65535')).toEqual({ host: 'a.b', port: 65535 });
    expect(splitHostPort('[fd00::1]:8080')).toEqual({ host: 'fd00::1', port: 8080 });
  });
});
