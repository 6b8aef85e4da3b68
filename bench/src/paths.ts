// The data paths the bench compares. Each starts fresh for every measurement, in the bench's namespace,
// between a client and a server that are already listening, and says which port the client must use.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DrainResult, EngineConfig, EngineStats } from '../../native/lib/types.js';
import type { Netns } from '../../sidecar/src/netns.js';
import { nodeProgram, start, type Proc } from './procs.js';

export type PathKind = 'direct' | 'proxy' | 'mirror';

export interface PathContext {
  ns: Netns;
  /** Private temp directory of this bench run (generated configs). */
  tmpDir: string;
  /** A port nobody in the namespace uses yet (the namespace is ours, so a counter is enough). */
  nextPort(): number;
  /** Kernel pipe size for the splice-based proxies (HAProxy tune.pipesize, KStreams pipeSize). */
  pipeSize: number;
  /** socat's copy buffer (-b). */
  socatBuffer: number;
  /** KStreams mirrorBufferSize of the mirror rows (the default setting, 4 MiB). */
  mirrorBufferSize: number;
  /** mirrorBufferSize (and mirrorBufferBudget) of the "bulk setting" mirror row. */
  bulkMirrorBufferSize: number;
  /** KStreams turnTimeoutMs (mirror turn pacing; 0 = off). */
  turnTimeoutMs: number;
  startTimeoutMs: number;
  /** Module the KStreams runner loads instead of native/lib (an absolute path or file URL). */
  engineLib?: string;
  /** The bench's private copy of kstreams.node, so every run measures the same build (KSTREAMS_ADDON). */
  addonCopy?: string;
}

export interface StartedPath {
  /** Where the client connects. */
  port: number;
  /** The proxy process (none for direct). */
  proc?: Proc;
  /** Whether the proxy forks per connection (its children's CPU and memory count too). */
  forks: boolean;
  /**
   * Stops the proxy by pid, once the transfers are done. The KStreams runner first lets its connections end
   * (up to a few seconds), then stops the engine and reports its counters and what stop() had to reset.
   */
  stop(): Promise<EngineEnd | undefined>;
}

/** What the KStreams runner reports when it is stopped. */
export interface EngineEnd {
  stats: EngineStats;
  /** What stop() reset (null from an engine build older than the drain contract). */
  drain: DrainResult | null;
  /** How long the runner waited for the engine's connections to end before stop(). */
  settledMs: number;
  /** Connections (primary and mirror) still open when stop() was called: stop() reset them. */
  openAtStop: number;
}

export interface PathSpec {
  id: string;
  label: string;
  kind: PathKind;
  /** Which baseline family it belongs to (ratios are taken against these). */
  family: 'direct' | 'node' | 'socat' | 'haproxy' | 'kstreams';
  /** Takes part in the redis-benchmark row (a real request/response client and server). */
  redis?: boolean;
  /** The settings that make this row differ from its family's default, for the report. */
  setting?: string;
  start(ctx: PathContext, upstreamPort: number, mirrorPort: number | undefined): Promise<StartedPath>;
}

const host = '127.0.0.1';

async function readyPort(proc: Proc, timeoutMs: number): Promise<number> {
  const line = await proc.waitLine((l) => l.startsWith('{'), timeoutMs);
  const msg = JSON.parse(line) as { port?: number; error?: string };
  if (msg.error !== undefined || msg.port === undefined) {
    await proc.stop();
    throw new Error(msg.error ?? `${proc.name} said ${line}`);
  }
  return msg.port;
}

function plainStop(proc: Proc): () => Promise<undefined> {
  return async () => {
    await proc.stop();
    return undefined;
  };
}

const direct: PathSpec = {
  id: 'direct',
  label: 'direct (client -> server)',
  kind: 'direct',
  family: 'direct',
  redis: true,
  start: async (_ctx, upstreamPort) => ({ port: upstreamPort, forks: false, stop: async () => undefined }),
};

function nodePipe(withMirror: boolean): PathSpec {
  return {
    id: withMirror ? 'node-mirror' : 'node',
    label: withMirror ? 'Node stream.pipe + JS mirror' : 'Node stream.pipe proxy',
    kind: withMirror ? 'mirror' : 'proxy',
    family: 'node',
    // The Node mirror is the mirror baseline of the redis row; the Node proxy has HAProxy in its place there.
    redis: withMirror,
    start: async (ctx, upstreamPort, mirrorPort) => {
      const prog = nodeProgram('./proxies/node-proxy.js');
      const args = [...prog.args, String(upstreamPort)];
      if (withMirror) args.push(String(mirrorPort));
      const proc = start(ctx.ns, 'node proxy', prog.command, args);
      const port = await readyPort(proc, ctx.startTimeoutMs);
      return { port, proc, forks: false, stop: plainStop(proc) };
    },
  };
}

const socat: PathSpec = {
  id: 'socat',
  label: 'socat (read/write loop)',
  kind: 'proxy',
  family: 'socat',
  start: async (ctx, upstreamPort) => {
    const port = ctx.nextPort();
    // fork: one child per connection, like socat is run as a proxy; -t: time to finish the other
    // direction after one side's EOF, long enough for the server's reply to a half-close.
    const proc = start(ctx.ns, 'socat', 'socat', [
      '-t',
      '10',
      '-b',
      String(ctx.socatBuffer),
      `TCP4-LISTEN:${port},bind=${host},reuseaddr,fork,backlog=1024,nodelay`,
      `TCP4:${host}:${upstreamPort},nodelay`,
    ]);
    return { port, proc, forks: true, stop: plainStop(proc) };
  },
};

