// What holds the operator's JavaScript heap, and what N agents added to it: `npx tsx
// bench/operator/heap-summary.ts BEFORE.heapsnapshot AFTER.heapsnapshot [--per N] [--top 40]` prints the
// self sizes of both V8 heap snapshots (feed-scale.ts --heap-snapshot writes them, with 0 agents and idle
// with N) summed by node type and constructor or string kind, the difference, and the difference per agent.
// Self sizes: an object's own bytes, not what it keeps alive.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: { per: { type: 'string' }, top: { type: 'string', default: '40' } },
});
if (positionals.length < 1 || positionals.length > 2) {
  console.error('usage: heap-summary.ts [BEFORE.heapsnapshot] AFTER.heapsnapshot [--per N] [--top K]');
  process.exit(2);
}

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

/** Bytes and count per "type name" (objects by constructor, strings, arrays, code, ... by type). */
function summarise(file: string): Map<string, { bytes: number; count: number }> {
  const s = JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
  const f = s.snapshot.meta.node_fields;
  const types = s.snapshot.meta.node_types[0];
  const width = f.length;
  const [iType, iName, iSize] = [f.indexOf('type'), f.indexOf('name'), f.indexOf('self_size')];
  const out = new Map<string, { bytes: number; count: number }>();
  for (let i = 0; i < s.nodes.length; i += width) {
    const type = types[s.nodes[i + iType]!]!;
    const name = s.strings[s.nodes[i + iName]!]!;
    const key = type === 'object' || type === 'closure' || type === 'native' ? `${type} ${name.slice(0, 60)}` : type;
    const e = out.get(key) ?? { bytes: 0, count: 0 };
    e.bytes += s.nodes[i + iSize]!;
    e.count++;
    out.set(key, e);
  }
  return out;
}

const after = summarise(positionals.at(-1)!);
const before = positionals.length === 2 ? summarise(positionals[0]!) : new Map<string, { bytes: number; count: number }>();
const per = args.per ? Number(args.per) : undefined;
const rows = [...new Set([...before.keys(), ...after.keys()])].map((k) => {
  const b = before.get(k) ?? { bytes: 0, count: 0 };
  const a = after.get(k) ?? { bytes: 0, count: 0 };
  return { k, b, a, d: a.bytes - b.bytes, dc: a.count - b.count };
});
rows.sort((x, y) => Math.abs(y.d) - Math.abs(x.d));
const mib = (n: number) => (n / 2 ** 20).toFixed(1);
const total = (m: Map<string, { bytes: number }>) => [...m.values()].reduce((t, e) => t + e.bytes, 0);
console.log(`total: ${mib(total(before))} -> ${mib(total(after))} MiB${per ? `, ${((total(after) - total(before)) / per).toFixed(0)} B per agent` : ''}`);
console.log(`| what | before MiB | after MiB | diff MiB | diff count |${per ? ' B per agent | per agent |' : ''}`);
console.log(`|:--|--:|--:|--:|--:|${per ? '--:|--:|' : ''}`);
for (const r of rows.slice(0, Number(args.top)))
  console.log(`| ${r.k} | ${mib(r.b.bytes)} | ${mib(r.a.bytes)} | ${mib(r.d)} | ${r.dc} |${per ? ` ${(r.d / per).toFixed(0)} | ${(r.dc / per).toFixed(2)} |` : ''}`);
