// The package boundaries, checked on every import of every source file (tests excepted: they may use the
// shared test infrastructure):
//  - api/ (the StreamPath API: schema, agent protocol, labels, annotations, finalizer, selector semantics)
//    imports none of the operator, the sidecar or the data plane; only zod, yaml and Node's built-ins;
//  - runtime/ (the generic Kubernetes runtime: transport, informer, queue, backoff, clock, election, Events,
//    error lines) imports none of api/, the operator, the sidecar or the data plane;
//  - the sidecar (agent, CLI, demo) and the data plane's TypeScript (native/lib) never reach into the
//    operator: what they share with it lives in api/ and runtime/;
//  - the operator never imports the sidecar.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

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
    expect(imports('sidecar/src/agent/feed-client.ts')).toContain('runtime/src/backoff.ts');
  });

  it('api/ imports only itself, zod, yaml and node built-ins', () => {
    expect(violations(['api/src'], (t) => t.startsWith('api/src/') || t === 'zod' || t === 'yaml' || t.startsWith('node:'))).toEqual([]);
  });

  it('runtime/ imports only itself, npm packages and node built-ins', () => {
    expect(violations(['runtime/src'], (t) => t.startsWith('runtime/src/') || !/^(api|operator|sidecar|native|bench|e2e|test)\//.test(t))).toEqual([]);
  });

  it('the sidecar and native/lib never import the operator', () => {
    expect(violations(['sidecar/src', 'native/lib'], (t) => !t.startsWith('operator/'))).toEqual([]);
  });

  it('the operator never imports the sidecar', () => {
    expect(violations(['operator/src'], (t) => !t.startsWith('sidecar/'))).toEqual([]);
  });
});
