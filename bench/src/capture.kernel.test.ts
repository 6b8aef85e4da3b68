// Smoke test of the capture bench (bench/src/capture.ts) at a tiny size: every row measures, the file
// target and the unrecorded mirror at a rate a loaded machine keeps up with record every byte, and the
// report has its rows and target. It asserts no speed: speed is what docs/bench.md is about.
import { readdirSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { machineFacts } from './machine.js';
import { CaptureBench, captureReport } from './capture.js';

describe('the capture bench', () => {
  let bench: CaptureBench | undefined;
  afterAll(async () => bench?.cleanup());

  it('measures the unrecorded mirror, the file target, kstreams record and the Node recorder', async () => {
    bench = new CaptureBench({ bytes: 8 << 20, conns: 2, runs: 1, quick: true, warmBytes: 20 << 20 });
    const run = await bench.run();
    expect(run.errors).toEqual([]);
    expect(run.samples.map((s) => s.row)).toEqual(['mirror', 'capture', 'record', 'node']);
    for (const s of run.samples) {
      expect(s.bytes).toBe(8 << 20);
      expect(s.recorded).toBeGreaterThan(0);
      expect(s.cpuSeconds).toBeGreaterThanOrEqual(0);
    }
    expect(run.samples.find((s) => s.row === 'capture')!.recorded).toBe(8 << 20);
    const text = captureReport(run, machineFacts());
    expect(text).toContain('file target (capture in the engine)');
    expect(text).toMatch(/\| +[\d.]+ +\| +[\d.]+ +\| +[\d.]+ +\| +(PASS|MISS) \|/);
    // The warm-up wrote its 20 MiB (not a whole number of its 8 MiB chunks), said so, and left no file.
    expect(run.warm).toMatchObject({ bytes: 20 << 20 });
    expect(run.warm!.gbps).toBeGreaterThan(0);
    expect(text).toContain('20 MiB were written to tmpfs and deleted');
    expect(readdirSync('/dev/shm').filter((f) => f.startsWith('kstreams-bench-warm-'))).toEqual([]);
  });
});
