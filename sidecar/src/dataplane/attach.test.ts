import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import {
  EXAMPLE_STREAMPATH_YAML,
  parseStreamPath,
  TransformSchema,
  type StreamPathSpec,
} from '../../../api/src/streampath.js';
import type { DrainResult, EngineConfig, EngineSettings, EngineStats, InterceptionConfig, MirrorConfig } from '../../../native/lib/types.js';
import { attachStreamPath, TargetLedger, toCounters, type DataPlane, type EngineHandle } from './attach.js';
import { AttachError, classifyNativeError } from './errors.js';
import { splitHostPort } from './targets.js';

function spec(patch: (s: Record<string, any>) => void = () => {}): StreamPathSpec {
  const doc = parse(EXAMPLE_STREAMPATH_YAML) as Record<string, any>;
  patch(doc['spec']);
  const r = parseStreamPath(doc);
  if (!r.ok) throw new Error(r.errors.join('\n'));
  return r.value.spec;
}

function stats(mirrors: MirrorConfig[], n = 1, active = 0): EngineStats {
  return {
    acceptPauses: 0,
    connectionsAccepted: n,
    connectionsActive: active,
    connectionsClosed: n - active,
    upstreamConnectFailures: 0,
    setupFailures: 0,
    connectionsReset: 0,
    resetFailures: 0,
    workerFailures: 0,
    transformFailures: 4,
    pipeResizeFailures: 0,
    bytesClientToApp: 100 * n,
    bytesAppToClient: 50 * n,
    pipesInUse: 3,
    pipesPooled: 2,
    pipeBytesInUse: 3 * 65536,
    pipeBytesPooled: 2 * 65536,
    mirrorBufferInUse: 4096,
    mirrorBufferBudget: 64 << 20,
    mirrorBufferDenied: 1,
    targets: mirrors.map((m) => ({
      name: m.name,
      connectionsMirrored: n,
      connectionsCut: 0,
      connectFailures: 0,
      connectionsSkipped: 0,
      connectionsActive: 0,
      bytesMirrored: 90 * n,
      bytesDropped: 10 * n,
      transformFailures: 1,
      turnWaitsExpired: 2,
    })),
  };
}

interface FakeEngine extends EngineHandle {
  fd: number;
  active: number;
  settings: EngineSettings;
  /** Resolves a held drain as if its live connections had ended by themselves. */
  finishDrain(): void;
}

/** Records every call in order, so tests can assert on the sequence the data plane saw. */
class FakeDataPlane implements DataPlane {
  log: string[] = [];
  engines: EngineConfig[] = [];
  handles: FakeEngine[] = [];
  interceptions: InterceptionConfig[] = [];
  failInterception: unknown;
  failUninterception: unknown;
  failEngine: unknown;
  failUpdate: unknown;
  /** Connections open in each new engine. */
  active = 0;
  /** drain() stays pending until stop() or finishDrain(), like a drain waiting for live connections. */
  holdDrain = false;
  /** native/lib refuses stats() once the engine ends; a later engine might not. */
  statsAfterEnd = false;
  private fd = 10;

  startEngine(config: EngineConfig): EngineHandle {
    if (this.failEngine) throw this.failEngine;
    this.engines.push(config);
    const fd = this.fd++;
    const dp = this;
    let ended = false;
    let release: ((r: DrainResult) => void) | undefined;
    const e: FakeEngine = {
      fd,
      active: this.active,
      settings: { mirrors: config.mirrors, pipeSize: config.pipeSize, turnTimeoutMs: config.turnTimeoutMs, mirrorBufferSize: config.mirrorBufferSize },
      listenerFd: fd,
      stats: () => {
        if (ended && !dp.statsAfterEnd) throw Object.assign(new Error('engine stopped'), { code: 'EKSTREAMS_ENGINE_STOPPED' });
        const s = stats(e.settings.mirrors, 1, ended ? 0 : e.active);
        return ended ? { ...s, connectionsReset: e.active } : s;
      },
      update: (settings) => {
        if (dp.failUpdate) throw dp.failUpdate;
        e.settings = settings;
        dp.log.push(
          `engine.update fd=${fd} ${settings.mirrors.map((x) => `${x.name}@${x.host}:${x.port}/${x.samplingPercent}`).join(',')} pipe=${settings.pipeSize} turn=${settings.turnTimeoutMs} buf=${settings.mirrorBufferSize}`,
        );
      },
      drain: (timeoutMs) => {
        dp.log.push(`engine.drain fd=${fd} ${timeoutMs}`);
        ended = true;
        if (!dp.holdDrain) return Promise.resolve({ drained: e.active, reset: 0, ms: 1 });
        return new Promise<DrainResult>((resolve) => (release = resolve));
      },
      stop: async () => {
        dp.log.push(`engine.stop fd=${fd}`);
        ended = true;
        const r = { drained: 0, reset: e.active, ms: 2 };
        release?.(r);
        return r;
      },
      finishDrain: () => release?.({ drained: e.active, reset: 0, ms: 3 }),
    };
    this.handles.push(e);
    this.log.push(`engine.start fd=${fd}`);
    return e;
  }

