// Real network namespaces and veth links for tests, the demo and the bench.
// Every namespace and process created here is tracked and removed by cleanup(), which also runs on
// process exit, so a failing test leaves nothing behind. Addresses come from 10.213.0.0/16, a range that
// exists only inside the namespaces we create on this machine.
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';

let counter = 0;
let linkCounter = 0;
const live = new Set<Netns>();

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')} failed: ${(r.stderr || r.stdout).trim()}`);
}

export class Netns {
  readonly path: string;
  private readonly children = new Set<ChildProcess>();

  private constructor(readonly name: string) {
    this.path = `/run/netns/${name}`;
  }

  /**
   * Creates a namespace named `<prefix>-<label>-<pid>-<n>` (at most 15 chars of label kept) with lo up. The
   * prefix is `ks`, or KSTREAMS_NETNS_PREFIX (letters, digits, dashes) to tell apart the namespaces of
   * suites that run side by side on one machine.
   */
  static create(label: string): Netns {
    const prefix = /^[a-z0-9-]{1,16}$/i.test(process.env.KSTREAMS_NETNS_PREFIX ?? '') ? process.env.KSTREAMS_NETNS_PREFIX! : 'ks';
    const name = `${prefix}-${label.slice(0, 15)}-${process.pid}-${counter++}`;
    ip('netns', 'add', name);
    const ns = new Netns(name);
    live.add(ns);
    ip('-n', name, 'link', 'set', 'lo', 'up');
    return ns;
  }

  /** Starts a process inside the namespace (nsenter, so /sys and bpffs stay as they are). */
  spawn(command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    const child = spawn('nsenter', [`--net=${this.path}`, '--', command, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...options,
    });
    this.track(child);
    return child;
  }

  /** Counts a process started otherwise (e.g. `kstreams run --netns`) as this namespace's, for destroy(). */
  track(child: ChildProcess): void {
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
  }

  /** Runs a command in the namespace to completion; throws with its stderr if it fails. */
  run(command: string, args: string[]): string {
    const r = spawnSync('nsenter', [`--net=${this.path}`, '--', command, ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${command} ${args.join(' ')} in ${this.name} failed: ${(r.stderr || '').trim()}`);
    return r.stdout;
  }

  /** Synchronous last resort for process exit: SIGKILL to every process started here. */
  killChildrenNow(): void {
    for (const c of this.children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }

  /** Kills the processes started here (SIGKILL, by pid) and deletes the namespace. */
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
}

export interface Link {
  /** Address on side a (undefined namespace = the root namespace). */
  aAddress: string;
  bAddress: string;
  aDevice: string;
  bDevice: string;
}

/**
 * Connects two namespaces (or the root namespace, `undefined`) with a veth pair on a /30 of 10.213.0.0/16.
 * Deleting either namespace deletes the pair.
 */
export function link(a: Netns | undefined, b: Netns): Link {
  const n = linkCounter++ + ((process.pid % 64) * 256);
  const base = (n * 4) % 65536;
  const aAddress = `10.213.${base >> 8}.${(base & 255) + 1}`;
  const bAddress = `10.213.${base >> 8}.${(base & 255) + 2}`;
  const tag = `${process.pid % 10000}x${linkCounter}`;
  const aDevice = `ksa${tag}`;
  const bDevice = `ksb${tag}`;
  ip('link', 'add', aDevice, 'type', 'veth', 'peer', 'name', bDevice);
  if (a) ip('link', 'set', aDevice, 'netns', a.name);
  ip('link', 'set', bDevice, 'netns', b.name);
  const inA = a ? ['-n', a.name] : [];
  ip(...inA, 'addr', 'add', `${aAddress}/30`, 'dev', aDevice);
  ip(...inA, 'link', 'set', aDevice, 'up');
  ip('-n', b.name, 'addr', 'add', `${bAddress}/30`, 'dev', bDevice);
  ip('-n', b.name, 'link', 'set', bDevice, 'up');
  return { aAddress, bAddress, aDevice, bDevice };
}

/** Removes every namespace this process created that is still there. */
export async function cleanupAll(): Promise<void> {
  await Promise.all([...live].map((ns) => ns.destroy()));
}

process.once('exit', () => {
  for (const ns of live) ns.killChildrenNow();
  for (const ns of live) spawnSync('ip', ['netns', 'del', ns.name]);
});
