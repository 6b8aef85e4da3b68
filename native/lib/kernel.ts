// What the kernel offers the data plane, and in words what is missing, for a condition on the StreamPath.
import { addon } from './addon.js';
import type { KernelFeatures } from './types.js';

/** The addon's raw probe: booleans, and the errno name when a probe could not even run. */
export interface RawKernelProbe {
  bpfSyscall: boolean;
  bpfSyscallError: string | null;
  btf: boolean;
  skLookup: boolean;
  skLookupError: string | null;
  sockmap: boolean;
  sockmapError: string | null;
}

const CAPS = 'the sidecar needs CAP_BPF and CAP_NET_ADMIN (or root)';

function refusal(what: string, error: string | null): string {
  if (error === 'EPERM' || error === 'EACCES') return `${what}: the kernel refused (${error}); ${CAPS}`;
  return `${what}: probe failed (${error})`;
}

/** Turns a raw probe into KernelFeatures with one sentence per missing feature. Pure, for tests. */
export function describeKernelProbe(raw: RawKernelProbe): KernelFeatures {
  const problems: string[] = [];
  if (!raw.bpfSyscall) {
    problems.push(
      raw.bpfSyscallError === 'ENOSYS'
        ? 'BPF syscall: the kernel was built without CONFIG_BPF_SYSCALL; no interception, engine only'
        : refusal('BPF syscall', raw.bpfSyscallError),
    );
  }
  if (!raw.btf) {
    problems.push('/sys/kernel/btf/vmlinux is missing (kernel without CONFIG_DEBUG_INFO_BTF): CO-RE programs cannot load');
  }
  if (!raw.skLookup) {
    problems.push(
      raw.skLookupError
        ? refusal('sk_lookup programs', raw.skLookupError)
        : 'sk_lookup programs are not supported (Linux 5.9+ needed): connections cannot be intercepted',
    );
  }
  if (!raw.sockmap) {
    problems.push(
      raw.sockmapError
        ? refusal('SOCKMAP', raw.sockmapError)
        : 'SOCKMAP is not supported (CONFIG_BPF_STREAM_PARSER or CONFIG_NET_SOCK_MSG missing)',
    );
  }
  return { bpfSyscall: raw.bpfSyscall, btf: raw.btf, skLookup: raw.skLookup, sockmap: raw.sockmap, problems };
}

/** Probes this kernel with the privileges of this process (a probe the sidecar runs at start-up). */
export function probeKernelFeatures(): KernelFeatures {
  const probe = addon()['probeKernelFeatures'] as () => RawKernelProbe;
  return describeKernelProbe(probe());
}
