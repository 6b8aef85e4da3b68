// npm run bench [-- --quick] [-- --bytes 4G --runs 5] ...: runs every path side by side, prints the
// tables and targets, and writes bench/results/<date>.md and .json.
import { Command, InvalidArgumentError } from 'commander';
import { mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { addonFacts, machineFacts } from './machine.js';
import { ALL_PATHS } from './paths.js';
import { consoleReport, markdownReport, targets } from './report.js';
import { repoPath } from './repo.js';
import { Bench, type BenchOptions } from './run.js';
import { parseSize } from './stats.js';


function size(v: string): number {
  try {
    return parseSize(v);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${v} is not a positive integer`);
  return n;
}

function nonNegativeInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${v} is not a non-negative integer`);
  return n;
}

const program = new Command('bench')
  .description('KStreams side-by-side benchmark: direct, Node, socat, HAProxy and KStreams in one network namespace')
  .option('--quick', 'smoke run in about a minute: 512 MiB, 1 run, 5000 round trips, redis -n 10000 without -P (explicit options win)')
  .option('--bytes <size>', 'bytes per bulk transfer (e.g. 2G, 512M)', size)
  .option('--runs <n>', 'runs per path, default 5 (--quick 1); the tables show medians', positiveInt)
  .option('--rr <n>', 'round trips on the single connection (the concurrent test splits them)', positiveInt)
  .option('--conns <n>', 'connections of the concurrent request/response test', positiveInt, 4)
  .option('--size <bytes>', 'request and response size', positiveInt, 64)
  .option('--pipe-size <size>', 'kernel pipe size for HAProxy (tune.pipesize) and KStreams', size, 1 << 20)
  .option('--socat-buffer <size>', 'socat -b copy buffer', size, 256 * 1024)
  .option('--only <ids>', `comma-separated path ids (direct is always run): ${ALL_PATHS.map((p) => p.id).join(', ')}`)
  .option('--mirror-buffer <size>', 'KStreams mirrorBufferSize of the mirror rows (the default setting)', size, 4 * 2 ** 20)
  .option('--bulk-mirror-buffer <size>', 'mirrorBufferSize and mirrorBufferBudget of the "bulk setting" mirror row', size, 64 * 2 ** 20)
  .option('--turn-timeout <ms>', 'KStreams turnTimeoutMs (mirror turn pacing; 0 = off)', nonNegativeInt, 1000)
  .option('--redis-requests <n>', 'requests per redis-benchmark test (-n); default 200000, --quick 10000', positiveInt)
  .option('--redis-conns <n>', 'redis-benchmark connections (-c)', positiveInt, 50)
  .option('--redis-keyspace <n>', 'redis-benchmark random keys (-r)', positiveInt, 100000)
  .option('--redis-tests <list>', 'redis-benchmark tests (-t)', 'set,get')
  .option('--redis-pipeline <n>', 'also measure with redis-benchmark -P N (0: not); default 16, --quick 0', nonNegativeInt)
  .option('--no-redis', 'skip the redis-benchmark row')
  .option('--engine-lib <module>', 'load the KStreams engine from this module instead of native/lib (compare builds)')
  .option('--addon <file>', 'measure this kstreams.node instead of native/build/Release/kstreams.node (copied at start)')
  .option('--out <dir>', 'where results are written', repoPath('bench/results'))
  .option(
    '--transform [ops]',
    'run the transform bench instead (in-kernel transforms against C and Node transform proxies): ops mask,replace,uppercase (default all); ' +
      'uses --bytes (default 1G, --quick 256M), --runs, --rr, --conns, --only (rows: c, node, kstreams, kstreams-mirror, kstreams-mirror-xform), --addon, --out',
  )
  .option(
    '--replay',
    'run the replay bench instead (kstreams replay --speed max against a Node replayer, bulk and many-turn captures): ' +
      'uses --bytes (default 1G, --quick 64M), --runs (default 3), --out',
  )
  .option(
    '--capture',
    'run the capture bench instead (a file target against an unrecorded mirror, kstreams record and a Node recorder): ' +
      'uses --bytes (default 1G, --quick 256M), --runs (default 3), --warm-memory, --out',
  )
  .option(
    '--warm-memory <size>',
    'capture bench: write and delete this much in tmpfs first, so that the page cache the captures grow into is memory the machine has touched (a VM that backs guest memory lazily pays a host fault per page touched first); 0: no warm-up (default: 4G, --quick 1G)',
    size,
  )
  .option('--no-write', 'print only, write no results file')
  .option('-q, --silent', 'no progress lines');

program.parse();
const cli = program.opts<{
  quick?: boolean;
  bytes?: number;
  runs?: number;
  rr?: number;
  conns: number;
  size: number;
  pipeSize: number;
  socatBuffer: number;
  only?: string;
  mirrorBuffer: number;
  bulkMirrorBuffer: number;
  turnTimeout: number;
  redisRequests?: number;
  redisConns: number;
  redisKeyspace: number;
  redisTests: string;
  redisPipeline?: number;
  redis: boolean;
  engineLib?: string;
  addon?: string;
  out: string;
  write: boolean;
  silent?: boolean;
  transform?: string | boolean;
  replay?: boolean;
  capture?: boolean;
  warmMemory?: number;
}>();

if (cli.capture || cli.replay) {
  // A separate section: its own rows and report (bench/src/capture.ts, bench/src/replay.ts).
  const common = { runs: cli.runs ?? (cli.quick ? 1 : 3), quick: cli.quick ?? false, out: cli.out, write: cli.write, silent: cli.silent ?? false };
  const code = cli.capture
    ? await (await import('./capture.js')).captureMain({
        ...common,
        bytes: cli.bytes ?? (cli.quick ? 256 * 2 ** 20 : 2 ** 30),
        conns: 4,
        warmBytes: cli.warmMemory ?? (cli.quick ? 2 ** 30 : 4 * 2 ** 30),
      })
    : await (await import('./replay.js')).replayMain({
        ...common,
        bytes: cli.bytes ?? (cli.quick ? 64 * 2 ** 20 : 2 ** 30),
        bulkConns: 4,
        turnConns: 8,
        turnsPerConn: cli.quick ? 200 : 2000,
        turnSize: 4096,
      });
  process.stdout.write('', () => process.exit(code));
  await new Promise<never>(() => {});
}

if (cli.transform !== undefined) {
  // The transform section: its own rows, loads and report (bench/src/transform.ts).
  const { transformMain, XFORM_ROWS } = await import('./transform.js');
  const { BENCH_OP_NAMES } = await import('./transform-reference.js');
  const ops = typeof cli.transform === 'string' ? cli.transform.split(',').map((s) => s.trim()).filter(Boolean) : [...BENCH_OP_NAMES];
  const badOps = ops.filter((op) => !(BENCH_OP_NAMES as string[]).includes(op));
  if (badOps.length) program.error(`unknown op(s): ${badOps.join(', ')}; known: ${BENCH_OP_NAMES.join(', ')}`);
  const rows = cli.only?.split(',').map((s) => s.trim()).filter(Boolean);
  const badRows = rows?.filter((id) => !XFORM_ROWS.some((r) => r.id === id)) ?? [];
  if (badRows.length) program.error(`unknown transform row(s): ${badRows.join(', ')}; known: ${XFORM_ROWS.map((r) => r.id).join(', ')}`);
  const code = await transformMain({
    ops: ops as typeof BENCH_OP_NAMES,
    bytes: cli.bytes ?? (cli.quick ? 256 * 2 ** 20 : 2 ** 30),
    runs: cli.runs ?? (cli.quick ? 1 : 3),
    rrCount: cli.rr ?? (cli.quick ? 5000 : 20000),
    rrConns: cli.conns,
    quick: cli.quick ?? false,
    ...(rows ? { only: rows as NonNullable<Parameters<typeof transformMain>[0]['only']> } : {}),
    ...(cli.addon ? { addon: resolve(cli.addon) } : {}),
    out: cli.out,
    write: cli.write,
    silent: cli.silent ?? false,
  });
  process.stdout.write('', () => process.exit(code));
  await new Promise<never>(() => {});
}

const only = cli.only?.split(',').map((s) => s.trim()).filter(Boolean);
const unknown = only?.filter((id) => !ALL_PATHS.some((p) => p.id === id)) ?? [];
if (unknown.length) program.error(`unknown path id(s): ${unknown.join(', ')}; known: ${ALL_PATHS.map((p) => p.id).join(', ')}`);

const options: BenchOptions = {
  bytes: cli.bytes ?? (cli.quick ? 512 * 2 ** 20 : 2 * 2 ** 30),
  runs: cli.runs ?? (cli.quick ? 1 : 5),
  rrCount: cli.rr ?? (cli.quick ? 5000 : 20000),
  rrConns: cli.conns,
  rrSize: cli.size,
  pipeSize: cli.pipeSize,
  socatBuffer: cli.socatBuffer,
  mirrorBufferSize: cli.mirrorBuffer,
  bulkMirrorBufferSize: cli.bulkMirrorBuffer,
  turnTimeoutMs: cli.turnTimeout,
  quick: cli.quick ?? false,
  ...(cli.redis
    ? {
        redis: {
          requests: cli.redisRequests ?? (cli.quick ? 10000 : 200000),
          conns: cli.redisConns,
          keyspace: cli.redisKeyspace,
          tests: cli.redisTests.split(',').map((t) => t.trim()).filter(Boolean),
          pipeline: cli.redisPipeline ?? (cli.quick ? 0 : 16),
        },
      }
    : {}),
  ...(only ? { only } : {}),
  ...(cli.engineLib ? { engineLib: pathToFileURL(resolve(cli.engineLib)).href } : {}),
  ...(cli.addon ? { addon: resolve(cli.addon) } : {}),
};

const log = cli.silent ? () => undefined : (line: string) => process.stderr.write(`${line}\n`);
const facts = machineFacts();
const addon = cli.engineLib ? undefined : addonFacts(options.addon ?? repoPath('native/build/Release/kstreams.node'));
if (addon) facts.addon = addon;
const bench = new Bench(options, log);

// Ctrl-C or a kill: stop what we started (by pid), delete the namespace and temp files, then exit.
let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\n${signal}: cleaning up\n`);
    void bench.cleanup().finally(() => process.exit(130));
  });
}

const run = await bench.run();
facts.loadAfter = loadavg()[0] ?? 0;
process.stdout.write(`\n${consoleReport(run, facts)}\n`);

if (cli.write) {
  mkdirSync(cli.out, { recursive: true });
  const stamp = run.startedAt.slice(0, 16).replace(/:/g, '-');
  const base = join(cli.out, `${stamp}${options.quick ? '-quick' : ''}`);
  writeFileSync(`${base}.md`, markdownReport(run, facts));
  writeFileSync(`${base}.json`, `${JSON.stringify({ machine: facts, ...run, targets: targets(run) }, null, 2)}\n`);
  process.stderr.write(`\nwrote ${relative(process.cwd(), base)}.md and .json\n`);
}
