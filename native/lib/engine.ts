// The stream engine as a typed class over kstreams.node. The engine's worker threads move the bytes;
// this wrapper only starts, reconfigures, reads counters, drains and stops them.
import { addon } from './addon.js';
import type { RawEngineHandle, RawEngineStart } from './raw.js';
import {
  sourcesPerFamily,
  type DrainResult,
  type Endpoint,
  type EngineConfig,
  type EngineSettings,
  type EngineStats,
} from './types.js';

/** Default engine-wide cap on mirror send-buffer growth (EngineConfig.mirrorBufferBudget). */
export const DEFAULT_MIRROR_BUFFER_BUDGET = 64 * 1024 * 1024;

function stoppedError(): Error {
  return Object.assign(new Error('engine stopped'), { code: 'EKSTREAMS_ENGINE_STOPPED' });
}

export class Engine {
  /** The address the listener is bound to, port filled in (the dual-stack default shows as '::'). */
  readonly listenAddress: Endpoint;
  /** The listener's fd, for the sk_lookup SOCKMAP. Valid until drain() or stop(). */
  readonly listenerFd: number;
  private effectivePipeSize: number;
  private ending: Promise<DrainResult> | undefined;

  private constructor(private readonly handle: RawEngineHandle, raw: RawEngineStart) {
    this.listenAddress = { host: raw.listenHost, port: raw.listenPort };
    this.listenerFd = raw.listenerFd;
    this.effectivePipeSize = raw.pipeSize;
  }

  /**
   * Starts the worker threads and binds the listener (in config.netnsPath, if set) before returning.
   * Throws a NativeError (code = errno name, syscall) when the namespace, pipe size or listener fails,
   * or a TypeError (code ERR_INVALID_ARG_TYPE) naming the config field that is wrong.
   */
  static start(config: EngineConfig): Engine {
    const { upstreamSource, upstreamSources, ...rest } = config;
    const raw = addon().engineStart({
      mirrorBufferBudget: DEFAULT_MIRROR_BUFFER_BUDGET,
      ...rest,
      upstreamSources: sourcesPerFamily(upstreamSource, upstreamSources),
    });
    return new Engine(raw.handle, raw);
  }

  /** Effective bytes per pipe for new connections (the kernel rounds pipeSize up to a power of two pages). */
  get pipeSize(): number {
    return this.effectivePipeSize;
  }

  /**
   * A snapshot of the counters (relaxed atomics summed over workers; cheap, but do not call it per chunk).
   * Valid during a drain and after the end too: the totals are final once drain() or stop() resolved.
   */
  stats(): EngineStats {
    return addon().engineStats(this.handle);
  }

  /**
   * Applies settings to connections accepted from now on; live connections keep theirs (their mirrors,
   * pipes and buffers). Counters are kept per target name, so a target that stays keeps its totals.
   * Throws (and keeps the previous settings) when the pipe size is one the kernel always refuses.
   */
  update(settings: EngineSettings): void {
    if (this.ending) throw stoppedError();
    this.effectivePipeSize = addon().engineUpdate(this.handle, settings);
  }

  /**
   * Stops accepting (detach the interception first, so new connections reach the app directly; what is
   * already in the listen backlog is still accepted and served), keeps moving live connections until
   * they end or `timeoutMs` passes, then resets what is left both ways (RST) and joins the threads.
   * Idempotent: a later drain() or stop() returns the same promise unless stop() cuts it short.
   */
  drain(timeoutMs: number): Promise<DrainResult> {
    this.ending ??= addon().engineDrain(this.handle, timeoutMs);
    return this.ending;
  }

  /**
   * Resets every live connection at once (RST both ways, never a FIN after a truncated stream), closes the
   * listener and joins the threads. During a drain it ends the drain now. Idempotent.
   */
  stop(): Promise<DrainResult> {
    const stopped = addon().engineStop(this.handle);
    this.ending ??= stopped;
    return stopped;
  }
}

/**
 * 0..9999: the consistent hash of a connection's 4-tuple (client, original destination) that sampling
 * uses: a connection goes to a target when samplingBucket(...) < samplingPercent * 100.
 */
export function samplingBucket(src: Endpoint, dst: Endpoint): number {
  return addon().samplingBucket(src, dst);
}
