// The transform bench (npm run bench -- --transform): KStreams' in-kernel transforms against transforming
// in user space, side by side in one run. Rows: direct (no transform: the ceiling), the C transform proxy
// (epoll, read/write), the Node transform proxy (stream.Transform), KStreams transforming the primary
// (`kstreams run`, spec.transform.applyTo primary), and the mirror tax: a KStreams mirror with the op
// applied to the mirror against the same mirror without a transform. Two loads per op: bulk (one
// connection, the bench block repeated: HTTP-like requests dense with the patterns) and request/response
// (4 KiB requests with Authorization headers, 64 B replies, on several connections). Every sink compares
// what arrives with the expected output, so a path that does not transform (or transforms wrongly) fails
// instead of looking fast. Everything runs in one namespace, ks-b1-xf-<pid>, over its loopback.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { loadavg, tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { addonFacts, machineFacts, type MachineFacts } from './machine.js';
import { ProcessWatch, processTicks, systemBusyTicks, USER_HZ } from './procfs.js';
import { nodeProgram, Proc } from './procs.js';
import { repoPath } from './repo.js';
import { table } from './report.js';
import { median, ratio } from './stats.js';
import { BENCH_REPLY, benchBlock, benchRequest, density } from './transform-data.js';
import { benchNetns, type XformNetns } from './transform-netns.js';
import { buildXformTools, startBaseline, startListening, type XformTools } from './transform-proxies.js';
import { applyOp, BENCH_OPS, type BenchOpName, type XformOp } from './transform-reference.js';

export type XformRowId = 'direct' | 'c' | 'node' | 'kstreams' | 'kstreams-mirror' | 'kstreams-mirror-xform';

interface RowSpec {
  id: XformRowId;
  label: string;
  /** Measured once per op (it applies the op); otherwise once per run, shown in every op's table. */
  perOp: boolean;
  /** What the primary's server must receive: the op's output, or the client's bytes. */
  primaryTransformed: boolean;
  /** A mirror sink, and what it must receive (undefined: no mirror; 'any': only counted). */
  mirror?: 'original' | 'transformed' | 'any';
}

export const XFORM_ROWS: RowSpec[] = [
  { id: 'direct', label: 'direct (no transform)', perOp: false, primaryTransformed: false },
  { id: 'c', label: 'C transform proxy (epoll, read/write)', perOp: true, primaryTransformed: true },
  { id: 'node', label: 'Node transform proxy (stream.Transform)', perOp: true, primaryTransformed: true },
  { id: 'kstreams', label: 'KStreams transform (applyTo primary)', perOp: true, primaryTransformed: true },
  { id: 'kstreams-mirror', label: 'KStreams mirror, no transform', perOp: false, primaryTransformed: false, mirror: 'original' },
  { id: 'kstreams-mirror-xform', label: 'KStreams mirror, op on the mirror', perOp: true, primaryTransformed: false, mirror: 'transformed' },
];

export interface TransformBenchOptions {
  ops: BenchOpName[];
  /** Bytes per bulk transfer (rounded down to whole blocks). */
  bytes: number;
  runs: number;
  /** Timed round trips of the request/response load, over all connections. */
  rrCount: number;
  rrConns: number;
  /** Row ids to run (direct always runs: the ratios need it). */
  only?: XformRowId[];
  quick: boolean;
  /** kstreams.node for the KStreams rows (copied at the start); default native/build/Release/kstreams.node. */
  addon?: string;
}

export interface XformBulkSample {
  run: number;
  bytes: number;
  seconds: number;
  gbps: number;
  /** The proxy process (its threads included; for KStreams the `kstreams run` process with the engine). */
  proxyCpuSeconds?: number;
  proxyCpuPerGB?: number;
  /** Client + server (+ mirror sink) + proxy: in-kernel work is charged to whichever process it runs in. */
  pathCpuPerGB: number;
  /** The whole machine (an upper bound on a shared machine). */
  sysCpuPerGB: number;
  mirrorBytes?: number;
  mirrorWhole?: boolean;
}

export interface XformRrSample {
  run: number;
  /** Round trips timed (all connections), and in all with the warm-up. */
  count: number;
  requests: number;
  conns: number;
  seconds: number;
  rps: number;
  p50Us: number;
  p99Us: number;
  proxyCpuSeconds?: number;
  proxyCpuUsPerRequest?: number;
  /** Proxy CPU per GB of request bytes. */
  proxyCpuPerGB?: number;
  mirrorWhole?: boolean;
}

export interface XformMedians {
  gbps?: number;
  spread?: number;
  proxyCpuPerGB?: number;
  pathCpuPerGB?: number;
  sysCpuPerGB?: number;
  mirrorWholeRuns?: number;
  rps?: number;
  rpsSpread?: number;
  p50Us?: number;
  p99Us?: number;
  proxyCpuUsPerRequest?: number;
  rrProxyCpuPerGB?: number;
  rrMirrorWholeRuns?: number;
}

