// The stream engine as a typed class over kstreams.node. The engine's worker threads move the bytes;
// this wrapper only starts, reconfigures, reads counters and stops them.
import { addon } from './addon.js';
import { sourcesPerFamily, type Endpoint, type EngineConfig, type EngineStats, type MirrorConfig } from './types.js';

interface RawStart {
  handle: unknown;
  listenHost: string;
  listenPort: number;
  listenerFd: number;
  pipeSize: number;
}

export class Engine {
  /** The address the listener is bound to, port filled in (the dual-stack default shows as '::'). */
  readonly listenAddress: Endpoint;
  /** The listener's fd, for the sk_lookup SOCKMAP. Valid until stop(). */
  readonly listenerFd: number;
  /** Effective bytes per pipe (the kernel rounds pipeSize up to a power of two pages). */
  readonly pipeSize: number;
  private stopping: Promise<void> | undefined;

  private constructor(private readonly handle: unknown, raw: RawStart) {
    this.listenAddress = { host: raw.listenHost, port: raw.listenPort };
    this.listenerFd = raw.listenerFd;
    this.pipeSize = raw.pipeSize;
  }

  /**
   * Starts the worker threads and binds the listener (in config.netnsPath, if set) before returning.
   * Throws a NativeError (code = errno name, syscall) when the namespace, pipe size or listener fails,
   * or a TypeError (code ERR_INVALID_ARG_TYPE) naming the config field that is wrong.
   */
  static start(config: EngineConfig): Engine {
    const { upstreamSource, upstreamSources, ...rest } = config;
    const raw = addon().engineStart({ ...rest, upstreamSources: sourcesPerFamily(upstreamSource, upstreamSources) }) as RawStart;
    return new Engine(raw.handle, raw);
  }

  /** A snapshot of the counters (relaxed atomics read in C; cheap, but do not call it per chunk). */
  stats(): EngineStats {
    if (this.stopping) throw Object.assign(new Error('engine stopped'), { code: 'EKSTREAMS_ENGINE_STOPPED' });
    return addon().engineStats(this.handle) as EngineStats;
  }

  /**
   * Replaces the mirror targets for connections accepted from now on; open connections keep theirs.
   * Counters are kept per target name, so a target that stays keeps its totals.
   */
  updateMirrors(mirrors: MirrorConfig[]): void {
    if (this.stopping) throw Object.assign(new Error('engine stopped'), { code: 'EKSTREAMS_ENGINE_STOPPED' });
    addon().engineUpdateMirrors(this.handle, mirrors);
  }

  /** Closes the listener and every connection and joins the threads. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= addon().engineStop(this.handle) as Promise<void>;
    return this.stopping;
  }
}

/**
 * 0..9999: the consistent hash of a connection's 4-tuple (client, original destination) that sampling
 * uses: a connection goes to a target when samplingBucket(...) < samplingPercent * 100.
 */
export function samplingBucket(src: Endpoint, dst: Endpoint): number {
  return addon().samplingBucket(src, dst) as number;
}
