// One error type for everything that can stop a StreamPath from attaching. The reason doubles as a
// condition reason for the in-pod agent and picks the exit code of the `kstreams` CLI, so both surfaces
// say the same thing about the same failure.
import { existsSync } from 'node:fs';

export type AttachReason =
  /** A field of the spec cannot be applied as written (names the field). */
  | 'InvalidSpec'
  /** spec.transform cannot run here: the kernel lacks sk_msg on SOCKHASH, bpf_loop or sk_storage. */
  | 'TransformUnsupported'
  /** The user's BPF program (spec.transform ops[].program) was refused: not an ELF, no sk_msg program,
   * too large, or the verifier rejected it (its output is in the message). */
  | 'ProgramRejected'
  /** The transform was valid but could not be put in place (kernel memory, too many live versions). */
  | 'TransformFailed'
  /** A mirror target's name or Service could not be turned into an address. */
  | 'TargetUnresolvable'
  /** A file target's path would leave the sidecar's capture volume (`..` above its root). */
  | 'CapturePathOutsideVolume'
  /** The network namespace to attach in does not exist. */
  | 'NetnsNotFound'
  /** The process lacks CAP_BPF / CAP_NET_ADMIN (or the equivalent root). */
  | 'InsufficientPrivileges'
  /** The kernel lacks sk_lookup, sockmap, BTF or the bpf() syscall. */
  | 'KernelFeatureMissing'
  /** Anything else the data plane reported. */
  | 'DataPlaneError';

export class AttachError extends Error {
  override readonly name = 'AttachError';
  /** More than the one-line message: the verifier's output for ProgramRejected, verbatim. */
  detail?: string;

  constructor(
    readonly reason: AttachReason,
    message: string,
    /** The spec field at fault, e.g. `spec.mirror.targets[0].address`, when there is one. */
    readonly field?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const PRIVILEGE_CODES = new Set(['EPERM', 'EACCES']);
// EKSTREAMS_BPF_LOAD: the verifier or the kernel refused our program, which on a supported kernel means a
// missing feature rather than a bug the user could fix.
const KERNEL_CODES = new Set(['ENOSYS', 'EOPNOTSUPP', 'ENOTSUP', 'EKSTREAMS_BPF_LOAD', 'EKSTREAMS_NO_FEATURE', 'EKSTREAMS_KERNEL']);

/**
 * Turns an error thrown by native/lib into an AttachError whose reason says what the operator of the
 * machine has to do: grant privileges, use another kernel, create the namespace, or read the message.
 */
export function classifyNativeError(err: unknown, step: string, netnsPath?: string): AttachError {
  if (err instanceof AttachError) return err;
  const e = err as { code?: unknown; message?: unknown; syscall?: unknown };
  const code = typeof e?.code === 'string' ? e.code : '';
  const detail = typeof e?.message === 'string' ? e.message : String(err);
  if (code === 'ProgramRejected' || code === 'TransformUnsupported' || code === 'TransformFailed' || code === 'TransformInvalid') {
    // The verifier's output, verbatim, is what the author of a program needs: it goes into the message.
    const log = typeof (e as { log?: unknown }).log === 'string' ? ((e as { log: string }).log).trim() : '';
    const reason: AttachReason = code === 'TransformInvalid' ? 'InvalidSpec' : code;
    const out = new AttachError(reason, `${step} failed: ${detail}`, 'spec.transform', { cause: err });
    if (code === 'ProgramRejected' && log) out.detail = log;
    return out;
  }
  if (PRIVILEGE_CODES.has(code)) {
    return new AttachError(
      'InsufficientPrivileges',
      `${step} was refused (${code}): ${detail}; run as root or grant CAP_BPF and CAP_NET_ADMIN`,
      undefined,
      { cause: err },
    );
  }
  if (KERNEL_CODES.has(code) || code.startsWith('EKSTREAMS_NO_')) {
    if (code === 'EKSTREAMS_NO_ADDON') {
      return new AttachError('DataPlaneError', `${step} failed: ${detail}`, undefined, { cause: err });
    }
    return new AttachError(
      'KernelFeatureMissing',
      `${step} failed, the kernel lacks a feature (${code}): ${detail}; run \`kstreams check\` for details`,
      undefined,
      { cause: err },
    );
  }
  if (code === 'ENOENT' && netnsPath && !existsSync(netnsPath)) {
    return new AttachError('NetnsNotFound', `network namespace ${netnsPath} is gone: ${detail}`, undefined, {
      cause: err,
    });
  }
  return new AttachError('DataPlaneError', `${step} failed${code ? ` (${code})` : ''}: ${detail}`, undefined, {
    cause: err,
  });
}
