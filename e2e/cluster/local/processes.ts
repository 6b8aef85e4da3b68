// Child-process plumbing shared by the local cluster harness (control plane and node).
//
// Every daemon is spawned
//  - in a session and process group of its own (`detached: true` = setsid), so that it and anything it
//    forks can be killed as a group;
//  - through `setpriv --pdeathsig KILL`, so the kernel kills it when the Node process that started it dies,
//    even by SIGKILL (Node itself cannot call prctl(PR_SET_PDEATHSIG));
//  - with its pid (and /proc start time, to survive pid reuse) recorded in a pidfile inside the harness's
//    temp dir, next to an owner file naming the Node process. A later run removes such dirs whose owner
//    is gone and kills what they list (see cleanupStale()).
// A synchronous 'exit' handler also SIGKILLs the groups and removes the temp dir when Node exits normally
// without stop() having been called.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync, readdirSync, rmSync, appendFileSync, writeFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';

export interface ManagedProcess {
  name: string;
  pid: number;
  child: ChildProcess;
  logFile: string;
  /** Resolves with the exit code/signal once the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  hasExited(): boolean;
}

const OWNER_FILE = 'owner';
const PID_FILE = 'pids';

/** /proc/<pid>/stat field 22 (start time in clock ticks since boot), or undefined when the pid is gone. */
export function procStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may contain spaces and parens: fields after the last ')' are fixed.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19];
  } catch {
    return undefined;
  }
}

