// The capture bench (npm run bench -- --capture): how fast connections are recorded, and at what CPU.
// Every row runs the stream engine in its own process (bench/tools/capture-engine.mjs) in front of the
// same app (ks-server sink), with 4 ks-bulk clients; only where the copy of the client's bytes goes
// differs:
//   mirror:  an unrecorded mirror (ks-server sink --no-ack --discard): the yardstick;
//   capture: a file target (docs/capture.md): socket -> pipe -> file with splice on the engine's writer;
//   record:  a mirror to `kstreams record` (the same capture, one process further);
//   node:    a mirror to a Node recorder (bench/tools/node-recorder.mjs: the socket piped into
//            fs.createWriteStream).
// A row's time runs from the clients' start until every byte is recorded (for the mirror: sent to the
// sink), so a capture that lags behind the primary is measured as slow, and one that is cut is counted
// short (its recorded bytes are reported). CPU is the engine's process and the recorder's, all threads.
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import type { EngineConfig, EngineStats } from '../../native/lib/types.js';
import type { MachineFacts } from './machine.js';
import { processTicks, USER_HZ } from './procfs.js';
import { Proc, start } from './procs.js';
import { repoPath } from './repo.js';
import { table } from './report.js';
import { runSection, type SectionOptions } from './section.js';
import { median, ratio } from './stats.js';
import { benchNetns, type XformNetns } from './transform-netns.js';

export type CaptureRowId = 'mirror' | 'capture' | 'record' | 'node';

const ROWS: Array<{ id: CaptureRowId; label: string }> = [
  { id: 'mirror', label: 'unrecorded mirror (a discarding sink)' },
  { id: 'capture', label: 'file target (capture in the engine)' },
  { id: 'record', label: 'mirror to kstreams record' },
  { id: 'node', label: 'mirror to a Node recorder (pipe into fs.createWriteStream)' },
];

export interface CaptureBenchOptions {
  bytes: number;
  conns: number;
  runs: number;
  quick: boolean;
  /** Bytes written to and deleted from tmpfs before the runs (0: none): see warmMemory(). */
  warmBytes?: number;
}

/** What the warm-up measured: the rate at which it wrote pages the machine may never have touched. */
export interface WarmUp {
  bytes: number;
  gbps: number;
}

/**
 * Writes `bytes` into a tmpfs file and deletes it. A VM whose guest memory the host backs lazily (a
 * Firecracker guest, as these machines are) takes a host fault on the first touch of each guest page: a
 * page cache that grows into such memory is written at a fraction of the speed of one that reuses freed
 * pages, which no file target or recorder can help. tmpfs, not the captures' disk: nothing to write back.
 */
export function warmMemory(bytes: number, dir = '/dev/shm'): WarmUp {
  const file = join(dir, `kstreams-bench-warm-${process.pid}`);
  const chunk = Buffer.alloc(8 << 20, 0x5a);
  const t0 = process.hrtime.bigint();
  const fd = openSync(file, 'w');
  try {
    for (let done = 0; done < bytes; done += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - done));
  } finally {
    closeSync(fd);
    rmSync(file, { force: true });
  }
  return { bytes, gbps: bytes / 1e9 / (Number(process.hrtime.bigint() - t0) / 1e9) };
}

export interface CaptureSample {
  row: CaptureRowId;
  run: number;
  bytes: number;
  recorded: number;
  seconds: number;
  primarySeconds: number;
  gbps: number;
  cpuSeconds: number;
  cpuPerGB: number;
}

export interface CaptureBenchRun {
  startedAt: string;
  options: CaptureBenchOptions;
  samples: CaptureSample[];
  errors: string[];
  warm?: WarmUp;
}

const PORTS = { app: 47390, sink: 47391, recorder: 47392, engine: 47393 };

export class CaptureBench {
  private ns: XformNetns | undefined;
  private dir: string | undefined;
  private readonly procs: Proc[] = [];

  constructor(
    private readonly o: CaptureBenchOptions,
    private readonly log: (line: string) => void = () => undefined,
  ) {}

  async cleanup(): Promise<void> {
    await Promise.all(this.procs.splice(0).map((p) => p.stop(1000)));
    await this.ns?.destroy();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }

