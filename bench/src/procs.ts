// Processes of one measurement: started fresh in the bench's namespace, read line by line, and stopped by
// their own pid (never by name), so nothing outlives the run and other work on the machine is untouched.
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Netns } from '../../sidecar/src/netns.js';

export class Proc {
  readonly lines: string[] = [];
  private stderrTail = '';
  private waiters: Array<() => void> = [];
  readonly exited: Promise<number | null>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    let partial = '';
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (chunk: string) => {
      partial += chunk;
      const parts = partial.split('\n');
      partial = parts.pop() ?? '';
      this.lines.push(...parts);
      this.wake();
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      this.stderrTail = (this.stderrTail + chunk).slice(-2000);
    });
    this.exited = new Promise((resolve) => {
      child.once('close', (code) => {
        if (partial) this.lines.push(partial);
        partial = '';
        this.wake();
        resolve(code);
      });
    });
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name} did not start`);
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  get stderr(): string {
    return this.stderrTail.trim();
  }

  /** Resolves with the first stdout line that matches; rejects when the process exits first or on timeout. */
  async waitLine(match: (line: string) => boolean, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.find(match);
      if (found !== undefined) return found;
      if (!this.running && this.child.stdout?.readableEnded !== false) {
        throw new Error(`${this.name} exited (${this.child.exitCode ?? this.child.signalCode}) ${this.why()}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name} gave no ready line within ${timeoutMs} ms ${this.why()}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 250));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** SIGTERM (lets the KStreams runner print its counters), then SIGKILL after `graceMs`. */
  async stop(graceMs = 2000): Promise<void> {
    if (!this.running) {
      await this.exited;
      return;
    }
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => {
      if (this.running) this.child.kill('SIGKILL');
    }, graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  private why(): string {
    const out = this.lines.slice(-3).join(' | ');
    return [this.stderr && `stderr: ${this.stderr}`, out && `stdout: ${out}`].filter(Boolean).join('; ');
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
}

/** Starts a process in the namespace, with extra environment variables if given. */
export function start(ns: Netns, name: string, command: string, args: string[], env?: Record<string, string>): Proc {
  return new Proc(name, ns.spawn(command, args, env ? { env: { ...process.env, ...env } } : {}));
}

/** Runs a load generator to completion and returns its stdout; throws with its stderr when it fails. */
export async function runToEnd(ns: Netns, name: string, command: string, args: string[], timeoutMs: number): Promise<string> {
  const p = start(ns, name, command, args);
  const timer = setTimeout(() => {
    if (p.running) p.child.kill('SIGKILL');
  }, timeoutMs);
  const code = await p.exited;
  clearTimeout(timer);
  if (code !== 0) {
    throw new Error(`${name} failed (exit ${code ?? p.child.signalCode}${code === null ? `, killed after ${timeoutMs} ms` : ''}): ${p.stderr || p.lines.join(' ')}`);
  }
  return p.lines.join('\n');
}

/**
 * How to start one of the bench's own TypeScript programs with node: the compiled .js beside this file
 * in dist/, or the .ts source through tsx when the bench itself runs from source (vitest, tsx).
 */
export function nodeProgram(relativeJs: string): { command: string; args: string[] } {
  const fromSource = import.meta.url.endsWith('.ts');
  const file = fileURLToPath(new URL(fromSource ? relativeJs.replace(/\.js$/, '.ts') : relativeJs, import.meta.url));
  // tsx resolved from here, not from the working directory, so the bench runs from any directory.
  return { command: process.execPath, args: fromSource ? ['--import', import.meta.resolve('tsx'), file] : [file] };
}
