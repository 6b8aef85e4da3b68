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

const isRefusal = (error: string | null) => error === 'EPERM' || error === 'EACCES';

function refusal(what: string, error: string | null): string {
  if (isRefusal(error)) return `${what}: the kernel refused (${error}); ${CAPS}`;
  return `${what}: probe failed (${error})`;
}

/** A feature whose probe the kernel refused: present or not, this process cannot tell. */
function unprobed(what: string, error: string | null): string {
  if (isRefusal(error)) return `${what}: unknown, cannot probe without CAP_BPF (the kernel refused: ${error}); ${CAPS}`;
  return refusal(what, error);
}

/** Turns a raw probe into KernelFeatures with one sentence per missing feature. Pure, for tests. */
export function describeKernelProbe(raw: RawKernelProbe): KernelFeatures {
  const problems: string[] = [];
  const unknown: ('skLookup' | 'sockmap')[] = [];
  // Without privilege every bpf() command fails, so a feature probe that "failed" says nothing about the
  // kernel. An addon that did not report the probe's own errno still must not claim "not supported".
  const bpfRefused = !raw.bpfSyscall && isRefusal(raw.bpfSyscallError);
  const skLookupError = raw.skLookupError ?? (bpfRefused ? raw.bpfSyscallError : null);
  const sockmapError = raw.sockmapError ?? (bpfRefused ? raw.bpfSyscallError : null);
  if (!raw.skLookup && isRefusal(skLookupError)) unknown.push('skLookup');
  if (!raw.sockmap && isRefusal(sockmapError)) unknown.push('sockmap');
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
      skLookupError
        ? unprobed('sk_lookup programs', skLookupError)
        : 'sk_lookup programs are not supported (Linux 5.9+ needed): connections cannot be intercepted',
    );
  }
  if (!raw.sockmap) {
    problems.push(
      sockmapError
        ? unprobed('SOCKMAP', sockmapError)
        : 'SOCKMAP is not supported (CONFIG_BPF_STREAM_PARSER or CONFIG_NET_SOCK_MSG missing)',
    );
  }
  return { bpfSyscall: raw.bpfSyscall, btf: raw.btf, skLookup: raw.skLookup, sockmap: raw.sockmap, unknown, problems };
}

/** Probes this kernel with the privileges of this process (a probe the sidecar runs at start-up). */
export function probeKernelFeatures(): KernelFeatures {
  const probe = addon().probeKernelFeatures;
  return describeKernelProbe(probe());
}
