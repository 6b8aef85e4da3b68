// Runs one KStreams engine in its own process, so the bench charges its CPU and memory to it exactly as it
// does for HAProxy, socat and the Node proxy.
//   node kstreams-runner.js '{"engine": EngineConfig, "interceptPort"?: number, "settleMs"?: number}'
// Prints {"port":N,"listenFd":N} once the engine listens (and interception is
// attached, if asked). On SIGTERM, sent once the bench's transfers are done, it waits up to settleMs for the
// engine's connections (primary and mirror) to end by themselves, so a mirror that is still catching up is
// not reset by stop(); then it reads the counters, stops the engine and prints
// {"stats": EngineStats, "drain": DrainResult | null, "settledMs": N, "openAtStop": N}.
// Any failure prints {"error": "..."} and exits 1: the bench shows that reason in place of the row.
import type { DrainResult, EngineConfig, EngineStats, InterceptionConfig } from '../../../native/lib/types.js';

interface RunnerConfig {
  engine: EngineConfig;
  /** Attach sk_lookup interception for this port (connections to it are steered to the engine). */
  interceptPort?: number;
  /** Another build of native/lib to load (bench --engine-lib), to compare engine versions side by side. */
  nativeLib?: string;
  /** How long to wait at SIGTERM for live connections to end before stop() resets them. Default 3000. */
  settleMs?: number;
}

// What the runner needs of native/lib; another build given with --engine-lib must offer the same.
type NativeLib = Pick<typeof import('../../../native/lib/index.js'), 'Engine' | 'Interception'>;

function say(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Connections still open: primaries and mirror connections. */
function open(stats: EngineStats): number {
  return stats.connectionsActive + stats.targets.reduce((n, t) => n + (t.connectionsActive ?? 0), 0);
}

async function main(): Promise<void> {
  const config = JSON.parse(process.argv[2] ?? '') as RunnerConfig;
  // The addon loads here, in the runner, so a missing or broken engine is a row's error, not the bench's.
  const lib: Partial<NativeLib> = config.nativeLib
    ? ((await import(config.nativeLib)) as Partial<NativeLib>)
    : await import('../../../native/lib/index.js');
  if (!lib.Engine || !lib.Interception) {
    throw new Error(`${config.nativeLib ?? 'native/lib'} exports no Engine/Interception`);
  }
  const engine = lib.Engine.start(config.engine);
  let interception: ReturnType<NativeLib['Interception']['attach']> | undefined;
  try {
    if (config.interceptPort !== undefined) {
      const attach: InterceptionConfig = { port: config.interceptPort, listenerFd: engine.listenerFd };
      if (config.engine.netnsPath) attach.netnsPath = config.engine.netnsPath;
      interception = lib.Interception.attach(attach);
    }
  } catch (err) {
    await engine.stop();
    throw err;
  }
  // The engine's threads are not libuv handles: without this the runner would exit right after start.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  let stopping = false;
  process.on('SIGTERM', () => {
    if (stopping) return;
    stopping = true;
    void (async () => {
      try {
        // New connections now reach the app directly; the engine's own ones finish below.
        if (interception) interception.detach();
        const t0 = Date.now();
        const deadline = t0 + (config.settleMs ?? 3000);
        let stats = engine.stats();
        while (open(stats) > 0 && Date.now() < deadline) {
          await sleep(20);
          stats = engine.stats();
        }
        const settledMs = Date.now() - t0;
        // stop() resets whatever is still open (counted in drain.reset): only a connection that did not end
        // within settleMs, which the bench then reports.
        const drain = ((await engine.stop()) as DrainResult | undefined) ?? null;
        say({ stats, drain, settledMs, openAtStop: open(stats) });
        clearInterval(keepAlive);
        process.exit(0);
      } catch (err) {
        say({ error: `stopping the engine failed: ${(err as Error).message}` });
        process.exit(1);
      }
    })();
  });
  say({ port: engine.listenAddress.port, listenFd: engine.listenerFd });
}

main().catch((err: unknown) => {
  const e = err as Error & { code?: string };
  say({ error: `${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}` });
  process.exit(1);
});
