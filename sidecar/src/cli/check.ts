// `kstreams check`: can this machine and this process run the data plane?
import { probeKernelFeatures, type KernelFeatures } from '../../../native/lib/index.js';
import { probeTransformFeatures, type TransformFeatures } from '../../../native/lib/kernel.js';
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
  /** kstreams can attach here (mirroring); in-kernel transforms are reported apart, in `transforms`. */
  ok: boolean;
  kernel: KernelFeatures;
  /** Whether spec.transform can run here: the engine's transform runtime was loaded, attached and unloaded. */
  transforms: TransformFeatures;
  privileges: { bpf: boolean; netAdmin: boolean; sysAdmin: boolean; problems: string[] };
}

/** The check line of in-kernel transforms: what was loaded, or what is missing. */
export function transformMark(t: TransformFeatures, unprivileged: boolean): string {
  if (t.available) return 'ok (sk_msg on SOCKHASH, bpf_loop, sk_storage: the transform runtime loaded and attached)';
  if (t.unknown || unprivileged) return 'unknown (cannot probe without CAP_BPF and CAP_NET_ADMIN)';
  if (t.needsCapability) return `MISSING (the verifier refuses the transform program without ${t.needsCapability}): spec.transform is refused, mirroring works`;
  return `MISSING (${t.missing.length ? t.missing.join(', ') : t.code ?? 'failed to load'}): spec.transform is refused, mirroring works`;
}

export async function checkCommand(opts: { json?: boolean }): Promise<number> {
  const privileges = currentPrivileges(true);
  const kernel = await probe();
  const transforms = await probeTransformFeatures();
  const ok = kernel.problems.length === 0 && privileges.problems.length === 0;
  const report: CheckReport = { ok, kernel, transforms, privileges };
  // Without CAP_BPF the kernel refuses every probe, so a feature reads as missing when it is only unseen.
  const unprivileged = !privileges.bpf;
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } else {
    const mark = (b: boolean) => (b ? 'ok' : 'MISSING');
    const kernelMark = (b: boolean) => (b ? 'ok' : unprivileged ? 'unknown (cannot probe without CAP_BPF)' : 'MISSING');
    const rows: [string, string][] = [
      ['bpf() syscall', kernelMark(kernel.bpfSyscall)],
      ['BTF', mark(kernel.btf)],
      ['sk_lookup programs', kernelMark(kernel.skLookup)],
      ['sockmap', kernelMark(kernel.sockmap)],
      ['in-kernel transforms', transformMark(transforms, unprivileged)],
      ['CAP_BPF (or CAP_SYS_ADMIN)', mark(privileges.bpf)],
      ['CAP_NET_ADMIN', mark(privileges.netAdmin)],
      ['CAP_SYS_ADMIN (for --netns)', mark(privileges.sysAdmin)],
    ];
    const text = rows.map(([k, v]) => `${k.padEnd(30)}${v}`).join('\n');
    const problems = (unprivileged ? privileges.problems : [...kernel.problems, ...privileges.problems]).map((p) => `  - ${p}`).join('\n');
    // Transforms are optional: without them mirroring works and only spec.transform is refused.
    const note = !transforms.available && transforms.problem && !unprivileged ? `note: ${transforms.problem}\n` : '';
    process.stdout.write(`${text}\n${ok ? 'ready: kstreams can attach on this machine' : `not ready:\n${problems}`}\n${note}`);
  }
  if (privileges.problems.length) {
    process.stderr.write(
      `kstreams: missing privileges: ${privileges.problems.join('; ')}; run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN, then check again\n`,
    );
    return EXIT.privileges;
  }
  if (kernel.problems.length) {
    process.stderr.write(
      `kstreams: this kernel lacks what the data plane needs: ${kernel.problems.join('; ')}; use Linux 5.9+ with BTF (CONFIG_DEBUG_INFO_BTF) and BPF sockmap support\n`,
    );
    return EXIT.privileges;
  }
  return EXIT.ok;
}