export interface XformRowResult {
  id: XformRowId;
  label: string;
  /** The op applied (undefined for the rows that apply none). */
  op?: BenchOpName;
  bulk: XformBulkSample[];
  rr: XformRrSample[];
  /** Why the row could not run at all (e.g. `kstreams run` refuses spec.transform). */
  unavailable?: string;
  errors: string[];
  notes: string[];
  median: XformMedians;
}

export interface TransformRun {
  options: TransformBenchOptions;
  startedAt: string;
  finishedAt: string;
  userHz: number;
  /** Bytes of the bulk stream's unit and of a request, and the patterns' density per KiB, per op. */
  data: { blockBytes: number; requestBytes: number; replyBytes: number; perKiB: Partial<Record<BenchOpName, number>> };
  /** How the KStreams rows were run: `kstreams run` and the StreamPath settings. */
  kstreams: { command: string; withDiscardMirror: boolean; mirror: string };
  rows: XformRowResult[];
}

/** `kstreams run`'s summary at exit (the fields the bench reads). */
interface KsSummary {
  connections?: number;
  bytesPrimary?: number;
  bytesMirrored?: number;
  bytesDropped?: number;
  connectionsReset?: number;
}

interface StartedPath {
  port: number;
  proc?: Proc;
  stop(): Promise<KsSummary | undefined>;
}

const host = '127.0.0.1';
const GB = 1e9;
const REQUEST_BYTES = 4096;
const FIRST_PORT = 47300;
const PORTS = 100;
/** StreamPath mirror settings of the KStreams rows: 1 MiB pipes, the bulk setting, no turn pacing (the sinks never answer). */
const KS_MIRROR = { pipeSize: 1 << 20, bufferSize: 64 << 20, turnTimeoutMs: 0 };

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves once `count` stdout lines of `proc` match; rejects after `timeoutMs`. Event-driven (stdout data). */
async function waitLines(proc: Proc, match: (l: string) => boolean, count: number, timeoutMs: number, what: string): Promise<string[]> {
  const get = () => proc.lines.filter(match);
  if (get().length >= count) return get();
  const stdout = proc.child.stdout;
  await new Promise<void>((resolve, reject) => {
    const done = (err?: Error) => {
      clearTimeout(timer);
      stdout?.off('data', check);
      if (err) reject(err);
      else resolve();
    };
    // Proc's own listener was added first, so its lines are up to date when this one runs.
    const check = () => {
      if (get().length >= count) done();
    };
    const timer = setTimeout(() => done(new Error(`${what}: ${get().length} of ${count} lines within ${timeoutMs} ms (${proc.stderr})`)), timeoutMs);
    stdout?.on('data', check);
    void proc.exited.then(() => (get().length >= count ? done() : done(new Error(`${what}: ${proc.name} exited (${proc.stderr})`))));
  });
  return get();
}

/** Runs a load generator in the namespace to completion; its stdout, or an error with its stderr. */
async function runIn(ns: XformNetns, name: string, command: string, args: string[], timeoutMs: number): Promise<string> {
  const p = new Proc(name, ns.spawn(command, args));
  const timer = setTimeout(() => p.running && p.child.kill('SIGKILL'), timeoutMs);
  const code = await p.exited;
  clearTimeout(timer);
  if (code !== 0) throw new Error(`${name} failed (exit ${code ?? p.child.signalCode}${code === null ? `, killed after ${timeoutMs} ms` : ''}): ${p.stderr || p.lines.join(' ')}`);
  return p.lines.join('\n');
}

/** The StreamPath of a KStreams row, as JSON (a YAML file may be JSON). */
export function benchStreamPath(
  name: string,
  port: number,
  transform: { applyTo: 'primary' | 'mirror'; ops: XformOp[] } | undefined,
  mirrorPort: number | undefined,
): Record<string, unknown> {
  return {
    apiVersion: 'kstreams.io/v1alpha1',
    kind: 'StreamPath',
    metadata: { name },
    spec: {
      selector: { matchLabels: { app: 'bench' } },
      port,
      drainTimeoutSeconds: 5,
      ...(mirrorPort !== undefined ? { mirror: { targets: [{ name: 'sink', address: `${host}:${mirrorPort}` }], sampling: { percent: 100 }, ...KS_MIRROR } } : {}),
      ...(transform ? { transform } : {}),
    },
  };
}

/** A kstreams run exited before attaching, with this message. */
class NotAttached extends Error {}

export class TransformBench {
  private ns: XformNetns | undefined;
  private tmpDir: string | undefined;
  private port = 0;
  private readonly live = new Set<Proc>();
  private tools!: XformTools;
  private files!: { block: string; request: string; reply: string; blockOut: Record<string, string>; requestOut: Record<string, string> };
  private addonCopy: string | undefined;
  /** spec.mirror is required by this build's schema even with applyTo primary: a discard mirror is added. */
  private discardMirror = false;
  private readonly cli = nodeProgram('../../sidecar/src/cli/main.js');

  constructor(
    readonly options: TransformBenchOptions,
    private readonly log: (line: string) => void = () => undefined,
  ) {}

