// The kernel feature probe with and without privilege, on this kernel (6.18: sk_lookup and SOCKMAP exist).
// Unprivileged, bpf() is refused, which must read as "cannot tell", not as "your kernel is too old".
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describeKernelProbe, probeKernelFeatures, type RawKernelProbe } from '../lib/kernel.js';

const addonPath = fileURLToPath(new URL('../build/Release/kstreams.node', import.meta.url));
const UID = String(3_000_000_000 + (process.pid % 1_000_000));

describe('probeKernelFeatures', () => {
  it('as root finds sk_lookup and SOCKMAP', () => {
    expect(probeKernelFeatures()).toEqual({ bpfSyscall: true, btf: true, skLookup: true, sockmap: true, unknown: [], problems: [] });
  });

  it('without capabilities reports sk_lookup and SOCKMAP as unknown (cannot probe without CAP_BPF), not as unsupported', () => {
    const script = `process.stdout.write(JSON.stringify(require(${JSON.stringify(addonPath)}).probeKernelFeatures()))`;
    const r = spawnSync('setpriv', ['--reuid', UID, '--regid', UID, '--clear-groups', '--inh-caps=-all', process.execPath, '-e', script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    const raw = JSON.parse(r.stdout) as RawKernelProbe;
    expect(raw).toMatchObject({ bpfSyscall: false, bpfSyscallError: 'EPERM', skLookup: false, skLookupError: 'EPERM', sockmap: false, sockmapError: 'EPERM' });
    const f = describeKernelProbe(raw);
    expect(f.unknown).toEqual(['skLookup', 'sockmap']);
    expect(f.problems.join('\n')).not.toMatch(/not supported|5\.9/);
    expect(f.problems.filter((p) => p.includes('cannot probe without CAP_BPF'))).toHaveLength(2);
  });
});
