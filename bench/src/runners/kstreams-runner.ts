// Runs one KStreams engine in its own process, so the bench charges its CPU and memory to it exactly as it
// does for HAProxy, socat and the Node proxy.
//   node kstreams-runner.js '{"engine": EngineConfig, "interceptPort"?: number}'
// Prints {"port":N,"listenFd":N} once the engine listens (and interception is attached, if asked), and on
// SIGTERM prints {"stats": EngineStats} after stopping, so the bench can report what the mirror got.
// Any failure prints {"error": "..."} and exits 1: the bench shows that reason in place of the row.
import type { EngineConfig, EngineStats, Endpoint, InterceptionConfig } from '../../../native/lib/types.js';

interface RunnerConfig {
  engine: EngineConfig;
  /** Attach sk_lookup interception for this port (connections to it are steered to the engine). */
  interceptPort?: number;
  /** Another build of native/lib to load (bench --engine-lib), to compare engine versions side by side. */
  nativeLib?: string;
}

// The subset of native/lib the runner uses, typed here so the bench builds whatever state native/ is in.
interface EngineLike {
  readonly listenAddress: Endpoint;
  readonly listenerFd: number;
  stats(): EngineStats | Promise<EngineStats>;
  stop(): void | Promise<void>;
}
interface InterceptionLike {
  detach(): void | Promise<void>;
}
interface NativeLib {
  Engine: { start(config: EngineConfig): EngineLike | Promise<EngineLike> };
  Interception: { attach(config: InterceptionConfig): InterceptionLike | Promise<InterceptionLike> };
}

function say(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

async function main(): Promise<void> {
  const config = JSON.parse(process.argv[2] ?? '') as RunnerConfig;
  // A computed specifier: the engine is loaded at run time, and a missing engine is a row's error, not a
  // build failure of the bench.
  const libPath = config.nativeLib ?? '../../../native/lib/index.js';
  const lib = (await import(libPath)) as Partial<NativeLib>;
  if (!lib.Engine || !lib.Interception) {
    throw new Error(`${libPath} exports no Engine/Interception: the engine is not there yet in this checkout`);
  }
  const engine = await lib.Engine.start(config.engine);
  let interception: InterceptionLike | undefined;
  try {
    if (config.interceptPort !== undefined) {
      const attach: InterceptionConfig = { port: config.interceptPort, listenerFd: engine.listenerFd };
      if (config.engine.netnsPath) attach.netnsPath = config.engine.netnsPath;
      interception = await lib.Interception.attach(attach);
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
        const stats = await engine.stats();
        if (interception) await interception.detach();
        await engine.stop();
        say({ stats });
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
