// What this process may do, read from /proc/self/status. Checked before the addon is loaded so that a
// missing capability gets its own message instead of an EPERM from the middle of a BPF load.
import { readFileSync } from 'node:fs';

const CAP_NET_ADMIN = 12n;
const CAP_SYS_ADMIN = 21n;
const CAP_BPF = 39n;

export interface Privileges {
  bpf: boolean;
  netAdmin: boolean;
  /** setns() into another process's or a named network namespace needs it. */
  sysAdmin: boolean;
  /** Human-readable problems; empty when attaching can work. */
  problems: string[];
}

/** Parses the CapEff line of /proc/<pid>/status. */
export function privilegesFromStatus(status: string, needOtherNetns: boolean): Privileges {
  const m = /^CapEff:\s*([0-9a-fA-F]+)$/m.exec(status);
  const eff = m ? BigInt(`0x${m[1]}`) : 0n;
  const has = (bit: bigint) => (eff & (1n << bit)) !== 0n;
  const sysAdmin = has(CAP_SYS_ADMIN);
  // Before CAP_BPF existed (and still today) CAP_SYS_ADMIN also allows bpf().
  const bpf = has(CAP_BPF) || sysAdmin;
  const netAdmin = has(CAP_NET_ADMIN);
  const problems: string[] = [];
  if (!bpf) problems.push('CAP_BPF is missing (needed to load the sk_lookup program)');
  if (!netAdmin) problems.push('CAP_NET_ADMIN is missing (needed to attach to a network namespace)');
  if (needOtherNetns && !sysAdmin) problems.push('CAP_SYS_ADMIN is missing (needed to enter another network namespace)');
  return { bpf, netAdmin, sysAdmin, problems };
}

export function currentPrivileges(needOtherNetns: boolean): Privileges {
  return privilegesFromStatus(readFileSync('/proc/self/status', 'utf8'), needOtherNetns);
}