  attachInterception(config: InterceptionConfig) {
    if (this.failInterception) throw this.failInterception;
    this.interceptions.push(config);
    this.log.push(`intercept port=${config.port} fd=${config.listenerFd}`);
    return {
      detach: () => {
        this.log.push(`unintercept port=${config.port} fd=${config.listenerFd}`);
        if (this.failUninterception) throw this.failUninterception;
      },
    };
  }
}

const tick = () => new Promise((r) => setImmediate(r));

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
      turnTimeoutMs: 1000,
      mirrorBufferSize: 4 * 1024 * 1024,
      mirrorConnectTimeoutMs: 2000,
      mirrors: [
        { name: '10.1.2.3:9000', host: '10.1.2.3', port: 9000, samplingPercent: 25 },
        { name: 'local', host: '127.0.0.1', port: 9001, samplingPercent: 25 },
      ],
    });
    expect(dp.engines[0]).not.toHaveProperty('mirrorBufferBudget');
    expect(dp.interceptions[0]).toEqual({ netnsPath: '/proc/self/ns/net', port: 8080, listenerFd: 10 });
    expect(a.state).toBe('attached');
    await a.detach();
    // Interception first, then a drain of spec.drainTimeoutSeconds (default 20 s).
    expect(dp.log).toEqual(['engine.start fd=10', 'intercept port=8080 fd=10', 'unintercept port=8080 fd=10', 'engine.drain fd=10 20000']);
    expect(a.state).toBe('detached');
  });

  it('passes the pacing, buffer and budget settings to the engine', async () => {
    const dp = new FakeDataPlane();
    const s = spec((x) => {
      x.mirror.turnTimeoutMs = 0;
      x.mirror.bufferSize = 64 * 1024 * 1024;
    });
    await attachStreamPath({ name: 'sp', spec: s, dataPlane: dp, mirrorBufferBudget: 256 * 1024 * 1024 });
    expect(dp.engines[0]).toMatchObject({ turnTimeoutMs: 0, mirrorBufferSize: 64 * 1024 * 1024, mirrorBufferBudget: 256 * 1024 * 1024 });
  });

  it('resolves a file target under captureRoot, and refuses one that leaves it before starting anything', async () => {
    const dp = new FakeDataPlane();
    const s = spec((x) => {
      x.mirror.targets = [{ file: { path: '/shop' } }];
    });
    await attachStreamPath({ name: 'sp', spec: s, dataPlane: dp, captureRoot: '/var/lib/kstreams/capture' });
    expect(dp.engines[0]!.mirrors[0]!.file).toMatchObject({ path: '/var/lib/kstreams/capture/shop' });
    const escaping = spec((x) => {
      x.mirror.targets = [{ file: { path: '/shop/../../etc' } }];
    });
    const other = new FakeDataPlane();
    await expect(attachStreamPath({ name: 'sp', spec: escaping, dataPlane: other, captureRoot: '/var/lib/kstreams/capture' })).rejects.toMatchObject({
      reason: 'CapturePathOutsideVolume',
      field: 'spec.mirror.targets[0].file.path',
    });
    expect(other.log).toEqual([]);
  });

  it('maps engine counters to the status shape and keeps them after detach', async () => {
    const dp = new FakeDataPlane();
    const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
    const expected = {
      connections: 1,
      bytesPrimary: 100,
      bytesMirrored: 90,
      bytesDropped: 10,
      connectionsReset: 0,
      targets: [
        { name: '10.0.0.2:8080', connectionsMirrored: 1, connectionsCut: 0, connectFailures: 0, connectionsSkipped: 0, bytesMirrored: 90, bytesDropped: 10, turnWaitsExpired: 2 },
      ],
      connectionsActive: 0,
      appConnectFailures: 0,
      setupFailures: 0,
      memory: {
        pipesInUse: 3,
        pipesPooled: 2,
        pipeBytesInUse: 3 * 65536,
        pipeBytesPooled: 2 * 65536,
        mirrorBufferInUse: 4096,
        mirrorBufferBudget: 64 << 20,
        mirrorBufferDenied: 1,
      },
      transformFailures: 4,
      targetTransformFailures: { '10.0.0.2:8080': 1 },
    };
    expect(a.stats()).toEqual(expected);
    await a.detach();
    await a.detach();
    expect(a.stats()).toEqual(expected);
    expect(dp.log.filter((l) => l.startsWith('engine.drain'))).toHaveLength(1);
  });

  describe('detach', () => {
    it('releases the port before the drain starts and says how many connections it drains', async () => {
      const dp = new FakeDataPlane();
      dp.active = 3;
      dp.holdDrain = true;
      const a = await attachStreamPath({ name: 'sp', spec: spec((x) => (x.drainTimeoutSeconds = 7)), dataPlane: dp });
      const seen: string[] = [];
      const done = a.detach({ onDraining: (i) => seen.push(`${dp.log.at(-1)} -> draining ${i.connections} for ${i.timeoutMs}`) });
      await tick();
      expect(seen).toEqual(['unintercept port=8080 fd=10 -> draining 3 for 7000']);
      expect(a.state).toBe('draining');
      // The engine refuses reads while it drains: the counters stay those of the drain's start.
      expect(a.stats()).toMatchObject({ connections: 1, connectionsActive: 3 });
      dp.handles[0]!.finishDrain();
      expect(await done).toEqual({ timeoutMs: 7000, drained: 3, reset: 0, ms: 3, cutShort: false });
      expect(a.state).toBe('detached');
      expect(a.stats()).toMatchObject({ connectionsActive: 0, connectionsReset: 0 });
    });

    it('takes a timeout that overrides spec.drainTimeoutSeconds', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      await a.detach({ timeoutMs: 1500 });
      expect(dp.log.at(-1)).toBe('engine.drain fd=10 1500');
    });

    it('abort() cuts a running drain short with a reset, and counts the reset connections', async () => {
      const dp = new FakeDataPlane();
      dp.active = 2;
      dp.holdDrain = true;
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      const done = a.detach();
      await tick();
      const aborted = a.abort();
      expect(aborted).toBe(done);
      expect(await done).toMatchObject({ timeoutMs: 20000, drained: 0, reset: 2, cutShort: true });
      expect(dp.log.slice(2)).toEqual(['unintercept port=8080 fd=10', 'engine.drain fd=10 20000', 'engine.stop fd=10']);
      expect(a.stats()).toMatchObject({ connectionsReset: 2, connectionsActive: 0 });
      await a.abort();
      expect(dp.log.filter((l) => l === 'engine.stop fd=10')).toHaveLength(1);
    });

    it('does not count resets twice when the engine still answers stats() after it ended', async () => {
      const dp = new FakeDataPlane();
      dp.active = 2;
      dp.statsAfterEnd = true;
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      await a.detach({ now: true });
      expect(a.stats()).toMatchObject({ connectionsReset: 2, connectionsActive: 0 });
    });

    it('detach({now: true}) resets at once without a drain', async () => {
      const dp = new FakeDataPlane();
      dp.active = 1;
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      expect(await a.detach({ now: true })).toMatchObject({ timeoutMs: 0, reset: 1, cutShort: true });
      expect(dp.log.slice(2)).toEqual(['unintercept port=8080 fd=10', 'engine.stop fd=10']);
    });

    it('an aborted signal cuts the drain short', async () => {
      const dp = new FakeDataPlane();
      dp.active = 4;
      dp.holdDrain = true;
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      const ac = new AbortController();
      const done = a.detach({ signal: ac.signal });
      await tick();
      ac.abort();
      expect(await done).toMatchObject({ reset: 4, cutShort: true });
    });

    it('abort() before any detach releases the port and resets', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      await a.abort();
      expect(dp.log.slice(2)).toEqual(['unintercept port=8080 fd=10', 'engine.stop fd=10']);
    });

    it('still ends the engine when the interception cannot be released, then reports that', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      dp.failUninterception = Object.assign(new Error('bpf_link_detach: bad fd'), { code: 'EBADF' });
      await expect(a.detach()).rejects.toThrow(/releasing port 8080/);
      expect(dp.log.at(-1)).toBe('engine.drain fd=10 20000');
      expect(a.state).toBe('detached');
    });
  });

  it('when interception fails, it stops the engine and reports the failure', async () => {
    const dp = new FakeDataPlane();
    dp.failInterception = Object.assign(new Error('bpf_link_create: Operation not permitted'), { code: 'EPERM' });
    const err = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AttachError);
    expect((err as AttachError).reason).toBe('InsufficientPrivileges');
    expect(dp.log).toEqual(['engine.start fd=10', 'engine.stop fd=10']);
  });

  it('hands the transform to the engine encoded, and refuses a program op it cannot read before starting anything', async () => {
    const dp = new FakeDataPlane();
    const s = spec((x) => {
      x.transform = TransformSchema.parse({ applyTo: 'both', ops: [{ replace: { from: 'a', to: 'bc' } }, { byteMap: { preset: 'uppercase' } }] });
    });
    await attachStreamPath({ name: 'sp', spec: s, dataPlane: dp });
    const t = dp.engines[0]!.transform!;
    expect(t).toMatchObject({ mirror: true, primary: true, holdMs: 20 });
    expect(t.ops.map((o) => o.kind)).toEqual([2, 3]);
    expect(Buffer.from(t.ops[0]!.b!).toString()).toBe('bc');
    expect(t.ops[1]!.a[0x61]).toBe(0x41);

    const dp2 = new FakeDataPlane();
    const withProgram = spec((x) => {
      x.transform = TransformSchema.parse({ applyTo: 'mirror', ops: [{ program: { configMap: 'progs', key: 'mask.o' } }] });
    });
    const err = (await attachStreamPath({ name: 'sp', spec: withProgram, dataPlane: dp2 }).catch((e: unknown) => e)) as AttachError;
    expect(err.reason).toBe('InvalidSpec');
    expect(err.field).toBe('spec.transform.ops[0].program');
    expect(dp2.log).toEqual([]);
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
    expect(dp.log.filter((l) => l.startsWith('engine.update'))).toEqual(['engine.update fd=10 checkout.staging:80@10.244.0.9:8080/100 pipe=262144 turn=1000 buf=4194304']);
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
      expect(dp.log.slice(2)).toEqual(['engine.update fd=10 10.0.0.3:81@10.0.0.3:81/5 pipe=262144 turn=1000 buf=4194304']);
      expect(a.stats().targets.map((t) => t.name)).toEqual(['10.0.0.3:81']);
    });

    it('applies pipeSize, turnTimeoutMs and bufferSize to new connections on the same engine', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      await a.update(spec((x) => {
        x.mirror.pipeSize = 8192;
      }));
      await a.update(spec((x) => {
        x.mirror.pipeSize = 8192;
        x.mirror.turnTimeoutMs = 0;
        x.mirror.bufferSize = 64 * 1024 * 1024;
      }));
      expect(dp.log.slice(2)).toEqual([
        'engine.update fd=10 10.0.0.2:8080@10.0.0.2:8080/100 pipe=8192 turn=1000 buf=4194304',
        'engine.update fd=10 10.0.0.2:8080@10.0.0.2:8080/100 pipe=8192 turn=0 buf=67108864',
      ]);
      expect(dp.engines).toHaveLength(1);
      expect(a.stats()).toMatchObject({ connections: 1, bytesPrimary: 100 });
    });

    it('keeps a new drainTimeoutSeconds for the next detach without touching the engine', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      await a.update(spec((x) => {
        x.drainTimeoutSeconds = 0;
      }));
      expect(dp.log).toHaveLength(2);
      await a.detach();
      expect(dp.log.at(-1)).toBe('engine.drain fd=10 0');
    });

    it('keeps the previous settings and port when the engine refuses the new ones', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      dp.failUpdate = Object.assign(new Error('pipe size above fs.pipe-max-size'), { code: 'EPERM' });
      await expect(a.update(spec((x) => {
        x.port = 9090;
        x.mirror.pipeSize = 1 << 20;
      }))).rejects.toThrow(/applying the changed spec/);
      expect(dp.log.slice(2)).toEqual(['intercept port=9090 fd=10', 'unintercept port=9090 fd=10']);
      expect(a.port).toBe(8080);
      dp.failUpdate = undefined;
      await a.update(spec((x) => {
        x.mirror.pipeSize = 1 << 20;
      }));
      expect(dp.log.at(-1)).toMatch(/pipe=1048576/);
    });

    it('moves to a changed port: the new port is tapped before the old one is released', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      await a.update(spec((x) => {
        x.port = 9090;
      }));
      expect(a.port).toBe(9090);
      expect(dp.log.slice(2)).toEqual(['intercept port=9090 fd=10', 'unintercept port=8080 fd=10']);
      await a.update(spec((x) => {
        x.port = 9091;
        x.mirror.sampling = { percent: 50 };
      }));
      expect(dp.log.slice(4)).toEqual([
        'intercept port=9091 fd=10',
        'engine.update fd=10 10.0.0.2:8080@10.0.0.2:8080/50 pipe=262144 turn=1000 buf=4194304',
        'unintercept port=9090 fd=10',
      ]);
      await a.detach();
      expect(dp.log.at(-2)).toBe('unintercept port=9091 fd=10');
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

    it('applies a transform added by an update to the engine, and refuses one the engine refuses, keeping the attachment as it was', async () => {
      const dp = new FakeDataPlane();
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: dp });
      const upper = spec((x) => {
        x.transform = TransformSchema.parse({ ops: [{ byteMap: { preset: 'uppercase' } }] });
      });
      await a.update(upper);
      expect(dp.handles[0]!.settings.transform?.ops[0]?.kind).toBe(3);
      dp.failUpdate = Object.assign(new Error('test program was rejected by the kernel\'s verifier'), { code: 'ProgramRejected', log: 'R2 offset is outside of the packet' });
      const err = (await a
        .update(spec((x) => {
          x.port = 9090;
          x.transform = TransformSchema.parse({ ops: [{ replace: { from: 'a', to: 'b' } }] });
        }))
        .catch((e: unknown) => e)) as AttachError;
      expect(err.reason).toBe('ProgramRejected');
      expect(err.detail).toBe('R2 offset is outside of the packet');
      expect(a.port).toBe(8080);
    });

    it('is refused after detach', async () => {
      const a = await attachStreamPath({ name: 'sp', spec: spec(), dataPlane: new FakeDataPlane() });
      await a.detach();
      await expect(a.update(spec())).rejects.toThrow(/detached/);
    });
  });
});

describe('toCounters and TargetLedger', () => {
  const target = (name: string): MirrorConfig => ({ name, host: '10.0.0.1', port: 1, samplingPercent: 100 });

  it('keep the bytes of a target that left the engine\'s stats in the totals, and not twice when it comes back', () => {
    const ledger = new TargetLedger();
    const read = (s: EngineStats) => toCounters(s, ledger.observe(s));
    expect(read(stats([target('old')])).bytesMirrored).toBe(90);
    const c = read(stats([target('new')]));
    expect(c.bytesMirrored).toBe(180);
    expect(c.bytesDropped).toBe(20);
    expect(c.targets.map((t) => [t.name, t.bytesMirrored])).toEqual([['new', 90]]);
    // The engine keeps counters per name: a target added back resumes its own totals.
    expect(read(stats([target('old'), target('new')])).bytesMirrored).toBe(180);
  });

  it('reads the engine\'s memory figures and per-target turn waits', () => {
    const c = toCounters(stats([target('t')]));
    expect(c.memory).toMatchObject({ pipesInUse: 3, mirrorBufferBudget: 64 << 20, mirrorBufferDenied: 1 });
    expect(c.targets[0]!.turnWaitsExpired).toBe(2);
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
