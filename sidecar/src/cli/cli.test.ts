// The CLI as users meet it: a real child process, its exit code, its one-line stderr.
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EXAMPLE_STREAMPATH_YAML } from '../../../api/src/streampath.js';
import { nameUnknownField } from './load.js';
import { privilegesFromStatus } from './privileges.js';
import { formatSeconds, renderLive } from './live.js';
import { byteSize } from './program.js';

const MAIN = new URL('./main.ts', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'kstreams-cli-test-'));
// Readable for the unprivileged user of the capabilities test.
chmodSync(dir, 0o755);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function kstreams(args: string[], stdin?: string, asNobody = false): Promise<Result> {
  const node = [process.execPath, '--import', 'tsx', MAIN, ...args];
  // As root, drop to an unprivileged user without capabilities; as any other user that is the case already.
  const argv =
    asNobody && process.getuid?.() === 0
      ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', ...node]
      : node;
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin ?? '');
  });
}

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

/** The example with one line replaced; fails loudly if the line is not there, so tests cannot go stale. */
function exampleWith(from: string, to: string): string {
  if (!EXAMPLE_STREAMPATH_YAML.includes(from)) throw new Error(`example has no ${from}`);
  return EXAMPLE_STREAMPATH_YAML.replace(from, to);
}

function expectOneLineError(r: Result, code: number, pattern: RegExp): void {
  expect(r.code).toBe(code);
  expect(r.stdout).toBe('');
  expect(r.stderr.endsWith('\n')).toBe(true);
  expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
  expect(r.stderr).toMatch(/^kstreams: /);
  expect(r.stderr).toMatch(pattern);
}

