// Runs every path on both workloads, fresh processes per measurement, runs interleaved (run 1 of every
// path, then run 2, ...) so that a noisy minute on a shared machine hurts all paths alike.
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { Netns } from '../../sidecar/src/netns.js';
import type { DrainResult, EngineStats } from '../../native/lib/types.js';
import { ALL_PATHS, type EngineEnd, type PathContext, type PathSpec, type StartedPath } from './paths.js';
import { ProcessWatch, processTicks, systemBusyTicks, USER_HZ } from './procfs.js';
import { runToEnd, start, type Proc } from './procs.js';
import {
  combinedRps,
  redisBenchmark,
  redisCounters,
  redisMissing,
  redisProbe,
  startRedis,
  waitMirrorCaughtUp,
  type RedisCounters,
  type RedisOptions,
  type RedisTestResult,
} from './redis.js';
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
  /** A kstreams.node to pin instead of native/build/Release/kstreams.node (the bench copies it per run). */
  addon?: string;
  /** KStreams mirrorBufferSize of the default mirror rows. */
  mirrorBufferSize: number;
  /** mirrorBufferSize and mirrorBufferBudget of the bulk-setting mirror row. */
  bulkMirrorBufferSize: number;
  /** KStreams turnTimeoutMs. */
  turnTimeoutMs: number;
  /** The redis-benchmark row; undefined: not run. */
  redis?: RedisOptions & {
    /** -P of the pipelined measurement; 0 or 1: none. */
    pipeline: number;
  };
}

/** How a KStreams engine ended a measurement (EngineEnd without the counters, which are kept beside it). */
export interface EngineEnding {
  drain: DrainResult | null;
  settledMs: number;
  openAtStop: number;
}

export interface BulkSample {
  /** Which run (1-based) this measurement belongs to. */
  run: number;
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
  /** The mirror got every byte the client sent (mirror paths). */
  mirrorWhole?: boolean;
  engineStats?: EngineStats;
  engineEnding?: EngineEnding;
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
  run: number;
  single: RrResult;
  concurrent: RrResult;
  peakRssBytes?: number;
  /** Bytes the app's echo server and the mirror's echo server received (mirror paths). */
  appBytes?: number;
  mirrorBytes?: number;
  mirrorWhole?: boolean;
  engineStats?: EngineStats;
  engineEnding?: EngineEnding;
}

export interface RedisSample {
  run: number;
  /** redis-benchmark -P (1: no pipelining). */
  pipeline: number;
  conns: number;
  requests: number;
  tests: RedisTestResult[];
  /** Requests per second over all the tests (total requests / total time). */
  rps: number;
  /** CPU seconds of the proxy process during the benchmark, and per request. */
  proxyCpuSeconds?: number;
  proxyCpuUsPerRequest?: number;
  peakRssBytes?: number;
  /** What the app server and the mirror server received and hold (mirror paths). */
  app?: RedisCounters;
  mirror?: RedisCounters;
  /** The mirror server read the same bytes, ran the same commands and holds the same dataset as the app. */
  mirrorWhole?: boolean;
  /** Why not, when it is not whole. */
  mirrorShort?: string;
  engineStats?: EngineStats;
  engineEnding?: EngineEnding;
}

/** Medians of one redis-benchmark row (a path at one pipelining depth). */
export interface RedisMedians {
  rps?: number;
  spread?: number;
  /** Median rate per test (SET, GET, ...). */
  testRps: Record<string, number>;
  /** Medians of the worse of the tests' p50 and p99. */
  p50Ms?: number;
  p99Ms?: number;
  proxyCpuUsPerRequest?: number;
  mirrorWholeRuns?: number;
  mirrorRuns?: number;
  /** Which runs the rates are over: 'whole' (mirror rows whose mirror was whole in some runs) or 'all'. */
  figuresOver: 'whole' | 'all';
  figureRuns: number[];
  turnWaitsExpired?: number;
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
  /** Bulk runs whose mirror got the whole stream, out of mirrorRuns (the bulk runs measured). */
  mirrorWholeRuns?: number;
  mirrorRuns?: number;
  /**
   * Which bulk runs GB/s, spread and CPU are medians over: 'whole' = only the runs whose mirror got the whole
   * stream (a mirror row with at least one), 'all' = every run (other rows, and mirror rows cut in all).
   */
  figuresOver?: 'whole' | 'all';
  /** Their run numbers (1-based). */
  figureRuns?: number[];
  /** 64 B load, mirror rows: runs whose mirror echo server got every byte the app's did. */
  rrMirrorWholeRuns?: number;
  rrMirrorRuns?: number;
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
  /** redis-benchmark without pipelining, and with -P (paths that take part in the redis row). */
  redis: RedisSample[];
  redisPipelined: RedisSample[];
  /** The settings that make this row differ from its family's default. */
  setting?: string;
  /** KStreams rows: the engine contract the addon spoke ('legacy': no turn pacing, no mirrorBufferSize). */
  engineContract?: 'drain' | 'legacy';
  errors: string[];
  median: PathMedians;
  redisMedian?: RedisMedians;
  redisPipelinedMedian?: RedisMedians;
}