  async run(): Promise<TransformRun> {
    const o = this.options;
    const startedAt = new Date().toISOString();
    this.tools = buildXformTools();
    this.tmpDir = mkdtempSync(join(tmpdir(), 'kstreams-xform-bench-'));
    const block = benchBlock();
    const request = benchRequest(REQUEST_BYTES, 1);
    const bytes = Math.max(1, Math.floor(o.bytes / block.length)) * block.length;
    this.files = { block: this.write('block', block), request: this.write('request', request), reply: this.write('reply', BENCH_REPLY), blockOut: {}, requestOut: {} };
    const perKiB: Partial<Record<BenchOpName, number>> = {};
    for (const name of o.ops) {
      const op = BENCH_OPS[name];
      const out = applyOp(op, block);
      const reqOut = applyOp(op, request);
      if (out.length !== block.length || reqOut.length !== request.length) throw new Error(`${name} changes the length: the sinks expect it kept`);
      this.files.blockOut[name] = this.write(`block.${name}`, out);
      this.files.requestOut[name] = this.write(`request.${name}`, reqOut);
      perKiB[name] = density(op, block);
    }
    const addon = o.addon ?? repoPath('native/build/Release/kstreams.node');
    if (existsSync(addon)) {
      this.addonCopy = join(this.tmpDir, 'kstreams.node');
      copyFileSync(addon, this.addonCopy);
    } else if (o.addon) {
      throw new Error(`--addon ${o.addon}: no such file`);
    }
    const wanted = (id: XformRowId) => id === 'direct' || !o.only || o.only.includes(id);
    const specs = XFORM_ROWS.filter((r) => wanted(r.id));
    if (specs.some((r) => r.id === 'kstreams')) this.discardMirror = this.mirrorRequired();
    const rows: XformRowResult[] = [];
    for (const spec of specs) {
      for (const op of spec.perOp ? o.ops : [undefined]) {
        rows.push({ id: spec.id, label: spec.label, ...(op ? { op } : {}), bulk: [], rr: [], errors: [], notes: [], median: {} });
      }
    }
    if (this.discardMirror) {
      const r = rows.filter((x) => x.id === 'kstreams');
      for (const x of r) x.notes.push('spec.mirror is required by this build with applyTo primary: a mirror to a discard sink is included (a tee the C and Node rows do not pay)');
    }

    this.ns = benchNetns('xf');
    const perConn = Math.max(1, Math.ceil(o.rrCount / o.rrConns));
    const warmup = Math.min(500, Math.ceil(perConn / 10));
    try {
      for (let run = 1; run <= o.runs; run++) {
        for (const load of ['bulk', 'rr'] as const) {
          for (const row of rows) {
            if (row.unavailable || row.errors.filter((e) => e.startsWith(load)).length >= 2) continue;
            const spec = XFORM_ROWS.find((s) => s.id === row.id) as RowSpec;
            const what = `run ${run}/${o.runs} ${load} ${row.id}${row.op ? ` ${row.op}` : ''}`;
            try {
              const line = await this.retryOnce(what, async () => {
                if (load === 'bulk') {
                  const s = await this.bulkOnce(spec, row.op, run, bytes);
                  row.bulk.push(s);
                  return `${s.gbps.toFixed(2)} GB/s, proxy CPU ${s.proxyCpuPerGB?.toFixed(2) ?? '-'} s/GB${s.mirrorWhole === undefined ? '' : `, mirror ${s.mirrorWhole ? 'whole' : `got ${s.mirrorBytes} of ${s.bytes}`}`}`;
                }
                const s = await this.rrOnce(spec, row.op, run, perConn, warmup);
                row.rr.push(s);
                return `${(s.rps / 1000).toFixed(1)}k req/s, p50 ${s.p50Us.toFixed(0)} us, p99 ${s.p99Us.toFixed(0)} us`;
              });
              this.log(`${what}: ${line}`);
            } catch (err) {
              if (err instanceof NotAttached && spec.id !== 'kstreams-mirror' && /transform/i.test(err.message)) {
                row.unavailable = err.message;
                this.log(`${what}: not available: ${err.message}`);
              } else {
                row.errors.push(`${load} run ${run}: ${(err as Error).message}`);
                this.log(`${what}: FAILED ${(err as Error).message}`);
              }
            }
          }
        }
      }
    } finally {
      await this.cleanup();
    }
    for (const r of rows) r.median = medians(r);
    return {
      options: o,
      startedAt,
      finishedAt: new Date().toISOString(),
      userHz: USER_HZ,
      data: { blockBytes: block.length, requestBytes: request.length, replyBytes: BENCH_REPLY.length, perKiB },
      kstreams: {
        command: 'kstreams run -f <StreamPath> --netns <the bench namespace>, stopped with SIGTERM after each measurement',
        withDiscardMirror: this.discardMirror,
        mirror: `spec.mirror: 1 target (a sink), sampling 100%, pipeSize ${KS_MIRROR.pipeSize}, bufferSize ${KS_MIRROR.bufferSize}, turnTimeoutMs 0`,
      },
      rows,
    };
  }

