import { describe, expect, it } from 'vitest';
import { describeKernelProbe, type RawKernelProbe } from './kernel.js';

const all: RawKernelProbe = { bpfSyscall: true, bpfSyscallError: null, btf: true, skLookup: true, skLookupError: null, sockmap: true, sockmapError: null };

describe('describeKernelProbe', () => {
  it('reports nothing when everything is there', () => {
    expect(describeKernelProbe(all)).toEqual({ bpfSyscall: true, btf: true, skLookup: true, sockmap: true, unknown: [], problems: [] });
  });

  it('without CAP_BPF, sk_lookup and SOCKMAP are unknown, not "not supported"', () => {
    const f = describeKernelProbe({ ...all, bpfSyscall: false, bpfSyscallError: 'EPERM', skLookup: false, skLookupError: 'EPERM', sockmap: false, sockmapError: 'EPERM' });
    expect(f.unknown).toEqual(['skLookup', 'sockmap']);
    expect(f.problems.join('\n')).not.toMatch(/not supported|5\.9/);
    expect(f.problems.filter((p) => /cannot probe without CAP_BPF/.test(p))).toHaveLength(2);
    expect(f.problems.find((p) => p.startsWith('sk_lookup'))).toMatch(/unknown.*EPERM.*CAP_BPF and CAP_NET_ADMIN/);
  });

  it('an addon that did not report the probes\' errno is read through the refused bpf() itself', () => {
    const f = describeKernelProbe({ ...all, bpfSyscall: false, bpfSyscallError: 'EPERM', skLookup: false, sockmap: false });
    expect(f.unknown).toEqual(['skLookup', 'sockmap']);
    expect(f.problems.join('\n')).not.toMatch(/not supported/);
  });

  it('a kernel that lacks them (the probe ran) still says "not supported"', () => {
    const f = describeKernelProbe({ ...all, skLookup: false, sockmap: false });
    expect(f.unknown).toEqual([]);
    expect(f.problems).toEqual([
      'sk_lookup programs are not supported (Linux 5.9+ needed): connections cannot be intercepted',
      'SOCKMAP is not supported (CONFIG_BPF_STREAM_PARSER or CONFIG_NET_SOCK_MSG missing)',
    ]);
  });

  it('a kernel without the bpf syscall says so', () => {
    const f = describeKernelProbe({ ...all, bpfSyscall: false, bpfSyscallError: 'ENOSYS', skLookup: false, sockmap: false });
    expect(f.unknown).toEqual([]);
    expect(f.problems[0]).toMatch(/CONFIG_BPF_SYSCALL/);
  });
});
