// The package boundaries, checked on every import of every source file (tests excepted: they may use the
// shared test infrastructure):
//  - api/ (the StreamPath API: schema, agent protocol, labels, annotations, finalizer, selector semantics)
//    imports none of the operator, the sidecar or the data plane; only zod, yaml and Node's built-ins;
//  - the sidecar (agent, CLI, demo) and the data plane's TypeScript (native/lib) never reach into the
//    operator, except the generic Kubernetes runtime pieces listed in SHARED_RUNTIME;
//  - the operator never imports the sidecar.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** Operator modules the sidecar may use: retry backoff and the one-line error formatter for its logs. */
const SHARED_RUNTIME = ['operator/src/kube/backoff.ts', 'operator/src/kube/errors.ts'];

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(p));
    else if (p.endsWith('.ts') && !/\.(test|int\.test|kernel\.test|e2e\.test)\.ts$/.test(p) && !p.includes('/testing/')) out.push(p);
  }
  return out;
}

/** Every module a file imports (static, re-exports, dynamic with a literal), as a repo path or a package name. */
function imports(file: string): string[] {
  const info = ts.preProcessFile(readFileSync(join(ROOT, file), 'utf8'), true, true);
  return info.importedFiles.map(({ fileName }) =>
    fileName.startsWith('.') ? relative(ROOT, resolve(ROOT, dirname(file), fileName)).replace(/\.js$/, '.ts') : fileName,
  );
}

function violations(dirs: string[], allowed: (target: string) => boolean): string[] {
  return dirs.flatMap((d) => sources(d).flatMap((f) => imports(f).filter((t) => !allowed(t)).map((t) => `${f} imports ${t}`)));
}

describe('package boundaries', () => {
  it('finds the imports it checks (the check itself works)', () => {
    expect(imports('api/src/streampath.ts')).toContain('zod');
    expect(imports('sidecar/src/agent/feed-client.ts')).toContain('operator/src/kube/backoff.ts');
  });

  it('api/ imports only itself, zod, yaml and node built-ins', () => {
    expect(violations(['api/src'], (t) => t.startsWith('api/src/') || t === 'zod' || t === 'yaml' || t.startsWith('node:'))).toEqual([]);
  });

  it('the sidecar and native/lib use the operator only through the shared runtime pieces', () => {
    expect(violations(['sidecar/src', 'native/lib'], (t) => !t.startsWith('operator/') || SHARED_RUNTIME.includes(t))).toEqual([]);
  });

  it('the operator never imports the sidecar', () => {
    expect(violations(['operator/src'], (t) => !t.startsWith('sidecar/'))).toEqual([]);
  });
});