  /** Stops what is still running (by pid), removes the namespace and temp files. Safe to call twice. */
  async cleanup(): Promise<void> {
    await Promise.all([...this.live].map((p) => p.stop(1000)));
    this.live.clear();
    if (this.ns) await this.ns.destroy();
    this.ns = undefined;
    if (this.tmpDir) rmSync(this.tmpDir, { recursive: true, force: true });
    this.tmpDir = undefined;
  }

  private write(name: string, data: Buffer): string {
    const f = join(this.tmpDir as string, `${name}.bin`);
    writeFileSync(f, data);
    return f;
  }

  private nextPort(): number {
    return FIRST_PORT + (this.port++ % PORTS);
  }

  private track(p: Proc): Proc {
    this.live.add(p);
    void p.exited.then(() => this.live.delete(p));
    return p;
  }

  private async server(name: string, args: string[]): Promise<{ proc: Proc; port: number }> {
    const s = await startListening(this.ns as XformNetns, name, this.tools.load, args);
    this.track(s.proc);
    return s;
  }

  private async retryOnce<T>(what: string, measure: () => Promise<T>): Promise<T> {
    try {
      return await measure();
    } catch (err) {
      if (err instanceof NotAttached) throw err;
      this.log(`${what}: failed (${(err as Error).message.slice(0, 200)}), retrying once`);
      await sleep(2000);
      return measure();
    }
  }

  /** Whether `kstreams validate` refuses a transform of the primary without spec.mirror. */
  private mirrorRequired(): boolean {
    const file = join(this.tmpDir as string, 'probe-streampath.yaml');
    writeFileSync(file, JSON.stringify(benchStreamPath('bench-probe', 8080, { applyTo: 'primary', ops: [BENCH_OPS.mask] }, undefined)));
    const r = spawnSync(this.cli.command, [...this.cli.args, 'validate', '-f', file], { encoding: 'utf8' });
    return r.status !== 0 && /mirror/.test(`${r.stderr}${r.stdout}`);
  }

