// What the operator benches (scale.ts, feed-scale.ts) share: bounded concurrency, the operator compiled as in
// production, its memory from /proc.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../../', import.meta.url));

/** Runs fn over items, at most n at once. */
export async function pool<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let i = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (i < items.length) await fn(items[i++]!);
  }));
}

/** VmRSS and VmHWM (peak) of a process in MiB. */
export function rssMiB(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
}

/**
 * Compiles the operator (tsconfig.build.json) into a fresh directory inside the repo, so that it resolves
 * node_modules, and returns the directory (the caller removes it). The operator then runs as in production,
 * without a transpiler in its RSS. tsc exits non-zero on type errors in unrelated parts but still emits:
 * only a missing main.js is fatal.
 */
export function compileOperator(): string {
  const outDir = mkdtempSync(join(REPO, 'bench/operator/.build-'));
  try {
    execFileSync(process.execPath, [join(REPO, 'node_modules/typescript/bin/tsc'), '-p', join(REPO, 'tsconfig.build.json'), '--outDir', outDir], { cwd: REPO, stdio: 'ignore' });
  } catch (err) {
    if (!existsSync(operatorMain(outDir))) throw err;
  }
  return outDir;
}

export const operatorMain = (outDir: string) => join(outDir, 'operator/src/main.js');
