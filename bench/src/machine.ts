// Facts about the machine a result was measured on, written next to the numbers.
import { spawnSync } from 'node:child_process';
import { cpus, loadavg, release, totalmem } from 'node:os';

export interface MachineFacts {
  kernel: string;
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  node: string;
  haproxy: string;
  socat: string;
  gitCommit: string;
  /** 1-minute load average before and after: the machine is shared, this says how quiet it was. */
  loadBefore: number;
  loadAfter?: number;
}

function firstLine(command: string, args: string[], pick: (lines: string[]) => string | undefined): string {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  if (r.error) return 'not installed';
  const lines = `${r.stdout ?? ''}${r.stderr ?? ''}`.split('\n');
  return (pick(lines) ?? lines[0] ?? '').trim();
}

export function machineFacts(): MachineFacts {
  return {
    kernel: release(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    haproxy: firstLine('haproxy', ['-v'], (l) => l.find((x) => x.startsWith('HAProxy version'))),
    socat: firstLine('socat', ['-V'], (l) => l.find((x) => x.startsWith('socat version'))),
    // --dirty: a shared checkout often has work in progress, and the numbers are of that tree.
    gitCommit: firstLine('git', ['describe', '--always', '--dirty'], (l) => l[0]),
    loadBefore: loadavg()[0] ?? 0,
  };
}
