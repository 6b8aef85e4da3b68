// Summarises a V8 .cpuprofile (bench/operator/feed-scale.ts --profile-edit): sampled time, the functions with
// the most self time, and the inclusive time of the frames that name a part of the operator (its own source
// files and the Node internals that carry the feed), so that a profile says where an edit's CPU went.
// With --when NAME: when (from the profile's start) the samples inside that function had reached 1%, 50%, 99%
// and 100% of its time: for sendConfig, when the operator had computed and written the edit's frames.
// `npx tsx bench/operator/profile-summary.ts FILE.cpuprofile [--top 40] [--match REGEX] [--when NAME]`
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '40' }, match: { type: 'string' }, when: { type: 'string' } } });
const file = positionals[0];
if (!file) throw new Error('usage: profile-summary.ts FILE.cpuprofile [--top N] [--match REGEX]');
const prof = JSON.parse(readFileSync(file, 'utf8')) as Profile;

const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

// Time per sample: the delta to the next sample (V8's convention).
const selfUs = new Map<number, number>();
for (let i = 0; i < prof.samples.length; i++) {
  const dt = prof.timeDeltas[i + 1] ?? 0;
  selfUs.set(prof.samples[i]!, (selfUs.get(prof.samples[i]!) ?? 0) + dt);
}
const totalUs = [...selfUs.values()].reduce((a, b) => a + b, 0);
const short = (url: string) => url.replace(/^file:\/\/.*?\/(\.build-[^/]+\/)?/, '').replace(/^node:/, 'node:');
const label = (f: CallFrame) => `${f.functionName || '(anonymous)'} ${short(f.url)}${f.url ? `:${f.lineNumber + 1}` : ''}`;

const self = new Map<string, number>();
for (const [id, us] of selfUs) {
  const k = label(byId.get(id)!.callFrame);
  self.set(k, (self.get(k) ?? 0) + us);
}
// Inclusive time per label (each sample counted once per label on its stack).
const incl = new Map<string, number>();
for (const [id, us] of selfUs) {
  const seen = new Set<string>();
  for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) {
    const k = label(byId.get(n)!.callFrame);
    if (seen.has(k)) continue;
    seen.add(k);
    incl.set(k, (incl.get(k) ?? 0) + us);
  }
}
const top = Number(values.top);
const ms = (us: number) => (us / 1000).toFixed(0).padStart(6);
const pct = (us: number) => `${((us / totalUs) * 100).toFixed(1).padStart(5)}%`;
const wall = (prof.endTime - prof.startTime) / 1e6;
console.log(`${file}: ${(totalUs / 1e6).toFixed(2)} s sampled over ${wall.toFixed(2)} s wall; idle ${ms(self.get('(idle) ') ?? 0)} ms`);
console.log('\nself time:');
for (const [k, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${ms(us)} ms ${pct(us)}  ${k}`);
console.log('\ninclusive time:');
const re = values.match ? new RegExp(values.match) : undefined;
for (const [k, us] of [...incl].sort((a, b) => b[1] - a[1]).filter(([k]) => !re || re.test(k)).slice(0, top)) console.log(`${ms(us)} ms ${pct(us)}  ${k}`);

if (values.when) {
  const inside = (id: number) => {
    for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) if (byId.get(n)!.callFrame.functionName === values.when) return true;
    return false;
  };
  const memo = new Map<number, boolean>();
  let t = 0;
  const at: { t: number; us: number }[] = [];
  for (let i = 0; i < prof.samples.length; i++) {
    t += prof.timeDeltas[i] ?? 0;
    const id = prof.samples[i]!;
    let yes = memo.get(id);
    if (yes === undefined) memo.set(id, (yes = inside(id)));
    if (yes) at.push({ t, us: prof.timeDeltas[i + 1] ?? 0 });
  }
  const total = at.reduce((a, b) => a + b.us, 0);
  const marks = [0.01, 0.5, 0.99, 1];
  const out: string[] = [];
  let acc = 0;
  let m = 0;
  for (const x of at) {
    acc += x.us;
    while (m < marks.length && acc >= marks[m]! * total) out.push(`${marks[m]! * 100}% at ${(x.t / 1000).toFixed(0)} ms`), m++;
  }
  console.log(`\n${values.when}: ${(total / 1000).toFixed(0)} ms in all; ${out.join(', ')} (from the profile's start)`);
}
