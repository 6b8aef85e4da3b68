import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import type { StreamPathSpec } from '../../../api/src/streampath.js';
import { problemFromError, Reconciler, type World } from './converge.js';
import type { AgentDataPlane, Attachment, AttachRequest, DrainOutcome } from './dataplane.js';

/** A data plane that records every call and can be told to fail. */
class FakeDataPlane {
  calls: string[] = [];
  live = new Map<string, { spec: StreamPathSpec; port: number }>();
  failAttach = new Map<string, Error>();
  failUpdate = new Map<string, Error>();
  bytes = 0;
  connectFailures = 0;
  /** Detaches stay draining until release() or an abort, like engines with live connections. */
  holdDrains = false;
  private readonly held = new Map<string, (outcome: DrainOutcome) => void>();
  /** Connections reset once a detach ended, per StreamPath. */
  resets = new Map<string, number>();

  /** Lets the held drain of `name` end as if its connections had closed by themselves. */
  release(name: string): void {
    this.held.get(name)?.({ timeoutMs: 20_000, drained: 1, reset: 0, ms: 5, cutShort: false });
  }

  readonly attach: AgentDataPlane = async (req: AttachRequest) => {
    this.calls.push(`attach ${req.name}:${req.spec.port}`);
    const err = this.failAttach.get(req.name);
    if (err) throw err;
    for (const [name, l] of this.live) {
      if (l.port === req.spec.port) throw new Error(`fake kernel: port ${req.spec.port} already taken by ${name}`);
    }
    this.live.set(req.name, { spec: req.spec, port: req.spec.port });
    let spec = req.spec;
    let ending: Promise<DrainOutcome> | undefined;
    const attachment: Attachment = {
      stats: () => ({
        connections: 1,
        bytesPrimary: this.bytes,
        bytesMirrored: this.bytes,
        bytesDropped: 0,
        connectionsReset: this.resets.get(req.name) ?? 0,
        connectionsActive: ending ? 0 : 1,
        setupFailures: 0,
        targets: spec.mirror!.targets.map((t) => ({
          name: t.address ?? t.service!.name,
          connectionsMirrored: 1,
          connectionsCut: 0,
          connectFailures: this.connectFailures,
          bytesMirrored: this.bytes,
          bytesDropped: 0,
        })),
      }),
      update: async (next) => {
        this.calls.push(`update ${req.name}:${next.port}`);
        const e = this.failUpdate.get(req.name);
        if (e) throw e;
        this.live.set(req.name, { spec: next, port: next.port });
        spec = next;
      },
      detach: (opts = {}) => {
        if (ending) return ending;
        this.calls.push(`detach ${req.name}${opts.timeoutMs !== undefined ? ` ${opts.timeoutMs}` : ''}${opts.now ? ' now' : ''}`);
        this.live.delete(req.name);
        const timeoutMs = opts.now ? 0 : (opts.timeoutMs ?? spec.drainTimeoutSeconds * 1000);
        opts.onDraining?.({ connections: 1, timeoutMs });
        ending = new Promise<DrainOutcome>((resolve) => {
          const done = (o: DrainOutcome) => {
            this.held.delete(req.name);
            this.resets.set(req.name, o.reset);
            resolve(o);
          };
          if (this.holdDrains && !opts.now) this.held.set(req.name, done);
          else done({ timeoutMs, drained: opts.now ? 0 : 1, reset: opts.now ? 1 : 0, ms: 1, cutShort: !!opts.now });
        });
        return ending;
      },
      abort: async () => {
        this.calls.push(`abort ${req.name}`);
        const cut = this.held.get(req.name);
        if (cut) cut({ timeoutMs: 20_000, drained: 0, reset: 1, ms: 2, cutShort: true });
        else if (!ending) await attachment.detach({ now: true });
      },
    };
    return attachment;
  };
}

