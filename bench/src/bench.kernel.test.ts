// Smoke check of the bench: the quick mode with tiny sizes runs every path in a real namespace and the
// report has every row with sane numbers. Speed is not asserted here; that is what `npm run bench` is for.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { ALL_PATHS } from './paths.js';
import { redisMissing } from './redis.js';
import { bulkTable, latencyTable, redisTable, targets } from './report.js';
import { repoPath } from './repo.js';
import { Bench, type BenchRun } from './run.js';

/** Whether this checkout has a built engine; without it the KStreams rows must say why they are empty. */
async function engineAvailable(): Promise<boolean> {
  if (!existsSync(repoPath('native/build/Release/kstreams.node'))) return false;
  const libPath = '../../native/lib/index.js';
  const lib = (await import(libPath)) as Record<string, unknown>;
  return typeof lib['Engine'] === 'function' && typeof lib['Interception'] === 'function';
}

describe('bench quick mode', () => {
  let run: BenchRun;

  it('runs every path on every load and leaves no namespace behind', async () => {
    const bench = new Bench({
      bytes: 32 * 2 ** 20,
      runs: 1,
      rrCount: 300,
      rrConns: 2,
      rrSize: 64,
      pipeSize: 1 << 20,
      socatBuffer: 256 * 1024,
      mirrorBufferSize: 4 * 2 ** 20,
      bulkMirrorBufferSize: 64 * 2 ** 20,
      turnTimeoutMs: 1000,
      // A thousand requests: the row's plumbing (servers, probe, CSV, the mirror comparison), not its speed.
      // No -P measurement: the same code with one more flag, and it would add a few seconds.
      redis: { requests: 1000, conns: 50, keyspace: 1000, tests: ['set', 'get'], pipeline: 0 },
      quick: true,
    });
    run = await bench.run();
    expect(run.paths.map((p) => p.id)).toEqual(ALL_PATHS.map((p) => p.id));
    const namespaces = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
    expect(namespaces).not.toContain(`ks-bench-${process.pid}-`);
  }, 300_000);

  it('measures the baselines with sane numbers', () => {
    for (const id of ['direct', 'node', 'socat', 'haproxy', 'node-mirror']) {
      const p = run.paths.find((x) => x.id === id);
      expect(p?.errors, id).toEqual([]);
      const m = p?.median ?? {};
      expect(m.gbps, id).toBeGreaterThan(0.01);
      expect(m.gbps, id).toBeLessThan(200);
      expect(m.sysCpuPerGB, id).toBeGreaterThan(0);
      expect(m.p50Us, id).toBeGreaterThan(0);
      expect(m.p99Us, id).toBeGreaterThanOrEqual(m.p50Us ?? 0);
      expect(m.concurrentRps, id).toBeGreaterThan(0);
      if (id !== 'direct') expect(m.peakRssMB, id).toBeGreaterThan(0);
    }
    // The JS mirror delivers to the sink (it may be cut on a loaded machine, like any mirror here).
    expect(run.paths.find((p) => p.id === 'node-mirror')?.median.mirrorFraction).toBeGreaterThan(0);
  });

  it('measures the KStreams rows when the engine is built, and says why not otherwise', async () => {
    const kstreams = run.paths.filter((p) => p.family === 'kstreams');
    expect(kstreams.length).toBe(4);
    if (await engineAvailable()) {
      for (const p of kstreams) {
        expect(p.errors, p.id).toEqual([]);
        expect(p.median.gbps, p.id).toBeGreaterThan(0.01);
        expect(p.median.p99Us, p.id).toBeGreaterThan(0);
        if (p.kind !== 'mirror') continue;
        // Every mirror row says in how many runs its mirror got the whole stream, and over which runs its
        // figures are.
        expect(p.median.mirrorRuns, p.id).toBe(p.bulk.length);
        expect(p.median.figureRuns?.length, p.id).toBeGreaterThan(0);
        // A mirror either got the whole stream or the engine counted the cut: never a silent gap.
        for (const b of p.bulk) {
          expect(b.mirrorBytes, p.id).toBeGreaterThan(0);
          if ((b.mirrorBytes ?? 0) < b.bytes) {
            const t = b.engineStats?.targets[0];
            expect((t?.connectionsCut ?? 0) + (t?.connectFailures ?? 0), `${p.id}: mirror short without a counted cut`).toBeGreaterThan(0);
          }
        }
      }
    } else {
      for (const p of kstreams) expect(p.errors.length, p.id).toBeGreaterThan(0);
    }
  });

  it('drives redis-benchmark through the redis paths and compares the mirror server with the app', async () => {
    const missing = redisMissing();
    if (missing) {
      expect(run.redisSkipped).toBe(missing);
      return;
    }
    const engine = await engineAvailable();
    for (const id of ['direct', 'haproxy', 'kstreams', 'node-mirror', 'kstreams-mirror']) {
      const p = run.paths.find((x) => x.id === id);
      if (p?.family === 'kstreams' && !engine) continue;
      expect(p?.errors.filter((e) => e.startsWith('redis')), id).toEqual([]);
      for (const m of [p?.redisMedian]) {
        expect(m?.rps, id).toBeGreaterThan(0);
        expect(Object.keys(m?.testRps ?? {}).sort(), id).toEqual(['GET', 'SET']);
        expect(m?.p99Ms, id).toBeGreaterThanOrEqual(m?.p50Ms ?? 0);
      }
      for (const s of [...(p?.redis ?? []), ...(p?.redisPipelined ?? [])]) {
        if (p?.kind !== 'mirror') continue;
        // The mirror server got the same bytes and commands as the app, or the engine counted why not.
        expect(s.mirror?.netInputBytes, id).toBeGreaterThan(0);
        if (!s.mirrorWhole) expect(s.mirrorShort, id).toMatch(/engine counted/);
      }
    }
    // Paths outside the redis row have no redis samples.
    expect(run.paths.find((p) => p.id === 'socat')?.redis).toEqual([]);
  });

  it('renders a row per path in both tables and a verdict per target', () => {
    const bulk = bulkTable(run);
    const latency = latencyTable(run);
    for (const p of ALL_PATHS) {
      expect(bulk).toContain(p.label);
      expect(latency).toContain(p.label);
    }
    if (!run.redisSkipped) {
      const redis = redisTable(run, false);
      for (const id of ['direct', 'haproxy', 'kstreams', 'node-mirror', 'kstreams-mirror']) {
        expect(redis).toContain(ALL_PATHS.find((p) => p.id === id)?.label);
      }
    }
    const t = targets(run);
    expect(t.length).toBeGreaterThanOrEqual(7);
    for (const r of t) expect(r.margin).not.toBe('');
    const names = t.map((r) => r.name).join('\n');
    expect(names).toContain('bulk setting: whole in >= 1 of 1 runs');
    if (!run.redisSkipped) expect(names).toContain('redis: KStreams proxy req/s >= 1.2x HAProxy');
  });
});
