// The request/response row driven by a real client against a real server: redis-benchmark (Debian's
// redis-tools) against redis-server, in the bench's namespace. The mirror target of the mirror rows is a
// second redis-server, which answers like a staging copy of the app would (the engine's turn pacing waits
// for those answers), and which the bench then compares with the app, byte count and dataset, to say
// whether the mirror got the whole stream.
import { spawnSync } from 'node:child_process';
import type { Netns } from '../../sidecar/src/netns.js';
import { runToEnd, start, type Proc } from './procs.js';

export interface RedisOptions {
  /** Requests per redis-benchmark test (-n). */
  requests: number;
  /** Client connections (-c). */
  conns: number;
  /** Random keys out of this many (-r). */
  keyspace: number;
  /** Tests (-t), each measured by itself. */
  tests: string[];
}

/** One redis-benchmark test (one line of its --csv output). */
export interface RedisTestResult {
  test: string;
  rps: number;
  avgMs: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** What a redis-server says about what it received (INFO stats / commandstats, DBSIZE, DEBUG DIGEST). */
export interface RedisCounters {
  netInputBytes: number;
  /** Calls per command, lower case (set, get, ping, ...). */
  calls: Record<string, number>;
  keys: number;
  digest: string;
}

const host = '127.0.0.1';

/** What is missing to run the redis row, or undefined when redis-server, redis-cli and redis-benchmark are there. */
export function redisMissing(): string | undefined {
  const missing = ['redis-server', 'redis-cli', 'redis-benchmark'].filter((c) => spawnSync(c, ['--version'], { encoding: 'utf8' }).error);
  return missing.length ? `${missing.join(', ')} not installed (Debian: apt-get install redis-server redis-tools)` : undefined;
}

export function redisVersion(): string {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  return r.error ? 'not installed' : (r.stdout ?? '').trim().split(' ').slice(0, 3).join(' ');
}

/**
 * Starts a redis-server on a port of the namespace: no persistence (nothing on disk to wait for), its log
 * on stdout, DEBUG allowed from local connections (DEBUG DIGEST compares the app's and mirror's datasets).
 */
export async function startRedis(ns: Netns, name: string, port: number, timeoutMs: number): Promise<Proc> {
  const proc = start(ns, name, 'redis-server', [
    '--port', String(port),
    '--bind', host,
    '--save', '',
    '--appendonly', 'no',
    '--protected-mode', 'no',
    '--daemonize', 'no',
    '--enable-debug-command', 'local',
    '--logfile', '',
    '--loglevel', 'notice',
  ]);
  try {
    await proc.waitLine((l) => l.includes('Ready to accept connections'), timeoutMs);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return proc;
}

async function cli(ns: Netns, port: number, args: string[], timeoutMs = 10_000): Promise<string> {
  return runToEnd(ns, 'redis-cli', 'redis-cli', ['-h', host, '-p', String(port), ...args], timeoutMs);
}

/** PING through a path until it answers PONG (the path is up and delivers the server's reply). */
export async function redisProbe(ns: Netns, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      last = (await cli(ns, port, ['PING'], 5000)).trim();
      if (last === 'PONG') return;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`redis PING through port ${port} did not answer PONG within ${timeoutMs} ms: ${last}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Parses redis-benchmark --csv output: a header line, then one quoted line per test. */
export function parseBenchmarkCsv(text: string): RedisTestResult[] {
  const rows = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('"'))
    .map((l) => l.split(',').map((c) => c.replace(/^"|"$/g, '')));
  const header = rows.shift();
  if (!header || header[0] !== 'test') throw new Error(`redis-benchmark printed no CSV header: ${text.slice(0, 300)}`);
  const col = (name: string): number => {
    const i = header.indexOf(name);
    if (i < 0) throw new Error(`redis-benchmark CSV has no ${name} column: ${header.join(',')}`);
    return i;
  };
  const c = {
    rps: col('rps'),
    avg: col('avg_latency_ms'),
    p50: col('p50_latency_ms'),
    p95: col('p95_latency_ms'),
    p99: col('p99_latency_ms'),
    max: col('max_latency_ms'),
  };
  return rows.map((r) => {
    const n = (i: number): number => Number(r[i]);
    return { test: r[0] ?? '?', rps: n(c.rps), avgMs: n(c.avg), p50Ms: n(c.p50), p95Ms: n(c.p95), p99Ms: n(c.p99), maxMs: n(c.max) };
  });
}

/** Runs redis-benchmark against a port (quiet, CSV) and returns one result per test. */
export async function redisBenchmark(ns: Netns, port: number, o: RedisOptions, pipeline: number): Promise<RedisTestResult[]> {
  const args = [
    '-h', host,
    '-p', String(port),
    '-c', String(o.conns),
    '-n', String(o.requests),
    '-r', String(o.keyspace),
    '-t', o.tests.join(','),
    ...(pipeline > 1 ? ['-P', String(pipeline)] : []),
    '-q',
    '--csv',
  ];
  // No request may take long on loopback; a stalled path must fail the measurement, not hang the bench.
  const out = await runToEnd(ns, 'redis-benchmark', 'redis-benchmark', args, 60_000 + (o.requests * o.tests.length) / 2);
  const results = parseBenchmarkCsv(out);
  if (results.length !== o.tests.length || results.some((r) => !(r.rps > 0))) {
    throw new Error(`redis-benchmark gave no rate for every test: ${out.slice(0, 400)}`);
  }
  return results;
}

/** Total requests over total time of the tests: the request rate of the whole run (harmonic mean of the rates). */
export function combinedRps(results: RedisTestResult[]): number {
  return results.length / results.reduce((s, r) => s + 1 / r.rps, 0);
}

function infoField(info: string, field: string): number {
  const m = new RegExp(`^${field}:(\\d+)`, 'm').exec(info);
  if (!m) throw new Error(`redis INFO has no ${field}`);
  return Number(m[1]);
}

/** Bytes the server has read from its clients so far (INFO stats total_net_input_bytes). */
export async function netInputBytes(ns: Netns, port: number): Promise<number> {
  return infoField(await cli(ns, port, ['INFO', 'stats']), 'total_net_input_bytes');
}

/**
 * What the server received and holds, asked in one redis-cli session (commands on its stdin, one reply per
 * line block): each redis-cli start costs tens of milliseconds on a busy machine. Every server is asked
 * the same commands, so they add the same bytes to what each has read.
 */
export async function redisCounters(ns: Netns, port: number): Promise<RedisCounters> {
  const child = ns.spawn('redis-cli', ['-h', host, '-p', String(port)], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (c: string) => (out += c));
  child.stderr?.setEncoding('utf8').on('data', (c: string) => (err += c));
  const done = new Promise<number | null>((resolve) => child.once('close', resolve));
  child.stdin?.end('INFO stats\nINFO commandstats\nDBSIZE\nDEBUG DIGEST\n');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  const code = await done;
  clearTimeout(timer);
  if (code !== 0) throw new Error(`redis-cli -p ${port} failed (exit ${code}): ${err || out}`);
  const calls: Record<string, number> = {};
  for (const m of out.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls[(m[1] ?? '').toLowerCase()] = Number(m[2]);
  // After the two INFO texts: the DBSIZE integer and the 40-hex digest, each on a line of its own.
  const tail = out.trim().split('\n').slice(-2).map((l) => l.trim());
  const keys = Number(tail[0]);
  const digest = tail[1] ?? '';
  if (!Number.isInteger(keys) || !/^[0-9a-f]{40}$/.test(digest)) throw new Error(`redis-cli -p ${port}: no DBSIZE/DEBUG DIGEST in ${out.slice(-300)}`);
  return { netInputBytes: infoField(out, 'total_net_input_bytes'), calls, keys, digest };
}

/**
 * Waits until the mirror server has read as many bytes as the app server (a mirror may finish a moment
 * after the client, more with turn pacing), or until its count stops moving for `quietMs`, or `timeoutMs`.
 * Both servers are asked the same INFO command each time, so the comparison is not skewed by the asking.
 */
export async function waitMirrorCaughtUp(ns: Netns, appPort: number, mirrorPort: number, quietMs: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = -1;
  let lastChange = Date.now();
  for (;;) {
    const app = await netInputBytes(ns, appPort);
    const mirror = await netInputBytes(ns, mirrorPort);
    if (mirror >= app) return;
    if (mirror !== last) {
      last = mirror;
      lastChange = Date.now();
    }
    if (Date.now() - lastChange > quietMs || Date.now() > deadline) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
