import { describe, expect, it } from 'vitest';
import { FakeClock, flushMicrotasks } from './clock.js';
import { Backoff } from './backoff.js';
import { Informer, InformerLifecycle } from './informer.js';
import { ApiError, type KubeRequestOptions, type KubeTransport, type WatchEvent } from './rest.js';

type Obj = { metadata: { name: string; resourceVersion: string }; v?: number };

/** A scripted apiserver: list answers from `items`, each watch runs the next script step. */
class FakeServer implements KubeTransport {
  items: Obj[] = [];
  listRv = '10';
  lists: string[] = [];
  watches: Record<string, string>[] = [];
  steps: ((emit: (e: WatchEvent) => void, signal: AbortSignal) => Promise<void>)[] = [];

  /** While set, a list hangs until its signal aborts (an apiserver slow to answer). */
  hangLists = false;

  async request<T>(method: string, path: string, opts?: KubeRequestOptions): Promise<T> {
    this.lists.push(`${method} ${path}`);
    if (this.hangLists) {
      const signal = opts?.signal;
      await new Promise<never>((_resolve, reject) => {
        const abort = () => reject(Object.assign(new Error('aborted'), { name: 'AbortError' }));
        if (signal?.aborted) abort();
        signal?.addEventListener('abort', abort, { once: true });
      });
    }
    return { metadata: { resourceVersion: this.listRv }, items: this.items } as T;
  }

  async watch(_path: string, query: Record<string, string>, onEvent: (e: WatchEvent) => void, signal: AbortSignal): Promise<void> {
    this.watches.push(query);
    const step = this.steps.shift();
    if (step) return step(onEvent, signal);
    // No more script: hang until aborted, like an idle watch.
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
  }
}

const obj = (name: string, rv: string, v = 0): Obj => ({ metadata: { name, resourceVersion: rv }, v });

function makeInformer(server: FakeServer, clock: FakeClock, events: InformerLifecycle[], delays: number[]) {
  const inf = new Informer<Obj>({
    name: 'things',
    transport: server,
    path: '/api/v1/things',
    transform: (raw) => raw as unknown as Obj,
    key: (o) => o.metadata.name,
    equal: (a, b) => a.v === b.v,
    clock,
    backoff: new Backoff({ initialMs: 1000, maxMs: 8000, jitter: 0, random: () => 0 }),
    resyncPeriodMs: 60_000,
    watchTimeoutSeconds: () => 300,
    onLifecycle: (e, d) => {
      events.push(e);
      if (d.delayMs !== undefined) delays.push(d.delayMs);
    },
  });
  return inf;
}

