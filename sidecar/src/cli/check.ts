// `kstreams check`: can this machine and this process run the data plane?
import { probeKernelFeatures, type KernelFeatures } from '../../../native/lib/index.js';
import { CliError, EXIT } from './errors.js';
import { currentPrivileges } from './privileges.js';

async function probe(): Promise<KernelFeatures> {
  try {
    return probeKernelFeatures();
  } catch (err) {
    const e = err as { code?: string; message?: string };
    const hint = e.code === 'EKSTREAMS_NO_ADDON' ? '' : '; see kstreams check --help';
    throw new CliError(EXIT.runtime, `probing kernel features failed: ${e.message ?? String(err)}${hint}`);
  }
}

export interface CheckReport {
  ok: boolean;
  kernel: KernelFeatures;
  privileges: { bpf: boolean; netAdmin: boolean; sysAdmin: boolean; problems: string[] };
}

export async function checkCommand(opts: { json?: boolean }): Promise<number> {
  const privileges = currentPrivileges(true);
  const kernel = await probe();
  const ok = kernel.problems.length === 0 && privileges.problems.length === 0;
  const report: CheckReport = { ok, kernel, privileges };
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } else {
    const mark = (b: boolean) => (b ? 'ok' : 'MISSING');
    const rows: [string, boolean][] = [
      ['bpf() syscall', kernel.bpfSyscall],
      ['BTF', kernel.btf],
      ['sk_lookup programs', kernel.skLookup],
      ['sockmap', kernel.sockmap],
      ['CAP_BPF (or CAP_SYS_ADMIN)', privileges.bpf],
      ['CAP_NET_ADMIN', privileges.netAdmin],
      ['CAP_SYS_ADMIN (for --netns)', privileges.sysAdmin],
    ];
    const text = rows.map(([k, v]) => `${k.padEnd(30)}${mark(v)}`).join('\n');
    const problems = [...kernel.problems, ...privileges.problems].map((p) => `  - ${p}`).join('\n');
    process.stdout.write(`${text}\n${ok ? 'ready: kstreams can attach on this machine' : `not ready:\n${problems}`}\n`);
  }
  if (!ok) {
    process.stderr.write(
      `kstreams: this machine cannot run the data plane: ${[...kernel.problems, ...privileges.problems].join('; ')}; run as root on a kernel with sk_lookup (5.9+) and BTF\n`,
    );
    return EXIT.privileges;
  }
  return EXIT.ok;
}
