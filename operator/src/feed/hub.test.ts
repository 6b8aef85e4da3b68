// The feed hub with connections that record what they are sent (no TLS, no apiserver): the frames it puts
// together from cached parts are the ConfigFrames the agent parses, one per change and none without one;
// program bytes go once per stream; a report names the StreamPaths whose part of it changed.
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { ConfigFrameSchema, encodeFrame, type ConfigFrame, type DeliveredProgram, type ReportFrame } from '../../../api/src/feed.js';
import { FakeClock } from '../../../runtime/src/clock.js';
import type { StreamPathObject } from '../controller/reconciler.js';
import type { SlimPod } from '../kube/objects.js';
import { FeedHub } from './hub.js';
import type { ProgramCache } from './programs.js';
import type { FeedSessionHandlers } from './server.js';

const NS = 'shop';

function pod(name: string, labels: Record<string, string>, extra: Partial<SlimPod> = {}): SlimPod {
  return { namespace: NS, name, uid: `uid-${name}`, labels, podIP: '10.0.0.1', injected: true, agentPort: 15090, optedOut: false, deleting: false, ...extra };
}

function streamPath(name: string, generation: number, spec: Record<string, unknown>): StreamPathObject {
  return {
    apiVersion: 'kstreams.io/v1alpha1',
    kind: 'StreamPath',
    metadata: { name, namespace: NS, uid: `uid-${name}`, generation, resourceVersion: String(generation), creationTimestamp: '2026-12-02T00:00:00Z' } as StreamPathObject['metadata'],
    spec,
  };
}

const mirror = (app: string, port: number, extra: Record<string, unknown> = {}) => ({ selector: { matchLabels: { app } }, port, mirror: { targets: [{ address: '127.0.0.1:9' }] }, ...extra });
const allFront = (generation: number) => streamPath('all', generation, { ...mirror('x', 8080 + generation), selector: { matchLabels: { tier: 'front' } } });

class Fixture {
  readonly clock = new FakeClock();
  readonly pods = new Map<string, SlimPod>();
  sps: StreamPathObject[] = [];
  readonly sent = new Map<string, string[]>();
  readonly observations: { pod: string; changed: string[] | undefined }[] = [];
  /** Per observation, which of `changed` changed in their counters alone. */
  readonly countersOnly: (string[] | undefined)[] = [];
  programs: Record<string, DeliveredProgram> = {};
  readonly hub: FeedHub;

  constructor(useIndex: boolean, flushSliceMs?: number, ackWaitMs?: number) {
    this.hub = new FeedHub({
      ...(flushSliceMs !== undefined ? { flushSliceMs } : {}),
      ...(ackWaitMs !== undefined ? { ackWaitMs } : {}),
      clock: this.clock,
      log: pino({ level: 'silent' }),
      getPod: (key) => this.pods.get(key),
      streamPathsIn: (ns) => this.sps.filter((sp) => sp.metadata.namespace === ns),
      // The caller's index is a superset: here every StreamPath, the hub checks each selector itself.
      ...(useIndex ? { streamPathsSelecting: () => this.sps } : {}),
      getService: () => undefined,
      getEndpoints: () => undefined,
      programs: { get: (_ns: string, cm: string, key: string) => this.programs[`${cm}/${key}`] } as unknown as ProgramCache,
      onObservation: (p, changed, countersOnly) => {
        this.observations.push({ pod: p.name, changed: changed && [...changed].sort() });
        this.countersOnly.push(countersOnly && [...countersOnly].sort());
      },
      disconnectGraceMs: 10_000,
    });
  }

  addPod(p: SlimPod): void {
    this.pods.set(`${p.namespace}/${p.name}`, p);
  }

  /** One StreamPath `all` (at `generation`, its port 8080 + generation) selecting `n` pods p-0.. of tier front. */
  front(n: number, generation = 1): SlimPod[] {
    this.sps = [allFront(generation)];
    const pods = Array.from({ length: n }, (_, i) => pod(`p-${i}`, { tier: 'front' }));
    for (const p of pods) this.addPod(p);
    return pods;
  }