describe('Informer', () => {
  it('lists, then watches from the list resourceVersion and applies events', async () => {
    const server = new FakeServer();
    const clock = new FakeClock();
    server.items = [obj('a', '5'), obj('b', '6')];
    server.steps.push(async (emit) => {
      emit({ type: 'ADDED', object: obj('c', '11') as never });
      emit({ type: 'MODIFIED', object: obj('a', '12', 1) as never });
      emit({ type: 'MODIFIED', object: obj('b', '13', 0) as never }); // nothing we keep changed
      emit({ type: 'DELETED', object: obj('b', '14') as never });
      emit({ type: 'BOOKMARK', object: { metadata: { resourceVersion: '20' } } as never });
    });
    const seen: string[] = [];
    const events: InformerLifecycle[] = [];
    const inf = makeInformer(server, clock, events, []);
    inf.on({ add: (o) => seen.push(`add ${o.metadata.name}`), update: (_o, n) => seen.push(`update ${n.metadata.name}`), delete: (o) => seen.push(`delete ${o.metadata.name}`) });
    inf.start();
    await inf.whenSynced();
    await flushMicrotasks();
    expect(seen).toEqual(['add a', 'add b', 'add c', 'update a', 'delete b']);
    expect([...inf.list()].map((o) => o.metadata.name).sort()).toEqual(['a', 'c']);
    expect(server.watches[0]!.resourceVersion).toBe('10');
    // the first watch ended normally: resumed from the bookmark, no relist, no backoff
    await flushMicrotasks();
    expect(server.watches[1]!.resourceVersion).toBe('20');
    expect(server.lists).toHaveLength(1);
    expect(events).toContain(InformerLifecycle.WatchClosed);
    await inf.stop();
  });

  it('stop() ends a list in flight: a slow apiserver does not hold the shutdown (the list is aborted)', async () => {
    const server = new FakeServer();
    const clock = new FakeClock();
    server.hangLists = true;
    const inf = makeInformer(server, clock, [], []);
    inf.start();
    await flushMicrotasks();
    expect(server.lists).toHaveLength(1);
    let stopped = false;
    const stopping = inf.stop().then(() => (stopped = true));
    await flushMicrotasks();
    expect(stopped).toBe(true);
    await stopping;
    expect(inf.synced).toBe(false);
  });

  it('on 410 Gone relists after a jittered backoff, and delivers deletes missed meanwhile', async () => {
    const server = new FakeServer();
    const clock = new FakeClock();
    server.items = [obj('a', '5'), obj('b', '6')];
    server.steps.push(async (emit) => emit({ type: 'ERROR', object: { kind: 'Status', code: 410, message: 'too old resource version: 10 (50)' } as never }));
    const events: InformerLifecycle[] = [];
    const delays: number[] = [];
    const deleted: string[] = [];
    const inf = makeInformer(server, clock, events, delays);
    inf.on({ delete: (o) => deleted.push(o.metadata.name) });
    inf.start();
    await inf.whenSynced();
    await flushMicrotasks();
    expect(events).toContain(InformerLifecycle.Expired);
    expect(clock.pending()).toContain(1000); // the first backoff step
    // b was deleted while the watch was down; the relist must notice
    server.items = [obj('a', '5')];
    server.listRv = '60';
    await clock.advance(999);
    expect(server.lists).toHaveLength(1); // not before the backoff delay
    await clock.advance(1);
    expect(server.lists).toHaveLength(2);
    expect(deleted).toEqual(['b']);
    expect(server.watches.at(-1)!.resourceVersion).toBe('60');
    await inf.stop();
  });

  it('with a list function (one object by name, no list RBAC): lists through it, watches from its resourceVersion, relists through it after 410', async () => {
    const server = new FakeServer();
    const clock = new FakeClock();
    server.steps.push(async (emit) => emit({ type: 'ERROR', object: { kind: 'Status', code: 410, message: 'too old resource version' } as never }));
    let current: Obj | undefined = obj('tls', '7');
    const reads: string[] = [];
    const seen: string[] = [];
    const inf = new Informer<Obj>({
      name: 'one secret',
      transport: server,
      path: '/api/v1/namespaces/ns/secrets',
      fieldSelector: 'metadata.name=tls',
      list: async () => {
        reads.push('get tls');
        return current ? { items: [current as never], resourceVersion: current.metadata.resourceVersion } : { items: [] };
      },
      transform: (raw) => raw as unknown as Obj,
      key: (o) => o.metadata.name,
      clock,
      backoff: new Backoff({ initialMs: 1000, maxMs: 8000, jitter: 0, random: () => 0 }),
      resyncPeriodMs: 60_000,
      watchTimeoutSeconds: () => 300,
    });
    inf.on({ add: (o) => seen.push(`add ${o.metadata.name}`), delete: (o) => seen.push(`delete ${o.metadata.name}`) });
    inf.start();
    await inf.whenSynced();
    await flushMicrotasks();
    expect(server.lists).toEqual([]); // never a list request
    expect(reads).toEqual(['get tls']);
    expect(server.watches[0]).toMatchObject({ resourceVersion: '7', fieldSelector: 'metadata.name=tls' });
    current = undefined; // deleted while the watch was down
    await clock.advance(1000);
    expect(reads).toEqual(['get tls', 'get tls']);
    expect(seen).toEqual(['add tls', 'delete tls']);
    expect(server.lists).toEqual([]);
    await inf.stop();
  });

  it('backs off exponentially while the apiserver keeps failing, then recovers', async () => {
    const server = new FakeServer();
    const clock = new FakeClock();
    const fail = async () => {
      throw new ApiError(503, 'GET', '/api/v1/things', '{"message":"unavailable"}');
    };
    server.steps.push(fail, fail, fail, fail, fail);
    const events: InformerLifecycle[] = [];
    const delays: number[] = [];
    const inf = makeInformer(server, clock, events, delays);
    inf.start();
    await inf.whenSynced();
    for (let i = 0; i < 5; i++) {
      await flushMicrotasks();
      await clock.advance(clock.pending()[0]!);
    }
    await flushMicrotasks();
    expect(delays).toEqual([1000, 2000, 4000, 8000, 8000]);
    expect(events.filter((e) => e === InformerLifecycle.Failed)).toHaveLength(5);
    // a failed watch keeps the resourceVersion: resumed, not relisted
    expect(server.lists).toHaveLength(1);
    expect(server.watches.at(-1)!.resourceVersion).toBe('10');
    await inf.stop();
  });

  it('calls resync() every resync period once synced', async () => {
    const server = new FakeServer();
    const clock = new FakeClock();
    const events: InformerLifecycle[] = [];
    const inf = makeInformer(server, clock, events, []);
    let resyncs = 0;
    inf.on({ resync: () => resyncs++ });
    inf.start();
    await inf.whenSynced();
    await clock.advance(60_000);
    await clock.advance(60_000);
    expect(resyncs).toBe(2);
    await inf.stop();
    expect(events.at(-1)).toBe(InformerLifecycle.Stopped);
  });

  it('a throwing handler is counted and skipped; the same watch goes on delivering to every handler', async () => {
    const server = new FakeServer();
    const clock = new FakeClock();
    let release!: () => void;
    const ended = new Promise<void>((r) => (release = r));
    server.steps.push(async (emit, signal) => {
      emit({ type: 'ADDED', object: obj('bad', '11') as never });
      emit({ type: 'ADDED', object: obj('good', '12') as never });
      emit({ type: 'MODIFIED', object: obj('bad', '13', 1) as never });
      release();
      // stays open: a frozen watch would be one that ignores what follows until the server closes it
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    });
    const events: InformerLifecycle[] = [];
    const inf = makeInformer(server, clock, events, []);
    const seen: string[] = [];
    inf.on({
      add: (o) => {
        if (o.metadata.name === 'bad') throw new Error('consumer bug');
        seen.push(`first add ${o.metadata.name}`);
      },
      update: (_o, n) => seen.push(`first update ${n.metadata.name}`),
    });
    inf.on({ add: (o) => seen.push(`second add ${o.metadata.name}`) });
    inf.start();
    await ended;
    await flushMicrotasks();
    expect(seen).toEqual(['second add bad', 'first add good', 'second add good', 'first update bad']);
    expect(events.filter((e) => e === InformerLifecycle.HandlerFailed)).toHaveLength(1);
    expect(server.watches).toHaveLength(1); // not reconnected, not closed
    expect(events).not.toContain(InformerLifecycle.Failed);
    expect(inf.get('bad')?.v).toBe(1);
    await inf.stop();
  });

  it('a watch silent past its idle timeout is taken for dead: aborted and the cache relisted', async () => {
    const server = new FakeServer();
    const clock = new FakeClock();
    let aborted = 0;
    server.steps.push(async (_emit, signal) => {
      // A dead connection: no event, no close, until the client gives up on it.
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => (aborted++, resolve()), { once: true }));
    });
    const events: InformerLifecycle[] = [];
    const delays: number[] = [];
    const inf = makeInformer(server, clock, events, delays);
    inf.start();
    await inf.whenSynced();
    await flushMicrotasks();
    expect(server.lists).toHaveLength(1);
    // default idle timeout: the server-side timeout (300 s here) plus 30 s
    await clock.advance(330_000 - 1);
    expect(events).not.toContain(InformerLifecycle.IdleTimeout);
    await clock.advance(1);
    expect(aborted).toBe(1);
    expect(events).toContain(InformerLifecycle.IdleTimeout);
    await clock.advance(delays.at(-1)!);
    expect(server.lists).toHaveLength(2); // relisted
    expect(server.watches).toHaveLength(2);
    await inf.stop();
  });
});