export interface BenchRun {
  options: BenchOptions;
  startedAt: string;
  finishedAt: string;
  userHz: number;
  /** Why the redis row was not run, when it was asked for but could not be. */
  redisSkipped?: string;
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

function connLines(p: Proc): number {
  return p.lines.filter((l) => l.startsWith('conn ')).length;
}

function ending(end: EngineEnd): EngineEnding {
  return { drain: end.drain, settledMs: end.settledMs, openAtStop: end.openAtStop };
}

/** Engine counters that say a mirror lost bytes (a cut, a failed connect, a skipped connection, dropped bytes). */
function engineShort(stats: EngineStats | undefined): string | undefined {
  const t = stats?.targets[0];
  if (!t) return undefined;
  const parts = [
    t.connectionsCut ? `${t.connectionsCut} cut` : '',
    t.connectFailures ? `${t.connectFailures} connect failures` : '',
    t.connectionsSkipped ? `${t.connectionsSkipped} skipped` : '',
    t.bytesDropped ? `${t.bytesDropped} bytes dropped` : '',
  ].filter(Boolean);
  return parts.length ? `engine counted ${parts.join(', ')}` : undefined;
}

type Workload = 'bulk' | 'rr' | 'redis' | 'redisPipelined';

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
      ...(p.setting ? { setting: p.setting } : {}),
      bulk: [],
      rr: [],
      redis: [],
      redisPipelined: [],
      errors: [],
      median: {},
    }));
    const redisSkipped = o.redis ? redisMissing() : undefined;
    const redis = redisSkipped ? undefined : o.redis;
    if (redisSkipped) this.log(`redis row not run: ${redisSkipped}`);
    this.ns = Netns.create('bench');
    this.tmpDir = mkdtempSync(join(tmpdir(), 'kstreams-bench-'));
    // A private copy of the addon: on a shared checkout it may be rebuilt mid-run, which would lose
    // measurements or mix two builds in one table. Not with --engine-lib: that build brings its own.
    const addon = o.addon ?? repoPath('native/build/Release/kstreams.node');
    let addonCopy: string | undefined;
    if (!o.engineLib && existsSync(addon)) {
      addonCopy = join(this.tmpDir, 'kstreams.node');
      copyFileSync(addon, addonCopy);
    } else if (o.addon) {
      throw new Error(`--addon ${o.addon}: no such file`);
    }
    const ctx: PathContext = {
      ns: this.ns,
      tmpDir: this.tmpDir,
      nextPort: () => this.port++,
      pipeSize: o.pipeSize,
      socatBuffer: o.socatBuffer,
      mirrorBufferSize: o.mirrorBufferSize,
      bulkMirrorBufferSize: o.bulkMirrorBufferSize,
      turnTimeoutMs: o.turnTimeoutMs,
      startTimeoutMs: 15_000,
      ...(o.engineLib ? { engineLib: o.engineLib } : {}),
      ...(addonCopy ? { addonCopy } : {}),
    };
    // A path whose workload failed twice (e.g. an engine that cannot start) is not retried all night.
    const failed = new Map<string, number>();
    // Wall time per workload, for the log: what the quick mode and a full run spend where.
    const spent = new Map<Workload, number>();
    const each = async (
      run: number,
      workload: Workload,
      what: string,
      eligible: (spec: PathSpec) => boolean,
      measure: (spec: PathSpec, res: PathResult) => Promise<string>,
    ): Promise<void> => {
      for (const [i, spec] of paths.entries()) {
        const res = results[i] as PathResult;
        const key = `${spec.id} ${workload}`;
        if (!eligible(spec) || (failed.get(key) ?? 0) >= 2) continue;
        const label = `run ${run}/${o.runs} ${what} ${spec.id}`;
        const t0 = Date.now();
        try {
          const line = await this.retryOnce(label, () => measure(spec, res));
          this.log(`${label}: ${line}`);
        } catch (err) {
          failed.set(key, (failed.get(key) ?? 0) + 1);
          res.errors.push(`${what} run ${run}: ${(err as Error).message}`);
          this.log(`${label}: FAILED ${(err as Error).message}`);
        }
        spent.set(workload, (spent.get(workload) ?? 0) + Date.now() - t0);
      }
    };
    try {
      for (let run = 1; run <= o.runs; run++) {
        await each(run, 'bulk', 'bulk', () => true, async (spec, res) => {
          const s = await this.bulkOnce(ctx, tools, spec, run);
          res.bulk.push(s);
          if (s.engineStats && spec.family === 'kstreams') res.engineContract ??= s.engineStats && 'connectionsReset' in s.engineStats ? 'drain' : 'legacy';
          const short = engineShort(s.engineStats);
          const mirror =
            s.mirrorBytes !== undefined
              ? `, mirror got ${((100 * s.mirrorBytes) / s.bytes).toFixed(1)}%${s.mirrorWhole ? ' (whole)' : ''}${short ? ` (${short})` : ''}`
              : '';
          return `${s.gbps.toFixed(2)} GB/s, CPU s/GB ${s.sysCpuPerGB.toFixed(2)} system, ${s.pathCpuPerGB.toFixed(2)} path${mirror}`;
        });
        await each(run, 'rr', 'request/response', () => true, async (spec, res) => {
          const s = await this.rrOnce(ctx, tools, spec, run);
          res.rr.push(s);
          const mirror = s.mirrorWhole === undefined ? '' : `, mirror ${s.mirrorWhole ? 'whole' : `got ${s.mirrorBytes} of ${s.appBytes} bytes`}`;
          return `p50 ${s.single.p50Us.toFixed(1)} us, p99 ${s.single.p99Us.toFixed(1)} us${mirror}`;
        });
        if (!redis) continue;
        const depths: Array<[Workload, number]> = [['redis', 1]];
        if (redis.pipeline > 1) depths.push(['redisPipelined', redis.pipeline]);
        for (const [workload, pipeline] of depths) {
          await each(run, workload, pipeline > 1 ? `redis -P ${pipeline}` : 'redis', (spec) => spec.redis === true, async (spec, res) => {
            const s = await this.redisOnce(ctx, spec, run, redis, pipeline);
            (workload === 'redis' ? res.redis : res.redisPipelined).push(s);
            const tests = s.tests.map((t) => `${t.test} ${(t.rps / 1000).toFixed(1)}k`).join(', ');
            const mirror = s.mirrorWhole === undefined ? '' : `, mirror ${s.mirrorWhole ? 'whole' : `not whole: ${s.mirrorShort}`}`;
            return `${(s.rps / 1000).toFixed(1)}k req/s (${tests})${mirror}`;
          });
        }
      }
    } finally {
      await this.cleanup();
    }
    this.log(`time spent: ${[...spent].map(([w, ms]) => `${w} ${(ms / 1000).toFixed(1)} s`).join(', ')}`);
    for (const r of results) {
      r.median = medians(r);
      if (r.redis.length) r.redisMedian = redisMedians(r, r.redis);
      if (r.redisPipelined.length) r.redisPipelinedMedian = redisMedians(r, r.redisPipelined);
    }
    return {
      options: o,
      startedAt,
      finishedAt: new Date().toISOString(),
      userHz: USER_HZ,
      ...(redisSkipped ? { redisSkipped } : {}),
      paths: results,
    };
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

  private async bulkOnce(ctx: PathContext, tools: ReturnType<typeof buildTools>, spec: PathSpec, run: number): Promise<BulkSample> {
    const bytes = this.options.bytes;
    const sink = await this.server(ctx, tools.server, ['sink', '0'], 'sink');
    const mirror = spec.kind === 'mirror' ? await this.server(ctx, tools.server, ['sink', '0', '--no-ack', '--discard'], 'mirror sink') : undefined;
    let path: StartedPath | undefined;
    let end: EngineEnd | undefined;
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
      end = await path.stop();
      path = undefined;
      if (mirror) await sleep(50);
      // With sk_lookup the client dials the server's own port: a broken interception would measure direct.
      if (end && end.stats.bytesClientToApp < client.bytes) {
        throw new Error(`the engine moved ${end.stats.bytesClientToApp} of ${client.bytes} bytes: traffic bypassed it`);
      }
      const sysCpuSeconds = (ticks1 - ticks0) / USER_HZ;
      const gb = client.bytes / GB;
      const sample: BulkSample = {
        run,
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
      if (mirror) {
        sample.mirrorBytes = sinkTotal(mirror.proc);
        // The probe connection is mirrored too, but carries no bytes: the sink's total is the stream's.
        sample.mirrorWhole = sample.mirrorBytes >= client.bytes;
      }
      if (end) {
        sample.engineStats = end.stats;
        sample.engineEnding = ending(end);
      }
      return sample;
    } finally {
      if (path) await path.stop();
      await sink.proc.stop();
      if (mirror) await mirror.proc.stop();
    }
  }

  private async rrOnce(ctx: PathContext, tools: ReturnType<typeof buildTools>, spec: PathSpec, run: number): Promise<RrSample> {
    const o = this.options;
    const echo = await this.server(ctx, tools.server, ['echo', '0'], 'echo server');
    // The mirror target answers, like a staging copy of the app: the engine's turn pacing waits for answers.
    const mirror = spec.kind === 'mirror' ? await this.server(ctx, tools.server, ['echo', '0'], 'mirror echo server') : undefined;
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
      const end = await path.stop();
      path = undefined;
      const expected = 2 + o.rrConns; // probe, single, concurrent
      if (end && end.stats.connectionsAccepted < expected) {
        throw new Error(`the engine accepted ${end.stats.connectionsAccepted} of ${expected} connections: traffic bypassed it`);
      }
      const sample: RrSample = { run, single, concurrent };
      if (proxy) sample.peakRssBytes = proxy.peakRssBytes;
      if (mirror) {
        // Every connection's total is printed when it ends; the mirror's may come a moment after the app's.
        for (let i = 0; i < 40 && connLines(mirror.proc) < connLines(echo.proc); i++) await sleep(50);
        sample.appBytes = sinkTotal(echo.proc);
        sample.mirrorBytes = sinkTotal(mirror.proc);
        sample.mirrorWhole = sample.mirrorBytes === sample.appBytes;
      }
      if (end) {
        sample.engineStats = end.stats;
        sample.engineEnding = ending(end);
      }
      return sample;
    } finally {
      if (path) await path.stop();
      await echo.proc.stop();
      if (mirror) await mirror.proc.stop();
    }
  }

  /**
   * redis-benchmark through a path to a fresh redis-server; for a mirror path, a second redis-server as the
   * mirror target, compared with the app afterwards: bytes read, commands run, dataset digest.
   */
  private async redisOnce(
    ctx: PathContext,
    spec: PathSpec,
    run: number,
    o: NonNullable<BenchOptions['redis']>,
    pipeline: number,
  ): Promise<RedisSample> {
    const appPort = ctx.nextPort();
    const app = this.track(await startRedis(ctx.ns, 'redis-server (app)', appPort, 10_000));
    let mirror: Proc | undefined;
    let path: StartedPath | undefined;
    const mirrorPort = spec.kind === 'mirror' ? ctx.nextPort() : undefined;
    try {
      if (mirrorPort !== undefined) mirror = this.track(await startRedis(ctx.ns, 'redis-server (mirror)', mirrorPort, 10_000));
      path = await this.startPath(ctx, spec, appPort, mirrorPort);
      await redisProbe(ctx.ns, path.port, 15_000);
      const watch = path.proc ? new ProcessWatch(path.proc.pid, path.forks) : undefined;
      watch?.begin();
      const tests = await redisBenchmark(ctx.ns, path.port, o, pipeline);
      const proxy = watch?.end();
      // A mirror may finish after the client, the more so with turn pacing: wait for it (not timed).
      if (mirrorPort !== undefined) await waitMirrorCaughtUp(ctx.ns, appPort, mirrorPort, Math.max(1000, ctx.turnTimeoutMs + 500), 15_000);
      const end = await path.stop();
      path = undefined;
      const requests = o.requests * tests.length;
      if (end && end.stats.connectionsAccepted < o.conns) {
        throw new Error(`the engine accepted ${end.stats.connectionsAccepted} of ${o.conns} connections: traffic bypassed it`);
      }
      const sample: RedisSample = { run, pipeline, conns: o.conns, requests: o.requests, tests, rps: combinedRps(tests) };
      if (proxy) {
        sample.proxyCpuSeconds = proxy.cpuSeconds;
        sample.proxyCpuUsPerRequest = (1e6 * proxy.cpuSeconds) / requests;
        sample.peakRssBytes = proxy.peakRssBytes;
      }
      if (mirrorPort !== undefined) {
        // Both servers are asked the same commands in the same order, so equal counts mean the mirror got all.
        sample.app = await redisCounters(ctx.ns, appPort);
        sample.mirror = await redisCounters(ctx.ns, mirrorPort);
        const a = sample.app;
        const m = sample.mirror;
        const why: string[] = [];
        if (m.netInputBytes !== a.netInputBytes) why.push(`read ${m.netInputBytes} of the app's ${a.netInputBytes} bytes`);
        const differing = [...new Set([...Object.keys(a.calls), ...Object.keys(m.calls)])].filter((c) => a.calls[c] !== m.calls[c]);
        if (differing.length) why.push(`ran ${differing.map((c) => `${m.calls[c] ?? 0} ${c} (app ${a.calls[c] ?? 0})`).join(', ')}`);
        if (m.keys !== a.keys || m.digest !== a.digest) why.push(`holds ${m.keys} keys, digest ${m.digest === a.digest ? 'equal' : 'different'} (app ${a.keys} keys)`);
        const short = engineShort(end?.stats);
        if (short) why.push(short);
        sample.mirrorWhole = why.length === 0;
        if (why.length) sample.mirrorShort = why.join('; ');
      }
      if (end) {
        sample.engineStats = end.stats;
        sample.engineEnding = ending(end);
      }
      return sample;
    } finally {
      if (path) await path.stop();
      await app.stop();
      if (mirror) await mirror.stop();
    }
  }
}

