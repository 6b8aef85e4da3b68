// Smoke test of the replay bench (bench/src/replay.ts) at a tiny size: both replayers replay both
// captures completely (every byte sent, no failed connection) and the report has its rows and targets.
// It asserts no speed: speed is what docs/bench.md is about.
import { afterAll, describe, expect, it } from 'vitest';
import { machineFacts } from './machine.js';
import { ReplayBench, replayReport } from './replay.js';

describe('the replay bench', () => {
  let bench: ReplayBench | undefined;
  afterAll(async () => bench?.cleanup());

  it('measures kstreams replay and the Node replayer on the bulk and the many-turn capture', async () => {
    bench = new ReplayBench({ bytes: 8 << 20, bulkConns: 2, turnConns: 2, turnsPerConn: 20, turnSize: 4096, runs: 1, quick: true });
    const run = await bench.run();
    expect(run.errors).toEqual([]);
    expect(run.samples.map((s) => `${s.load}/${s.row}`).sort()).toEqual(['bulk/kstreams', 'bulk/node', 'turns/kstreams', 'turns/node']);
    for (const s of run.samples) {
      expect(s.bytes).toBe(s.load === 'bulk' ? 8 << 20 : 2 * 20 * 4096);
      expect(s.gbps).toBeGreaterThan(0);
      expect(s.cpuSeconds).toBeGreaterThanOrEqual(0);
    }
    const text = replayReport(run, machineFacts());
    expect(text).toContain('Node replayer (fs.createReadStream piped into a socket)');
    expect(text).toMatch(/\| bulk +\| +[\d.]+ \| +[\d.]+ \| +(PASS|MISS) \|/);
  });
});