  /** `kstreams run` with this StreamPath in the bench's namespace; resolves once it attached. */
  private async startKstreams(sp: Record<string, unknown>, name: string): Promise<Proc> {
    const file = join(this.tmpDir as string, `${name}.yaml`);
    writeFileSync(file, `${JSON.stringify(sp, null, 2)}\n`);
    const ns = this.ns as XformNetns;
    const env = this.addonCopy ? { ...process.env, KSTREAMS_ADDON: this.addonCopy } : process.env;
    const child = spawn(this.cli.command, [...this.cli.args, 'run', '-f', file, '--netns', ns.name], { stdio: ['ignore', 'pipe', 'pipe'], env });
    ns.track(child);
    const proc = this.track(new Proc(`kstreams run (${name})`, child));
    let stderr = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`kstreams run did not attach within 30 s: ${stderr.trim()}`)), 30_000);
      child.stderr?.on('data', (d: Buffer | string) => {
        stderr += d.toString();
        if (stderr.includes('kstreams: attached ')) {
          clearTimeout(timer);
          resolve();
        }
      });
      void proc.exited.then((code) => {
        clearTimeout(timer);
        const msg = stderr.trim().split('\n').filter(Boolean).pop() ?? `exit ${code}`;
        reject(new NotAttached(msg.replace(/^kstreams: /, '')));
      });
    });
    return proc;
  }

  private async startPath(spec: RowSpec, op: BenchOpName | undefined, serverPort: number, mirrorPort: number | undefined): Promise<StartedPath> {
    const ns = this.ns as XformNetns;
    if (spec.id === 'direct') return { port: serverPort, stop: async () => undefined };
    if (spec.id === 'c' || spec.id === 'node') {
      const p = await startBaseline(ns, this.tools, spec.id, op as BenchOpName, `${host}:${this.nextPort()}`, `${host}:${serverPort}`);
      this.track(p.proc);
      return {
        port: p.port,
        proc: p.proc,
        stop: async () => {
          await p.proc.stop(1000);
          return undefined;
        },
      };
    }
    const transform = op === undefined ? undefined : { applyTo: spec.id === 'kstreams' ? ('primary' as const) : ('mirror' as const), ops: [BENCH_OPS[op] as XformOp] };
    const sp = benchStreamPath(`bench-${spec.id}${op ? `-${op}` : ''}`, serverPort, transform, mirrorPort);
    const proc = await this.startKstreams(sp, `${spec.id}-${op ?? 'none'}-${serverPort}`);
    return {
      // sk_lookup steers connections to the server's own port to the engine.
      port: serverPort,
      proc,
      stop: async () => {
        await proc.stop(15_000);
        const line = proc.lines.find((l) => l.includes('"type":"summary"'));
        return line ? (JSON.parse(line) as KsSummary) : undefined;
      },
    };
  }

  private mirrorArgs(spec: RowSpec, op: BenchOpName | undefined, what: 'block' | 'request'): string[] {
    if (spec.mirror === 'any' || spec.mirror === undefined) return [];
    const out = what === 'block' ? this.files.blockOut : this.files.requestOut;
    const original = what === 'block' ? this.files.block : this.files.request;
    return ['--expect', spec.mirror === 'transformed' && op ? (out[op] as string) : original];
  }

  private async bulkOnce(spec: RowSpec, op: BenchOpName | undefined, run: number, bytes: number): Promise<XformBulkSample> {
    const ns = this.ns as XformNetns;
    const f = this.files;
    const expect = spec.primaryTransformed && op ? (f.blockOut[op] as string) : f.block;
    const sink = await this.server('sink', ['sink', String(this.nextPort()), '--expect', expect]);
    const mirrorKind = spec.mirror ?? (spec.id === 'kstreams' && this.discardMirror ? 'any' : undefined);
    const mirror = mirrorKind ? await this.server('mirror sink', ['sink', String(this.nextPort()), '--no-ack', ...this.mirrorArgs({ ...spec, mirror: mirrorKind }, op, 'block')]) : undefined;
    let path: StartedPath | undefined;
    try {
      path = await this.startPath(spec, op, sink.port, mirror?.port);
      const send = (n: number) => ['send', host, String(path?.port), String(n), '--block', f.block];
      await runIn(ns, 'probe', this.tools.load, [...send(0), '--retry-ms', '15000'], 20_000);
      const watch = path.proc ? new ProcessWatch(path.proc.pid, false) : undefined;
      watch?.begin();
      const ticks = () => (processTicks(sink.proc.pid) ?? 0) + (mirror ? (processTicks(mirror.proc.pid) ?? 0) : 0);
      const server0 = ticks();
      const sys0 = systemBusyTicks();
      const out = JSON.parse(await runIn(ns, 'bulk client', this.tools.load, send(bytes), 60_000 + bytes / 20e3)) as { bytes: number; seconds: number; cpuSeconds: number };
      const sys1 = systemBusyTicks();
      let mirrorBytes: number | undefined;
      let mirrorWhole: boolean | undefined;
      if (mirror) {
        // probe + transfer; the mirror may end a moment after the primary (not part of the primary's time).
        const lines = await waitLines(mirror.proc, (l) => l.startsWith('conn '), 2, 15_000, 'mirror sink').catch(() => mirror.proc.lines.filter((l) => l.startsWith('conn ')));
        const conns = lines.map((l) => l.split(' ').map(Number));
        mirrorBytes = conns.reduce((s, c) => s + (c[1] ?? 0), 0);
        mirrorWhole = mirrorBytes === out.bytes && conns.every((c) => c[2] === -1);
        if (mirrorKind !== 'any' && conns.some((c) => c[2] !== -1)) throw new Error(`the mirror got wrong bytes (first at offset ${conns.find((c) => c[2] !== -1)?.[2]})`);
      }
      const proxy = watch?.end();
      const server1 = ticks();
      const summary = await path.stop();
      path = undefined;
      if (spec.id.startsWith('kstreams') && !(summary?.bytesPrimary !== undefined && summary.bytesPrimary >= out.bytes)) {
        throw new Error(`kstreams run moved ${summary?.bytesPrimary ?? 'no count of'} bytes of ${out.bytes}: traffic bypassed it`);
      }
      const gb = out.bytes / GB;
      const sample: XformBulkSample = {
        run,
        bytes: out.bytes,
        seconds: out.seconds,
        gbps: gb / out.seconds,
        pathCpuPerGB: (out.cpuSeconds + (server1 - server0) / USER_HZ + (proxy?.cpuSeconds ?? 0)) / gb,
        sysCpuPerGB: (sys1 - sys0) / USER_HZ / gb,
      };
      if (proxy) {
        sample.proxyCpuSeconds = proxy.cpuSeconds;
        sample.proxyCpuPerGB = proxy.cpuSeconds / gb;
      }
      if (mirrorBytes !== undefined) sample.mirrorBytes = mirrorBytes;
      if (mirrorWhole !== undefined) sample.mirrorWhole = mirrorWhole;
      return sample;
    } finally {
      if (path) await path.stop();
      await sink.proc.stop(1000);
      if (mirror) await mirror.proc.stop(1000);
    }
  }

  private async rrOnce(spec: RowSpec, op: BenchOpName | undefined, run: number, perConn: number, warmup: number): Promise<XformRrSample> {
    const ns = this.ns as XformNetns;
    const f = this.files;
    const conns = this.options.rrConns;
    const expect = spec.primaryTransformed && op ? (f.requestOut[op] as string) : f.request;
    const size = ['--request-size', String(REQUEST_BYTES)];
    const server = await this.server('rr server', ['rr-server', String(this.nextPort()), ...size, '--reply', f.reply, '--expect', expect]);
    const mirrorKind = spec.mirror ?? (spec.id === 'kstreams' && this.discardMirror ? 'any' : undefined);
    const mirror = mirrorKind ? await this.server('mirror rr server', ['rr-server', String(this.nextPort()), ...size, ...this.mirrorArgs({ ...spec, mirror: mirrorKind }, op, 'request')]) : undefined;
    let path: StartedPath | undefined;
    try {
      path = await this.startPath(spec, op, server.port, mirror?.port);
      const rr = (n: number) => ['rr', host, String(path?.port), String(n), '--request', f.request, '--reply', f.reply];
      await runIn(ns, 'probe', this.tools.load, [...rr(1), '--retry-ms', '15000'], 20_000);
      const watch = path.proc ? new ProcessWatch(path.proc.pid, false) : undefined;
      watch?.begin();
      const out = JSON.parse(await runIn(ns, 'rr client', this.tools.load, [...rr(perConn), '--conns', String(conns), '--warmup', String(warmup)], 120_000)) as {
        count: number;
        seconds: number;
        rps: number;
        p50Us: number;
        p99Us: number;
      };
      const proxy = watch?.end();
      // Every connection's line (probe + conns) says how many requests differed from the expected bytes.
      const lines = await waitLines(server.proc, (l) => l.startsWith('conn '), 1 + conns, 10_000, 'rr server');
      const bad = lines.reduce((s, l) => s + Number(l.split(' ')[3]), 0);
      if (bad) throw new Error(`${bad} requests reached the server changed otherwise than the op says`);
      let mirrorWhole: boolean | undefined;
      if (mirror) {
        const m = await waitLines(mirror.proc, (l) => l.startsWith('conn '), 1 + conns, 15_000, 'mirror rr server').catch(() => mirror.proc.lines.filter((l) => l.startsWith('conn ')));
        const sum = (ls: string[], i: number) => ls.reduce((s, l) => s + Number(l.split(' ')[i]), 0);
        if (mirrorKind !== 'any' && sum(m, 3) > 0) throw new Error(`${sum(m, 3)} requests reached the mirror changed otherwise than expected`);
        mirrorWhole = sum(m, 1) === sum(lines, 1) && sum(m, 3) === 0;
      }
      const summary = await path.stop();
      path = undefined;
      if (spec.id.startsWith('kstreams') && !(summary?.connections !== undefined && summary.connections >= 1 + conns)) {
        throw new Error(`kstreams run saw ${summary?.connections ?? 'no count of'} connections of ${1 + conns}: traffic bypassed it`);
      }
      const requests = conns * (perConn + warmup);
      const sample: XformRrSample = { run, count: out.count, requests, conns, seconds: out.seconds, rps: out.rps, p50Us: out.p50Us, p99Us: out.p99Us };
      if (proxy) {
        sample.proxyCpuSeconds = proxy.cpuSeconds;
        sample.proxyCpuUsPerRequest = (1e6 * proxy.cpuSeconds) / requests;
        sample.proxyCpuPerGB = proxy.cpuSeconds / ((requests * REQUEST_BYTES) / GB);
      }
      if (mirrorWhole !== undefined) sample.mirrorWhole = mirrorWhole;
      return sample;
    } finally {
      if (path) await path.stop();
      await server.proc.stop(1000);
      if (mirror) await mirror.proc.stop(1000);
    }
  }
}

