import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { FINALIZER, type AgentReport } from '../../../api/src/agent.js';
import { FakeClock } from '../../../runtime/src/clock.js';
import type { EventRecorder } from '../../../runtime/src/events.js';
import type { KubeTransport } from '../../../runtime/src/rest.js';
import type { SlimPod } from '../kube/objects.js';
import { Reconciler, type StreamPathObject } from './reconciler.js';
import type { AgentObservation } from './status.js';

const KEY = 'shop/shadow';
const POD: SlimPod = { namespace: 'shop', name: 'web-0', uid: 'uid-web-0', labels: { app: 'web' }, injected: true, podIP: '10.0.0.7', agentPort: 15090, optedOut: false, deleting: false };

/**
 * One StreamPath, one pod whose agent's report the test sets, and a transport that answers a status PATCH
 * with the object patched: the write bounds are the Reconciler's own, measured on a fake clock.
 */
class Fixture {
  readonly clock = new FakeClock();
  readonly writes: number[] = [];
  readonly events: string[] = [];
  sp: StreamPathObject = {
    apiVersion: 'kstreams.io/v1alpha1',
    kind: 'StreamPath',
    metadata: { name: 'shadow', namespace: 'shop', uid: 'uid-shadow', generation: 1, resourceVersion: '1', finalizers: [FINALIZER] },
    spec: { selector: { matchLabels: { app: 'web' } }, port: 8080, mirror: { targets: [{ address: '127.0.0.1:9' }] } },
  };
  obs: AgentObservation | undefined;
  readonly reconciler: Reconciler;

  constructor(opts: { intervalMs: number; budget?: number; count: number }) {
    const transport: KubeTransport = {
      request: async <T>(method: string, path: string, o?: { body?: unknown }) => {
        expect(`${method} ${path}`).toBe('PATCH /apis/kstreams.io/v1alpha1/namespaces/shop/streampaths/shadow/status');
        this.writes.push(this.clock.now());
        const status = (o?.body as { status: StreamPathObject['status'] }).status;
        return { ...this.sp, metadata: { ...this.sp.metadata, resourceVersion: String(this.writes.length + 1) }, status } as T;
      },
      watch: async () => undefined,
    };
    this.reconciler = new Reconciler({
      transport,
      clock: this.clock,
      log: pino({ level: 'silent' }),
      events: { record: async (_o: unknown, _t: unknown, reason: string) => (this.events.push(reason), true) } as unknown as EventRecorder,
      getStreamPath: (key) => (key === KEY ? this.sp : undefined),
      storeStreamPath: (obj) => (this.sp = obj),
      podsInNamespace: () => [POD],
      podsSelectedBy: () => [POD],
      getNamespace: (name) => ({ name, labels: { 'kstreams.io/inject': 'enabled' } }),
      observe: () => this.obs,
      detachTimeoutMs: 60_000,
      detachRecheckMs: 1_000,
      statusWriteIntervalMs: opts.intervalMs,
      ...(opts.budget !== undefined ? { statusWritesPerSecond: opts.budget } : {}),
      streamPathCount: () => opts.count,
    });
  }

  /** The agent reports `connections` and whether it is attached; each report is a new observation. */
  report(connections: number, attached = true): void {
    const report: AgentReport = {
      pod: { namespace: 'shop', name: 'web-0' },
      ready: true,
      streamPaths: [{ name: 'shadow', generation: 1, attached, connections, bytesPrimary: 10 * connections, bytesMirrored: 10 * connections, bytesDropped: 0, targets: [] }],
    };
    this.obs = { report, at: this.clock.now(), key: `${connections}/${attached}` };
  }

  reconcile() {
    return this.reconciler.reconcile(KEY, new AbortController().signal);
  }

  ready(): string | undefined {
    return this.sp.status?.conditions?.find((c) => c.type === 'Ready')?.status;
  }
}

describe('Reconciler status write bounds', () => {
  it('stretches the counter interval so that all StreamPaths together stay within the budget', () => {
    expect(new Fixture({ intervalMs: 10_000, budget: 20, count: 10 }).reconciler.counterIntervalMs()).toBe(10_000);
    expect(new Fixture({ intervalMs: 10_000, budget: 20, count: 1010 }).reconciler.counterIntervalMs()).toBe(50_500);
    expect(new Fixture({ intervalMs: 2_000, budget: 10, count: 100 }).reconciler.counterIntervalMs()).toBe(10_000);
    // No budget: the write interval alone.
    expect(new Fixture({ intervalMs: 10_000, budget: 0, count: 1010 }).reconciler.counterIntervalMs()).toBe(10_000);
    expect(new Fixture({ intervalMs: 10_000, count: 1010 }).reconciler.counterIntervalMs()).toBe(10_000);
  });

  it('writes a change of counters alone once per counter interval, a change of a condition within the write interval', async () => {
    // 100 StreamPaths on a budget of 10 writes/s: counters alone every 10 s; conditions every 2 s.
    const f = new Fixture({ intervalMs: 2_000, budget: 10, count: 100 });
    f.report(1);
    expect(await f.reconcile()).toBeUndefined();
    expect(f.writes).toHaveLength(1);
    expect(f.ready()).toBe('True');

    // Counters move 3 s later: past the write interval but not the counter interval, so deferred to 10 s.
    await f.clock.advance(3_000);
    f.report(5);
    expect(await f.reconcile()).toEqual({ requeueAfterMs: 7_000 });
    expect(f.writes).toHaveLength(1);
    expect(f.reconciler.nextWriteInMs(KEY, 1_000, true)).toBe(7_000);
    expect(f.reconciler.nextWriteInMs(KEY, 1_000)).toBe(1_000);

    // The agent detaches: Ready changes, which goes out now, counters and all.
    f.report(6, false);
    expect(await f.reconcile()).toBeUndefined();
    expect(f.writes).toHaveLength(2);
    expect(f.ready()).toBe('False');
    expect(f.sp.status?.connections).toBe(6);
    expect(f.events).toEqual(['Attached']);

    // Attached again 1 s later: within the write interval, so deferred to the end of it (not of the counter one).
    await f.clock.advance(1_000);
    f.report(7);
    expect(await f.reconcile()).toEqual({ requeueAfterMs: 1_000 });
    await f.clock.advance(1_000);
    expect(await f.reconcile()).toBeUndefined();
    expect(f.ready()).toBe('True');
    expect(f.writes).toHaveLength(3);
    expect(f.events).toEqual(['Attached', 'Attached']);

    // Then counters alone, every second for 25 s: written at most every 10 s.
    for (let i = 0; i < 25; i++) {
      await f.clock.advance(1_000);
      f.report(8 + i);
      await f.reconcile();
    }
    const gaps = f.writes.slice(3).map((t, i) => t - f.writes[2 + i]!);
    expect(gaps).toEqual([10_000, 10_000]);
    expect(f.sp.status?.connections).toBe(8 + 19);
  });

  it('without a budget, counters alone are written once per write interval', async () => {
    const f = new Fixture({ intervalMs: 2_000, budget: 0, count: 100 });
    f.report(1);
    await f.reconcile();
    for (let i = 0; i < 10; i++) {
      await f.clock.advance(1_000);
      f.report(2 + i);
      await f.reconcile();
    }
    expect(f.writes.slice(1).map((t, i) => t - f.writes[i]!)).toEqual([2_000, 2_000, 2_000, 2_000, 2_000]);
  });
});
