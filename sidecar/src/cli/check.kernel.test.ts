// `kstreams check` on this kernel: the in-kernel transforms line comes from really loading the engine's
// transform runtime (sk_msg verdict on a SOCKHASH, bpf_loop, sk_storage) with this process's privileges.
// Run with the capability sets that matter: root, the injected sidecar's (CAP_BPF + CAP_NET_ADMIN, uid 0),
// and none.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { CheckReport } from './check.js';

const main = new URL('./main.ts', import.meta.url).pathname;

/** The memory cgroup (v1) hierarchy of these machines, where the kernel memory a group was charged is kept apart. */
const MEMCG_V1 = '/sys/fs/cgroup/memory';

/** `kstreams check [--json]` as uid 0 whose capabilities are cut to `caps` (setpriv), or as nobody; with
 * `memcg`, in a memory cgroup of its own (v1), whose kernel memory high-water mark is returned in MiB. */
function check(caps: string[] | 'nobody' | 'root', json = true, memcg = false) {
  const node = [process.execPath, '--import', 'tsx', main, 'check', ...(json ? ['--json'] : [])];
  const argv =
    caps === 'root'
      ? node
      : caps === 'nobody'
        ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', ...node]
        : ['setpriv', '--inh-caps=-all', `--bounding-set=-all,${caps.map((c) => `+${c}`).join(',')}`, ...node];
  let group: string | undefined;
  if (memcg) {
    group = `${MEMCG_V1}/kstreams-check-${process.pid}`;
    mkdirSync(group);
    argv.unshift('sh', '-c', `echo $$ > ${group}/cgroup.procs && exec "$@"`, 'sh');
  }
  try {
    const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 60_000 });
    const kmemMiB = group ? Number(readFileSync(`${group}/memory.kmem.max_usage_in_bytes`, 'utf8')) / 2 ** 20 : undefined;
    return { ...r, kmemMiB, report: json ? (JSON.parse(r.stdout) as CheckReport) : undefined };
  } finally {
    if (group) rmdirSync(group);
  }
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

  // The kernel charges the verifier's working memory to the memory cgroup of the loading process: a program
  // whose verification explodes gets the sidecar OOM-killed under its limit (it did, at 512Mi, before the
  // walks became global functions: ~600 MiB). The whole check process, program load included, stays far
  // below the chart's sidecar limit (256Mi, which also holds the process's own memory).
  it("with the sidecar's capabilities the transform's verification costs little kernel memory", () => {
    expect(existsSync(`${MEMCG_V1}/memory.kmem.max_usage_in_bytes`), 'memory cgroup v1 with kmem accounting').toBe(true);
    const r = check(['bpf', 'net_admin'], true, true);
    expect(r.report?.transforms).toEqual({ available: true, unknown: false, missing: [] });
    expect(r.kmemMiB).toBeGreaterThan(0);
    expect(r.kmemMiB).toBeLessThan(96);
  });

  it('without capabilities the line says unknown, not missing', () => {
    const r = check('nobody');
    expect(r.status).toBe(4);
    expect(r.report?.transforms).toMatchObject({ available: false, unknown: true });
    const text = check('nobody', false);
    expect(text.stdout).toMatch(/^in-kernel transforms {10}unknown \(cannot probe without CAP_BPF and CAP_NET_ADMIN\)$/m);
  });
});