// Each case starts node + tsx (1-2 s, more when the whole unit suite runs beside it on 2 cores).
describe('kstreams CLI', { timeout: 60_000 }, () => {
  it('validates the embedded example, read from stdin', async () => {
    const ex = await kstreams(['example']);
    expect(ex.code).toBe(0);
    expect(ex.stdout).toBe(EXAMPLE_STREAMPATH_YAML);
    const r = await kstreams(['validate', '-f', '-'], ex.stdout);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^<stdin>: valid StreamPath checkout-shadow \(port 8080, 1 mirror target/);
  });

  it('names the file and the position of a YAML syntax error', async () => {
    const p = file('bad.yaml', 'spec:\n  port: [8080\n');
    expectOneLineError(await kstreams(['validate', '-f', p]), 2, new RegExp(`${p}: YAML error at line \\d+, column \\d+: `));
  });

  it('names an unknown field with its path', async () => {
    const p = file('unknown.yaml', exampleWith('    onOverflow: cut', '    onOverflow: cut\n    colour: red'));
    expectOneLineError(await kstreams(['validate', '-f', p]), 2, /invalid StreamPath: spec\.mirror\.colour: unknown field/);
  });

  it('names a bad port and a bad address', async () => {
    const p = file('port.yaml', exampleWith('port: 8080', 'port: 70000').replace('10.0.0.2:8080', '10.0.0.2'));
    const r = await kstreams(['validate', '-f', p]);
    expectOneLineError(r, 2, /spec\.port: .*65535/);
    expect(r.stderr).toMatch(/spec\.mirror\.targets\[0\]\.address: must be host:port/);
    expect(r.stderr).toMatch(/fix these 2 fields/);
  });

  it('refuses several documents in one file', async () => {
    const p = file('multi.yaml', `${EXAMPLE_STREAMPATH_YAML}---\n${EXAMPLE_STREAMPATH_YAML}`);
    expectOneLineError(await kstreams(['validate', '-f', p]), 2, /holds 2 YAML documents; kstreams takes one StreamPath per file/);
  });

  it('says what to do about a missing file', async () => {
    expectOneLineError(
      await kstreams(['run', '-f', join(dir, 'absent.yaml')]),
      2,
      /cannot read .*absent\.yaml: no such file; .*kstreams example/,
    );
  });

  it('exits 3 for a network namespace that does not exist, before touching the kernel', async () => {
    const p = file('ok.yaml', EXAMPLE_STREAMPATH_YAML);
    expectOneLineError(
      await kstreams(['run', '-f', p, '--netns', `ks-absent-${process.pid}`]),
      3,
      /network namespace ks-absent-\d+ not found \(\/run\/netns\/ks-absent-\d+\); create it/,
    );
    expectOneLineError(await kstreams(['run', '-f', p, '--netns', '/proc/999999999/ns/net']), 3, /not found/);
  });

  it('refuses a transform program that is not a BPF object in run, naming the field, exit 2, before touching the kernel', async () => {
    const junk = file('junk.o', 'not an object');
    const p = file('transform.yaml', `${EXAMPLE_STREAMPATH_YAML}  transform:\n    ops:\n      - program: {path: ${junk}}\n`);
    expectOneLineError(await kstreams(['run', '-f', p]), 2, /^kstreams: spec\.transform\.ops\[0\]\.program: .*junk\.o is not an ELF object/);
    const missing = file('missing.yaml', `${EXAMPLE_STREAMPATH_YAML}  transform:\n    ops:\n      - program: {path: ${junk}.absent}\n`);
    expectOneLineError(await kstreams(['run', '-f', missing]), 2, /junk\.o\.absent does not exist/);
  });

  it('refuses a Service target in run, naming the field', async () => {
    const p = file('svc.yaml', exampleWith('- address: 10.0.0.2:8080', '- service: {name: checkout, port: 8080}'));
    expectOneLineError(
      await kstreams(['run', '-f', p]),
      2,
      /spec\.mirror\.targets\[0\]\.service: service targets need a cluster; give address: host:port/,
    );
  });

  it('exits 4 without the capabilities to attach, naming them', async () => {
    const p = file('caps.yaml', EXAMPLE_STREAMPATH_YAML);
    expectOneLineError(await kstreams(['run', '-f', p], undefined, true), 4, /CAP_BPF is missing.*CAP_NET_ADMIN is missing.*run as root/);
  });

  it('reports usage errors in one line with exit 2', async () => {
    const [noFile, badInterval, badDrain, badBudget, unknown, none] = await Promise.all([
      kstreams(['run']),
      kstreams(['run', '-f', 'x', '--json-interval', 'soon']),
      kstreams(['run', '-f', 'x', '--drain-timeout', '3601']),
      kstreams(['run', '-f', 'x', '--mirror-buffer-budget', '64M']),
      kstreams(['frobnicate']),
      kstreams([]),
    ]);
    expectOneLineError(noFile, 2, /required option '-f, --file <path>' not specified; see kstreams run --help/);
    expectOneLineError(badInterval, 2, /--json-interval/);
    expectOneLineError(badDrain, 2, /--drain-timeout.*0 to 3600/);
    expectOneLineError(badBudget, 2, /--mirror-buffer-budget.*Ki, Mi or Gi/);
    expectOneLineError(unknown, 2, /unknown command 'frobnicate'/);
    expectOneLineError(none, 2, /no command given/);
  });

  it('documents commands and exit codes in --help', async () => {
    const top = await kstreams(['--help']);
    expect(top.code).toBe(0);
    for (const word of ['run', 'validate', 'check', 'example', 'Exit codes:', '3  network namespace not found', '4  missing privileges']) {
      expect(top.stdout).toContain(word);
    }
    const run = await kstreams(['run', '--help']);
    expect(run.code).toBe(0);
    for (const word of ['--netns <name|path>', '--json-interval <seconds>', '--drain-timeout <seconds>', '--mirror-buffer-budget <bytes>', '-f, --file <path>', 'One StreamPath per file', 'SIGHUP', 'reset (RST)', '"type":"summary"', 'Exit codes:']) {
      expect(run.stdout).toContain(word);
    }
  });
});

