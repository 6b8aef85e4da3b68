// Runs every path on both workloads, fresh processes per measurement, runs interleaved (run 1 of every
// path, then run 2, ...) so that a noisy minute on a shared machine hurts all paths alike.
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { Netns } from '../../sidecar/src/netns.js';
import type { EngineStats } from '../../native/lib/types.js';
import { ALL_PATHS, type PathContext, type PathSpec, type StartedPath } from './paths.js';
import { ProcessWatch, processTicks, systemBusyTicks, USER_HZ } from './procfs.js';
import { runToEnd, start, type Proc } from './procs.js';
import { repoPath } from './repo.js';
import { median } from './stats.js';

export interface BenchOptions {
  /** Bytes per bulk transfer. */
  bytes: number;
  runs: number;
  /** Round trips on the single connection (the concurrent test splits the same number over rrConns). */
  rrCount: number;
  rrConns: number;
  rrSize: number;
  pipeSize: number;
  socatBuffer: number;
  /** Path ids to run (direct is always added: every ratio needs it). Undefined: all. */
  only?: string[];
  quick: boolean;
  /** Module the KStreams runner loads instead of native/lib (compare another engine build). */
  engineLib?: string;
}

export interface BulkSample {
  bytes: number;
  seconds: number;
  gbps: number;
  sysCpuSeconds: number;
  sysCpuPerGB: number;
  /**
   * CPU of the path's own processes (client, server, proxy, mirror sink): unlike the system-wide figure it
   * does not count what other work on a shared machine did meanwhile.
   */
  pathCpuSeconds: number;
  pathCpuPerGB: number;
  proxyCpuSeconds?: number;
  proxyCpuPerGB?: number;
  peakRssBytes?: number;
  /** Bytes the mirror sink received (mirror paths). */
  mirrorBytes?: number;
  engineStats?: EngineStats;
}

export interface RrResult {
  count: number;
  conns: number;
  size: number;
  seconds: number;
  rps: number;
  meanUs: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  p999Us: number;
  maxUs: number;
}

export interface RrSample {
  single: RrResult;
  concurrent: RrResult;
  peakRssBytes?: number;
}

export interface PathMedians {
  gbps?: number;
  /** (max - min) / median of GB/s over the runs: how much the machine moved the numbers. */
  gbpsSpread?: number;
  sysCpuPerGB?: number;
  pathCpuPerGB?: number;
  proxyCpuPerGB?: number;
  peakRssMB?: number;
  mirrorFraction?: number;
  /** Bulk runs whose mirror got less than the whole stream. */
  mirrorShortRuns?: number;
  p50Us?: number;
  p99Us?: number;
  concurrentP99Us?: number;
  concurrentRps?: number;
}

export interface PathResult {
  id: string;
  label: string;
  kind: PathSpec['kind'];
  family: PathSpec['family'];
  bulk: BulkSample[];
  rr: RrSample[];
  errors: string[];
  median: PathMedians;
}

export interface BenchRun {
  options: BenchOptions;
  startedAt: string;
  finishedAt: string;
  userHz: number;
  paths: PathResult[];
}

const host = '127.0.0.1';
const GB = 1e9;

