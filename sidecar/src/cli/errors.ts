// Exit codes and the one error type the CLI reports: every failure ends as ONE line on stderr,
// `kstreams: <what happened, to what, what to do next>`, and a code a script can branch on.
import { AttachError, type AttachReason } from '../dataplane/errors.js';

export const EXIT = {
  ok: 0,
  /** A runtime failure: the data plane reported an error, the addon is not built, detach failed. */
  runtime: 1,
  /** Bad usage, an unreadable or invalid file, a field that cannot be applied (named in the message). */
  usage: 2,
  /** The network namespace given with --netns does not exist. */
  netns: 3,
  /** Missing privileges (CAP_BPF, CAP_NET_ADMIN) or a missing kernel feature. */
  privileges: 4,
  /** `replay --compare`: every connection replayed, but some answers differ from the recording. */
  differs: 5,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** The exit-code table as printed by `kstreams --help` and docs/cli.md. */
export const EXIT_CODES_HELP = `Exit codes:
  0  success (run: stopped by SIGINT/SIGTERM and detached cleanly)
  1  runtime error (the data plane failed, the native addon is not built, detach failed)
  2  bad usage, unreadable file, invalid StreamPath (the message names the field), field that cannot be applied
  3  network namespace not found (--netns)
  4  missing privileges (root, or CAP_BPF + CAP_NET_ADMIN) or missing kernel feature (see kstreams check)
  5  replay --compare: every connection replayed, but some answers differ from the recording`;

export class CliError extends Error {
  constructor(
    readonly exitCode: ExitCode,
    message: string,
    /** Printed verbatim after the one-line message (the verifier's output for a rejected program). */
    readonly detail?: string,
  ) {
    super(message);
  }
}

const EXIT_BY_REASON: Record<AttachReason, ExitCode> = {
  InvalidSpec: EXIT.usage,
  TransformUnsupported: EXIT.privileges,
  ProgramRejected: EXIT.usage,
  TransformFailed: EXIT.runtime,
  TargetUnresolvable: EXIT.usage,
  CapturePathOutsideVolume: EXIT.usage,
  NetnsNotFound: EXIT.netns,
  InsufficientPrivileges: EXIT.privileges,
  KernelFeatureMissing: EXIT.privileges,
  DataPlaneError: EXIT.runtime,
};

export function toCliError(err: unknown, context?: string): CliError {
  if (err instanceof CliError) return err;
  if (err instanceof AttachError) {
    // Field errors already start with the field; others get the StreamPath they concern.
    const msg = err.field || !context ? err.message : `${context}: ${err.message}`;
    return new CliError(EXIT_BY_REASON[err.reason], msg, err.detail);
  }
  const msg = err instanceof Error ? err.message : String(err);
  return new CliError(EXIT.runtime, context ? `${context}: ${msg}` : msg);
}

/** Keeps the promise of one line: newlines and runs of spaces from nested messages are folded. */
export function oneLine(message: string): string {
  return message.replace(/\s*\n\s*/g, ' ').replace(/\s{2,}/g, ' ').trim();
}
