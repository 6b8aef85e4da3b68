import { describe, expect, it } from 'vitest';
import { describeKernelProbe, describeTransformProbe, type RawKernelProbe } from './kernel.js';

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

describe('describeTransformProbe', () => {
  const engineError = (message: string, log = '') => Object.assign(new Error(message), { code: 'TransformUnsupported', log });

  it('a runtime that loaded is available, with nothing else to say', () => {
    expect(describeTransformProbe(undefined)).toEqual({ available: true, unknown: false, missing: [] });
  });

  it('a verifier that holds the program to the !root rules asks for CAP_PERFMON, not for a newer kernel', () => {
    const log = '509: (57) r8 &= 32767\n510: (0f) r1 += r8\nR1 has pointer with unsupported alu operation, pointer arithmetic with it prohibited for !root\nprocessed 842 insns (limit 1000000) max_states_per_insn 3\n-- END PROG LOAD LOG --';
    const t = describeTransformProbe(engineError('loading the transform program failed: Permission denied (EACCES) (the kernel lacks sk_msg on SOCKHASH, bpf_loop or sk_storage: 5.17 or later)', log));
    expect(t).toMatchObject({ available: false, unknown: false, missing: [], needsCapability: 'CAP_PERFMON', code: 'TransformUnsupported', log });
    expect(t.problem).toMatch(/^in-kernel transforms need CAP_PERFMON .*\(R1 has pointer with unsupported alu operation, pointer arithmetic with it prohibited for !root\)/);
    expect(t.problem).not.toMatch(/5\.17/);
  });

  it('EPERM before the verifier (no CAP_BPF) is unknown', () => {
    const t = describeTransformProbe(engineError('loading the transform program failed: Operation not permitted (EPERM) (the sidecar needs CAP_BPF and CAP_NET_ADMIN)', "libbpf: map 'xf_sockets': failed to create: Operation not permitted(-1)"));
    expect(t).toMatchObject({ available: false, unknown: true, missing: [] });
    expect(t.needsCapability).toBeUndefined();
    expect(t.problem).toMatch(/unknown, cannot probe without CAP_BPF/);
  });

  it('names the kernel feature the kernel says it lacks', () => {
    const noLoop = describeTransformProbe(engineError('loading the transform program failed: Invalid argument (EINVAL) (...)', '431: (85) call bpf_loop#181\nunknown func bpf_loop#181\nprocessed 431 insns (limit 1000000)'));
    expect(noLoop).toMatchObject({ available: false, unknown: false, missing: ['bpf_loop'] });
    expect(noLoop.problem).toMatch(/not available \(bpf_loop; Linux 5\.17\+ needed\).*unknown func bpf_loop#181$/);
    const noStorage = describeTransformProbe(engineError('loading the transform program failed: Invalid argument (EINVAL) (...)', "libbpf: map 'xf_conns': failed to create: Invalid argument(-22)"));
    expect(noStorage.missing).toEqual(['sk_storage']);
    const noAttach = describeTransformProbe(engineError('attaching the sk_msg verdict to its SOCKHASH failed: Invalid argument (EINVAL)'));
    expect(noAttach).toMatchObject({ missing: ['sk_msg on SOCKHASH'] });
    expect(noAttach.log).toBeUndefined();
  });
});