/** Compiles the C load generators (bench/Makefile); cheap when they are up to date. */
export function buildTools(): { server: string; bulk: string; rr: string } {
  const benchDir = repoPath('bench');
  const r = spawnSync('make', ['-s', '-C', benchDir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building the load generators failed (make -C ${benchDir}): ${r.stderr || r.stdout}`);
  const dir = repoPath('bench/build');
  return { server: join(dir, 'ks-server'), bulk: join(dir, 'ks-bulk'), rr: join(dir, 'ks-rr') };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function sinkTotal(sink: Proc): number {
  return sink.lines.filter((l) => l.startsWith('conn ')).reduce((s, l) => s + Number(l.slice(5)), 0);
}

export class Bench {
  private ns: Netns | undefined;
  private tmpDir: string | undefined;
  private port = 20000;
  private readonly live = new Set<Proc>();

  constructor(
    readonly options: BenchOptions,
    private readonly log: (line: string) => void = () => undefined,
  ) {}

  async run(): Promise<BenchRun> {
    const o = this.options;
    const startedAt = new Date().toISOString();
    const tools = buildTools();
    const paths = ALL_PATHS.filter((p) => !o.only || p.id === 'direct' || o.only.includes(p.id));
    const results: PathResult[] = paths.map((p) => ({
      id: p.id,
      label: p.label,
      kind: p.kind,
      family: p.family,
      bulk: [],
      rr: [],
      errors: [],
      median: {},
    }));
    this.ns = Netns.create('bench');
    this.tmpDir = mkdtempSync(join(tmpdir(), 'kstreams-bench-'));
    // A private copy of the addon: on a shared checkout it may be rebuilt mid-run, which would lose
    // measurements or mix two builds in one table. Not with --engine-lib: that build brings its own.
    const addon = repoPath('native/build/Release/kstreams.node');
    let addonCopy: string | undefined;
    if (!o.engineLib && existsSync(addon)) {
      addonCopy = join(this.tmpDir, 'kstreams.node');
      copyFileSync(addon, addonCopy);
    }
    const ctx: PathContext = {
      ns: this.ns,
      tmpDir: this.tmpDir,
      nextPort: () => this.port++,
      pipeSize: o.pipeSize,
      socatBuffer: o.socatBuffer,
      startTimeoutMs: 15_000,
      ...(o.engineLib ? { engineLib: o.engineLib } : {}),
      ...(addonCopy ? { addonCopy } : {}),
    };
    try {
      for (let run = 1; run <= o.runs; run++) {
        for (const [i, spec] of paths.entries()) {
          const res = results[i] as PathResult;
          if (res.errors.length >= 2) continue; // a path that cannot start is not retried all night
          try {
            const s = await this.retryOnce(`run ${run}/${o.runs} bulk ${spec.id}`, () => this.bulkOnce(ctx, tools, spec));
            res.bulk.push(s);
            const cuts = s.engineStats?.targets.reduce((n, t) => n + t.connectionsCut, 0);
            const mirror =
              s.mirrorBytes !== undefined
                ? `, mirror got ${((100 * s.mirrorBytes) / s.bytes).toFixed(1)}%${cuts ? ` (engine counted ${cuts} cut)` : ''}`
                : '';
            this.log(
              `run ${run}/${o.runs} bulk ${spec.id}: ${s.gbps.toFixed(2)} GB/s, CPU s/GB ${s.sysCpuPerGB.toFixed(2)} system, ${s.pathCpuPerGB.toFixed(2)} path${mirror}`,
            );
          } catch (err) {
            res.errors.push(`bulk run ${run}: ${(err as Error).message}`);
            this.log(`run ${run}/${o.runs} bulk ${spec.id}: FAILED ${(err as Error).message}`);
          }
        }
        for (const [i, spec] of paths.entries()) {
          const res = results[i] as PathResult;
          if (res.errors.length >= 2) continue;
          try {
            const s = await this.retryOnce(`run ${run}/${o.runs} 64B ${spec.id}`, () => this.rrOnce(ctx, tools, spec));
            res.rr.push(s);
            this.log(`run ${run}/${o.runs} 64B ${spec.id}: p50 ${s.single.p50Us.toFixed(1)} us, p99 ${s.single.p99Us.toFixed(1)} us`);
          } catch (err) {
            res.errors.push(`request/response run ${run}: ${(err as Error).message}`);
            this.log(`run ${run}/${o.runs} 64B ${spec.id}: FAILED ${(err as Error).message}`);
          }
        }
      }
    } finally {
      await this.cleanup();
    }
    for (const r of results) r.median = medians(r);
    return { options: o, startedAt, finishedAt: new Date().toISOString(), userHz: USER_HZ, paths: results };
  }

  /** Stops what is still running (by pid) and removes the namespace and temp files. Safe to call twice. */
  async cleanup(): Promise<void> {
    await Promise.all([...this.live].map((p) => p.stop(1000)));
    this.live.clear();
    if (this.ns) await this.ns.destroy();
    this.ns = undefined;
    if (this.tmpDir) rmSync(this.tmpDir, { recursive: true, force: true });
    this.tmpDir = undefined;
  }

  /**
   * One more try, a few seconds later, for a measurement that failed: on a shared checkout the addon may be
   * rebuilt under us, and one lost measurement should not empty a row. A second failure is the row's error.
   */
  private async retryOnce<T>(what: string, measure: () => Promise<T>): Promise<T> {
    try {
      return await measure();
    } catch (err) {
      this.log(`${what}: failed (${(err as Error).message.slice(0, 200)}), retrying once`);
      await sleep(3000);
      return measure();
    }
  }

  private track(p: Proc): Proc {
    this.live.add(p);
    void p.exited.then(() => this.live.delete(p));
    return p;
  }

  private async server(ctx: PathContext, tool: string, args: string[], name: string): Promise<{ proc: Proc; port: number }> {
    const proc = this.track(start(ctx.ns, name, tool, args));
    const line = await proc.waitLine((l) => l.startsWith('listening '), 5000);
    return { proc, port: Number(line.slice('listening '.length)) };
  }

  private async startPath(ctx: PathContext, spec: PathSpec, upstream: number, mirror: number | undefined): Promise<StartedPath> {
    const path = await spec.start(ctx, upstream, mirror);
    if (path.proc) this.track(path.proc);
    return path;
  }

  private async bulkOnce(ctx: PathContext, tools: ReturnType<typeof buildTools>, spec: PathSpec): Promise<BulkSample> {
    const bytes = this.options.bytes;
    const sink = await this.server(ctx, tools.server, ['sink', '0'], 'sink');
    const mirror = spec.kind === 'mirror' ? await this.server(ctx, tools.server, ['sink', '0', '--no-ack', '--discard'], 'mirror sink') : undefined;
    let path: StartedPath | undefined;
    let engineStats: EngineStats | undefined;
    try {
      path = await this.startPath(ctx, spec, sink.port, mirror?.port);
      // A zero-byte transfer through the path: it is up, and it delivers the server's reply.
      await runToEnd(ctx.ns, 'probe', tools.bulk, [host, String(path.port), '0', '--retry-ms', '15000'], 20_000);
      const watch = path.proc ? new ProcessWatch(path.proc.pid, path.forks) : undefined;
      watch?.begin();
      const serverTicks0 = (processTicks(sink.proc.pid) ?? 0) + (mirror ? (processTicks(mirror.proc.pid) ?? 0) : 0);
      const ticks0 = systemBusyTicks();
      const out = await runToEnd(ctx.ns, 'bulk client', tools.bulk, [host, String(path.port), String(bytes)], 60_000 + bytes / 20e3);
      const ticks1 = systemBusyTicks();
      const client = JSON.parse(out) as { bytes: number; seconds: number; cpuSeconds: number };
      if (mirror) {
        // The mirror may finish a moment after the primary; its lag is not part of the primary's time.
        for (let i = 0; i < 30 && sinkTotal(mirror.proc) < bytes; i++) await sleep(100);
      } else if (path.forks) {
        await sleep(100); // lets a forked per-connection proxy exit and be reaped, so its CPU is counted
      }
      const proxy = watch?.end();
      const serverTicks1 = (processTicks(sink.proc.pid) ?? 0) + (mirror ? (processTicks(mirror.proc.pid) ?? 0) : 0);
      engineStats = await path.stop();
      path = undefined;
      if (mirror) await sleep(50);
      // With sk_lookup the client dials the server's own port: a broken interception would measure direct.
      if (engineStats && engineStats.bytesClientToApp < client.bytes) {
        throw new Error(`the engine moved ${engineStats.bytesClientToApp} of ${client.bytes} bytes: traffic bypassed it`);
      }
      const sysCpuSeconds = (ticks1 - ticks0) / USER_HZ;
      const gb = client.bytes / GB;
      const sample: BulkSample = {
        bytes: client.bytes,
        seconds: client.seconds,
        gbps: gb / client.seconds,
        sysCpuSeconds,
        sysCpuPerGB: sysCpuSeconds / gb,
        pathCpuSeconds: 0,
        pathCpuPerGB: 0,
      };
      sample.pathCpuSeconds = client.cpuSeconds + (serverTicks1 - serverTicks0) / USER_HZ + (proxy?.cpuSeconds ?? 0);
      sample.pathCpuPerGB = sample.pathCpuSeconds / gb;
      if (proxy) {
        sample.proxyCpuSeconds = proxy.cpuSeconds;
        sample.proxyCpuPerGB = proxy.cpuSeconds / gb;
        sample.peakRssBytes = proxy.peakRssBytes;
      }
      if (mirror) sample.mirrorBytes = sinkTotal(mirror.proc);
      if (engineStats) sample.engineStats = engineStats;
      return sample;
    } finally {
      if (path) await path.stop();
      await sink.proc.stop();
      if (mirror) await mirror.proc.stop();
    }
  }

  private async rrOnce(ctx: PathContext, tools: ReturnType<typeof buildTools>, spec: PathSpec): Promise<RrSample> {
    const o = this.options;
    const echo = await this.server(ctx, tools.server, ['echo', '0'], 'echo server');
    const mirror = spec.kind === 'mirror' ? await this.server(ctx, tools.server, ['sink', '0', '--no-ack', '--discard'], 'mirror sink') : undefined;
    let path: StartedPath | undefined;
    try {
      path = await this.startPath(ctx, spec, echo.port, mirror?.port);
      const port = String(path.port);
      await runToEnd(ctx.ns, 'probe', tools.rr, [host, port, '1', '--warmup', '0', '--retry-ms', '15000'], 20_000);
      const watch = path.proc ? new ProcessWatch(path.proc.pid, path.forks) : undefined;
      watch?.begin();
      const rrArgs = ['--size', String(o.rrSize), '--warmup', String(Math.min(1000, Math.ceil(o.rrCount / 10)))];
      const single = JSON.parse(await runToEnd(ctx.ns, 'ks-rr', tools.rr, [host, port, String(o.rrCount), ...rrArgs], 120_000)) as RrResult;
      const perConn = Math.max(1, Math.ceil(o.rrCount / o.rrConns));
      const concurrent = JSON.parse(
        await runToEnd(ctx.ns, 'ks-rr', tools.rr, [host, port, String(perConn), '--conns', String(o.rrConns), ...rrArgs], 120_000),
      ) as RrResult;
      const proxy = watch?.end();
      const engineStats = await path.stop();
      path = undefined;
      const expected = 2 + o.rrConns; // probe, single, concurrent
      if (engineStats && engineStats.connectionsAccepted < expected) {
        throw new Error(`the engine accepted ${engineStats.connectionsAccepted} of ${expected} connections: traffic bypassed it`);
      }
      const sample: RrSample = { single, concurrent };
      if (proxy) sample.peakRssBytes = proxy.peakRssBytes;
      return sample;
    } finally {
      if (path) await path.stop();
      await echo.proc.stop();
      if (mirror) await mirror.proc.stop();
    }
  }
}

/**
 * Medians over the runs. For a mirror row, throughput and CPU come from the runs in which the mirror got
 * the whole stream (when there are any): once a mirror is cut the path is a plain proxy, and mixing those
 * runs in would credit the mirror with a proxy's speed. How often it was cut is reported beside it.
 */
function medians(r: PathResult): PathMedians {
  const m: PathMedians = {};
  const set = <K extends keyof PathMedians>(k: K, v: number | undefined): void => {
    if (v !== undefined) m[k] = v;
  };
  let basis = r.bulk;
  if (r.kind === 'mirror') {
    const whole = r.bulk.filter((s) => (s.mirrorBytes ?? 0) >= s.bytes);
    m.mirrorShortRuns = r.bulk.length - whole.length;
    if (whole.length > 0) basis = whole;
    set('mirrorFraction', median(r.bulk.map((s) => (s.mirrorBytes ?? 0) / s.bytes)));
  }
  set('gbps', median(basis.map((s) => s.gbps)));
  if (m.gbps !== undefined && basis.length > 1) {
    const g = basis.map((s) => s.gbps);
    m.gbpsSpread = (Math.max(...g) - Math.min(...g)) / m.gbps;
  }
  set('sysCpuPerGB', median(basis.map((s) => s.sysCpuPerGB)));
  set('pathCpuPerGB', median(basis.map((s) => s.pathCpuPerGB)));
  set('proxyCpuPerGB', median(basis.map((s) => s.proxyCpuPerGB)));
  const rss = [...r.bulk.map((s) => s.peakRssBytes), ...r.rr.map((s) => s.peakRssBytes)].filter((x): x is number => x !== undefined);
  if (rss.length > 0) m.peakRssMB = Math.max(...rss) / 2 ** 20;
  set('p50Us', median(r.rr.map((s) => s.single.p50Us)));
  set('p99Us', median(r.rr.map((s) => s.single.p99Us)));
  set('concurrentP99Us', median(r.rr.map((s) => s.concurrent.p99Us)));
  set('concurrentRps', median(r.rr.map((s) => s.concurrent.rps)));
  return m;
}