let uidCounter = 0;
function sp(
  name: string,
  opts: {
    port?: number;
    labels?: Record<string, string>;
    targets?: string[];
    generation?: number;
    created?: string;
    uid?: string;
    deleting?: boolean;
    mirror?: Record<string, unknown>;
    raw?: Record<string, unknown>;
  } = {},
): Record<string, unknown> {
  return {
    apiVersion: 'kstreams.io/v1alpha1',
    kind: 'StreamPath',
    metadata: {
      name,
      namespace: 'shop',
      uid: opts.uid ?? `uid-${name}`,
      generation: opts.generation ?? 1,
      creationTimestamp: opts.created ?? `2026-01-01T00:00:${String(uidCounter++ % 60).padStart(2, '0')}Z`,
      ...(opts.deleting ? { deletionTimestamp: '2026-01-02T00:00:00Z' } : {}),
    },
    spec: {
      selector: { matchLabels: opts.labels ?? { app: 'checkout' } },
      port: opts.port ?? 8080,
      mirror: { targets: (opts.targets ?? ['10.0.0.2:8080']).map((address) => ({ address })), ...opts.mirror },
      ...opts.raw,
    },
  };
}

function setup() {
  const dp = new FakeDataPlane();
  const drained: Array<[string, DrainOutcome]> = [];
  const r = new Reconciler({
    dataPlane: dp.attach,
    netnsPath: '/run/netns/x',
    mirrorBufferBudget: 1 << 27,
    onDrained: (name, o) => drained.push([name, o]),
    logger: pino({ level: 'silent' }),
  });
  const reports = async () => Object.fromEntries((await r.snapshot()).map((s) => [s.report.name, s.report]));
  return { dp, r, reports, drained };
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

const pod = { app: 'checkout' };
const world = (...streamPaths: unknown[]): World => ({ podLabels: pod, streamPaths });

describe('Reconciler.converge', () => {
  it('attaches the StreamPaths that select the pod, and only those', async () => {
    const { dp, r, reports } = setup();
    await r.converge(world(sp('a'), sp('b', { labels: { app: 'cart' }, port: 9090 })));
    expect(dp.calls).toEqual(['attach a:8080']);
    const rep = await reports();
    expect(Object.keys(rep)).toEqual(['a']);
    expect(rep['a']).toMatchObject({ attached: true, generation: 1, bytesPrimary: 0 });
    expect(rep['a']!.problem).toBeUndefined();
  });

  it('passes the netns and the resolver to the data plane', async () => {
    const seen: AttachRequest[] = [];
    const resolve = async () => ({ host: '10.0.0.9', port: 1 });
    const r = new Reconciler({
      dataPlane: async (req) => {
        seen.push(req);
        return { stats: () => ({ connections: 0, bytesPrimary: 0, bytesMirrored: 0, bytesDropped: 0, targets: [] }), update: async () => {}, detach: async () => {} };
      },
      netnsPath: '/run/netns/p',
      resolve,
      mirrorBufferBudget: 1 << 26,
      logger: pino({ level: 'silent' }),
    });
    await r.converge(world(sp('a')));
    expect(seen[0]).toMatchObject({ name: 'a', netnsPath: '/run/netns/p', resolve, mirrorBufferBudget: 1 << 26 });
  });

  it('refreshTargets re-resolves every attached StreamPath and reports which moved or failed', async () => {
    const outcomes: Record<string, boolean | Error> = { a: false, b: true, c: new Error('service staging/web has no ready endpoints') };
    const r = new Reconciler({
      dataPlane: async (req) => ({
        stats: () => ({ connections: 0, bytesPrimary: 0, bytesMirrored: 0, bytesDropped: 0, targets: [] }),
        update: async () => {},
        refreshTargets: async () => {
          const o = outcomes[req.name]!;
          if (o instanceof Error) throw o;
          return o;
        },
        detach: async () => {},
      }),
      logger: pino({ level: 'silent' }),
    });
    await r.converge(world(sp('a'), sp('b', { port: 9090 }), sp('c', { port: 9091 })));
    expect(await r.refreshTargets()).toEqual(['b']);
    const reports = Object.fromEntries((await r.snapshot()).map((s) => [s.report.name, s.report]));
    expect(reports['a']!.problem).toBeUndefined();
    expect(reports['c']).toMatchObject({ attached: true, problem: { message: expect.stringMatching(/no ready endpoints/) } });
  });

  it('makes no data-plane call when converging an unchanged world again', async () => {
    const { dp, r } = setup();
    const w = world(sp('a'), sp('b', { port: 9090 }));
    await r.converge(w);
    dp.calls = [];
    await r.converge(w);
    await r.converge(w, { retryFailed: true });
    expect(dp.calls).toEqual([]);
  });

  it('applies an edited spec live with update(), and reports the new generation', async () => {
    const { dp, r, reports } = setup();
    await r.converge(world(sp('a')));
    await r.converge(world(sp('a', { generation: 2, targets: ['10.0.0.2:8080', '10.0.0.3:8080'] })));
    expect(dp.calls).toEqual(['attach a:8080', 'update a:8080']);
    expect(dp.live.get('a')!.spec.mirror!.targets).toHaveLength(2);
    expect((await reports())['a']).toMatchObject({ attached: true, generation: 2 });
  });

  it.each([
    ['pipeSize', { mirror: { pipeSize: 65536 } }],
    ['turnTimeoutMs', { mirror: { turnTimeoutMs: 0 } }],
    ['bufferSize', { mirror: { bufferSize: 64 * 1024 * 1024 } }],
    ['drainTimeoutSeconds', { raw: { drainTimeoutSeconds: 90 } }],
  ])('applies a %s edit with update(), never detach + attach', async (_field, edit) => {
    const { dp, r, reports } = setup();
    await r.converge(world(sp('a')));
    await r.converge(world(sp('a', { generation: 2, ...edit })));
    expect(dp.calls).toEqual(['attach a:8080', 'update a:8080']);
    expect((await reports())['a']).toMatchObject({ attached: true, generation: 2 });
  });

  it('takes a new generation with an identical spec without touching the data plane', async () => {
    const { dp, r, reports } = setup();
    await r.converge(world(sp('a')));
    await r.converge(world(sp('a', { generation: 3 })));
    expect(dp.calls).toEqual(['attach a:8080']);
    expect((await reports())['a']!.generation).toBe(3);
  });

  it('detaches when the pod labels stop matching, and attaches again when they match again', async () => {
    const { dp, r, reports } = setup();
    await r.converge(world(sp('a')));
    await r.converge({ podLabels: { app: 'other' }, streamPaths: [sp('a')] });
    expect(dp.live.size).toBe(0);
    expect(await reports()).toEqual({});
    await r.converge(world(sp('a')));
    expect(dp.calls).toEqual(['attach a:8080', 'detach a', 'attach a:8080']);
  });

  it('detaches deleted StreamPaths and those with a deletionTimestamp', async () => {
    const { dp, r } = setup();
    await r.converge(world(sp('a'), sp('b', { port: 9090 })));
    await r.converge(world(sp('a', { deleting: true }), sp('b', { port: 9090 })));
    expect(dp.calls).toContain('detach a');
    await r.converge(world());
    expect(dp.calls).toContain('detach b');
    expect(dp.live.size).toBe(0);
  });

  it('detaches everything when our pod is gone', async () => {
    const { dp, r } = setup();
    await r.converge(world(sp('a'), sp('b', { port: 9090 })));
    await r.converge({ podLabels: undefined, streamPaths: [sp('a'), sp('b', { port: 9090 })] });
    expect(dp.live.size).toBe(0);
  });

  it('re-attaches a StreamPath deleted and recreated under the same name (new uid)', async () => {
    const { dp, r } = setup();
    await r.converge(world(sp('a')));
    await r.converge(world(sp('a', { uid: 'uid-a-2' })));
    expect(dp.calls).toEqual(['attach a:8080', 'detach a', 'attach a:8080']);
  });

  describe('when two StreamPaths tap the same port', () => {
    it('the older one attaches and the newer one gets PortConflict', async () => {
      const { dp, r, reports } = setup();
      await r.converge(world(sp('late', { created: '2026-01-01T00:00:09Z' }), sp('early', { created: '2026-01-01T00:00:01Z' })));
      expect(dp.calls).toEqual(['attach early:8080']);
      const rep = await reports();
      expect(rep['early']!.attached).toBe(true);
      expect(rep['late']).toMatchObject({ attached: false, problem: { reason: 'PortConflict' } });
      expect(rep['late']!.problem!.message).toMatch(/port 8080 .* StreamPath early/);
    });

    it('a newcomer never displaces the one that runs, even if it is older', async () => {
      const { dp, r, reports } = setup();
      await r.converge(world(sp('running', { created: '2026-01-01T00:00:09Z' })));
      await r.converge(world(sp('running', { created: '2026-01-01T00:00:09Z' }), sp('older', { created: '2026-01-01T00:00:01Z' })));
      expect(dp.calls).toEqual(['attach running:8080']);
      expect((await reports())['older']!.problem!.reason).toBe('PortConflict');
    });

    it('the second attaches once the first is deleted', async () => {
      const { dp, r, reports } = setup();
      const second = sp('second', { created: '2026-01-01T00:00:09Z' });
      await r.converge(world(sp('first', { created: '2026-01-01T00:00:01Z' }), second));
      await r.converge(world(second));
      expect(dp.calls).toEqual(['attach first:8080', 'detach first', 'attach second:8080']);
      expect((await reports())['second']).toMatchObject({ attached: true });
    });

    it('an attached one that moves onto a taken port is detached with PortConflict; the holder is untouched', async () => {
      const { dp, r, reports } = setup();
      await r.converge(world(sp('a'), sp('b', { port: 9090 })));
      await r.converge(world(sp('a'), sp('b', { port: 8080, generation: 2 })));
      expect(dp.calls).toEqual(['attach a:8080', 'attach b:9090', 'detach b']);
      expect((await reports())['b']).toMatchObject({ attached: false, generation: 2, problem: { reason: 'PortConflict' } });
      expect(dp.live.get('a')!.port).toBe(8080);
    });

    it('one moving away frees its port for a newcomer in the same pass', async () => {
      const { dp, r, reports } = setup();
      await r.converge(world(sp('a', { created: '2026-01-01T00:00:05Z' })));
      await r.converge(
        world(sp('a', { port: 9090, generation: 2, created: '2026-01-01T00:00:05Z' }), sp('b', { created: '2026-01-01T00:00:01Z' })),
      );
      expect(dp.calls).toEqual(['attach a:8080', 'update a:9090', 'attach b:8080']);
      const rep = await reports();
      expect(rep['a']!.attached && rep['b']!.attached).toBe(true);
    });
  });

  describe('when a spec is invalid', () => {
    it('reports InvalidSpec naming the field and attaches nothing', async () => {
      const { dp, r, reports } = setup();
      await r.converge(world(sp('bad', { raw: { port: 0 } })));
      expect(dp.calls).toEqual([]);
      const rep = (await reports())['bad']!;
      expect(rep).toMatchObject({ attached: false, generation: 1, problem: { reason: 'InvalidSpec' } });
      expect(rep.problem!.message).toMatch(/spec\.port/);
    });

    it('keeps the running generation when an edit makes it invalid, and applies the next valid edit', async () => {
      const { dp, r, reports } = setup();
      await r.converge(world(sp('a')));
      await r.converge(world(sp('a', { generation: 2, raw: { mirror: { targets: [] } } })));
      expect(dp.calls).toEqual(['attach a:8080']);
      expect((await reports())['a']).toMatchObject({ attached: true, generation: 1, problem: { reason: 'InvalidSpec' } });
      await r.converge(world(sp('a', { generation: 3, targets: ['10.0.0.4:80'] })));
      expect(dp.calls).toEqual(['attach a:8080', 'update a:8080']);
      const rep = (await reports())['a']!;
      expect(rep).toMatchObject({ attached: true, generation: 3 });
      expect(rep.problem).toBeUndefined();
    });

    it('is reported only by pods its selector picks', async () => {
      const { r, reports } = setup();
      await r.converge(world(sp('elsewhere', { labels: { app: 'cart' }, raw: { port: 0 } })));
      expect(await reports()).toEqual({});
    });

    it('an invalid StreamPath holding no port does not block a valid one', async () => {
      const { dp, r } = setup();
      await r.converge(world(sp('bad', { created: '2026-01-01T00:00:00Z', raw: { mirror: { targets: [{}] } } }), sp('good')));
      expect(dp.calls).toEqual(['attach good:8080']);
    });
  });

  describe('when the data plane fails', () => {
    it('reports the error reason, does not retry the same spec on every event, retries on resync', async () => {
      const { dp, r, reports } = setup();
      dp.failAttach.set('a', Object.assign(new Error('spec.transform: in-kernel transforms are not available'), { reason: 'TransformUnsupported' }));
      await r.converge(world(sp('a')));
      expect((await reports())['a']).toMatchObject({ attached: false, problem: { reason: 'TransformUnsupported' } });
      await r.converge(world(sp('a')));
      expect(dp.calls).toEqual(['attach a:8080']);
      dp.failAttach.clear();
      await r.converge(world(sp('a')), { retryFailed: true });
      expect(dp.calls).toEqual(['attach a:8080', 'attach a:8080']);
      expect((await reports())['a']).toMatchObject({ attached: true });
    });

    it('retries at once when the spec changes', async () => {
      const { dp, r } = setup();
      dp.failAttach.set('a', Object.assign(new Error('no'), { code: 'EPERM' }));
      await r.converge(world(sp('a')));
      dp.failAttach.clear();
      await r.converge(world(sp('a', { generation: 2, targets: ['10.0.0.5:1'] })));
      expect(dp.calls).toEqual(['attach a:8080', 'attach a:8080']);
    });

    it('keeps the old spec running when a live update fails', async () => {
      const { dp, r, reports } = setup();
      await r.converge(world(sp('a')));
      dp.failUpdate.set('a', Object.assign(new Error('Service shop/x does not exist'), { reason: 'TargetUnresolvable' }));
      await r.converge(world(sp('a', { generation: 2, targets: ['10.0.0.7:1'] })));
      expect((await reports())['a']).toMatchObject({ attached: true, generation: 1, problem: { reason: 'TargetUnresolvable' } });
      expect(dp.live.get('a')!.spec.mirror!.targets[0]!.address).toBe('10.0.0.2:8080');
    });

    it('one failing StreamPath does not stop the others', async () => {
      const { dp, r, reports } = setup();
      dp.failAttach.set('a', new Error('boom'));
      await r.converge(world(sp('a'), sp('b', { port: 9090 })));
      const rep = await reports();
      expect(rep['a']!.problem!.reason).toBe('AttachFailed');
      expect(rep['b']!.attached).toBe(true);
    });
  });

  it('sampleHealth marks a StreamPath TargetUnreachable while connect failures grow, and clears it after', async () => {
    const { dp, r, reports } = setup();
    await r.converge(world(sp('a')));
    await r.sampleHealth();
    expect((await reports())['a']!.problem).toBeUndefined();
    dp.connectFailures = 3;
    await r.sampleHealth();
    expect((await reports())['a']!.problem).toMatchObject({ reason: 'TargetUnreachable' });
    await r.sampleHealth();
    expect((await reports())['a']!.problem).toBeUndefined();
  });

  describe('detach drains', () => {
    it('a deleted StreamPath is released at once and drains in the background: converge does not wait', async () => {
      const { dp, r, reports, drained } = setup();
      dp.holdDrains = true;
      await r.converge(world(sp('a', { raw: { drainTimeoutSeconds: 45 } })));
      await r.converge(world());
      expect(dp.calls).toEqual(['attach a:8080', 'detach a']);
      expect(r.drainsInProgress()).toBe(1);
      expect(await reports()).toEqual({});
      // The port is free meanwhile: a new StreamPath on it attaches while the old engine drains.
      await r.converge(world(sp('b')));
      expect(dp.calls.at(-1)).toBe('attach b:8080');
      dp.release('a');
      await settle();
      expect(r.drainsInProgress()).toBe(0);
      expect(drained).toEqual([['a', { timeoutMs: 20_000, drained: 1, reset: 0, ms: 5, cutShort: false }]]);
    });

    it('uses the StreamPath\'s own drainTimeoutSeconds (the attachment default) outside a shutdown', async () => {
      const { dp } = setup();
      let timeoutMs: number | undefined;
      const plane: AgentDataPlane = async (req) => {
        const a = await dp.attach(req);
        const detach = a.detach.bind(a);
        return { ...a, detach: (o) => detach({ ...o, onDraining: (i) => ((timeoutMs = i.timeoutMs), o?.onDraining?.(i)) }) };
      };
      const r2 = new Reconciler({ dataPlane: plane, logger: pino({ level: 'silent' }) });
      await r2.converge(world(sp('a', { raw: { drainTimeoutSeconds: 45 } })));
      await r2.converge(world());
      expect(timeoutMs).toBe(45_000);
    });

    it('a StreamPath detached for a port conflict reports its final counters (resets included) after the drain', async () => {
      const { dp, r, reports } = setup();
      await r.converge(world(sp('a'), sp('b', { port: 9090 })));
      dp.holdDrains = true;
      await r.converge(world(sp('a'), sp('b', { port: 8080, generation: 2 })));
      expect((await reports())['b']).toMatchObject({ attached: false, connectionsReset: 0 });
      await r.abortAll();
      await settle();
      expect((await reports())['b']).toMatchObject({ attached: false, connectionsReset: 1, problem: { reason: 'PortConflict' } });
    });

    it('detachAll drains everything in parallel within the budget, and cuts drains already running at it', async () => {
      const { dp, r, drained } = setup();
      await r.converge(world(sp('gone', { port: 7070 })));
      dp.holdDrains = true;
      await r.converge(world(sp('a', { raw: { drainTimeoutSeconds: 5 } }), sp('b', { port: 9090, raw: { drainTimeoutSeconds: 600 } })));
      expect(r.drainsInProgress()).toBe(1);
      const all = r.detachAll('SIGTERM', { timeoutMs: 50 });
      await settle();
      // Each drains for its own drainTimeoutSeconds or the budget, whichever is shorter.
      expect(dp.calls.filter((c) => c.startsWith('detach')).sort()).toEqual(['detach a 50', 'detach b 50', 'detach gone']);
      expect(r.drainsInProgress()).toBe(3);
      dp.release('a');
      dp.release('b');
      await all;
      expect(dp.calls).toContain('abort gone');
      expect(r.drainsInProgress()).toBe(0);
      expect(drained.map(([n, o]) => `${n}:${o.reset}`).sort()).toEqual(['a:0', 'b:0', 'gone:1']);
    });

    it('a budget longer than the StreamPath\'s drain keeps the StreamPath\'s', async () => {
      const { dp, r } = setup();
      await r.converge(world(sp('a', { raw: { drainTimeoutSeconds: 5 } })));
      await r.detachAll('SIGTERM', { timeoutMs: 28_000 });
      expect(dp.calls.at(-1)).toBe('detach a 5000');
    });

    it('abortAll resets running drains, and later detaches do not drain', async () => {
      const { dp, r, drained } = setup();
      dp.holdDrains = true;
      await r.converge(world(sp('a'), sp('b', { port: 9090 })));
      await r.converge(world(sp('b', { port: 9090 })));
      await r.abortAll();
      expect(dp.calls).toContain('abort a');
      await r.detachAll('second signal');
      expect(dp.calls.at(-1)).toBe('detach b now');
      expect(drained.map(([n, o]) => [n, o.reset])).toEqual([['a', 1], ['b', 1]]);
    });
  });

  it('reports connectionsReset and hands the data plane\'s own figures to /metrics', async () => {
    const { r } = setup();
    await r.converge(world(sp('a')));
    const [entry] = await r.snapshot();
    expect(entry!.report.connectionsReset).toBe(0);
    expect(entry!.local).toEqual({ connectionsActive: 1, setupFailures: 0 });
  });

  it('detachAll detaches everything once', async () => {
    const { dp, r } = setup();
    await r.converge(world(sp('a'), sp('b', { port: 9090 })));
    await r.detachAll('test');
    await r.detachAll('test');
    expect(dp.calls.filter((c) => c.startsWith('detach')).sort()).toEqual(['detach a', 'detach b']);
    expect(r.attachedNames()).toEqual([]);
  });
});

describe('problemFromError', () => {
  it('passes AttachError reasons through and maps errno codes', () => {
    expect(problemFromError(Object.assign(new Error('x'), { reason: 'KernelFeatureMissing' }), 'attach').reason).toBe('KernelFeatureMissing');
    expect(problemFromError(Object.assign(new Error('x'), { code: 'EPERM' }), 'attach')).toMatchObject({
      reason: 'InsufficientPrivileges',
      message: expect.stringMatching(/CAP_BPF/),
    });
    expect(problemFromError(Object.assign(new Error('x'), { code: 'EKSTREAMS_BPF_LOAD' }), 'attach').reason).toBe('ProgramRejected');
    const wrapped = new Error('intercepting port 8080 failed', { cause: Object.assign(new Error('verifier'), { code: 'EKSTREAMS_BPF_LOAD' }) });
    expect(problemFromError(Object.assign(wrapped, { reason: 'DataPlaneError' }), 'attach').reason).toBe('ProgramRejected');
    expect(problemFromError(Object.assign(new Error('x'), { code: 'EKSTREAMS_NO_SK_LOOKUP' }), 'attach').reason).toBe('KernelFeatureMissing');
    expect(problemFromError(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }), 'attach').reason).toBe('TargetUnreachable');
    expect(problemFromError(new Error('x'), 'update').reason).toBe('UpdateFailed');
    expect(problemFromError('weird', 'attach')).toEqual({ reason: 'AttachFailed', message: 'weird' });
  });
});
