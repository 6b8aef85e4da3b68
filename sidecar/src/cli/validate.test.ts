// `kstreams validate -f FILE` against the shared table of invalid StreamPaths: every row is refused with one
// line on stderr naming the field and exit code 2, every valid edge case is accepted. The table runs through
// the CLI's own main() in this process (a child process per row would take minutes); a few rows also go
// through the real binary, to pin the exit code and the output as a user's shell sees them.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import YAML from 'yaml';
import { INVALID_CASES, VALID_CASES, validSpec } from '../../../api/src/invalid-streampaths.js';
import { main } from './program.js';

const MAIN = new URL('./main.ts', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'kstreams-validate-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const slug = (s: string) => s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');

function streamPathFile(name: string, mutate: (spec: Record<string, any>) => void): string {
  const spec = validSpec();
  mutate(spec);
  const p = join(dir, `${slug(name)}.yaml`);
  writeFileSync(p, YAML.stringify({ apiVersion: 'kstreams.io/v1alpha1', kind: 'StreamPath', metadata: { name: 'checkout-shadow' }, spec }));
  return p;
}

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The CLI's main() in this process, with its stdout and stderr captured. */
async function validateInProcess(file: string): Promise<Result> {
  let stdout = '';
  let stderr = '';
  const out = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => ((stdout += String(chunk)), true));
  const err = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => ((stderr += String(chunk)), true));
  try {
    const code = await main(['node', 'kstreams', 'validate', '-f', file], 'test');
    return { code, stdout, stderr };
  } finally {
    out.mockRestore();
    err.mockRestore();
  }
}

/** The real binary, as a user runs it. */
function validateBinary(file: string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', MAIN, 'validate', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function expectOneLineRefusal(r: Result, mentions: RegExp): void {
  expect(r.code).toBe(2);
  expect(r.stdout).toBe('');
  expect(r.stderr.endsWith('\n')).toBe(true);
  expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
  expect(r.stderr).toMatch(/^kstreams: .*: invalid StreamPath: /);
  expect(r.stderr).toMatch(mentions);
}

afterEach(() => {
  process.exitCode = undefined;
});

describe('kstreams validate', () => {
  it.each(INVALID_CASES)('refuses $name in one line naming the field, exit 2', async (c) => {
    expectOneLineRefusal(await validateInProcess(streamPathFile(c.name, c.mutate)), c.mentions);
  });

  it.each(VALID_CASES)('accepts $name', async (c) => {
    const r = await validateInProcess(streamPathFile(`valid-${c.name}`, c.mutate));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/: valid StreamPath checkout-shadow \(port 8080, /);
  });

  it('says a transform of the primary without a mirror has no mirror', async () => {
    const p = streamPathFile('primary-only', (s) => {
      delete s['mirror'];
      s['transform'] = { applyTo: 'primary', ops: [{ byteMap: { preset: 'uppercase' } }] };
    });
    const r = await validateInProcess(p);
    expect(r.code).toBe(0);
    // Notes about what `kstreams run` of this build supports may follow.
    expect(r.stdout.startsWith(`${p}: valid StreamPath checkout-shadow (port 8080, no mirror: transforms the primary stream only)`)).toBe(true);
    expect(r.stdout.trimEnd().split('\n')).toHaveLength(1);
  });

  it('refuses a file target whose path leaves the capture volume of a sidecar (`..` above its root), naming the field; notes where a file target writes in a cluster', async () => {
    const out = streamPathFile('file-escapes', (s) => {
      s['mirror'] = { targets: [{ address: '10.0.0.5:8080' }, { file: { path: '/captures/../../etc' } }] };
    });
    expectOneLineRefusal(await validateInProcess(out), /spec\.mirror\.targets\[1\]\.file\.path: \/captures\/\.\.\/\.\.\/etc leaves the capture volume/);
    const inside = streamPathFile('file-inside', (s) => {
      s['mirror'] = { targets: [{ file: { path: '/shop/../checkout' } }] };
    });
    const r = await validateInProcess(inside);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("note: in a cluster a file target's path is under the sidecar's capture volume (/var/lib/kstreams/capture)");
  });

  // Each spawn starts node + tsx (1-2 s).
  it('refuses transform errors through the real binary with exit code 2', { timeout: 60_000 }, async () => {
    const rows = ['mirror missing with a transform of the mirror (applyTo defaults to mirror)', 'mask until over 256 bytes in UTF-8 but under 256 characters', 'two program ops'];
    for (const name of rows) {
      const c = INVALID_CASES.find((x) => x.name === name);
      if (!c) throw new Error(`no row ${name} in the invalid table`);
      expectOneLineRefusal(await validateBinary(streamPathFile(`bin-${name}`, c.mutate)), c.mentions);
    }
  });
});
