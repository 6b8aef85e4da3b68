// Turns a bench run into the tables people read: throughput and cost on the bulk load, latency on the
// 64 B load, ratios against every baseline, and the KStreams targets with PASS/MISS and the margin.
import type { MachineFacts } from './machine.js';
import { mirrorSettings } from './paths.js';
import type { BenchRun, PathResult, RedisMedians } from './run.js';
import { ratio } from './stats.js';

export interface TargetResult {
  name: string;
  /** Measured value in the target's unit (a ratio or microseconds). */
  value?: number;
  target: number;
  pass?: boolean;
  /** e.g. "+25% over target" / "missed by 0.08x (13%)". */
  margin: string;
}

function byId(run: BenchRun, id: string): PathResult | undefined {
  return run.paths.find((p) => p.id === id);
}

const fmt = (v: number | undefined, digits = 2): string => (v === undefined || !Number.isFinite(v) ? 'n/a' : v.toFixed(digits));
const fmtX = (v: number | undefined): string => (v === undefined ? 'n/a' : `${v.toFixed(2)}x`);

/** A markdown table whose columns are padded, so it reads the same in a terminal and in a .md file. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

/** The baseline a row is compared with in the "x Node" column: a mirror row against the Node mirror. */
function nodePeer(run: BenchRun, p: PathResult): PathResult | undefined {
  return byId(run, p.kind === 'mirror' ? 'node-mirror' : 'node');
}

/** Run numbers as a short list: [1,2,3,5] -> "1-3,5". */
export function runList(runs: number[]): string {
  const out: string[] = [];
  for (let i = 0; i < runs.length; ) {
    let j = i;
    while (j + 1 < runs.length && (runs[j + 1] as number) === (runs[j] as number) + 1) j++;
    out.push(j > i + 1 ? `${runs[i]}-${runs[j]}` : j === i + 1 ? `${runs[i]},${runs[j]}` : `${runs[i]}`);
    i = j + 1;
  }
  return out.join(',');
}

/**
 * Which runs a row's figures are medians over: "all" for rows without a mirror; for a mirror row the run
 * numbers whose mirror got the whole stream, or "all (none whole)" when it was cut in every run.
 */
export function overRuns(kind: PathResult['kind'], over: 'whole' | 'all' | undefined, runs: number[] | undefined, total: number): string {
  if (runs === undefined || runs.length === 0) return '-';
  if (kind !== 'mirror') return runs.length === total ? 'all' : runList(runs);
  return over === 'whole' ? (runs.length === total ? 'all (whole)' : `${runList(runs)} (whole)`) : 'all (none whole)';
}

/** "mirror whole 4/5" */
export function wholeText(whole: number | undefined, runs: number | undefined): string {
  return whole === undefined || !runs ? '-' : `${whole}/${runs}`;
}

export function bulkTable(run: BenchRun): string {
  const direct = byId(run, 'direct')?.median.gbps;
  const haproxy = byId(run, 'haproxy')?.median.gbps;
  const socat = byId(run, 'socat')?.median.gbps;
  const rows = run.paths.map((p) => {
    const m = p.median;
    return [
      p.label,
      fmt(m.gbps),
      overRuns(p.kind, m.figuresOver, m.figureRuns, p.bulk.length),
      m.gbpsSpread === undefined ? '-' : `${(100 * m.gbpsSpread).toFixed(0)}%`,
      fmt(m.sysCpuPerGB),
      fmt(m.pathCpuPerGB),
      fmt(m.proxyCpuPerGB),
      m.peakRssMB === undefined ? '-' : fmt(m.peakRssMB, 1),
      fmtX(ratio(m.gbps, direct)),
      fmtX(ratio(m.gbps, nodePeer(run, p)?.median.gbps)),
      fmtX(ratio(m.gbps, haproxy)),
      fmtX(ratio(m.gbps, socat)),
      wholeText(m.mirrorWholeRuns, m.mirrorRuns),
      m.mirrorFraction === undefined ? '-' : `${(100 * m.mirrorFraction).toFixed(1)}%`,
    ];
  });
  return table(
    [
      'path (bulk)',
      'GB/s',
      'over runs',
      'spread',
      'CPU s/GB system',
      'CPU s/GB path',
      'CPU s/GB proxy',
      'peak RSS MB',
      'x direct',
      'x Node*',
      'x HAProxy',
      'x socat',
      'mirror whole',
      'mirror got',
    ],
    rows,
  );
}

