// What the kernel offers the data plane, and in words what is missing, for a condition on the StreamPath.
import { addon } from './addon.js';
import { Engine } from './engine.js';
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

/**
 * Whether spec.transform can run here: the engine's own transform runtime (native/bpf/transform.bpf.c)
 * loaded and attached. It needs an sk_msg verdict program attached to a SOCKHASH, the bpf_loop helper
 * (5.17+), a BPF_MAP_TYPE_SK_STORAGE map and an mmap-able array; the object carries its own BTF (the
 * sk_storage map needs it) and uses no kfuncs and no CO-RE, so /sys/kernel/btf/vmlinux is not needed for it.
 * The verifier also decides by capability: without CAP_PERFMON (or CAP_SYS_ADMIN) it applies its Spectre
 * rules (packet pointers move by constants only, no variable offsets into map values or the stack). The
 * program keeps those rules, so CAP_BPF + CAP_NET_ADMIN (the sidecar's) are enough on Linux 6.18; a
 * verifier that still refuses it as "!root" is reported as needing CAP_PERFMON.
 */
export interface TransformFeatures {
  /** The runtime loaded, its verdict attached to the SOCKHASH, and it was unloaded again. */
  available: boolean;
  /** The kernel refused the probe before verifying it (no CAP_BPF / CAP_NET_ADMIN): cannot tell. */
  unknown: boolean;
  /** Which of the runtime's kernel needs failed, when the kernel's answer says so. */
  missing: ('sk_msg on SOCKHASH' | 'bpf_loop' | 'sk_storage')[];
  /** A capability the verifier asked for (it refused the program as "!root"), when that was the cause. */
  needsCapability?: 'CAP_PERFMON';
  /** The engine's error code (TransformUnsupported, TransformFailed, ...) when it did not load. */
  code?: string;
  /** One sentence for what is missing; absent when available. */
  problem?: string;
  /** The verifier's or libbpf's output, verbatim, when it did not load. */
  log?: string;
}

/** The verifier's last line before its statistics: the line that says why it refused. */
function verifierVerdict(log: string): string | undefined {
  const lines = log.split('\n').map((l) => l.trim());
  const end = lines.findIndex((l) => l.startsWith('processed ') && l.includes(' insns'));
  return end > 0 ? lines[end - 1] : undefined;
}

/** Turns the outcome of loading the transform runtime (undefined: it loaded) into TransformFeatures. Pure. */
export function describeTransformProbe(err: unknown): TransformFeatures {
  if (err === undefined) return { available: true, unknown: false, missing: [] };
  const e = err as { code?: unknown; message?: unknown; log?: unknown };
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const message = typeof e?.message === 'string' ? e.message : String(err);
  const log = typeof e?.log === 'string' && e.log.trim() ? e.log.trim() : undefined;
  const base = { available: false, ...(code ? { code } : {}), ...(log ? { log } : {}) };
  const verdict = log ? verifierVerdict(log) : undefined;
  if (log && /prohibited for !root|for unprivileged/.test(log)) {
    // The program reached the verifier, which held it to the rules of a process without CAP_PERFMON.
    return {
      ...base,
      unknown: false,
      missing: [],
      needsCapability: 'CAP_PERFMON',
      problem:
        "in-kernel transforms need CAP_PERFMON (or CAP_SYS_ADMIN) besides CAP_BPF and CAP_NET_ADMIN on this kernel: without it this kernel's verifier " +
        `refuses the transform program (${verdict ?? message}); spec.transform is refused, mirroring works ` +
        '(in a cluster the sidecar has CAP_BPF and CAP_NET_ADMIN only; the chart value sidecar.privileged: true gives it more)',
    };
  }
  if (/\b(EPERM|EACCES)\b/.test(message)) {
    return {
      ...base,
      unknown: true,
      missing: [],
      problem: `in-kernel transforms: unknown, cannot probe without CAP_BPF and CAP_NET_ADMIN (${message})`,
    };
  }
  const missing: TransformFeatures['missing'] = [];
  // The verifier names a helper it does not know ("unknown func bpf_loop#181"), map creation fails for a
  // map type the kernel lacks, and the attach step has its own message.
  if (/SOCKHASH failed/.test(message)) missing.push('sk_msg on SOCKHASH');
  if (/unknown func bpf_loop/.test(log ?? '')) missing.push('bpf_loop');
  if (/map 'xf_conns': failed to create|unknown func bpf_sk_storage_get/.test(log ?? '')) missing.push('sk_storage');
  const what = missing.length ? missing.join(', ') : 'sk_msg on SOCKHASH, bpf_loop or sk_storage';
  return {
    ...base,
    unknown: false,
    missing,
    problem: `in-kernel transforms are not available (${what}; Linux 5.17+ needed): spec.transform is refused with TransformUnsupported, mirroring works: ${verdict ?? message}`,
  };
}

/**
 * Probes in-kernel transforms the only honest way: starts an engine on 127.0.0.1:0 with a one-op mask
 * transform (which loads the transform runtime and attaches its sk_msg verdict to the SOCKHASH) and
 * stops it. Nothing connects to it; it runs in this process's network namespace and leaves nothing loaded.
 */
export async function probeTransformFeatures(): Promise<TransformFeatures> {
  const bytes = (s: string) => new TextEncoder().encode(s);
  let engine: Engine;
  try {
    engine = Engine.start({
      listen: { host: '127.0.0.1', port: 0 },
      // Never dialled: no connection reaches the listener.
      upstream: { host: '127.0.0.1', port: 9 },
      upstreamSources: [],
      mirrors: [],
      pipeSize: 65536,
      turnTimeoutMs: 0,
      mirrorBufferSize: 1 << 20,
      mirrorConnectTimeoutMs: 1000,
      transform: { mirror: true, primary: false, ops: [{ kind: 1, a: bytes('Authorization: '), b: bytes('\r\n'), with: 0x2a }] },
    });
  } catch (err) {
    if ((err as { code?: unknown }).code === 'EKSTREAMS_NO_ADDON') throw err;
    return describeTransformProbe(err);
  }
  await engine.stop();
  return describeTransformProbe(undefined);
}