  async run(): Promise<CaptureBenchRun> {
    const startedAt = new Date().toISOString();
    const errors: string[] = [];
    const samples: CaptureSample[] = [];
    const make = spawnSync('make', ['-s', '-C', repoPath('bench')], { encoding: 'utf8' });
    if (make.status !== 0) throw new Error(`building the load generators failed: ${make.stderr || make.stdout}`);
    this.dir = mkdtempSync(join(tmpdir(), 'kstreams-capture-bench-'));
    this.ns = benchNetns('cp');
    const server = repoPath('bench/build/ks-server');
    for (const [name, args] of [['app', ['sink', String(PORTS.app)]], ['sink', ['sink', String(PORTS.sink), '--no-ack', '--discard']]] as const) {
      const p = start(this.ns, name, server, [...args]);
      this.procs.push(p);
      await p.waitLine((l) => l.startsWith('listening '), 10_000);
    }
    let warm: WarmUp | undefined;
    if (this.o.warmBytes) {
      warm = warmMemory(this.o.warmBytes);
      this.log(`warm-up: ${(warm.bytes / 2 ** 20).toFixed(0)} MiB written to tmpfs and deleted at ${warm.gbps.toFixed(2)} GB/s`);
    }
    for (let run = 1; run <= this.o.runs; run++) {
      for (const row of ROWS) {
        try {
          const s = await this.once(row.id);
          samples.push({ ...s, run });
          this.log(`run ${run} ${row.id}: ${s.gbps.toFixed(2)} GB/s recorded (${((100 * s.recorded) / s.bytes).toFixed(1)}% of the bytes), ${s.cpuPerGB.toFixed(3)} CPU s/GB`);
        } catch (err) {
          errors.push(`run ${run} ${row.id}: ${(err as Error).message}`);
          this.log(errors[errors.length - 1]!);
        }
      }
    }
    return { startedAt, options: this.o, samples, errors, ...(warm ? { warm } : {}) };
  }

  private async once(row: CaptureRowId): Promise<Omit<CaptureSample, 'run'>> {
    const ns = this.ns!;
    const out = join(this.dir!, row);
    mkdirSync(out, { recursive: true });
    const local: Proc[] = [];
    try {
      let recorder: Proc | undefined;
      let target: EngineConfig['mirrors'][number];
      if (row === 'mirror') target = { name: 't', host: '127.0.0.1', port: PORTS.sink, samplingPercent: 100 };
      else if (row === 'capture') target = { name: 't', file: { path: out, maxBytes: 4 * this.o.bytes }, samplingPercent: 100 };
      else {
        recorder =
          row === 'node'
            ? withStdin(ns, 'node-recorder', [repoPath('bench/tools/node-recorder.mjs'), out, String(PORTS.recorder)])
            : start(ns, 'kstreams-record', process.execPath, [repoPath('dist/sidecar/src/cli/main.js'), 'record', '--listen', `127.0.0.1:${PORTS.recorder}`, '--dir', out, '--max-bytes', String(4 * this.o.bytes), '--json-interval', '0.1']);
        local.push(recorder);
        if (row === 'node') await recorder.waitLine((l) => l.startsWith('listening '), 10_000);
        else await waitFor(() => recorder!.stderr.includes('recording connections'), 15_000, 'kstreams record to listen');
        target = { name: 't', host: '127.0.0.1', port: PORTS.recorder, samplingPercent: 100 };
      }
      const config: EngineConfig = {
        listen: { host: '127.0.0.1', port: PORTS.engine },
        upstream: { host: '127.0.0.1', port: PORTS.app },
        mirrors: [target],
        pipeSize: 1 << 20,
        turnTimeoutMs: 0,
        mirrorBufferSize: 4 << 20,
        mirrorConnectTimeoutMs: 2000,
      };
      const engine = withStdin(ns, 'engine', [repoPath('bench/tools/capture-engine.mjs'), JSON.stringify(config)]);
      local.push(engine);
      engine.child.stdin?.setDefaultEncoding('utf8');
      await engine.waitLine((l) => l.startsWith('listening '), 10_000);
      const stats = async (): Promise<EngineStats> => {
        const before = engine.lines.length;
        engine.child.stdin!.write('\n');
        await waitFor(() => engine.lines.length > before || !engine.running, 5000, 'the engine\'s stats');
        if (engine.lines.length <= before) throw new Error(`the engine exited: ${engine.stderr}`);
        return JSON.parse(engine.lines[engine.lines.length - 1]!) as EngineStats;
      };
      const ticks = () => (processTicks(engine.pid) ?? 0) + (recorder ? processTicks(recorder.pid) ?? 0 : 0);
      const per = Math.floor(this.o.bytes / this.o.conns);
      const total = per * this.o.conns;
      const t0 = process.hrtime.bigint();
      const cpu0 = ticks();
      const clients = Array.from({ length: this.o.conns }, (_, i) => start(ns, `bulk${i}`, repoPath('bench/build/ks-bulk'), ['127.0.0.1', String(PORTS.engine), String(per), '--retry-ms', '2000']));
      local.push(...clients);
      const codes = await Promise.all(clients.map((c) => c.exited));
      if (codes.some((c) => c !== 0)) throw new Error(`a client failed: ${clients.map((c) => c.stderr).join(' ')}`);
      const primarySeconds = Number(process.hrtime.bigint() - t0) / 1e9;
      // Done when every byte was recorded (or counted dropped by the engine, or lost by the recorder).
      let recorded = 0;
      const deadline = Date.now() + 120_000;
      for (;;) {
        const s = await stats();
        const t = s.targets[0]!;
        if (row === 'mirror' || row === 'capture') recorded = t.bytesMirrored;
        else if (row === 'node') recorded = recorder!.lines.filter((l) => l.startsWith('recorded ')).reduce((n, l) => n + Number(l.split(' ')[1]), 0);
        let lost = t.bytesDropped;
        if (row === 'record') {
          // The recorder's own counters: what it wrote, and what it could not (its captures cut).
          const last = recorder!.lines.filter((l) => l.startsWith('{"')).at(-1);
          const c = last ? (JSON.parse(last) as { bytesRecorded: number; bytesDropped: number }) : { bytesRecorded: 0, bytesDropped: 0 };
          recorded = c.bytesRecorded;
          lost += c.bytesDropped;
        }
        const settled = s.connectionsClosed === this.o.conns && t.connectionsActive === 0;
        if ((settled && recorded + lost >= total) || recorded >= total) break;
        if (Date.now() > deadline) throw new Error(`not recorded within 120 s: ${recorded} of ${total} bytes`);
        await new Promise((r) => setTimeout(r, 10));
      }
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const cpuSeconds = (ticks() - cpu0) / USER_HZ;
      const gb = recorded / 1e9;
      return { row, bytes: total, recorded, seconds, primarySeconds, gbps: gb / seconds, cpuSeconds, cpuPerGB: gb > 0 ? cpuSeconds / gb : Infinity };
    } finally {
      await Promise.all(local.map((p) => p.stop(3000)));
      rmSync(out, { recursive: true, force: true });
    }
  }
}

