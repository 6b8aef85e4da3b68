// What every separate bench section (--replay, --capture) does around its own measurements: progress on
// stderr, cleanup on SIGINT/SIGTERM and at the end, the report on stdout, and results/<date>-<name>.md and
// .json.
import { mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join, relative } from 'node:path';
import { machineFacts, type MachineFacts } from './machine.js';

export interface SectionRun {
  startedAt: string;
  errors: string[];
}

export interface SectionOptions {
  out: string;
  write: boolean;
  silent: boolean;
  quick: boolean;
}

export async function runSection<R extends SectionRun>(
  name: string,
  o: SectionOptions,
  make: (log: (line: string) => void) => { run(): Promise<R>; cleanup(): Promise<void> },
  report: (run: R, facts: MachineFacts) => string,
  extraJson: (run: R) => Record<string, unknown>,
): Promise<number> {
  const log = o.silent ? () => undefined : (line: string) => process.stderr.write(`${line}\n`);
  const facts = machineFacts();
  const bench = make(log);
  let interrupted = false;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (interrupted) return;
      interrupted = true;
      void bench.cleanup().finally(() => process.exit(130));
    });
  }
  let run: R;
  try {
    run = await bench.run();
  } finally {
    await bench.cleanup();
  }
  facts.loadAfter = loadavg()[0] ?? 0;
  const text = report(run, facts);
  process.stdout.write(`\n${text}`);
  if (o.write) {
    mkdirSync(o.out, { recursive: true });
    const base = join(o.out, `${run.startedAt.slice(0, 16).replace(/:/g, '-')}-${name}${o.quick ? '-quick' : ''}`);
    writeFileSync(`${base}.md`, text);
    writeFileSync(`${base}.json`, `${JSON.stringify({ machine: facts, ...run, ...extraJson(run) }, null, 2)}\n`);
    process.stderr.write(`\nwrote ${relative(process.cwd(), base)}.md and .json\n`);
  }
  return run.errors.length ? 1 : 0;
}