export function latencyTable(run: BenchRun): string {
  const d = byId(run, 'direct')?.median;
  const conns = run.options.rrConns;
  const rows = run.paths.map((p) => {
    const m = p.median;
    const added = m.p99Us !== undefined && d?.p99Us !== undefined ? m.p99Us - d.p99Us : undefined;
    return [
      p.label,
      fmt(m.p50Us, 1),
      fmt(m.p99Us, 1),
      p.id === 'direct' ? '-' : fmt(added, 1),
      fmt(m.concurrentP99Us, 1),
      fmt(m.concurrentRps === undefined ? undefined : m.concurrentRps / 1000, 1),
      wholeText(m.rrMirrorWholeRuns, m.rrMirrorRuns),
    ];
  });
  return table(
    [`path (${run.options.rrSize} B req/resp)`, 'p50 us', 'p99 us', '+p99 us', `p99 us (${conns} conns)`, `k req/s (${conns} conns)`, 'mirror whole'],
    rows,
  );
}

/** The redis-benchmark rows at one pipelining depth (the paths that take part, in ALL_PATHS order). */
export function redisTable(run: BenchRun, pipelined: boolean): string {
  const med = (p: PathResult | undefined): RedisMedians | undefined => (pipelined ? p?.redisPipelinedMedian : p?.redisMedian);
  const samples = (p: PathResult) => (pipelined ? p.redisPipelined : p.redis);
  const paths = run.paths.filter((p) => med(p) !== undefined || (samples(p).length === 0 && p.errors.some((e) => e.startsWith('redis'))));
  const direct = med(byId(run, 'direct'))?.rps;
  const haproxy = med(byId(run, 'haproxy'))?.rps;
  const nodeMirror = med(byId(run, 'node-mirror'))?.rps;
  // The tests as redis-benchmark names them (SET, GET; -t ping gives PING_INLINE and PING_MBULK).
  const tests = [...new Set(paths.flatMap((p) => Object.keys(med(p)?.testRps ?? {})))];
  const rows = paths.map((p) => {
    const m = med(p);
    return [
      p.label,
      fmt(m?.rps === undefined ? undefined : m.rps / 1000, 1),
      m ? overRuns(p.kind, m.figuresOver, m.figureRuns, samples(p).length) : '-',
      m?.spread === undefined ? '-' : `${(100 * m.spread).toFixed(0)}%`,
      ...tests.map((t) => fmt(m?.testRps[t] === undefined ? undefined : (m.testRps[t] as number) / 1000, 1)),
      fmt(m?.p50Ms, 3),
      fmt(m?.p99Ms, 3),
      fmt(m?.proxyCpuUsPerRequest, 1),
      fmtX(ratio(m?.rps, direct)),
      fmtX(ratio(m?.rps, haproxy)),
      p.kind === 'mirror' ? fmtX(ratio(m?.rps, nodeMirror)) : '-',
      wholeText(m?.mirrorWholeRuns, m?.mirrorRuns),
    ];
  });
  return table(
    [
      `path (redis${pipelined ? ` -P ${run.options.redis?.pipeline}` : ''})`,
      'k req/s',
      'over runs',
      'spread',
      ...tests.map((t) => `k ${t}/s`),
      'p50 ms',
      'p99 ms',
      'proxy CPU us/req',
      'x direct',
      'x HAProxy',
      'x Node mirror',
      'mirror whole',
    ],
    rows,
  );
}

function atLeast(name: string, value: number | undefined, target: number, unit = 'x'): TargetResult {
  if (value === undefined) return { name, target, margin: 'not measured' };
  const pass = value >= target;
  const pct = ((value / target - 1) * 100).toFixed(0);
  return {
    name,
    value,
    target,
    pass,
    margin: pass
      ? `${value.toFixed(2)}${unit} (${pct === '0' ? 'at' : `+${pct}% over`} target)`
      : `${value.toFixed(2)}${unit}, missed by ${(target - value).toFixed(2)}${unit} (${(-Number(pct)).toFixed(0)}% short)`,
  };
}