const haproxy: PathSpec = {
  id: 'haproxy',
  label: 'HAProxy mode tcp + splice',
  kind: 'proxy',
  family: 'haproxy',
  redis: true,
  start: async (ctx, upstreamPort) => {
    const port = ctx.nextPort();
    const cfg = join(ctx.tmpDir, `haproxy-${port}.cfg`);
    writeFileSync(
      cfg,
      [
        'global',
        '  nbthread 1',
        '  maxconn 4096',
        `  tune.pipesize ${ctx.pipeSize}`,
        'defaults',
        '  mode tcp',
        '  timeout connect 5s',
        '  timeout client 60s',
        '  timeout server 60s',
        '  option splice-request',
        '  option splice-response',
        'listen bench',
        `  bind ${host}:${port}`,
        `  server app ${host}:${upstreamPort}`,
        '',
      ].join('\n'),
    );
    // -db: foreground, no daemon, so the pid we hold is the process doing the work.
    const proc = start(ctx.ns, 'haproxy', 'haproxy', ['-db', '-f', cfg]);
    return { port, proc, forks: false, stop: plainStop(proc) };
  },
};

type KStreamsVariant = 'proxy' | 'mirror' | 'mirror-bulk' | 'mirror-sklookup';

const MiB = 2 ** 20;
const mib = (b: number): string => `${Number.isInteger(b / MiB) ? b / MiB : (b / MiB).toFixed(1)} MiB`;

function kstreams(variant: KStreamsVariant): PathSpec {
  const labels: Record<KStreamsVariant, string> = {
    proxy: 'KStreams proxy (splice)',
    mirror: 'KStreams mirror (splice+tee)',
    'mirror-bulk': 'KStreams mirror, bulk setting',
    'mirror-sklookup': 'KStreams mirror via sk_lookup',
  };
  const isMirror = variant !== 'proxy';
  return {
    id: variant === 'proxy' ? 'kstreams' : `kstreams-${variant}`,
    label: labels[variant],
    kind: isMirror ? 'mirror' : 'proxy',
    family: 'kstreams',
    redis: variant === 'proxy' || variant === 'mirror',
    ...(variant === 'mirror-bulk' ? { setting: 'mirrorBufferSize and mirrorBufferBudget = --bulk-mirror-buffer (64 MiB)' } : {}),
    start: async (ctx, upstreamPort, mirrorPort) => {
      const intercept = variant === 'mirror-sklookup';
      const bulkSetting = variant === 'mirror-bulk';
      const engine: EngineConfig = {
        netnsPath: ctx.ns.path,
        listen: { host, port: 0 },
        upstream: intercept ? 'original-destination' : { host, port: upstreamPort },
        mirrors: !isMirror || mirrorPort === undefined ? [] : [{ name: 'sink', host, port: mirrorPort, samplingPercent: 100 }],
        pipeSize: ctx.pipeSize,
        turnTimeoutMs: ctx.turnTimeoutMs,
        mirrorBufferSize: bulkSetting ? ctx.bulkMirrorBufferSize : ctx.mirrorBufferSize,
        // The bulk setting's budget matches its buffer, so one lagging mirror connection can have all of it
        // (the default budget is 64 MiB: the same as the default bulk setting, said here so it stays so).
        ...(bulkSetting ? { mirrorBufferBudget: ctx.bulkMirrorBufferSize } : {}),
        mirrorConnectTimeoutMs: 2000,
        threads: 1,
      };
      const prog = nodeProgram('./runners/kstreams-runner.js');
      const config = JSON.stringify({
        engine,
        ...(intercept ? { interceptPort: upstreamPort } : {}),
        ...(ctx.engineLib ? { nativeLib: ctx.engineLib } : {}),
        settleMs: Math.max(3000, 2 * ctx.turnTimeoutMs),
      });
      const env = ctx.addonCopy ? { KSTREAMS_ADDON: ctx.addonCopy } : undefined;
      const proc = start(ctx.ns, 'kstreams runner', prog.command, [...prog.args, config], env);
      const listenPort = await readyPort(proc, ctx.startTimeoutMs);
      return {
        // With interception the client uses the server's real port; sk_lookup steers it to the engine.
        port: intercept ? upstreamPort : listenPort,
        proc,
        forks: false,
        stop: async () => {
          await proc.stop(Math.max(3000, 2 * ctx.turnTimeoutMs) + 5000);
          const line = proc.lines.find((l) => l.includes('"stats"'));
          if (!line) return undefined;
          const end = JSON.parse(line) as Partial<EngineEnd> & { stats: EngineStats };
          return { stats: end.stats, drain: end.drain ?? null, settledMs: end.settledMs ?? 0, openAtStop: end.openAtStop ?? 0 };
        },
      };
    },
  };
}

/** The default and bulk mirror settings, as the report prints them. */
export function mirrorSettings(ctx: Pick<PathContext, 'mirrorBufferSize' | 'bulkMirrorBufferSize' | 'turnTimeoutMs'>): string {
  return `KStreams mirrors: mirrorBufferSize ${mib(ctx.mirrorBufferSize)} (bulk setting row: ${mib(ctx.bulkMirrorBufferSize)}, budget ${mib(ctx.bulkMirrorBufferSize)}), turnTimeoutMs ${ctx.turnTimeoutMs}`;
}

export const ALL_PATHS: PathSpec[] = [
  direct,
  nodePipe(false),
  socat,
  haproxy,
  kstreams('proxy'),
  nodePipe(true),
  kstreams('mirror'),
  kstreams('mirror-bulk'),
  kstreams('mirror-sklookup'),
];