function spreadOf(values: number[], mid: number | undefined): number | undefined {
  return mid !== undefined && values.length > 1 ? (Math.max(...values) - Math.min(...values)) / mid : undefined;
}

/**
 * The samples a row's figures are medians over: for a mirror row, the runs whose mirror got the whole stream
 * (once a mirror is cut the path is a plain proxy, and its speed is not a mirror's); all runs otherwise, or
 * when the mirror was cut in every run (the report says so).
 */
function basis<T extends { mirrorWhole?: boolean }>(samples: T[]): { use: T[]; whole?: number } {
  if (!samples.some((s) => s.mirrorWhole !== undefined)) return { use: samples };
  const whole = samples.filter((s) => s.mirrorWhole);
  return { use: whole.length ? whole : samples, whole: whole.length };
}

function medians(r: XformRowResult): XformMedians {
  const m: XformMedians = {};
  const set = <K extends keyof XformMedians>(k: K, v: XformMedians[K] | undefined) => {
    if (v !== undefined) m[k] = v;
  };
  const bulk = basis(r.bulk);
  const rr = basis(r.rr);
  set('gbps', median(bulk.use.map((s) => s.gbps)));
  set('spread', spreadOf(bulk.use.map((s) => s.gbps), m.gbps));
  set('proxyCpuPerGB', median(bulk.use.map((s) => s.proxyCpuPerGB)));
  set('pathCpuPerGB', median(bulk.use.map((s) => s.pathCpuPerGB)));
  set('sysCpuPerGB', median(bulk.use.map((s) => s.sysCpuPerGB)));
  set('mirrorWholeRuns', bulk.whole);
  set('rps', median(rr.use.map((s) => s.rps)));
  set('rpsSpread', spreadOf(rr.use.map((s) => s.rps), m.rps));
  set('p50Us', median(rr.use.map((s) => s.p50Us)));
  set('p99Us', median(rr.use.map((s) => s.p99Us)));
  set('proxyCpuUsPerRequest', median(rr.use.map((s) => s.proxyCpuUsPerRequest)));
  set('rrProxyCpuPerGB', median(rr.use.map((s) => s.proxyCpuPerGB)));
  set('rrMirrorWholeRuns', rr.whole);
  return m;
}

// ---- report ----

