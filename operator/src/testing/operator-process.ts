// A real operator process (operator/src/main.ts under tsx) for tests that need several: its JSON log lines
// collected as they come, its exit awaited, stderr kept for whoever reads a failure.
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('../main.ts', import.meta.url));
const REPO = fileURLToPath(new URL('../../../', import.meta.url));

export interface OperatorProcess {
  identity: string;
  child: ChildProcess;
  /** Each stdout line, parsed as JSON (pino), or `{msg: line}` when it is not. */
  lines: Record<string, unknown>[];
  /** Resolves at its exit; `at` is `performance.now()` when the exit was seen. */
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  /** What it wrote to stderr so far. */
  stderr(): string;
  /** Kills it (SIGKILL) unless it has exited, and waits for the exit. */
  kill(): Promise<void>;
}

/** The operator's command line: Node with tsx on main.ts, `execArgv` (e.g. loader hooks) before the entry. */
export function operatorArgv(execArgv: string[] = []): string[] {
  return [process.execPath, '--import', 'tsx', ...execArgv, MAIN];
}

/** Starts the operator with `env` on top of this process's environment; KSTREAMS_IDENTITY is `identity`. */
export function startOperator(identity: string, env: Record<string, string>): OperatorProcess {
  const [command, ...args] = operatorArgv();
  return spawnOperator(identity, command!, args, { ...process.env, KSTREAMS_IDENTITY: identity, KSTREAMS_LOG_LEVEL: 'info', ...env });
}

/**
 * Runs an operator command line as given (`operatorArgv`, or a wrapper around it, such as a pod's mount
 * namespace) with exactly `env`; `identity` only names it here.
 */
export function spawnOperator(identity: string, command: string, args: string[], env: NodeJS.ProcessEnv): OperatorProcess {
  const child = spawn(command, args, { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Record<string, unknown>[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => {
    try {
      lines.push(JSON.parse(l) as Record<string, unknown>);
    } catch {
      lines.push({ msg: l });
    }
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.once('exit', (code, signal) => {
      const at = performance.now();
      if (code !== 0 && signal === null && stderr) lines.push({ msg: `stderr: ${stderr}` });
      resolve({ code, signal, at });
    }),
  );
  return {
    identity,
    child,
    lines,
    exit,
    stderr: () => stderr,
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exit;
    },
  };
}

/**
 * The status code of the operator's /readyz on loopback `port`, or 0 when nothing answers (not listening
 * yet, or gone): callers wait for 200 or 503 and treat anything else as not there yet.
 */
export function readyzStatus(port: number): Promise<number> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/readyz', timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
    req.end();
  });
}
