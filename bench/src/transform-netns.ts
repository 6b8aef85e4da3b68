// Network namespaces of the transform bench and its correctness test, named ksb1-<what>-<pid>, and a veth
// pair from the root namespace into one (addresses from 10.147.0.0/16, which exists only on these pairs).
// Everything created is removed by destroy(), and at process exit if a run or a test died before that.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';

const live = new Set<XformNetns>();
/** The listening ports of the transform bench and its tests. */
export const BENCH_PORTS = '47300-47399';
let counter = 0;

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`);
}

export interface Veth {
  /** Address of the root namespace's end. */
  rootAddress: string;
  /** Address of the namespace's end. */
  nsAddress: string;
}

export class XformNetns {
  readonly path: string;
  private readonly children = new Set<ChildProcess>();

  private constructor(readonly name: string) {
    this.path = `/run/netns/${name}`;
  }

  /**
   * `ksb1-<tag>-<pid>-<n>` with lo up, and the ports the bench listens on (47300-47399, inside the
   * ephemeral range) reserved in it, so that no client socket of a run takes one a later server binds.
   */
  static create(tag: string): XformNetns {
    const name = `ksb1-${tag}-${process.pid}-${counter++}`;
    ip('netns', 'add', name);
    const ns = new XformNetns(name);
    live.add(ns);
    ip('-n', name, 'link', 'set', 'lo', 'up');
    const r = spawnSync('nsenter', [`--net=${ns.path}`, '--', 'sysctl', '-q', '-w', `net.ipv4.ip_local_reserved_ports=${BENCH_PORTS}`], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`reserving ports ${BENCH_PORTS} in ${name} failed: ${r.stderr.trim()}`);
    return ns;
  }

  /**
   * A veth pair between the root namespace and this one, on a /30 of 10.147.0.0/16 picked from the pid and a
   * counter (interface names ksb1-<n>r / ksb1-<n>n). Deleting the namespace deletes the pair.
   */
  veth(): Veth {
    const n = (process.pid * 7 + counter++) % 16384;
    const base = n * 4;
    const rootAddress = `10.147.${base >> 8}.${(base & 255) + 1}`;
    const nsAddress = `10.147.${base >> 8}.${(base & 255) + 2}`;
    const root = `ksb1-${n}r`;
    const inNs = `ksb1-${n}n`;
    ip('link', 'add', root, 'type', 'veth', 'peer', 'name', inNs);
    ip('link', 'set', inNs, 'netns', this.name);
    ip('addr', 'add', `${rootAddress}/30`, 'dev', root);
    ip('link', 'set', root, 'up');
    ip('-n', this.name, 'addr', 'add', `${nsAddress}/30`, 'dev', inNs);
    ip('-n', this.name, 'link', 'set', inNs, 'up');
    return { rootAddress, nsAddress };
  }

  /** Starts a process in the namespace (nsenter execs it: the pid is the program's own). */
  spawn(command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    const child = spawn('nsenter', [`--net=${this.path}`, '--', command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    this.track(child);
    return child;
  }

  /** Counts a process started otherwise (e.g. `kstreams run --netns`) as this namespace's, for destroy(). */
  track(child: ChildProcess): void {
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
  }

  /** SIGKILL to what is still running of ours (by pid), then deletes the namespace (and its veth). */
  async destroy(): Promise<void> {
    await Promise.all(
      [...this.children].map(async (c) => {
        if (c.exitCode === null && c.signalCode === null) {
          const exited = once(c, 'exit');
          c.kill('SIGKILL');
          await exited;
        }
      }),
    );
    live.delete(this);
    spawnSync('ip', ['netns', 'del', this.name]);
  }

  killChildrenNow(): void {
    for (const c of this.children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
}

process.once('exit', () => {
  for (const ns of live) ns.killChildrenNow();
  for (const ns of live) spawnSync('ip', ['netns', 'del', ns.name]);
});