function alive(pid: number, startTime?: string): boolean {
  const st = procStartTime(pid);
  if (st === undefined) return false;
  if (startTime !== undefined && st !== startTime) return false;
  // A zombie still has /proc/<pid>; treat it as dead.
  try {
    const state = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (state.slice(state.lastIndexOf(')') + 2).startsWith('Z')) return false;
  } catch {
    return false;
  }
  return true;
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    /* group gone */
  }
  try {
    process.kill(pid, signal);
  } catch {
    /* gone */
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Removes harness temp dirs (`<parent>/<prefix>*`) left by runs whose owner process is gone, killing the
 * processes their pidfile lists first (only those whose /proc start time still matches).
 */
export async function cleanupStale(
  parent: string,
  prefix: string,
  log: (m: string) => void = () => {},
  /** Runs after the listed processes are dead, before the dir is removed (e.g. unmount, undo host changes). */
  beforeRemove?: (dir: string) => Promise<void>,
): Promise<void> {
  let entries: string[];
  try {
    entries = readdirSync(parent).filter((e) => e.startsWith(prefix));
  } catch {
    return;
  }
  for (const e of entries) {
    const dir = join(parent, e);
    let owner: { pid: number; start?: string } | undefined;
    try {
      const [pid, start] = readFileSync(join(dir, OWNER_FILE), 'utf8').trim().split(/\s+/);
      owner = { pid: Number(pid), start };
    } catch {
      // No owner file: either being created right now by someone else, or very old junk.
      try {
        if (Date.now() - statSync(dir).mtimeMs < 10 * 60_000) continue;
      } catch {
        continue;
      }
    }
    if (owner && alive(owner.pid, owner.start)) continue;
    const victims: Array<{ pid: number; start?: string; name?: string }> = [];
    try {
      for (const line of readFileSync(join(dir, PID_FILE), 'utf8').split('\n')) {
        const [pid, start, name] = line.trim().split(/\s+/);
        if (pid) victims.push({ pid: Number(pid), start, name });
      }
    } catch {
      /* no pidfile */
    }
    const live = victims.filter((v) => alive(v.pid, v.start));
    if (live.length > 0) log(`stale harness ${dir}: killing ${live.map((v) => `${v.name}(${v.pid})`).join(', ')}`);
    for (const v of live) killGroup(v.pid, 'SIGTERM');
    const deadline = Date.now() + 5000;
    while (live.some((v) => alive(v.pid, v.start)) && Date.now() < deadline) await sleep(100);
    for (const v of live) if (alive(v.pid, v.start)) killGroup(v.pid, 'SIGKILL');
    const deadline2 = Date.now() + 5000;
    while (live.some((v) => alive(v.pid, v.start)) && Date.now() < deadline2) await sleep(100);
    if (beforeRemove) await beforeRemove(dir).catch((e: unknown) => log(`cleanup of ${dir} failed: ${String(e)}`));
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Tracks the processes of one harness instance and its temp dir. */
export class ProcessGroup {
  readonly processes: ManagedProcess[] = [];
  private readonly exitHandler = () => this.killAllSync();
  private stopped = false;

  constructor(
    readonly dir: string,
    private readonly removeDirOnExit = true,
  ) {
    writeFileSync(join(dir, OWNER_FILE), `${process.pid} ${procStartTime(process.pid) ?? ''}\n`);
    writeFileSync(join(dir, PID_FILE), '');
    process.on('exit', this.exitHandler);
  }

  /** Spawns `cmd args` as a daemon (see the file comment). stdout+stderr go to `<dir>/logs/<name>.log`. */
  start(name: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): ManagedProcess {
    if (this.stopped) throw new Error(`process group in ${this.dir} already stopped`);
    const logFile = join(this.dir, 'logs', `${name}.log`);
    const fd = openSync(logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', cmd, ...args], {
        detached: true,
        stdio: ['ignore', fd, fd],
        env: opts.env ?? process.env,
        cwd: opts.cwd ?? this.dir,
      });
    } finally {
      closeSync(fd);
    }
    if (child.pid === undefined) throw new Error(`failed to spawn ${cmd}`);
    child.unref();
    const pid = child.pid;
    let done = false;
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('exit', (code, signal) => {
        done = true;
        resolve({ code, signal });
      });
      child.once('error', () => {
        done = true;
        resolve({ code: null, signal: null });
      });
    });
    appendFileSync(join(this.dir, PID_FILE), `${pid} ${procStartTime(pid) ?? '-'} ${name}\n`);
    const p: ManagedProcess = { name, pid, child, logFile, exited, hasExited: () => done };
    this.processes.push(p);
    return p;
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process has exited. */
  async stopProcess(p: ManagedProcess, graceMs = 10_000): Promise<void> {
    if (!p.hasExited()) {
      killGroup(p.pid, 'SIGTERM');
      // A ref'd timer: it also keeps the event loop alive while we wait (the child handles are unref'd).
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), graceMs)));
      const first = await Promise.race([p.exited, timeout]);
      clearTimeout(timer);
      if (first === 'timeout') {
        killGroup(p.pid, 'SIGKILL');
        const keepAlive = setInterval(() => {}, 1000);
        await p.exited;
        clearInterval(keepAlive);
      }
    }
    // Anything the daemon forked into its group.
    killGroup(p.pid, 'SIGKILL');
  }

  /** Stops the given processes in order (all others afterwards, newest first), then removes the dir. */
  async stop(order: ManagedProcess[] = [], graceMs = 10_000): Promise<void> {
    const rest = [...this.processes].reverse().filter((p) => !order.includes(p));
    for (const p of [...order, ...rest]) await this.stopProcess(p, graceMs);
    this.stopped = true;
    process.off('exit', this.exitHandler);
    if (this.removeDirOnExit) rmSync(this.dir, { recursive: true, force: true });
  }

  private killAllSync(): void {
    for (const p of this.processes) if (!p.hasExited()) killGroup(p.pid, 'SIGKILL');
    if (this.removeDirOnExit) {
      try {
        rmSync(this.dir, { recursive: true, force: true });
      } catch {
        /* best effort */
      }
    }
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** Last `lines` lines of a log file, for error messages. */
export async function tail(file: string, lines = 30): Promise<string> {
  try {
    const text = await readFile(file, 'utf8');
    return text.split('\n').slice(-lines - 1).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * Polls `check` every `intervalMs` until it returns true. Fails early, with the log tail, when one of
 * `watch` exits, and on timeout.
 */
export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  opts: { timeoutMs: number; intervalMs?: number; watch?: ManagedProcess[] },
): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    for (const p of opts.watch ?? []) {
      if (p.hasExited()) {
        const r = await p.exited;
        throw new Error(`${p.name} exited (code ${r.code}, signal ${r.signal}) while waiting for ${what}; log tail:\n${await tail(p.logFile)}`);
      }
    }
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) {
      const logs = await Promise.all((opts.watch ?? []).map(async (p) => `--- ${p.name}:\n${await tail(p.logFile)}`));
      throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${what}\n${logs.join('\n')}`);
    }
    await sleep(opts.intervalMs ?? 100);
  }
}

export function fileExists(p: string): boolean {
  return existsSync(p);
}
