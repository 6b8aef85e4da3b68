// Turns a bench run into the tables people read: throughput and cost on the bulk load, latency on the
// 64 B load, ratios against every baseline, and the KStreams targets with PASS/MISS and the margin.
import type { MachineFacts } from './machine.js';
import type { BenchRun, PathResult } from './run.js';
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

export function bulkTable(run: BenchRun): string {
  const direct = byId(run, 'direct')?.median.gbps;
  const haproxy = byId(run, 'haproxy')?.median.gbps;
  const socat = byId(run, 'socat')?.median.gbps;
  const rows = run.paths.map((p) => {
    const m = p.median;
    return [
      p.label,
      fmt(m.gbps),
      m.gbpsSpread === undefined ? '-' : `${(100 * m.gbpsSpread).toFixed(0)}%`,
      fmt(m.sysCpuPerGB),
      fmt(m.pathCpuPerGB),
      fmt(m.proxyCpuPerGB),
      m.peakRssMB === undefined ? '-' : fmt(m.peakRssMB, 1),
      fmtX(ratio(m.gbps, direct)),
      fmtX(ratio(m.gbps, nodePeer(run, p)?.median.gbps)),
      fmtX(ratio(m.gbps, haproxy)),
      fmtX(ratio(m.gbps, socat)),
      m.mirrorFraction === undefined
        ? '-'
        : `${(100 * m.mirrorFraction).toFixed(1)}%${m.mirrorShortRuns ? ` (${m.mirrorShortRuns}/${p.bulk.length} cut)` : ''}`,
    ];
  });
  return table(
    ['path (bulk)', 'GB/s', 'spread', 'CPU s/GB system', 'CPU s/GB path', 'CPU s/GB proxy', 'peak RSS MB', 'x direct', 'x Node*', 'x HAProxy', 'x socat', 'mirror got'],
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
    ];
  });
  return table([`path (${run.options.rrSize} B req/resp)`, 'p50 us', 'p99 us', '+p99 us', `p99 us (${conns} conns)`, `k req/s (${conns} conns)`], rows);
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

/**
 * A mirror row's speed only counts when its mirror received the whole stream: a mirror cut early is a
 * proxy with a short detour. A cut baseline is flagged too, since it makes the baseline look faster.
 */
function requireWholeMirror(t: TargetResult, run: BenchRun, id: string): TargetResult {
  const row = byId(run, id);
  const node = byId(run, 'node-mirror');
  const notes: string[] = [];
  let pass = t.pass;
  const cut = (r: PathResult | undefined): string => `${r?.median.mirrorShortRuns ?? 0}/${r?.bulk.length ?? 0} runs`;
  if (row && row.bulk.length > 0 && row.median.mirrorShortRuns === row.bulk.length) {
    notes.push(`but its mirror was cut in every run (${cut(row)}), so this is no PASS`);
    if (pass) pass = false;
  } else if (row?.median.mirrorShortRuns) {
    notes.push(`over the runs with a whole mirror; cut in ${cut(row)}`);
  }
  if (node?.median.mirrorShortRuns) notes.push(`the Node mirror was cut in ${cut(node)}`);
  if (notes.length === 0) return t;
  return { ...t, ...(pass === undefined ? {} : { pass }), margin: `${t.margin}; ${notes.join('; ')}` };
}

/** What adding a mirror costs each implementation, against its own proxy without one. */
export function mirrorTax(run: BenchRun): string {
  const line = (name: string, proxyId: string, mirrorId: string): string | undefined => {
    const p = byId(run, proxyId)?.median;
    const m = byId(run, mirrorId)?.median;
    if (p?.gbps === undefined || m?.gbps === undefined) return undefined;
    const cpu = m.pathCpuPerGB !== undefined && p.pathCpuPerGB !== undefined ? m.pathCpuPerGB - p.pathCpuPerGB : undefined;
    const got = m.mirrorFraction === undefined ? '' : `, mirror got ${(100 * m.mirrorFraction).toFixed(1)}%`;
    return `${name}: ${(100 * (1 - m.gbps / p.gbps)).toFixed(0)}% less throughput, ${cpu === undefined ? 'n/a' : `${cpu >= 0 ? '+' : ''}${cpu.toFixed(2)}`} CPU s/GB (path)${got}`;
  };
  return [line('KStreams', 'kstreams', 'kstreams-mirror'), line('Node', 'node', 'node-mirror')].filter(Boolean).join('\n');
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
  return (
    `bulk: ${(o.bytes / 2 ** 30).toFixed(o.bytes >= 2 ** 30 ? 0 : 3)} GiB per run on one connection; ` +
    `${o.rrSize} B req/resp: ${o.rrCount} round trips on one connection, then ${o.rrConns} connections; ` +
    `medians of ${o.runs} run(s), fresh processes per measurement; pipe size ${o.pipeSize} B (HAProxy and KStreams); ` +
    `socat -b ${o.socatBuffer}`
  );
}

/** The text printed at the end of a run. */
export function consoleReport(run: BenchRun, facts: MachineFacts): string {
  const errors = errorsText(run);
  return [
    `KStreams bench - ${facts.kernel}, ${facts.cpuModel}, ${facts.cores} cores, node ${facts.node}, load ${facts.loadBefore.toFixed(2)} -> ${fmt(facts.loadAfter)}`,
    optionsText(run),
    '',
    bulkTable(run),
    '',
    latencyTable(run),
    '',
    'Mirror tax (mirror row against the same proxy without a mirror):',
    mirrorTax(run),
    '',
    'Targets:',
    targetsText(targets(run)),
    ...(errors ? ['', 'Failures:', errors] : []),
  ].join('\n');
}

/** The committed results file: machine facts, options, tables, targets, failures. */
export function markdownReport(run: BenchRun, facts: MachineFacts): string {
  const errors = errorsText(run);
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
    `| commit | ${facts.gitCommit} |`,
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
    '',
    '## Request/response',
    '',
    latencyTable(run),
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
    ...(errors ? ['', '## Failures', '', errors] : []),
    '',
  ].join('\n');
}
