// `kstreams check` on this kernel: the in-kernel transforms line comes from really loading the engine's
// transform runtime (sk_msg verdict on a SOCKHASH, bpf_loop, sk_storage) with this process's privileges.
// Run with the capability sets that matter: root, the injected sidecar's (CAP_BPF + CAP_NET_ADMIN, uid 0),
// and none.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import type { CheckReport } from './check.js';

const main = new URL('./main.ts', import.meta.url).pathname;

/** `kstreams check [--json]` as uid 0 whose capabilities are cut to `caps` (setpriv), or as nobody. */
function check(caps: string[] | 'nobody' | 'root', json = true) {
  const node = [process.execPath, '--import', 'tsx', main, 'check', ...(json ? ['--json'] : [])];
  const argv =
    caps === 'root'
      ? node
      : caps === 'nobody'
        ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', ...node]
        : ['setpriv', '--inh-caps=-all', `--bounding-set=-all,${caps.map((c) => `+${c}`).join(',')}`, ...node];
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 60_000 });
  return { ...r, report: json ? (JSON.parse(r.stdout) as CheckReport) : undefined };
}

describe('kstreams check: in-kernel transforms on a real kernel', () => {
  it('as root loads the transform runtime: the line says ok and --json has transforms.available', () => {
    const r = check('root');
    expect(r.status).toBe(0);
    expect(r.report?.transforms).toEqual({ available: true, unknown: false, missing: [] });
    const text = check('root', false);
    expect(text.stdout).toMatch(/^in-kernel transforms {10}ok \(sk_msg on SOCKHASH, bpf_loop, sk_storage: the transform runtime loaded and attached\)$/m);
    expect(text.stdout).not.toMatch(/^note:/m);
  });

  it("with the injected sidecar's CAP_BPF + CAP_NET_ADMIN only (no CAP_PERFMON) the verifier accepts the program and the runtime loads", () => {
    const r = check(['bpf', 'net_admin']);
    expect(r.report?.transforms).toEqual({ available: true, unknown: false, missing: [] });
    const text = check(['bpf', 'net_admin'], false);
    expect(text.stdout).toMatch(/^in-kernel transforms {10}ok /m);
    expect(text.stdout).not.toMatch(/^note:/m);
  });

  it('without capabilities the line says unknown, not missing', () => {
    const r = check('nobody');
    expect(r.status).toBe(4);
    expect(r.report?.transforms).toMatchObject({ available: false, unknown: true });
    const text = check('nobody', false);
    expect(text.stdout).toMatch(/^in-kernel transforms {10}unknown \(cannot probe without CAP_BPF and CAP_NET_ADMIN\)$/m);
  });
});
