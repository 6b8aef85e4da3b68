// Smoke check of the bench: the quick mode with tiny sizes runs every path in a real namespace and the
// report has every row with sane numbers. Speed is not asserted here; that is what `npm run bench` is for.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { ALL_PATHS } from './paths.js';
import { bulkTable, latencyTable, targets } from './report.js';
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

  it('runs every path on both workloads and leaves no namespace behind', async () => {
    const bench = new Bench({
      bytes: 32 * 2 ** 20,
      runs: 1,
      rrCount: 300,
      rrConns: 2,
      rrSize: 64,
      pipeSize: 1 << 20,
      socatBuffer: 256 * 1024,
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
    expect(kstreams.length).toBe(3);
    if (await engineAvailable()) {
      for (const p of kstreams) {
        expect(p.errors, p.id).toEqual([]);
        expect(p.median.gbps, p.id).toBeGreaterThan(0.01);
        expect(p.median.p99Us, p.id).toBeGreaterThan(0);
        if (p.kind !== 'mirror') continue;
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

  it('renders a row per path in both tables and a verdict per target', () => {
    const bulk = bulkTable(run);
    const latency = latencyTable(run);
    for (const p of ALL_PATHS) {
      expect(bulk).toContain(p.label);
      expect(latency).toContain(p.label);
    }
    const t = targets(run);
    expect(t.length).toBeGreaterThanOrEqual(7);
    for (const r of t) expect(r.margin).not.toBe('');
  });
});