const fmt = (v: number | undefined, digits = 2): string => (v === undefined || !Number.isFinite(v) ? 'n/a' : v.toFixed(digits));
const fmtX = (v: number | undefined): string => (v === undefined || !Number.isFinite(v) ? '-' : `${v.toFixed(2)}x`);
const pct = (v: number | undefined): string => (v === undefined ? '-' : `${Math.round(100 * v)}%`);

const OP_TEXT: Record<BenchOpName, string> = {
  mask: 'mask after "Authorization: " until "\\r\\n" with "*"',
  replace: 'replace "prod-db-1" with "stag-db-1"',
  uppercase: 'byteMap uppercase (a-z to A-Z)',
};

/** The rows of one op's tables, in XFORM_ROWS order: the op's own rows and the rows that apply none. */
function opRows(run: TransformRun, op: BenchOpName): XformRowResult[] {
  return XFORM_ROWS.flatMap((s) => run.rows.filter((r) => r.id === s.id && (r.op === op || (!s.perOp && r.op === undefined))));
}

/** "2/3" (figures over those 2), or "0/3, cut" when figures are over runs whose mirror was cut. */
function wholeText(whole: number | undefined, runs: number): string {
  if (whole === undefined) return '-';
  return whole === 0 ? `0/${runs} (cut: figures of a proxy)` : `${whole}/${runs}`;
}

function rowState(r: XformRowResult, load: 'bulk' | 'rr'): string | undefined {
  if (r.unavailable) return 'not available (see Notes)';
  if ((load === 'bulk' ? r.bulk : r.rr).length === 0) return r.errors.length ? 'failed (see Failures)' : 'not run';
  return undefined;
}

export function transformTables(run: TransformRun, op: BenchOpName): string[] {
  const rows = opRows(run, op);
  const byId = (id: XformRowId) => rows.find((r) => r.id === id)?.median;
  const [d, c, n] = [byId('direct'), byId('c'), byId('node')];
  const runs = run.options.runs;
  const bulk = table(
    ['bulk', 'GB/s', 'spread', 'CPU s/GB proxy', 'CPU s/GB path', 'x direct', 'x C', 'x Node', 'mirror whole'],
    rows.map((r) => {
      const state = rowState(r, 'bulk');
      if (state) return [r.label, state, '', '', '', '', '', '', ''];
      const m = r.median;
      return [
        r.label,
        fmt(m.gbps),
        pct(m.spread),
        r.id === 'direct' ? '-' : fmt(m.proxyCpuPerGB),
        fmt(m.pathCpuPerGB),
        r.id === 'direct' ? '-' : fmtX(ratio(m.gbps, d?.gbps)),
        r.id === 'c' || r.id === 'direct' ? '-' : fmtX(ratio(m.gbps, c?.gbps)),
        r.id === 'node' || r.id === 'direct' ? '-' : fmtX(ratio(m.gbps, n?.gbps)),
        wholeText(m.mirrorWholeRuns, r.bulk.length),
      ];
    }),
  );
  const rr = table(
    [`${run.options.rrConns} conns, ${run.data.requestBytes} B req / ${run.data.replyBytes} B reply`, 'k req/s', 'spread', 'p50 us', 'p99 us', 'CPU us/req proxy', 'CPU s/GB proxy', 'x direct', 'x C', 'x Node', 'mirror whole'],
    rows.map((r) => {
      const state = rowState(r, 'rr');
      if (state) return [r.label, state, '', '', '', '', '', '', '', '', ''];
      const m = r.median;
      return [
        r.label,
        fmt(m.rps === undefined ? undefined : m.rps / 1000, 1),
        pct(m.rpsSpread),
        fmt(m.p50Us, 0),
        fmt(m.p99Us, 0),
        r.id === 'direct' ? '-' : fmt(m.proxyCpuUsPerRequest, 1),
        r.id === 'direct' ? '-' : fmt(m.rrProxyCpuPerGB),
        r.id === 'direct' ? '-' : fmtX(ratio(m.rps, d?.rps)),
        r.id === 'c' || r.id === 'direct' ? '-' : fmtX(ratio(m.rps, c?.rps)),
        r.id === 'node' || r.id === 'direct' ? '-' : fmtX(ratio(m.rps, n?.rps)),
        wholeText(m.rrMirrorWholeRuns, r.rr.length),
      ];
    }),
  );
  const plain = byId('kstreams-mirror');
  const xform = byId('kstreams-mirror-xform');
  const xformRow = rows.find((r) => r.id === 'kstreams-mirror-xform');
  // A tax is only a tax over runs in which both mirrors were whole.
  const taxOf = (a: number | undefined, b: number | undefined, wa: number | undefined, wb: number | undefined): string =>
    wa === 0 || wb === 0 ? 'n/a (a mirror was cut in every run)' : fmtX(ratio(a, b));
  const tax =
    plain && xform && (xform.gbps !== undefined || xform.rps !== undefined)
      ? `Mirror tax of ${op} on the mirror: primary throughput ${taxOf(xform.gbps, plain.gbps, xform.mirrorWholeRuns, plain.mirrorWholeRuns)} (bulk) and ` +
        `${taxOf(xform.rps, plain.rps, xform.rrMirrorWholeRuns, plain.rrMirrorWholeRuns)} (req/s) of the same mirror without a transform, over the runs whose mirror was whole.`
      : `Mirror tax of ${op} on the mirror: not measured (${!xformRow || !plain ? 'not asked for (--only)' : xformRow.unavailable ? 'the transform is not available, see Notes' : 'a row failed, see Failures'}).`;
  return [
    `${OP_TEXT[op]}: ${fmt(run.data.perKiB[op], 1)} ${op === 'uppercase' ? 'bytes changed' : 'occurrences'} per KiB of the bulk data; medians of ${runs} run(s)`,
    '',
    bulk,
    '',
    rr,
    '',
    tax,
  ];
}