function atMost(name: string, value: number | undefined, target: number, unit: string, digits: number): TargetResult {
  if (value === undefined) return { name, target, margin: 'not measured' };
  const pass = value <= target;
  return {
    name,
    value,
    target,
    pass,
    margin: pass
      ? `${value.toFixed(digits)}${unit} (${(target - value).toFixed(digits)}${unit} to spare)`
      : `${value.toFixed(digits)}${unit}, over by ${(value - target).toFixed(digits)}${unit} (${((value / target - 1) * 100).toFixed(0)}%)`,
  };
}

export function targets(run: BenchRun): TargetResult[] {
  const g = (id: string): number | undefined => byId(run, id)?.median.gbps;
  const cpu = (id: string): number | undefined => byId(run, id)?.median.sysCpuPerGB;
  const pathCpu = (id: string): number | undefined => byId(run, id)?.median.pathCpuPerGB;
  const p99 = (id: string): number | undefined => byId(run, id)?.median.p99Us;
  const addedP99 = (id: string): number | undefined => {
    const a = p99(id);
    const d = p99('direct');
    return a === undefined || d === undefined ? undefined : a - d;
  };
  const out = [
    atLeast('KStreams proxy throughput >= 0.6x direct', ratio(g('kstreams'), g('direct')), 0.6),
    atLeast('KStreams proxy throughput >= 1.2x HAProxy splice', ratio(g('kstreams'), g('haproxy')), 1.2),
    atLeast('KStreams proxy throughput >= 1.0x socat', ratio(g('kstreams'), g('socat')), 1.0),
    requireWholeMirror(atLeast('KStreams mirror throughput >= 2x Node mirror', ratio(g('kstreams-mirror'), g('node-mirror')), 2.0), run, 'kstreams-mirror'),
    requireWholeMirror(
      atMost('KStreams mirror CPU/GB <= 0.4x Node mirror (system-wide)', ratio(cpu('kstreams-mirror'), cpu('node-mirror')), 0.4, 'x', 2),
      run,
      'kstreams-mirror',
    ),
    requireWholeMirror(
      atMost('KStreams mirror CPU/GB <= 0.4x Node mirror (path processes)', ratio(pathCpu('kstreams-mirror'), pathCpu('node-mirror')), 0.4, 'x', 2),
      run,
      'kstreams-mirror',
    ),
    atMost(`KStreams proxy added p99 (${run.options.rrSize} B) <= 30 us`, addedP99('kstreams'), 30, ' us', 1),
    atMost(`KStreams mirror added p99 (${run.options.rrSize} B) <= 30 us`, addedP99('kstreams-mirror'), 30, ' us', 1),
  ];
  if (byId(run, 'kstreams-mirror-bulk')) {
    out.push(wholeInRuns('KStreams mirror, bulk setting: whole in', byId(run, 'kstreams-mirror-bulk'), 0.8, run.options.runs));
    out.push(
      requireWholeMirror(
        atLeast('KStreams mirror, bulk setting, throughput >= 2x Node mirror', ratio(g('kstreams-mirror-bulk'), g('node-mirror')), 2.0),
        run,
        'kstreams-mirror-bulk',
      ),
    );
  }
  if (run.options.redis) out.push(...redisTargets(run));
  if (byId(run, 'kstreams-mirror-sklookup')) {
    out.push(
      requireWholeMirror(
        atLeast('KStreams mirror via sk_lookup >= 2x Node mirror', ratio(g('kstreams-mirror-sklookup'), g('node-mirror')), 2.0),
        run,
        'kstreams-mirror-sklookup',
      ),
    );
    out.push(atMost(`KStreams sk_lookup mirror added p99 (${run.options.rrSize} B) <= 30 us`, addedP99('kstreams-mirror-sklookup'), 30, ' us', 1));
  }
  return out;
}

