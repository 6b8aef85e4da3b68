// What the operator benches (scale.ts, feed-scale.ts, idle-memory.ts) share: bounded concurrency, the operator
// compiled as in production, its memory from /proc, AdmissionReviews sent straight to its webhook.
import { execFileSync } from 'node:child_process';
import { Agent, request } from 'node:https';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { podManifest } from '../../operator/src/testing/kube.js';

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

/**
 * AdmissionReviews straight to the webhook's HTTPS port over keep-alive connections: latencies in ms. 4 at a
 * time, or with `perSecond` one started every 1/perSecond s whatever is still in flight (as an apiserver
 * sends them while pods are created at that rate), so that the figure spans n / perSecond seconds of the
 * operator's life instead of the moment a burst of n happens to fall in.
 */
export async function admissionLatencies(port: number, ca: string, namespace: string, n: number, perSecond = 0): Promise<{ ms: number[]; mutated: number }> {
  const agent = new Agent({ keepAlive: true, maxSockets: perSecond > 0 ? 64 : 4, ca });
  const body = (i: number) =>
    JSON.stringify({
      apiVersion: 'admission.k8s.io/v1',
      kind: 'AdmissionReview',
      request: {
        uid: `bench-${i}`,
        kind: { group: '', version: 'v1', kind: 'Pod' },
        resource: { group: '', version: 'v1', resource: 'pods' },
        operation: 'CREATE',
        namespace,
        object: podManifest(`review-${i}`, { labels: { app: 'review' } }),
      },
    });
  const ms: number[] = [];
  let mutated = 0;
  const one = (i: number) =>
    new Promise<void>((resolve, reject) => {
      const b = body(i);
      const t0 = performance.now();
      const req = request({ host: '127.0.0.1', port, path: '/mutate-pods', method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(b) } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          ms.push(performance.now() - t0);
          const r = JSON.parse(Buffer.concat(chunks).toString()) as { response?: { allowed?: boolean; patch?: string } };
          if (res.statusCode !== 200 || !r.response?.allowed) return reject(new Error(`webhook answered ${res.statusCode}: ${Buffer.concat(chunks).toString().slice(0, 200)}`));
          if (r.response.patch) mutated++;
          resolve();
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(b);
    });
  if (perSecond > 0) {
    const t0 = performance.now();
    const all: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      const due = t0 + (i * 1000) / perSecond;
      if (due > performance.now()) await new Promise((r) => setTimeout(r, due - performance.now()));
      all.push(one(i));
    }
    await Promise.all(all);
  } else {
    await pool(Array.from({ length: n }, (_, i) => i), 4, one);
  }
  agent.destroy();
  return { ms, mutated };
}
