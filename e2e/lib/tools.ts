// Small helpers for the e2e journeys: the helm and kubectl binaries, running them, polling with a deadline,
// and step timings. Everything runs against the cluster named by the KUBECONFIG the globalSetup provides.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { resolveBinDir } from '../cluster/local/controlplane.js';

const execFileP = promisify(execFile);
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export interface RunOptions {
  kubeconfig?: string;
  input?: string;
  timeoutMs?: number;
  cwd?: string;
}

/** Runs a command; resolves with stdout, rejects with a message holding stderr (and stdout). */
export async function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const env = { ...process.env, ...(opts.kubeconfig ? { KUBECONFIG: opts.kubeconfig } : {}) };
  const child = execFileP(cmd, args, { env, cwd: opts.cwd ?? repoRoot, maxBuffer: 64 << 20, timeout: opts.timeoutMs ?? 120_000 });
  if (opts.input !== undefined) {
    child.child.stdin?.end(opts.input);
  }
  try {
    return (await child).stdout;
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${err.stderr ?? ''}${err.stdout ?? ''}`.trim());
  }
}

/** helm: $KSTREAMS_HELM, else scripts/install-helm.sh (idempotent; prints the cached helm's path). */
export async function helmBinary(): Promise<string> {
  if (process.env.KSTREAMS_HELM) return process.env.KSTREAMS_HELM;
  return (await run('bash', [join(repoRoot, 'scripts/install-helm.sh')], { timeoutMs: 300_000 })).trim().split('\n').pop() ?? 'helm';
}

/** kubectl: $KSTREAMS_KUBECTL, else the local cluster's own 1.20 kubectl, else the one cached beside helm, else PATH. */
export function kubectlBinary(helm: string): string {
  if (process.env.KSTREAMS_KUBECTL) return process.env.KSTREAMS_KUBECTL;
  for (const c of [join(resolveBinDir(), 'kubectl'), join(dirname(helm), 'kubectl')]) if (existsSync(c)) return c;
  return 'kubectl';
}

/**
 * Calls `fn` until it returns something other than undefined, at most until the deadline; the error then
 * says what was awaited and the last error seen. Errors are retried, except those with `fatal: true`.
 */
export async function poll<T>(what: string, fn: () => Promise<T | undefined>, opts: { timeoutMs?: number; intervalMs?: number } = {}): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
      last = undefined;
    } catch (e) {
      // An error marked fatal is not worth waiting out.
      if ((e as { fatal?: boolean } | undefined)?.fatal) throw e;
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${last !== undefined ? `: ${last instanceof Error ? last.message : String(last)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 500));
  }
}

/** Step timings, printed as a table at the end of a journey. */
export class Timings {
  readonly steps: Array<{ step: string; ms: number }> = [];
  private readonly t0 = performance.now();

  async time<T>(step: string, fn: () => Promise<T>): Promise<T> {
    const t = performance.now();
    try {
      return await fn();
    } finally {
      const ms = Math.round(performance.now() - t);
      this.steps.push({ step, ms });
      console.log(`[journey] ${step}: ${ms} ms`);
    }
  }

  report(title: string): string {
    const w = Math.max(...this.steps.map((s) => s.step.length), 5);
    const lines = this.steps.map((s) => `  ${s.step.padEnd(w)}  ${String(s.ms).padStart(7)} ms`);
    return [`${title} (total ${Math.round(performance.now() - this.t0)} ms)`, ...lines].join('\n');
  }
}