describe('nameUnknownField', () => {
  it('puts the unknown key into the path', () => {
    expect(nameUnknownField('spec.mirror: Unrecognized key: "colour"')).toBe('spec.mirror.colour: unknown field (check its spelling and indentation)');
    expect(nameUnknownField('(root): Unrecognized key: "spce"')).toBe('spce: unknown field (check its spelling and indentation)');
    expect(nameUnknownField('spec.port: Too big')).toBe('spec.port: Too big');
  });
});

describe('privilegesFromStatus', () => {
  it('reads CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN from CapEff', () => {
    expect(privilegesFromStatus('CapEff:\t000001ffffffffff\n', true).problems).toEqual([]);
    const none = privilegesFromStatus('CapEff:\t0000000000000000\n', true);
    expect(none.problems).toHaveLength(3);
    // CAP_BPF (39) + CAP_NET_ADMIN (12), no CAP_SYS_ADMIN: enough in the own namespace only.
    const status = `CapEff:\t${((1n << 39n) | (1n << 12n)).toString(16).padStart(16, '0')}\n`;
    expect(privilegesFromStatus(status, false).problems).toEqual([]);
    expect(privilegesFromStatus(status, true).problems).toEqual([expect.stringMatching(/CAP_SYS_ADMIN/)]);
  });
});

const counters = {
  connections: 3,
  bytesPrimary: 2048,
  bytesMirrored: 2048,
  bytesDropped: 0,
  connectionsReset: 0,
  targets: [{ name: 'staging', connectionsMirrored: 3, connectionsCut: 0, connectFailures: 0, bytesMirrored: 2048, bytesDropped: 0, turnWaitsExpired: 4 }],
  connectionsActive: 1,
  appConnectFailures: 2,
  setupFailures: 0,
  memory: {
    pipesInUse: 3,
    pipesPooled: 1,
    pipeBytesInUse: 3 * 65536,
    pipeBytesPooled: 65536,
    mirrorBufferInUse: 1024 * 1024,
    mirrorBufferBudget: 64 * 1024 * 1024,
    mirrorBufferDenied: 0,
  },
};

describe('renderLive', () => {
  it('shows totals, memory and one line per target', () => {
    const lines = renderLive({ name: 'sp', port: 8080, netns: 'netns app', startedAt: 0 }, counters, 61_000);
    expect(lines[0]).toContain('up 1m01s');
    expect(lines[1]).toContain('connections 3 (1 open, 2 refused by the app)');
    expect(lines[1]).toContain('primary 2.0 KiB');
    expect(lines[2]).toBe('  memory: 3 pipes in use (192.0 KiB), 1 pooled (64.0 KiB); mirror buffers 1.0 MiB of 64.0 MiB');
    expect(lines[3]).toMatch(/-> staging: 3 conns, 2\.0 KiB mirrored, .*4 turn waits expired/);
  });

  it('shows connections reset at detach, setup failures and denied buffer grows when there are any', () => {
    const lines = renderLive(
      { name: 'sp', port: 8080, netns: 'netns app', startedAt: 0 },
      { ...counters, connectionsReset: 5, setupFailures: 1, memory: { ...counters.memory, mirrorBufferDenied: 7 } },
      0,
    );
    expect(lines[1]).toContain('1 reset for want of fds or memory, 5 reset at detach');
    expect(lines[2]).toContain('7 grows denied');
  });
});

describe('formatSeconds and byteSize', () => {
  it('formats drain timeouts as given', () => {
    expect(formatSeconds(20_000)).toBe('20s');
    expect(formatSeconds(500)).toBe('0.5s');
  });

  it('reads bytes with binary suffixes', () => {
    expect(byteSize('67108864')).toBe(64 * 1024 * 1024);
    expect(byteSize('64Mi')).toBe(64 * 1024 * 1024);
    expect(byteSize('256MiB')).toBe(256 * 1024 * 1024);
    expect(byteSize('0')).toBe(0);
    expect(() => byteSize('64M')).toThrow(/Ki, Mi or Gi/);
    expect(() => byteSize('17Gi')).toThrow(/16 GiB/);
  });
});
