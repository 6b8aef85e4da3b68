// The user-space transform baselines (bench/tools/xform-proxy.c and xform-proxy.mjs) and the transform
// bench's load tools: building them, and starting a proxy in a namespace until it says it listens.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { Proc } from './procs.js';
import { repoPath } from './repo.js';
import type { BenchOpName } from './transform-reference.js';
import type { XformNetns } from './transform-netns.js';

export type BaselineImpl = 'c' | 'node';

export interface XformTools {
  /** bench/build/xform-proxy */
  proxy: string;
  /** bench/tools/xform-proxy.mjs (run with this node) */
  nodeProxy: string;
  /** bench/build/xform-load */
  load: string;
}

/** Builds bench/tools with bench/Makefile (cheap when up to date). */
export function buildXformTools(): XformTools {
  const benchDir = repoPath('bench');
  const r = spawnSync('make', ['-s', '-C', benchDir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building bench/tools failed (make -C ${benchDir}): ${r.stderr || r.stdout}`);
  const dir = repoPath('bench/build');
  return { proxy: join(dir, 'xform-proxy'), nodeProxy: repoPath('bench/tools/xform-proxy.mjs'), load: join(dir, 'xform-load') };
}

/** Starts a server-like process and waits for its "listening PORT" line. */
export async function startListening(ns: XformNetns, name: string, command: string, args: string[], timeoutMs = 10_000): Promise<{ proc: Proc; port: number }> {
  const proc = new Proc(name, ns.spawn(command, args));
  try {
    const line = await proc.waitLine((l) => l.startsWith('listening '), timeoutMs);
    return { proc, port: Number(line.slice('listening '.length)) };
  } catch (err) {
    await proc.stop(500);
    throw err;
  }
}

/** One baseline proxy: `listen` and `upstream` are HOST:PORT. */
export function startBaseline(
  ns: XformNetns,
  tools: XformTools,
  impl: BaselineImpl,
  op: BenchOpName,
  listen: string,
  upstream: string,
): Promise<{ proc: Proc; port: number }> {
  const flags = ['--listen', listen, '--upstream', upstream, '--op', op];
  return impl === 'c'
    ? startListening(ns, `C transform proxy (${op})`, tools.proxy, flags)
    : startListening(ns, `Node transform proxy (${op})`, process.execPath, [tools.nodeProxy, ...flags]);
}