  connect(p: SlimPod): FeedSessionHandlers {
    const lines: string[] = [];
    this.sent.set(p.name, lines);
    return this.hub.attach({ namespace: p.namespace, pod: p.name, podUid: p.uid, serviceAccount: 'default' }, { send: (l) => (lines.push(l), true), close: () => {} });
  }

  frames(name: string): ConfigFrame[] {
    return (this.sent.get(name) ?? []).map((l) => {
      expect(l.endsWith('\n')).toBe(true);
      return ConfigFrameSchema.parse(JSON.parse(l));
    });
  }

  /** The hub's pass over dirty agents runs in immediates: let it finish. */
  async settle(): Promise<void> {
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  }
}

function report(applied: number, entries: { name: string; generation: number; connections?: number }[], ready = true): ReportFrame {
  return {
    type: 'report',
    applied,
    report: {
      pod: { namespace: NS, name: 'whatever' },
      ready,
      streamPaths: entries.map((e) => ({ name: e.name, generation: e.generation, attached: true, connections: e.connections ?? 1, bytesPrimary: 10, bytesMirrored: 10, bytesDropped: 0, targets: [] })),
    },
  };
}

describe.each([true, false])('FeedHub (selection index given: %s)', (useIndex) => {
  it('sends each agent one frame per change, equal to the ConfigFrame encodeFrame would make, and none without a change', async () => {
    const f = new Fixture(useIndex);
    const web = pod('web-0', { app: 'web', tier: 'front' }, { termination: { terminationGracePeriodSeconds: 30 } });
    const db = pod('db-0', { app: 'db', tier: 'back' });
    f.addPod(web);
    f.addPod(db);
    f.sps = [streamPath('web', 1, mirror('web', 8080)), allFront(1), streamPath('db', 1, mirror('db', 5432))];
    f.hub.setSynced();
    f.connect(web);
    f.connect(db);
    await f.settle();

    const [first] = f.frames('web-0');
    const expected: ConfigFrame = {
      type: 'config',
      version: 1,
      pod: { labels: { app: 'web', tier: 'front' }, termination: { terminationGracePeriodSeconds: 30 } },
      streamPaths: ['all', 'web'].map((name) => {
        const sp = f.sps.find((s) => s.metadata.name === name)!;
        return { apiVersion: sp.apiVersion, kind: sp.kind, metadata: { name, uid: `uid-${name}`, generation: 1, creationTimestamp: '2026-12-02T00:00:00Z' }, spec: sp.spec };
      }),
      services: {},
      programs: {},
    };
    expect(first).toEqual(expected);
    expect(f.sent.get('web-0')![0]).toBe(encodeFrame(expected));
    expect(f.frames('db-0').map((c) => c.streamPaths.map((s) => s.metadata.name))).toEqual([['db']]);

    // Nothing changed for the agents: a status write comes back as a new object of the same generation.
    f.sps = f.sps.map((sp) => ({ ...sp, metadata: { ...sp.metadata, resourceVersion: `${sp.metadata.resourceVersion}-status` } }));
    f.hub.streamPathsChanged(NS);
    f.hub.streamPathsChanged(NS);
    await f.settle();
    expect(f.sent.get('web-0')).toHaveLength(1);
    expect(f.sent.get('db-0')).toHaveLength(1);

    // An edit of `all`: one frame to the pod it selects, with the new generation, none to the other.
    f.sps = f.sps.map((sp) => (sp.metadata.name === 'all' ? allFront(2) : sp));
    f.hub.streamPathsChanged(NS);
    await f.settle();
    const frames = f.frames('web-0');
    expect(frames).toHaveLength(2);
    expect(frames[1]!.version).toBe(2);
    expect(frames[1]!.streamPaths.map((s) => [s.metadata.name, s.metadata.generation, (s.spec as { port: number }).port])).toEqual([['all', 2, 8082], ['web', 1, 8080]]);
    expect(f.sent.get('db-0')).toHaveLength(1);
  });

  it('sends program bytes once per stream, then their hash; services and programs are keyed in sorted order', async () => {
    const f = new Fixture(useIndex);
    const p = pod('p-0', { app: 'p' });
    f.addPod(p);
    const ops = (cm: string) => ({ transform: { applyTo: 'mirror', ops: [{ program: { configMap: cm, key: 'prog.o' } }] } });
    f.programs = { 'zeta/prog.o': { data: 'AAAA', sha256: 'aa' }, 'alpha/prog.o': { data: 'BBBB', sha256: 'bb' } };
    f.sps = [streamPath('z', 1, mirror('p', 8080, ops('zeta'))), streamPath('a', 1, mirror('p', 8081, ops('alpha')))];
    f.hub.setSynced();
    f.connect(p);
    await f.settle();
    const line = f.sent.get('p-0')![0]!;
    const first = f.frames('p-0')[0]!;
    expect(Object.keys(first.programs)).toEqual(['alpha/prog.o', 'zeta/prog.o']);
    expect(line.indexOf('alpha/prog.o')).toBeLessThan(line.indexOf('zeta/prog.o'));
    expect(first.programs['alpha/prog.o']).toEqual({ data: 'BBBB', sha256: 'bb' });
    f.sps = [f.sps[0]!, streamPath('a', 2, mirror('p', 8083, ops('alpha')))];
    f.hub.streamPathsChanged(NS);
    await f.settle();
    const second = f.frames('p-0')[1]!;
    expect(second.programs).toEqual({ 'alpha/prog.o': { sha256: 'bb' }, 'zeta/prog.o': { sha256: 'aa' } });
  });

  it('names the StreamPaths whose entry of a report changed; all of them for a first report or a readiness change', async () => {
    const f = new Fixture(useIndex);
    const p = pod('p-0', { app: 'p' });
    f.addPod(p);
    f.sps = [streamPath('a', 1, mirror('p', 8080)), streamPath('b', 1, mirror('p', 8081))];
    f.hub.setSynced();
    const h = f.connect(p);
    await f.settle();

    h.frame(report(1, [{ name: 'a', generation: 1 }, { name: 'b', generation: 1 }]));
    expect(f.observations).toEqual([{ pod: 'p-0', changed: undefined }]);
    expect(f.hub.observe(p)?.report?.pod).toEqual({ namespace: NS, name: 'p-0', uid: 'uid-p-0' });
    // The same report again (a keepalive, or only `applied` moved): nothing to reconcile.
    h.frame(report(2, [{ name: 'a', generation: 1 }, { name: 'b', generation: 1 }]));
    expect(f.observations).toHaveLength(1);
    expect(f.hub.applied('default/p-0')).toBeUndefined();
    expect(f.hub.applied(`${NS}/p-0`)).toBe(2);
    // `b` acknowledged at a new generation: only `b`.
    h.frame(report(3, [{ name: 'a', generation: 1 }, { name: 'b', generation: 2 }]));
    expect(f.observations.at(-1)).toEqual({ pod: 'p-0', changed: ['b'] });
    // `a` gone from the report and `b`'s counters moved.
    h.frame(report(3, [{ name: 'b', generation: 2, connections: 5 }]));
    expect(f.observations.at(-1)).toEqual({ pod: 'p-0', changed: ['a', 'b'] });
    // Readiness concerns every StreamPath.
    h.frame(report(3, [{ name: 'b', generation: 2, connections: 5 }], false));
    expect(f.observations.at(-1)).toEqual({ pod: 'p-0', changed: undefined });
    // Each new observation carries its own key; an unchanged report keeps the stored one.
    const key = f.hub.observe(p)?.key;
    expect(key).toBeDefined();
    h.frame(report(4, [{ name: 'b', generation: 2, connections: 5 }], false));
    expect(f.hub.observe(p)?.key).toBe(key);
  });

  it('says which changed entries changed in their counters alone', async () => {
    const f = new Fixture(useIndex);
    const p = pod('p-0', { app: 'p' });
    f.addPod(p);
    f.sps = [streamPath('a', 1, mirror('p', 8080)), streamPath('b', 1, mirror('p', 8081))];
    f.hub.setSynced();
    const h = f.connect(p);
    await f.settle();
    type Entry = ReportFrame['report']['streamPaths'][number];
    const target = (mirrored: number, failures: number) => ({ name: 't', connectionsMirrored: mirrored, connectionsCut: 0, connectFailures: failures, bytesMirrored: 0, bytesDropped: 0 });
    const entry = (name: string, extra: Partial<Entry> = {}): Entry => ({ name, generation: 1, attached: true, connections: 1, bytesPrimary: 10, bytesMirrored: 10, bytesDropped: 0, targets: [target(1, 0)], ...extra });
    const send = (applied: number, entries: Entry[]) => h.frame({ type: 'report', applied, report: { pod: { namespace: NS, name: 'p-0' }, ready: true, streamPaths: entries } });

    send(1, [entry('a'), entry('b')]);
    expect(f.countersOnly.at(-1)).toBeUndefined(); // a first report: everything is news
    send(1, [entry('a', { connections: 4, bytesPrimary: 99 }), entry('b')]);
    expect(f.observations.at(-1)?.changed).toEqual(['a']);
    expect(f.countersOnly.at(-1)).toEqual(['a']);
    // A target's connect failures while it mirrored connections: counters.
    send(1, [entry('a', { connections: 4, bytesPrimary: 99 }), entry('b', { targets: [target(1, 3)] })]);
    expect(f.countersOnly.at(-1)).toEqual(['b']);
    // b detaching and a's target failing before any connection was mirrored (a TargetUnreachable condition): not counters.
    send(1, [entry('a', { connections: 4, bytesPrimary: 99, targets: [target(0, 1)] }), entry('b', { attached: false, targets: [target(1, 3)] })]);
    expect(f.observations.at(-1)?.changed).toEqual(['a', 'b']);
    expect(f.countersOnly.at(-1)).toEqual([]);
    // Its failures counting up while none is mirrored: the condition's message says how many, so not counters either.
    send(1, [entry('a', { connections: 4, bytesPrimary: 99, targets: [target(0, 2)] }), entry('b', { attached: false, targets: [target(1, 3)] })]);
    expect(f.countersOnly.at(-1)).toEqual([]);
    // A new generation acknowledged along with counters: not counters alone.
    send(2, [entry('a', { connections: 4, bytesPrimary: 99, targets: [target(0, 2)] }), entry('b', { attached: false, generation: 2, connections: 9, targets: [target(1, 3)] })]);
    expect(f.observations.at(-1)?.changed).toEqual(['b']);
    expect(f.countersOnly.at(-1)).toEqual([]);
  });

  it('has a backlog while configurations wait, and whenIdle resolves once every one of them went out', async () => {
    // A slice of 0 ms: one configuration per event-loop turn, so the pass spans many turns.
    const f = new Fixture(useIndex, 0);
    const pods = f.front(20);
    expect(f.hub.backlog).toBe(false);
    await f.hub.whenIdle(10_000); // nothing waits: at once
    for (const p of pods) f.connect(p);
    // Not synced: nothing is sent, and nothing counts as waiting for the feed.
    expect(f.hub.backlog).toBe(false);
    f.hub.setSynced();
    expect(f.hub.backlog).toBe(true);
    // Longer than the test's own timeout: only the end of the pass can resolve it in time.
    await f.hub.whenIdle(60_000);
    expect(f.hub.backlog).toBe(false);
    expect(pods.map((p) => f.sent.get(p.name)?.length)).toEqual(pods.map(() => 1));
    // Stopping ends the wait too.
    f.sps = [allFront(2)];
    f.hub.streamPathsChanged(NS);
    const waiting = f.hub.whenIdle(60_000);
    f.hub.stop();
    await waiting;
  });

  it('is propagating until each configuration sent is acknowledged; whenPropagated resolves at the last acknowledgement', async () => {
    const f = new Fixture(useIndex, 0);
    const pods = f.front(5);
    const handlers = pods.map((p) => f.connect(p));
    expect(f.hub.propagating).toBe(false);
    f.hub.setSynced();
    expect(f.hub.propagating).toBe(true); // the backlog
    await f.hub.whenIdle(60_000);
    // Sent, not acknowledged: still on its way.
    expect(f.hub.backlog).toBe(false);
    expect(f.hub.propagating).toBe(true);
    let done = false;
    const propagated = f.hub.whenPropagated(60_000).then(() => (done = true));
    // An acknowledgement of an older version, a report without one: nothing changes.
    handlers[0]!.frame(report(0, []));
    for (const h of handlers.slice(0, -1)) h.frame(report(1, [{ name: 'all', generation: 1 }]));
    await f.settle();
    expect(f.hub.propagating).toBe(true);
    expect(done).toBe(false);
    // The last one: at once, well before the wait's own 60 s.
    handlers.at(-1)!.frame(report(1, [{ name: 'all', generation: 1 }]));
    await propagated;
    expect(f.hub.propagating).toBe(false);
    // Nothing in flight: at once.
    await f.hub.whenPropagated(60_000);
    // A closed stream no longer counts.
    f.sps = [allFront(2)];
    f.hub.streamPathsChanged(NS);
    await f.hub.whenIdle(60_000);
    for (const h of handlers.slice(1)) h.frame(report(2, [{ name: 'all', generation: 2 }]));
    expect(f.hub.propagating).toBe(true);
    handlers[0]!.closed();
    expect(f.hub.propagating).toBe(false);
  });

  it('counts a configuration as in flight for ackWaitMs at most: an agent that never answers holds nothing longer', async () => {
    const f = new Fixture(useIndex, undefined, 1_000);
    const p = f.front(1)[0]!;
    f.connect(p);
    f.hub.setSynced();
    await f.hub.whenIdle(60_000);
    const t0 = performance.now();
    // A waiter's deadline ends its wait while the configuration is still in flight...
    await f.hub.whenPropagated(50);
    expect(f.hub.propagating).toBe(true);
    // ...counted from the start of the propagation: a later wait in the same one is not held again.
    const t1 = performance.now();
    await f.hub.whenPropagated(50);
    expect(performance.now() - t1).toBeLessThan(500);
    expect(f.hub.propagating).toBe(true);
    // ...and the expiry ends the in-flight state (seen at the waiter's next check: its deadline, past it).
    await f.hub.whenPropagated(1_300);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(1_000);
    expect(f.hub.propagating).toBe(false);
  });

  it('holds reading reports (handlers.later) while configurations wait: run after the last frame, in order', async () => {
    const f = new Fixture(useIndex, 0);
    const pods = f.front(10);
    const handlers = pods.map((p) => f.connect(p));
    const ran: string[] = [];
    // Nothing waits yet (not synced): at once.
    handlers[0]!.later!(() => ran.push('now'));
    expect(ran).toEqual(['now']);
    f.hub.setSynced();
    const framesWhenRun: number[] = [];
    handlers.forEach((h, i) =>
      h.later!(() => {
        ran.push(`p-${i}`);
        framesWhenRun.push([...f.sent.values()].reduce((n, l) => n + l.length, 0));
      }),
    );
    expect(ran).toEqual(['now']);
    await f.hub.whenIdle(60_000);
    await f.settle();
    expect(ran).toEqual(['now', ...pods.map((p) => p.name)]);
    expect(framesWhenRun).toEqual(pods.map(() => pods.length));
  });
});
