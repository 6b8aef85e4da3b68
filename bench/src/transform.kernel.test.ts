// Smoke test of the transform bench (bench/src/transform.ts) at a tiny size: every row is there with sane
// numbers, the KStreams rows either measured or said why not (`kstreams run` refusing spec.transform), the
// mirror of the no-transform KStreams row was whole, and the load tools' check of what arrives catches a
// path that does not transform. It asserts no speed: speed is what docs/bench.md is about.
import { afterAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TransformBench, transformConsoleReport, type TransformRun } from './transform.js';
import { machineFacts } from './machine.js';
import { benchNetns, type XformNetns } from './transform-netns.js';
import { buildXformTools, startListening } from './transform-proxies.js';
import { benchBlock } from './transform-data.js';
import { applyOp, BENCH_OPS } from './transform-reference.js';
import { Proc } from './procs.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';

describe('the transform bench', () => {
  let bench: TransformBench | undefined;
  let ns: XformNetns | undefined;
  let dir: string | undefined;

  afterAll(async () => {
    await bench?.cleanup();
    await ns?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('runs every row of one op on both loads and reports them', async () => {
    bench = new TransformBench({ ops: ['mask'], bytes: 4 << 20, runs: 1, rrCount: 200, rrConns: 2, quick: true });
    const run: TransformRun = await bench.run();
    const ids = run.rows.map((r) => r.id);
    expect(ids).toEqual(['direct', 'c', 'node', 'kstreams', 'kstreams-mirror', 'kstreams-mirror-xform']);
    for (const r of run.rows) {
      if (r.unavailable) {
        // Only the rows that apply a transform may be unavailable, and only for that reason.
        expect(r.id === 'kstreams' || r.id === 'kstreams-mirror-xform').toBe(true);
        expect(r.unavailable).toMatch(/transform/);
        continue;
      }
      expect(r.errors, `${r.id}: ${r.errors.join('; ')}`).toEqual([]);
      expect(r.bulk).toHaveLength(1);
      expect(r.rr).toHaveLength(1);
      const b = r.bulk[0]!;
      expect(b.bytes).toBe(4 << 20);
      expect(b.gbps).toBeGreaterThan(0.001);
      expect(r.rr[0]!.rps).toBeGreaterThan(10);
      // The proxy's CPU was read (4 MiB may take less than one 10 ms tick of it).
      if (r.id !== 'direct') expect(b.proxyCpuSeconds).toBeGreaterThanOrEqual(0);
      else expect(b.proxyCpuSeconds).toBeUndefined();
    }
    const mirror = run.rows.find((r) => r.id === 'kstreams-mirror')!;
    expect(mirror.bulk[0]?.mirrorWhole).toBe(true);
    expect(mirror.rr[0]?.mirrorWhole).toBe(true);
    const text = transformConsoleReport(run, machineFacts());
    expect(text).toContain('C transform proxy');
    expect(text).toContain('Mirror tax of mask');
  });

  it("the sink refuses a stream that is not the expected output (a path that does not transform can't pass)", async () => {
    const tools = buildXformTools();
    ns = benchNetns('xs');
    dir = mkdtempSync(join(tmpdir(), 'kstreams-xform-sink-'));
    const block = benchBlock();
    writeFileSync(join(dir, 'block'), block);
    writeFileSync(join(dir, 'masked'), applyOp(BENCH_OPS.mask, block));
    const sink = await startListening(ns, 'sink', tools.load, ['sink', '47390', '--expect', join(dir, 'masked')]);
    try {
      const send = new Proc('send', ns.spawn(tools.load, ['send', '127.0.0.1', String(sink.port), String(block.length * 4), '--block', join(dir, 'block')]));
      expect(await send.exited).toBe(3);
      const out = JSON.parse(send.lines[0] ?? '{}') as { ackBytes?: number; mismatchAt?: number };
      expect(out.ackBytes).toBe(block.length * 4);
      // The first Authorization header's first masked byte.
      expect(out.mismatchAt).toBe(block.indexOf('Authorization: ') + 'Authorization: '.length);
    } finally {
      await sink.proc.stop(1000);
    }
  });
});