/** A Node program of the bench that runs until its stdin closes (Proc.stop() ends it by signal otherwise). */
function withStdin(ns: XformNetns, name: string, args: string[]): Proc {
  return new Proc(name, ns.spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] }));
}

async function waitFor(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface Summary {
  row: CaptureRowId;
  gbps?: number;
  cpuPerGB?: number;
  recordedShare?: number;
  runs: number;
}

export function summarizeCapture(run: CaptureBenchRun): Summary[] {
  return ROWS.map((r) => {
    const s = run.samples.filter((x) => x.row === r.id);
    return { row: r.id, gbps: median(s.map((x) => x.gbps)), cpuPerGB: median(s.map((x) => x.cpuPerGB)), recordedShare: median(s.map((x) => x.recorded / x.bytes)), runs: s.length };
  });
}

export function captureTargets(run: CaptureBenchRun): { throughputRatio?: number; nodeRatio?: number; cpuRatioNode?: number; pass: boolean } {
  const s = summarizeCapture(run);
  const get = (id: CaptureRowId) => s.find((x) => x.row === id)!;
  const throughputRatio = ratio(get('capture').gbps, get('mirror').gbps);
  return {
    throughputRatio,
    nodeRatio: ratio(get('capture').gbps, get('node').gbps),
    cpuRatioNode: ratio(get('capture').cpuPerGB, get('node').cpuPerGB),
    pass: (throughputRatio ?? 0) >= 0.8,
  };
}

const f = (v: number | undefined, digits = 2) => (v === undefined || !Number.isFinite(v) ? 'n/a' : v.toFixed(digits));

export function captureReport(run: CaptureBenchRun, facts: MachineFacts): string {
  const o = run.options;
  const t = captureTargets(run);
  const lines = [
    `# Capture bench, ${run.startedAt.slice(0, 16).replace('T', ' ')} UTC`,
    '',
    `${facts.cpuModel}, ${facts.cores} cores, kernel ${facts.kernel}, Node ${facts.node}, commit ${facts.gitCommit}; load ${facts.loadBefore.toFixed(2)} before, ${f(facts.loadAfter)} after.`,
    `${o.conns} ks-bulk connections x ${(o.bytes / o.conns / 2 ** 20).toFixed(0)} MiB through the engine to a sink app; the copy goes where the row says. Time from the clients' start until every byte is recorded; CPU of the engine's and the recorder's processes. Captures written to ${tmpdir()} (the machine's disk, page cache). Medians of ${o.runs} interleaved runs.`,
    run.warm
      ? `Before the runs ${(run.warm.bytes / 2 ** 20).toFixed(0)} MiB were written to tmpfs and deleted (at ${run.warm.gbps.toFixed(2)} GB/s), so that the page cache grows into memory the machine has touched (docs/bench.md, "The capture bench").`
      : 'No memory warm-up (--warm-memory 0): the captures may grow into guest memory never touched before.',
    '',
    table(
      ['row', 'recorded GB/s', 'CPU s/GB', 'recorded', 'runs'],
      summarizeCapture(run).map((x) => [ROWS.find((r) => r.id === x.row)!.label, f(x.gbps), f(x.cpuPerGB, 3), `${f((x.recordedShare ?? 0) * 100, 1)}%`, String(x.runs)]),
    ),
    '',
    'Target: the file target records >= 0.8x the unrecorded mirror\'s throughput.',
    '',
    table(['capture x mirror', 'capture x Node recorder', 'CPU/GB x Node recorder', 'target'], [[f(t.throughputRatio), f(t.nodeRatio), f(t.cpuRatioNode), t.pass ? 'PASS' : 'MISS']]),
  ];
  if (run.errors.length) lines.push('', 'Errors:', ...run.errors.map((e) => `- ${e}`));
  return `${lines.join('\n')}\n`;
}

export function captureMain(o: CaptureBenchOptions & SectionOptions): Promise<number> {
  return runSection('capture', o, (log) => new CaptureBench(o, log), captureReport, (run) => ({ summary: summarizeCapture(run), targets: captureTargets(run) }));
}
