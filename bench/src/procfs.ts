// What the bench reads from /proc: system-wide CPU time (the cost of a path wherever the kernel charges it:
// softirq, the client, the server, the proxy) and a proxy's own CPU time and peak memory.
import { readFileSync, readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

/** Clock ticks per second of /proc/stat and /proc/PID/stat (USER_HZ), asked once from the C library. */
export const USER_HZ: number = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const hz = Number.parseInt(r.stdout ?? '', 10);
  return Number.isFinite(hz) && hz > 0 ? hz : 100;
})();

/**
 * Busy ticks of all CPUs: user + nice + system + irq + softirq. iowait, idle and steal are not work done
 * here; guest time is already inside user.
 */
export function systemBusyTicks(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0] = f;
  return user + nice + system + irq + softirq;
}

/** utime + stime + cutime + cstime of a process in ticks, or undefined when it is gone. */
export function processTicks(pid: number): number | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // comm may contain spaces and parentheses: the fields start after the last ')'.
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // f[0] is field 3 (state), so utime (field 14) is f[11].
  return Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
}

/** Own utime + stime only (no reaped children), for processes still alive at the end of a measurement. */
function ownTicks(pid: number): number {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0;
  }
}

/** VmHWM (peak resident set) of a process in bytes, or 0 when it is gone. */
export function peakRssBytes(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Direct children of a process (socat forks one per connection). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const text = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(name));
    } catch {
      // the process ended between readdir and read
    }
  }
  return out;
}

/**
 * Follows one proxy process during a measurement: CPU seconds it (and children it forked) used between
 * begin() and end(), and the largest peak RSS of any one of its processes. Children are only looked for
 * when `forks` is set, because scanning /proc costs CPU that would be charged to the path.
 */
export class ProcessWatch {
  private startTicks = 0;
  private peak = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly pid: number,
    private readonly forks: boolean,
  ) {}

  begin(): void {
    this.startTicks = this.totalTicks();
    this.sample();
    if (this.forks) this.timer = setInterval(() => this.sample(), 200);
  }

  /** Returns { cpuSeconds, peakRssBytes } since begin(). */
  end(): { cpuSeconds: number; peakRssBytes: number } {
    if (this.timer) clearInterval(this.timer);
    this.sample();
    return { cpuSeconds: (this.totalTicks() - this.startTicks) / USER_HZ, peakRssBytes: this.peak };
  }

  private sample(): void {
    this.peak = Math.max(this.peak, peakRssBytes(this.pid));
    if (this.forks) for (const c of childPids(this.pid)) this.peak = Math.max(this.peak, peakRssBytes(c));
  }

  private totalTicks(): number {
    let t = processTicks(this.pid) ?? 0;
    if (this.forks) for (const c of childPids(this.pid)) t += ownTicks(c);
    return t;
  }
}
