// Facts about the machine a result was measured on, written next to the numbers.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { redisVersion } from './redis.js';

export interface MachineFacts {
  kernel: string;
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  node: string;
  haproxy: string;
  socat: string;
  redis?: string;
  gitCommit: string;
  /** The kstreams.node measured: path, modification time and a hash, since a shared checkout rebuilds it. */
  addon?: string;
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

/** Which addon build a run measured (the file is copied at the start of the run; this is that file). */
export function addonFacts(path: string): string | undefined {
  if (!existsSync(path)) return undefined;
  const sha = createHash('sha256').update(readFileSync(path)).digest('hex').slice(0, 12);
  return `${path}, modified ${statSync(path).mtime.toISOString().slice(0, 16).replace('T', ' ')} UTC, sha256 ${sha}`;
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
    redis: redisVersion(),
    // --dirty: a shared checkout often has work in progress, and the numbers are of that tree.
    gitCommit: firstLine('git', ['describe', '--always', '--dirty'], (l) => l[0]),
    loadBefore: loadavg()[0] ?? 0,
  };
}
