// The replay bench (npm run bench -- --replay): `kstreams replay --speed max` against a Node replayer
// (bench/tools/node-replayer.mjs: fs.createReadStream piped into a socket, the same turns) on two captures
// written here per docs/capture.md:
//   bulk: a few connections, each one turn of many MiB into a sink (ks-server sink --no-ack --discard);
//   turns: several connections of many 4 KiB turns into an echo server, each turn waiting for its echo.
// Both replayers run in the bench's namespace and report their own replay time and the CPU their process
// used during it (process.cpuUsage(): every thread, the native replayer's included; start-up excluded).
import { spawnSync } from 'node:child_process';
import { createWriteStream, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { writeTestSession } from '../../sidecar/src/capture/testing.js';
import type { MachineFacts } from './machine.js';
import { Proc, start } from './procs.js';
import { repoPath } from './repo.js';
import { table } from './report.js';
import { runSection, type SectionOptions } from './section.js';
import { median, ratio } from './stats.js';
import { benchNetns, type XformNetns } from './transform-netns.js';

export type ReplayLoad = 'bulk' | 'turns';
export type ReplayRowId = 'kstreams' | 'node';

export interface ReplayBenchOptions {
  /** Bytes of the bulk capture, all connections together. */
  bytes: number;
  bulkConns: number;
  turnConns: number;
  turnsPerConn: number;
  turnSize: number;
  runs: number;
  quick: boolean;
}

export interface ReplaySample {
  row: ReplayRowId;
  load: ReplayLoad;
  run: number;
  bytes: number;
  seconds: number;
  gbps: number;
  cpuSeconds: number;
  cpuPerGB: number;
}

export interface ReplayBenchRun {
  startedAt: string;
  options: ReplayBenchOptions;
  samples: ReplaySample[];
  errors: string[];
}

const ROWS: Array<{ id: ReplayRowId; label: string }> = [
  { id: 'kstreams', label: 'kstreams replay --speed max (sendfile, native thread)' },
  { id: 'node', label: 'Node replayer (fs.createReadStream piped into a socket)' },
];

/** Writes the bulk capture without holding it in memory: one 1 MiB random block repeated. */
async function writeBulkCapture(dir: string, bytes: number, conns: number): Promise<void> {
  const session = join(dir, '20261202T000000Z-bench-1');
  mkdirSync(join(session, 'conns'), { recursive: true });
  writeFileSync(join(session, 'session.json'), JSON.stringify({ format: 'kstreams-capture', version: 1, session: '20261202T000000Z-bench-1', startedAt: '2026-12-02T00:00:00.000Z', startedNs: '1000', writer: 'engine', responses: true, maxBytes: 0, maxConnectionBytes: 0 }));
  const block = randomBytes(1 << 20);
  const per = Math.floor(bytes / conns / block.length) * block.length;
  for (let i = 0; i < conns; i++) {
    const id = String(i + 1).padStart(9, '0');
    const out = createWriteStream(join(session, 'conns', `${id}.c2s`));
    for (let n = 0; n < per; n += block.length) if (!out.write(block)) await once(out, 'drain');
    out.end();
    await once(out, 'finish');
    writeFileSync(join(session, 'conns', `${id}.s2c`), '');
    writeFileSync(
      join(session, 'conns', `${id}.idx`),
      [
        { r: 'open', ns: '1000', at: '2026-12-02T00:00:00.000Z', client: '10.0.0.1:1', server: '10.0.0.2:2' },
        { r: 'turn', ns: '1000', n: 1, c2s: 0, s2c: 0 },
        { r: 'end', ns: '2000', how: 'fin', c2s: per, s2c: 0 },
      ].map((l) => `${JSON.stringify(l)}\n`).join(''),
    );
  }
}

export class ReplayBench {
  private ns: XformNetns | undefined;
  private dir: string | undefined;
  private readonly procs: Proc[] = [];

  constructor(
    private readonly o: ReplayBenchOptions,
    private readonly log: (line: string) => void = () => undefined,
  ) {}

  async cleanup(): Promise<void> {
    await Promise.all(this.procs.map((p) => p.stop(1000)));
    await this.ns?.destroy();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }

  async run(): Promise<ReplayBenchRun> {
    const o = this.o;
    const startedAt = new Date().toISOString();
    const errors: string[] = [];
    const samples: ReplaySample[] = [];
    const make = spawnSync('make', ['-s', '-C', repoPath('bench')], { encoding: 'utf8' });
    if (make.status !== 0) throw new Error(`building the load generators failed: ${make.stderr || make.stdout}`);
    this.dir = mkdtempSync(join(tmpdir(), 'kstreams-replay-bench-'));
    const bulkDir = join(this.dir, 'bulk');
    const turnsDir = join(this.dir, 'turns');
    this.log(`writing the captures: bulk ${o.bulkConns} x ${(o.bytes / o.bulkConns / 2 ** 20).toFixed(0)} MiB, turns ${o.turnConns} x ${o.turnsPerConn} x ${o.turnSize} B`);
    await writeBulkCapture(bulkDir, o.bytes, o.bulkConns);
    await writeTestSession({
      dir: turnsDir,
      name: '20261202T000000Z-bench-2',
      connections: Array.from({ length: o.turnConns }, () => ({
        turns: Array.from({ length: o.turnsPerConn }, () => {
          const b = randomBytes(o.turnSize);
          return { send: b, answer: b };
        }),
      })),
    });
    this.ns = benchNetns('rp');
    const server = repoPath('bench/build/ks-server');
    const listen = async (name: string, args: string[]) => {
      const p = start(this.ns!, name, server, args);
      this.procs.push(p);
      const line = await p.waitLine((l) => l.startsWith('listening '), 10_000);
      return Number(line.split(' ')[1]);
    };
    const sinkPort = await listen('sink', ['sink', '47380', '--no-ack', '--discard']);
    const echoPort = await listen('echo', ['echo', '47381']);
    const loads: Array<{ load: ReplayLoad; dir: string; port: number }> = [
      { load: 'bulk', dir: join(bulkDir, '20261202T000000Z-bench-1'), port: sinkPort },
      { load: 'turns', dir: join(turnsDir, '20261202T000000Z-bench-2'), port: echoPort },
    ];
    const cli = repoPath('dist/sidecar/src/cli/main.js');
    const nodeReplayer = repoPath('bench/tools/node-replayer.mjs');
    // One unmeasured pass of each capture puts its files in the page cache for both rows.
    for (const l of loads) await this.once('node', l, nodeReplayer, cli).catch(() => undefined);
    // Runs interleaved, so a change in the machine's load hits both rows alike.
    for (let run = 1; run <= o.runs; run++) {
      for (const l of loads) {
        for (const row of ROWS) {
          try {
            const s = await this.once(row.id, l, nodeReplayer, cli);
            samples.push({ ...s, run });
            this.log(`run ${run} ${l.load} ${row.id}: ${s.gbps.toFixed(2)} GB/s, ${s.cpuPerGB.toFixed(3)} CPU s/GB`);
          } catch (err) {
            errors.push(`run ${run} ${l.load} ${row.id}: ${(err as Error).message}`);
            this.log(errors[errors.length - 1]!);
          }
        }
      }
    }
    return { startedAt, options: o, samples, errors };
  }

  private async once(row: ReplayRowId, l: { load: ReplayLoad; dir: string; port: number }, nodeReplayer: string, cli: string): Promise<Omit<ReplaySample, 'run'>> {
    const args = row === 'kstreams'
      ? [cli, 'replay', l.dir, '--to', `127.0.0.1:${l.port}`, '--speed', 'max']
      : [nodeReplayer, l.dir, '127.0.0.1', String(l.port)];
    const p = start(this.ns!, row, process.execPath, args);
    const code = await p.exited;
    if (code !== 0) throw new Error(`exit ${code}: ${p.stderr || p.lines.join(' ')}`);
    const out = JSON.parse(p.lines.join('')) as { bytesSent: number; seconds: number; cpuSeconds: number; connectionsFailed?: number };
    if (out.connectionsFailed) throw new Error(`${out.connectionsFailed} connections failed`);
    const gb = out.bytesSent / 1e9;
    return { row, load: l.load, bytes: out.bytesSent, seconds: out.seconds, gbps: gb / out.seconds, cpuSeconds: out.cpuSeconds, cpuPerGB: out.cpuSeconds / gb };
  }
}

interface Summary {
  load: ReplayLoad;
  row: ReplayRowId;
  gbps?: number;
  cpuPerGB?: number;
  runs: number;
}

export function summarizeReplay(run: ReplayBenchRun): Summary[] {
  const out: Summary[] = [];
  for (const load of ['bulk', 'turns'] as const) {
    for (const row of ROWS) {
      const s = run.samples.filter((x) => x.load === load && x.row === row.id);
      out.push({ load, row: row.id, gbps: median(s.map((x) => x.gbps)), cpuPerGB: median(s.map((x) => x.cpuPerGB)), runs: s.length });
    }
  }
  return out;
}

export function replayTargets(run: ReplayBenchRun): Array<{ load: ReplayLoad; throughputRatio?: number; cpuRatio?: number; pass: boolean }> {
  const s = summarizeReplay(run);
  return (['bulk', 'turns'] as const).map((load) => {
    const k = s.find((x) => x.load === load && x.row === 'kstreams')!;
    const n = s.find((x) => x.load === load && x.row === 'node')!;
    const throughputRatio = ratio(k.gbps, n.gbps);
    const cpuRatio = ratio(k.cpuPerGB, n.cpuPerGB);
    return { load, throughputRatio, cpuRatio, pass: (throughputRatio ?? 0) >= 2 && (cpuRatio ?? Infinity) <= 0.5 };
  });
}

const f = (v: number | undefined, digits = 2) => (v === undefined ? 'n/a' : v.toFixed(digits));

export function replayReport(run: ReplayBenchRun, facts: MachineFacts): string {
  const o = run.options;
  const s = summarizeReplay(run);
  const lines = [
    `# Replay bench, ${run.startedAt.slice(0, 16).replace('T', ' ')} UTC`,
    '',
    `${facts.cpuModel}, ${facts.cores} cores, kernel ${facts.kernel}, Node ${facts.node}, commit ${facts.gitCommit}; load ${facts.loadBefore.toFixed(2)} before, ${f(facts.loadAfter)} after.`,
    `Captures: bulk ${o.bulkConns} connections x ${(o.bytes / o.bulkConns / 2 ** 20).toFixed(0)} MiB, one turn each, into a discarding sink; turns ${o.turnConns} connections x ${o.turnsPerConn} turns of ${o.turnSize} B, each waiting for its echo. Medians of ${o.runs} interleaved runs; CPU is the replayer process's (all threads) during the replay.`,
    '',
    table(
      ['load', 'replayer', 'GB/s', 'CPU s/GB', 'runs'],
      s.map((x) => [x.load, ROWS.find((r) => r.id === x.row)!.label, f(x.gbps), f(x.cpuPerGB, 3), String(x.runs)]),
    ),
    '',
    'Target: kstreams replay >= 2x the Node replayer\'s throughput at <= 0.5x its CPU per GB.',
    '',
    table(
      ['load', 'throughput x Node', 'CPU/GB x Node', 'target'],
      replayTargets(run).map((t) => [t.load, f(t.throughputRatio), f(t.cpuRatio), t.pass ? 'PASS' : 'MISS']),
    ),
  ];
  if (run.errors.length) lines.push('', 'Errors:', ...run.errors.map((e) => `- ${e}`));
  return `${lines.join('\n')}\n`;
}

export function replayMain(o: ReplayBenchOptions & SectionOptions): Promise<number> {
  return runSection('replay', o, (log) => new ReplayBench(o, log), replayReport, (run) => ({ summary: summarizeReplay(run), targets: replayTargets(run) }));
}