/**
 * The runs a mirror row's figures are taken over: those whose mirror got the whole stream, when there are
 * any (once a mirror is cut the path is a plain proxy, and mixing those runs in would credit the mirror with
 * a proxy's speed); every run otherwise, and then the report says the mirror was cut in all of them.
 */
function figureBasis<T extends { run: number; mirrorWhole?: boolean }>(kind: PathSpec['kind'], samples: T[]): { basis: T[]; over: 'whole' | 'all'; whole: number } {
  if (kind !== 'mirror') return { basis: samples, over: 'all', whole: 0 };
  const whole = samples.filter((s) => s.mirrorWhole === true);
  return whole.length > 0 ? { basis: whole, over: 'whole', whole: whole.length } : { basis: samples, over: 'all', whole: 0 };
}

/** Medians over the runs; for mirror rows over the runs with a whole mirror (figureBasis), said beside them. */
function medians(r: PathResult): PathMedians {
  const m: PathMedians = {};
  const set = <K extends keyof PathMedians>(k: K, v: PathMedians[K] | undefined): void => {
    if (v !== undefined) m[k] = v;
  };
  const { basis, over, whole } = figureBasis(r.kind, r.bulk);
  if (r.kind === 'mirror') {
    m.mirrorRuns = r.bulk.length;
    m.mirrorWholeRuns = whole;
    m.mirrorShortRuns = r.bulk.length - whole;
    set('mirrorFraction', median(r.bulk.map((s) => (s.mirrorBytes ?? 0) / s.bytes)));
    const rrWith = r.rr.filter((s) => s.mirrorWhole !== undefined);
    m.rrMirrorRuns = rrWith.length;
    m.rrMirrorWholeRuns = rrWith.filter((s) => s.mirrorWhole).length;
  }
  if (r.bulk.length > 0) {
    m.figuresOver = over;
    m.figureRuns = basis.map((s) => s.run);
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

function redisMedians(r: PathResult, samples: RedisSample[]): RedisMedians {
  const { basis, over, whole } = figureBasis(r.kind, samples);
  const m: RedisMedians = { testRps: {}, figuresOver: over, figureRuns: basis.map((s) => s.run) };
  const rps = median(basis.map((s) => s.rps));
  if (rps !== undefined) {
    m.rps = rps;
    if (basis.length > 1) m.spread = (Math.max(...basis.map((s) => s.rps)) - Math.min(...basis.map((s) => s.rps))) / rps;
  }
  for (const test of new Set(basis.flatMap((s) => s.tests.map((t) => t.test)))) {
    const v = median(basis.map((s) => s.tests.find((t) => t.test === test)?.rps));
    if (v !== undefined) m.testRps[test] = v;
  }
  const worse = (s: RedisSample, k: 'p50Ms' | 'p99Ms'): number => Math.max(...s.tests.map((t) => t[k]));
  const p50 = median(basis.map((s) => worse(s, 'p50Ms')));
  const p99 = median(basis.map((s) => worse(s, 'p99Ms')));
  const cpu = median(basis.map((s) => s.proxyCpuUsPerRequest));
  if (p50 !== undefined) m.p50Ms = p50;
  if (p99 !== undefined) m.p99Ms = p99;
  if (cpu !== undefined) m.proxyCpuUsPerRequest = cpu;
  if (r.kind === 'mirror') {
    m.mirrorRuns = samples.length;
    m.mirrorWholeRuns = whole;
  }
  if (r.family === 'kstreams' && r.kind === 'mirror') {
    m.turnWaitsExpired = samples.reduce((n, s) => n + (s.engineStats?.targets[0]?.turnWaitsExpired ?? 0), 0);
  }
  return m;
}