function failures(run: TransformRun): string[] {
  const out: string[] = [];
  for (const r of run.rows) for (const e of r.errors) out.push(`- ${r.label}${r.op ? ` (${r.op})` : ''}: ${e}`);
  return out;
}

function notes(run: TransformRun): string[] {
  const out = new Set<string>();
  for (const r of run.rows) {
    if (r.unavailable) out.add(`- ${r.label}: not available, \`kstreams run\` said: ${r.unavailable}`);
    for (const n of r.notes) out.add(`- ${r.label}: ${n}`);
  }
  return [...out];
}

function header(run: TransformRun, facts: MachineFacts): string[] {
  const o = run.options;
  return [
    `${run.startedAt} .. ${run.finishedAt}; ${facts.cpuModel}, ${facts.cores} cores, kernel ${facts.kernel}, node ${facts.node}, commit ${facts.gitCommit}`,
    `load average ${facts.loadBefore.toFixed(2)} before, ${fmt(facts.loadAfter)} after${facts.addon ? `; addon ${facts.addon}` : ''}`,
    `bulk: ${(run.rows[0]?.bulk[0]?.bytes ?? o.bytes) / 2 ** 20} MiB per run, one connection, a ${run.data.blockBytes} B block of HTTP-like requests repeated; ` +
      `request/response: ${o.rrCount} timed round trips over ${o.rrConns} connections; ${o.runs} run(s), interleaved; every sink checks the bytes it gets`,
    ...(run.rows.some((r) => r.id.startsWith('kstreams')) ? [`KStreams rows: ${run.kstreams.command}; ${run.kstreams.mirror}`] : []),
  ];
}

export function transformConsoleReport(run: TransformRun, facts: MachineFacts): string {
  const out = ['KStreams transform bench', ...header(run, facts), ''];
  for (const op of run.options.ops) out.push(...transformTables(run, op), '');
  const n = notes(run);
  if (n.length) out.push('Notes:', ...n, '');
  const f = failures(run);
  if (f.length) out.push('Failures:', ...f, '');
  return out.join('\n');
}

export function transformMarkdownReport(run: TransformRun, facts: MachineFacts): string {
  const out = ['# KStreams transform bench', '', ...header(run, facts).map((l) => `${l}  `), ''];
  for (const op of run.options.ops) {
    const [title, ...rest] = transformTables(run, op);
    out.push(`## ${title}`, ...rest, '');
  }
  const n = notes(run);
  if (n.length) out.push('## Notes', '', ...n, '');
  const f = failures(run);
  if (f.length) out.push('## Failures', '', ...f, '');
  out.push('How to read this: docs/bench.md, "The transform bench".', '');
  return out.join('\n');
}

/** The --transform entry of bench/src/main.ts: runs, prints, writes results/<date>-transform(.quick).md and .json. */
export async function transformMain(o: TransformBenchOptions & { out: string; write: boolean; silent: boolean }): Promise<number> {
  const log = o.silent ? () => undefined : (line: string) => process.stderr.write(`${line}\n`);
  const facts = machineFacts();
  const addon = addonFacts(o.addon ?? repoPath('native/build/Release/kstreams.node'));
  if (addon) facts.addon = addon;
  const bench = new TransformBench(o, log);
  let interrupted = false;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (interrupted) return;
      interrupted = true;
      process.stderr.write(`\n${signal}: cleaning up\n`);
      void bench.cleanup().finally(() => process.exit(130));
    });
  }
  const { out, write, silent, ...options } = o;
  void silent;
  const run = await bench.run();
  run.options = options;
  facts.loadAfter = loadavg()[0] ?? 0;
  process.stdout.write(`\n${transformConsoleReport(run, facts)}\n`);
  if (write) {
    mkdirSync(out, { recursive: true });
    const stamp = run.startedAt.slice(0, 16).replace(/:/g, '-');
    const base = join(out, `${stamp}-transform${o.quick ? '-quick' : ''}`);
    writeFileSync(`${base}.md`, transformMarkdownReport(run, facts));
    writeFileSync(`${base}.json`, `${JSON.stringify({ machine: facts, ...run }, null, 2)}\n`);
    process.stderr.write(`\nwrote ${relative(process.cwd(), base)}.md and .json\n`);
  }
  return run.rows.some((r) => r.errors.length && r.bulk.length + r.rr.length === 0) ? 1 : 0;
}
