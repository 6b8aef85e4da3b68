// `kstreams check`: can this machine and this process run the data plane?
import type { KernelFeatures } from '../../../native/lib/types.js';
import { CliError, EXIT } from './errors.js';
import { currentPrivileges } from './privileges.js';

async function probe(): Promise<KernelFeatures> {
  // A variable specifier keeps this compiling until native/lib/kernel.ts is committed.
  const specifier = '../../../native/lib/kernel.js';
  let lib: { probeKernelFeatures(): KernelFeatures | Promise<KernelFeatures> };
  try {
    lib = (await import(specifier)) as typeof lib;
  } catch (err) {
    throw new CliError(EXIT.runtime, `cannot load the kernel probe: ${(err as Error).message}; build it with npm run build`);
  }
  try {
    return await lib.probeKernelFeatures();
  } catch (err) {
    throw new CliError(EXIT.runtime, `probing kernel features failed: ${(err as Error).message}`);
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