/** In at least `share` of the runs (rounded up: 4 of 5 for 0.8) the row's mirror got the whole stream. */
function wholeInRuns(prefix: string, row: PathResult | undefined, share: number, plannedRuns: number): TargetResult {
  // Out of the runs asked for: a run whose measurement failed counts as one without a whole mirror.
  const runs = plannedRuns;
  const need = Math.ceil(share * runs - 1e-9);
  const name = `${prefix} >= ${need} of ${runs} runs`;
  const whole = row?.median.mirrorWholeRuns ?? 0;
  if (!row || !row.median.mirrorRuns) return { name, target: share, margin: 'not measured' };
  const failed = runs - row.median.mirrorRuns;
  const pass = whole >= need;
  const extra = whole - need;
  const failedNote = failed > 0 ? `; ${failed} run${failed === 1 ? '' : 's'} failed, counted as not whole` : '';
  return {
    name,
    value: whole / runs,
    target: share,
    pass,
    margin:
      (pass
        ? `mirror whole ${whole}/${runs} (${extra === 0 ? 'at target' : `${extra} run${extra === 1 ? '' : 's'} to spare`})`
        : `mirror whole ${whole}/${runs}, missed by ${-extra} run${extra === -1 ? '' : 's'} (needs ${need}/${runs})`) + failedNote,
  };
}

/**
 * A mirror row's speed only counts when its mirror received the whole stream: a mirror cut early is a
 * proxy with a short detour. The figure is over the runs with a whole mirror, and the margin says which;
 * cut in every run, it is no PASS. A cut baseline is flagged too, since it makes the baseline look faster.
 */
function requireWholeMirror(t: TargetResult, run: BenchRun, id: string, workload: 'bulk' | 'redis' = 'bulk'): TargetResult {
  const info = (r: PathResult | undefined): { whole: number; runs: number; figureRuns: number[] } =>
    workload === 'bulk'
      ? { whole: r?.median.mirrorWholeRuns ?? 0, runs: r?.median.mirrorRuns ?? 0, figureRuns: r?.median.figureRuns ?? [] }
      : { whole: r?.redisMedian?.mirrorWholeRuns ?? 0, runs: r?.redisMedian?.mirrorRuns ?? 0, figureRuns: r?.redisMedian?.figureRuns ?? [] };
  const row = info(byId(run, id));
  const node = info(byId(run, 'node-mirror'));
  const notes: string[] = [];
  let pass = t.pass;
  if (row.runs > 0 && row.whole === 0) {
    notes.push(`but its mirror was whole in no run (0/${row.runs}), so this is no PASS`);
    if (pass) pass = false;
  } else if (row.runs > 0) {
    notes.push(
      row.whole === row.runs
        ? `mirror whole ${row.whole}/${row.runs}`
        : `over run${row.figureRuns.length === 1 ? '' : 's'} ${runList(row.figureRuns)} only, the ones with a whole mirror (${row.whole}/${row.runs})`,
    );
  }
  if (node.runs > 0 && node.whole < node.runs) notes.push(`Node mirror whole ${node.whole}/${node.runs}`);
  if (notes.length === 0) return t;
  return { ...t, ...(pass === undefined ? {} : { pass }), margin: `${t.margin}; ${notes.join('; ')}` };
}

/** The redis-benchmark targets (without pipelining): the request rates of real client and server. */
function redisTargets(run: BenchRun): TargetResult[] {
  const rps = (id: string): number | undefined => byId(run, id)?.redisMedian?.rps;
  const proxy = atLeast('redis: KStreams proxy req/s >= 1.2x HAProxy splice', ratio(rps('kstreams'), rps('haproxy')), 1.2);
  const vsDirect = ratio(rps('kstreams'), rps('direct'));
  if (vsDirect !== undefined && proxy.value !== undefined) proxy.margin += `; ${vsDirect.toFixed(2)}x direct`;
  const out = [
    proxy,
    requireWholeMirror(atLeast('redis: KStreams mirror req/s >= 2x Node mirror', ratio(rps('kstreams-mirror'), rps('node-mirror')), 2.0), run, 'kstreams-mirror', 'redis'),
  ];
  // Not a speed target: the mirror copy must be whole (no cut) in every redis run, at any depth.
  const row = byId(run, 'kstreams-mirror');
  const samples = [...(row?.redis ?? []), ...(row?.redisPipelined ?? [])];
  const name = 'redis: KStreams mirror copy whole in every run (bytes, commands, dataset)';
  if (samples.length === 0) {
    out.push({ name, target: 1, margin: 'not measured' });
  } else {
    const whole = samples.filter((s) => s.mirrorWhole).length;
    const first = samples.find((s) => !s.mirrorWhole);
    out.push({
      name,
      value: whole / samples.length,
      target: 1,
      pass: whole === samples.length,
      margin:
        whole === samples.length
          ? `whole ${whole}/${samples.length}`
          : `whole ${whole}/${samples.length}; run ${first?.run}${(first?.pipeline ?? 1) > 1 ? ` -P ${first?.pipeline}` : ''}: ${first?.mirrorShort ?? '?'}`,
    });
  }
  return out;
}

/** What adding a mirror costs each implementation, against its own proxy without one. */
export function mirrorTax(run: BenchRun): string {
  const line = (name: string, proxyId: string, mirrorId: string): string | undefined => {
    const p = byId(run, proxyId)?.median;
    const m = byId(run, mirrorId)?.median;
    if (p?.gbps === undefined || m?.gbps === undefined) return undefined;
    const cpu = m.pathCpuPerGB !== undefined && p.pathCpuPerGB !== undefined ? m.pathCpuPerGB - p.pathCpuPerGB : undefined;
    const got =
      m.mirrorFraction === undefined ? '' : `, mirror got ${(100 * m.mirrorFraction).toFixed(1)}% (whole ${wholeText(m.mirrorWholeRuns, m.mirrorRuns)})`;
    const lost = 100 * (1 - m.gbps / p.gbps);
    const tput = lost >= 0 ? `${lost.toFixed(0)}% less throughput` : `${(-lost).toFixed(0)}% more throughput (noise: a mirror cannot speed a proxy up)`;
    return `${name}: ${tput}, ${cpu === undefined ? 'n/a' : `${cpu >= 0 ? '+' : ''}${cpu.toFixed(2)}`} CPU s/GB (path)${got}`;
  };
  return [
    line('KStreams', 'kstreams', 'kstreams-mirror'),
    line('KStreams, bulk setting', 'kstreams', 'kstreams-mirror-bulk'),
    line('Node', 'node', 'node-mirror'),
  ]
    .filter(Boolean)
    .join('\n');
}

export function targetsText(results: TargetResult[]): string {
  const w = Math.max(...results.map((r) => r.name.length));
  return results.map((r) => `${r.pass === undefined ? 'N/A ' : r.pass ? 'PASS' : 'MISS'}  ${r.name.padEnd(w)}  ${r.margin}`).join('\n');
}

function errorsText(run: BenchRun): string {
  const lines = run.paths.flatMap((p) => p.errors.map((e) => `- ${p.label}: ${e.replace(/\s+/g, ' ').slice(0, 400)}`));
  return lines.length ? lines.join('\n') : '';
}

function optionsText(run: BenchRun): string {
  const o = run.options;
  const r = o.redis;
  return [
    `bulk: ${(o.bytes / 2 ** 30).toFixed(o.bytes >= 2 ** 30 ? 0 : 3)} GiB per run on one connection`,
    `${o.rrSize} B req/resp: ${o.rrCount} round trips on one connection, then ${o.rrConns} connections`,
    ...(r
      ? [
          `redis: redis-benchmark -c ${r.conns} -n ${r.requests} -r ${r.keyspace} -t ${r.tests.join(',')}${r.pipeline > 1 ? `, and again with -P ${r.pipeline}` : ''}, against redis-server (a second one as the mirror target)`,
        ]
      : []),
    `medians of ${o.runs} run(s), fresh processes per measurement`,
    `pipe size ${o.pipeSize} B (HAProxy and KStreams)`,
    mirrorSettings(o),
    `socat -b ${o.socatBuffer}`,
  ].join('; ');
}

/** Reading notes that depend on the run: the engine build's contract, a redis row that could not run. */
function notesText(run: BenchRun): string[] {
  const notes: string[] = [];
  const legacy = run.paths.filter((p) => p.engineContract === 'legacy' && p.kind === 'mirror').map((p) => p.id);
  if (legacy.length) {
    notes.push(
      `The engine build measured predates turn pacing and mirrorBufferSize (its counters have no connectionsReset): it ignored ` +
        `turnTimeoutMs and mirrorBufferSize, so every mirror row ran with that build's own fixed mirror send buffer and the bulk ` +
        `setting row measures no different setting (rows: ${legacy.join(', ')}).`,
    );
  }
  if (run.redisSkipped) notes.push(`The redis row was not run: ${run.redisSkipped}.`);
  const reset = run.paths.flatMap((p) =>
    [...p.bulk, ...p.rr, ...p.redis, ...p.redisPipelined]
      .filter((s) => (s.engineEnding?.openAtStop ?? 0) > 0)
      .map((s) => `${p.id} run ${s.run} (${s.engineEnding?.openAtStop} open)`),
  );
  if (reset.length) notes.push(`Connections still open after the runner's wait were reset by stop(): ${reset.join(', ')}.`);
  return notes;
}

function redisSections(run: BenchRun, heading: (title: string) => string[]): string[] {
  if (!run.options.redis || run.redisSkipped) return [];
  const out = [...heading('redis-benchmark'), redisTable(run, false)];
  if (run.options.redis.pipeline > 1) out.push('', redisTable(run, true));
  return out;
}

/** The text printed at the end of a run. */
export function consoleReport(run: BenchRun, facts: MachineFacts): string {
  const errors = errorsText(run);
  const notes = notesText(run);
  const redis = redisSections(run, () => ['']);
  return [
    `KStreams bench - ${facts.kernel}, ${facts.cpuModel}, ${facts.cores} cores, node ${facts.node}, load ${facts.loadBefore.toFixed(2)} -> ${fmt(facts.loadAfter)}`,
    optionsText(run),
    '',
    bulkTable(run),
    '',
    latencyTable(run),
    ...redis,
    '',
    'Mirror tax (mirror row against the same proxy without a mirror):',
    mirrorTax(run),
    '',
    'Targets:',
    targetsText(targets(run)),
    ...(notes.length ? ['', 'Notes:', ...notes.map((n) => `- ${n}`)] : []),
    ...(errors ? ['', 'Failures:', errors] : []),
  ].join('\n');
}

/** The committed results file: machine facts, options, tables, targets, failures. */
export function markdownReport(run: BenchRun, facts: MachineFacts): string {
  const errors = errorsText(run);
  const notes = notesText(run);
  return [
    `# KStreams bench, ${run.startedAt.slice(0, 16).replace('T', ' ')} UTC${run.options.quick ? ' (quick)' : ''}`,
    '',
    '| machine | |',
    '|:--|:--|',
    `| kernel | ${facts.kernel} |`,
    `| CPU | ${facts.cpuModel}, ${facts.cores} cores, ${facts.memoryGiB} GiB RAM |`,
    `| node | ${facts.node} |`,
    `| haproxy | ${facts.haproxy} |`,
    `| socat | ${facts.socat} |`,
    ...(facts.redis ? [`| redis | ${facts.redis} |`] : []),
    `| commit | ${facts.gitCommit} |`,
    ...(facts.addon ? [`| engine (kstreams.node) | ${facts.addon} |`] : []),
    `| load average (1 min) | ${facts.loadBefore.toFixed(2)} before, ${fmt(facts.loadAfter)} after |`,
    `| run | ${run.startedAt} to ${run.finishedAt} |`,
    '',
    optionsText(run) + '. How to read this: docs/bench.md.',
    '',
    '## Bulk',
    '',
    bulkTable(run),
    '',
    '`*` x Node: proxies against the Node stream.pipe proxy, mirrors against the Node proxy with a JS mirror.',
    '"over runs": the runs the GB/s, spread and CPU figures are medians over; for a mirror row, the runs whose mirror got the whole stream.',
    '',
    '## Request/response',
    '',
    latencyTable(run),
    ...redisSections(run, (t) => ['', `## Request/response with a real client: ${t}`, '']),
    '',
    '## Mirror tax',
    '',
    'Each mirror row against the same proxy without a mirror:',
    '',
    '```',
    mirrorTax(run),
    '```',
    '',
    '## Targets',
    '',
    '```',
    targetsText(targets(run)),
    '```',
    ...(notes.length ? ['', '## Notes', '', ...notes.map((n) => `- ${n}`)] : []),
    ...(errors ? ['', '## Failures', '', errors] : []),
    '',
  ].join('\n');
}
