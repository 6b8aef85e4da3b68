// Applies one StreamPath spec to one network namespace: a stream engine (splice/tee, in C threads) whose
// listener receives the tapped port's new connections through an sk_lookup interception. Shared by the
// `kstreams` CLI and the in-pod agent, so both attach, update and detach the same way.
import { existsSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import { mirrorSettings, type StreamPathSpec, type TargetCounters } from '../../../api/src/streampath.js';
import type {
  CaptureStats,
  DrainResult,
  EngineConfig,
  EngineSettings,
  EngineStats,
  EngineTransform,
  InterceptionConfig,
  MirrorConfig,
} from '../../../native/lib/types.js';
import { Engine, Interception } from '../../../native/lib/index.js';
import { AttachError, classifyNativeError } from './errors.js';
import { planTransform, sameTransform, type ProgramReader } from './transform.js';
import { resolveMirrors, type HostLookup, type ServiceResolver } from './targets.js';

/** The part of native/lib's Engine this module uses. */
export interface EngineHandle {
  readonly listenerFd: number;
  /** Throws once drain() or stop() was called (native/lib's Engine does). */
  stats(): EngineStats;
  /** Settings for connections accepted from now on; live connections keep theirs. */
  update(settings: EngineSettings): void | Promise<void>;
  /** Stop accepting, let live connections end until timeoutMs, reset the rest both ways. */
  drain(timeoutMs: number): Promise<DrainResult>;
  /** Reset every live connection now; cuts a running drain short. */
  stop(): Promise<DrainResult>;
}

/** The part of native/lib's Interception this module uses. */
export interface InterceptionHandle {
  detach(): void | Promise<void>;
}

/** How the data plane is started; tests inject fakes, production uses native/lib. */
export interface DataPlane {
  startEngine(config: EngineConfig): EngineHandle | Promise<EngineHandle>;
  attachInterception(config: InterceptionConfig): InterceptionHandle | Promise<InterceptionHandle>;
}

/** The engine's memory, for the CLI and metrics (not in the StreamPath status). */
export type AttachmentMemory = Pick<
  EngineStats,
  'pipesInUse' | 'pipesPooled' | 'pipeBytesInUse' | 'pipeBytesPooled' | 'mirrorBufferInUse' | 'mirrorBufferBudget' | 'mirrorBufferDenied'
>;

/** Counters in the shape of the StreamPath status (and the agent's report), plus a few for the CLI and metrics. */
export interface AttachmentCounters {
  /** Connections the engine accepted (intercepted) since attach. */
  connections: number;
  /** Client -> app bytes delivered to the app: the stream that is mirrored. */
  bytesPrimary: number;
  /** Bytes that reached the mirror targets, all targets (also those removed by an edit since). */
  bytesMirrored: number;
  /** Primary bytes that sampled mirror connections did not get (cut or failed connects), all targets. */
  bytesDropped: number;
  /** Connections reset both ways (RST) because they were still open when the detach's drain ended. */
  connectionsReset: number;
  targets: TargetCounters[];
  /** Not in the StreamPath status; for the CLI and logs. Connections open now. */
  connectionsActive: number;
  /** Not in the StreamPath status. Intercepted connections the app refused: those clients got a reset. */
  appConnectFailures: number;
  /** Not in the StreamPath status. Connections reset for want of a resource (fds, pipes, memory). */
  setupFailures: number;
  /** Not in the StreamPath status. */
  memory: AttachmentMemory;
  /** Not in the StreamPath status. Connections reset because the transform of their bytes to the app could not be applied. */
  transformFailures?: number;
  /**
   * Not in the StreamPath status. Per target listed in the engine's stats: mirror connections reset, or
   * never opened, because their transform could not be applied.
   */
  targetTransformFailures?: Record<string, number>;
  /** Not in the StreamPath status. Per file target (a capture, docs/capture.md): what it wrote and cut. */
  captures?: Record<string, CaptureStats>;
}

export type AttachmentState = 'attached' | 'draining' | 'detached';

export interface DetachOptions {
  /** How long live connections may take to end before they are reset. Default spec.drainTimeoutSeconds. */
  timeoutMs?: number;
  /** Reset live connections at once instead of draining them (engine.stop()). */
  now?: boolean;
  /** Aborting it cuts the drain short, as abort() does. */
  signal?: AbortSignal;
  /**
   * Called once the interception is released (new connections go straight to the app) and the drain
   * begins, with the connections open at that moment and the drain's timeout.
   */
  onDraining?: (info: { connections: number; timeoutMs: number }) => void;
}

/** How a detach ended. */
export interface DetachResult {
  /** The drain's timeout (0 when it reset at once). */
  timeoutMs: number;
  /** Connections that ended by themselves during the drain. */
  drained: number;
  /** Connections still open at the deadline (or when it was cut short): reset both ways, never closed with FIN. */
  reset: number;
  /** How long the drain took. */
  ms: number;
  /** abort(), detach({now}) or the signal ended it before its deadline. */
  cutShort: boolean;
}

export interface Attachment {
  readonly name: string;
  /** The port currently tapped. */
  readonly port: number;
  readonly state: AttachmentState;
  stats(): AttachmentCounters;
  /**
   * Applies a changed spec live, without a new engine: targets, sampling, pipeSize, turnTimeoutMs and
   * bufferSize go to new connections (live ones keep theirs until they end); a new port is tapped before
   * the old one is released; drainTimeoutSeconds is used by the next detach.
   */
  update(spec: StreamPathSpec): Promise<void>;
  /**
   * Resolves the current spec's targets again (Service endpoints move, names change) and gives new
   * connections the new endpoints. Resolves to whether anything changed; the old endpoints stay on error.
   */
  refreshTargets(): Promise<boolean>;
  /**
   * Interception first (new connections go straight to the app again), then the engine drains: live
   * connections keep moving until they end or the timeout passes, then the rest are reset. Idempotent:
   * later calls return the same promise (and `now` or `signal` still cut a running drain short).
   */
  detach(opts?: DetachOptions): Promise<DetachResult>;
  /** Resets live connections now: cuts a running drain short, or detaches with no drain. Idempotent. */
  abort(): Promise<DetachResult>;
}

export interface AttachOptions {
  /** StreamPath name, for messages. */
  name: string;
  spec: StreamPathSpec;
  /** /run/netns/NAME or /proc/PID/ns/net; undefined: the caller's namespace. */
  netnsPath?: string;
  /** Resolves Service targets (the agent asks the API). Without it, Service targets are refused. */
  resolve?: ServiceResolver;
  /** Resolves host names in `address` targets. Default: dns.lookup (/etc/hosts, then the system resolver). */
  lookup?: HostLookup;
  dataPlane?: DataPlane;
  /** Default 2000. */
  mirrorConnectTimeoutMs?: number;
  /** Engine-wide cap on mirror send-buffer growth (spec.mirror.bufferSize). Default 64 MiB (native/lib). */
  mirrorBufferBudget?: number;
  /**
   * Reads the BPF object of a spec.transform program op (the CLI reads `path`, the agent a ConfigMap).
   * Without it a program op is refused.
   */
  readProgram?: ProgramReader;
  /**
   * A file target's path is resolved under this directory (an injected sidecar's capture volume): `/shop`
   * is `<captureRoot>/shop`, and a path that would leave it (`/../etc`) is refused as
   * CapturePathOutsideVolume. Undefined: paths as written (`kstreams run`).
   */
  captureRoot?: string;
}

export const DEFAULT_MIRROR_CONNECT_TIMEOUT_MS = 2000;

/**
 * native/lib. Importing it does not load kstreams.node (the addon is loaded on the first start/attach), so
 * commands that never attach work without a built addon.
 */
export const nativeDataPlane: DataPlane = {
  startEngine: (c) => Engine.start(c),
  attachInterception: (c) => Interception.attach(c),
};

function sameMirrors(a: MirrorConfig[], b: MirrorConfig[]): boolean {
  return (
    a.length === b.length &&
    a.every((m, i) => {
      const o = b[i]!;
      return (
        m.name === o.name &&
        m.host === o.host &&
        m.port === o.port &&
        m.samplingPercent === o.samplingPercent &&
        isDeepStrictEqual(m.file, o.file)
      );
    })
  );
}

function sameSettings(a: EngineSettings, b: EngineSettings): boolean {
  return (
    sameMirrors(a.mirrors, b.mirrors) &&
    a.pipeSize === b.pipeSize &&
    a.turnTimeoutMs === b.turnTimeoutMs &&
    a.mirrorBufferSize === b.mirrorBufferSize &&
    sameTransform(a.transform, b.transform)
  );
}

const ZERO_MEMORY: AttachmentMemory = {
  pipesInUse: 0,
  pipesPooled: 0,
  pipeBytesInUse: 0,
  pipeBytesPooled: 0,
  mirrorBufferInUse: 0,
  mirrorBufferBudget: 0,
  mirrorBufferDenied: 0,
};

function zeroCounters(mirrors: MirrorConfig[]): AttachmentCounters {
  return {
    connections: 0,
    bytesPrimary: 0,
    bytesMirrored: 0,
    bytesDropped: 0,
    connectionsReset: 0,
    targets: mirrors.map((m) => ({
      name: m.name,
      connectionsMirrored: 0,
      connectionsCut: 0,
      connectFailures: 0,
      connectionsSkipped: 0,
      bytesMirrored: 0,
      bytesDropped: 0,
      turnWaitsExpired: 0,
    })),
    connectionsActive: 0,
    appConnectFailures: 0,
    setupFailures: 0,
    memory: { ...ZERO_MEMORY },
  };
}

/** Bytes of targets that are no longer in the engine's stats, added to the totals. */
export interface RetiredBytes {
  bytesMirrored: number;
  bytesDropped: number;
}

/**
 * The engine lists a target removed by an edit only while it still has connections open; after that its
 * bytes would vanish from the totals, which must never run back (they are Prometheus counters). This keeps
 * the last figures of every target seen and returns those of the ones gone. A target added back resumes
 * its own totals in the engine (counters are kept per name), so it leaves the retired set again.
 */
export class TargetLedger {
  private readonly last = new Map<string, RetiredBytes>();

  observe(s: EngineStats): RetiredBytes {
    for (const t of s.targets) this.last.set(t.name, { bytesMirrored: t.bytesMirrored, bytesDropped: t.bytesDropped });
    const listed = new Set(s.targets.map((t) => t.name));
    const retired = { bytesMirrored: 0, bytesDropped: 0 };
    for (const [name, b] of this.last) {
      if (listed.has(name)) continue;
      retired.bytesMirrored += b.bytesMirrored;
      retired.bytesDropped += b.bytesDropped;
    }
    return retired;
  }
}

/** Maps engine counters to the API's counters shape; `retired` adds the bytes of targets gone from the stats. */
export function toCounters(s: EngineStats, retired: RetiredBytes = { bytesMirrored: 0, bytesDropped: 0 }): AttachmentCounters {
  const targets: TargetCounters[] = s.targets.map((t) => ({
    name: t.name,
    connectionsMirrored: t.connectionsMirrored,
    connectionsCut: t.connectionsCut,
    connectFailures: t.connectFailures,
    connectionsSkipped: t.connectionsSkipped ?? 0,
    bytesMirrored: t.bytesMirrored,
    bytesDropped: t.bytesDropped,
    turnWaitsExpired: t.turnWaitsExpired ?? 0,
    ...(t.responsesCompared !== undefined && (t.responsesCompared > 0 || t.responsesDiverged) ? { responsesCompared: t.responsesCompared, responsesDiverged: t.responsesDiverged ?? 0 } : {}),
  }));
  const sum = (k: 'bytesMirrored' | 'bytesDropped') => s.targets.reduce((a, t) => a + t[k], 0) + retired[k];
  return {
    connections: s.connectionsAccepted,
    bytesPrimary: s.bytesClientToApp,
    bytesMirrored: sum('bytesMirrored'),
    bytesDropped: sum('bytesDropped'),
    connectionsReset: s.connectionsReset ?? 0,
    targets,
    connectionsActive: s.connectionsActive,
    appConnectFailures: s.upstreamConnectFailures,
    setupFailures: s.setupFailures ?? 0,
    memory: {
      pipesInUse: s.pipesInUse ?? 0,
      pipesPooled: s.pipesPooled ?? 0,
      pipeBytesInUse: s.pipeBytesInUse ?? 0,
      pipeBytesPooled: s.pipeBytesPooled ?? 0,
      mirrorBufferInUse: s.mirrorBufferInUse ?? 0,
      mirrorBufferBudget: s.mirrorBufferBudget ?? 0,
      mirrorBufferDenied: s.mirrorBufferDenied ?? 0,
    },
    transformFailures: s.transformFailures ?? 0,
    targetTransformFailures: Object.fromEntries(s.targets.map((t) => [t.name, t.transformFailures ?? 0])),
    ...(s.targets.some((t) => t.capture)
      ? { captures: Object.fromEntries(s.targets.flatMap((t) => (t.capture ? [[t.name, { ...t.capture }]] : []))) }
      : {}),
  };
}

/** What a running engine applies to its new connections, from a spec and its resolved targets. */
export function engineSettings(spec: StreamPathSpec, mirrors: MirrorConfig[], transform?: EngineTransform): EngineSettings {
  // A spec without spec.mirror (a primary-only transform) has no targets and the default settings.
  const mirror = mirrorSettings(spec);
  return {
    mirrors,
    pipeSize: mirror.pipeSize,
    turnTimeoutMs: mirror.turnTimeoutMs,
    mirrorBufferSize: mirror.bufferSize,
    ...(transform ? { transform } : {}),
  };
}

/** The engine's configuration for a spec; `transform` is spec.transform as planTransform() encoded it. */
function engineConfig(
  spec: StreamPathSpec,
  mirrors: MirrorConfig[],
  opts: AttachOptions,
  transform: EngineTransform | undefined,
): EngineConfig {
  return {
    ...(opts.netnsPath !== undefined ? { netnsPath: opts.netnsPath } : {}),
    upstream: 'original-destination',
    ...engineSettings(spec, mirrors, transform),
    mirrorConnectTimeoutMs: opts.mirrorConnectTimeoutMs ?? DEFAULT_MIRROR_CONNECT_TIMEOUT_MS,
    ...(opts.mirrorBufferBudget !== undefined ? { mirrorBufferBudget: opts.mirrorBufferBudget } : {}),
  };
}

async function startEngine(dp: DataPlane, config: EngineConfig, netnsPath?: string): Promise<EngineHandle> {
  try {
    return await dp.startEngine(config);
  } catch (err) {
    throw classifyNativeError(err, 'starting the stream engine', netnsPath);
  }
}

async function intercept(dp: DataPlane, port: number, engine: EngineHandle, netnsPath?: string): Promise<InterceptionHandle> {
  try {
    return await dp.attachInterception({
      ...(netnsPath !== undefined ? { netnsPath } : {}),
      port,
      listenerFd: engine.listenerFd,
    });
  } catch (err) {
    throw classifyNativeError(err, `intercepting port ${port}`, netnsPath);
  }
}

async function stopQuietly(engine: EngineHandle): Promise<void> {
  try {
    await engine.stop();
  } catch {
    // Rolling back after an earlier failure: that failure is the one worth reporting.
  }
}

export async function attachStreamPath(opts: AttachOptions): Promise<Attachment> {
  const { netnsPath } = opts;
  if (netnsPath !== undefined && !existsSync(netnsPath)) {
    throw new AttachError('NetnsNotFound', `network namespace ${netnsPath} does not exist`);
  }
  // Everything that can be refused without touching the kernel is checked before anything is started.
  const transform = await planTransform(opts.spec.transform, opts.readProgram);
  const resolveOpts = {
    ...(opts.lookup ? { lookup: opts.lookup } : {}),
    ...(opts.resolve ? { resolveService: opts.resolve } : {}),
    ...(opts.captureRoot !== undefined ? { captureRoot: opts.captureRoot } : {}),
  };
  let spec = opts.spec;
  let mirrors = await resolveMirrors(spec, resolveOpts);
  const dp = opts.dataPlane ?? nativeDataPlane;

  const initial = engineConfig(spec, mirrors, opts, transform);
  let settings: EngineSettings = engineSettings(spec, mirrors, transform);
  // One engine for the attachment's whole life: every spec field is a setting for new connections.
  const engine = await startEngine(dp, initial, netnsPath);
  let interception: InterceptionHandle;
  try {
    interception = await intercept(dp, spec.port, engine, netnsPath);
  } catch (err) {
    await stopQuietly(engine);
    throw err;
  }

  const ledger = new TargetLedger();
  let state: AttachmentState = 'attached';
  // The last counters read: what stats() shows when the engine refuses reads (native/lib's Engine does once
  // it drains or stops).
  let last: AttachmentCounters | undefined;
  let final: AttachmentCounters | undefined;
  let detached: Promise<DetachResult> | undefined;
  // Set by abort()/detach({now}): reset instead of drain, or cut the running drain short.
  let resetNow = false;
  let stopping: Promise<DrainResult> | undefined;
  let draining = false;
  const resetConnections = () => {
    resetNow = true;
    // During the drain: engine.stop() ends it now. Before it (an update still running): the drain
    // does not start, the detach resets instead.
    if (draining) stopping ??= engine.stop();
  };

  // update() and detach() must not interleave: both change the interception or the engine's settings.
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = queue.then(fn, fn);
    queue = run.catch(() => undefined);
    return run;
  };

  const read = (): AttachmentCounters | undefined => {
    try {
      const s = engine.stats();
      last = toCounters(s, ledger.observe(s));
      return last;
    } catch {
      return undefined;
    }
  };

  const runDetach = async (o: DetachOptions): Promise<DetachResult> => {
    state = 'draining';
    let interceptionError: unknown;
    try {
      await interception.detach();
    } catch (err) {
      // Carry on: the engine must end all the same, and once its listener is closed the kernel's normal
      // lookup delivers new connections to the app (fail-open). The failure is reported after.
      interceptionError = err;
    }
    const before = read() ?? last ?? zeroCounters(mirrors);
    const timeoutMs = resetNow ? 0 : Math.max(0, Math.round(o.timeoutMs ?? spec.drainTimeoutSeconds * 1000));
    const started = Date.now();
    let result: DrainResult;
    try {
      o.onDraining?.({ connections: before.connectionsActive, timeoutMs });
    } catch {
      // A caller's note must not stop the detach.
    }
    try {
      draining = true;
      const ending = resetNow ? engine.stop() : engine.drain(timeoutMs);
      if (resetNow) stopping ??= ending;
      result = await ending;
      // A stop() that cut the drain short resolves too; wait for it so that nothing is left running.
      if (stopping) await stopping.catch(() => undefined);
    } catch (err) {
      state = 'detached';
      final = { ...before, connectionsActive: 0 };
      throw classifyNativeError(err, 'draining the stream engine', netnsPath);
    } finally {
      draining = false;
    }
    // native/lib refuses stats() once the engine ends: the drain's result completes the last snapshot.
    const after = read();
    final = after ?? { ...before, connectionsActive: 0, connectionsReset: before.connectionsReset + result.reset };
    state = 'detached';
    if (interceptionError !== undefined) throw classifyNativeError(interceptionError, `releasing port ${spec.port}`, netnsPath);
    return {
      timeoutMs,
      drained: result.drained,
      reset: result.reset,
      ms: Number.isFinite(result.ms) ? result.ms : Date.now() - started,
      cutShort: resetNow,
    };
  };

  const attachment: Attachment = {
    name: opts.name,
    get port() {
      return spec.port;
    },
    get state() {
      return state;
    },
    stats() {
      if (final) return final;
      // During a drain too, where the engine answers (native/lib's Engine refuses once drain() is called:
      // then the counters stay those of the drain's start).
      return read() ?? last ?? zeroCounters(mirrors);
    },
    update(next) {
      return serial(async () => {
        if (state !== 'attached') throw new AttachError('DataPlaneError', `StreamPath ${opts.name} is detached; attach it again`);
        // Nothing in a spec needs a new engine: every field is a setting for new connections (a
        // transform too: live connections keep the ops they started with), or the port.
        const nextTransform = await planTransform(next.transform, opts.readProgram);
        const nextMirrors = await resolveMirrors(next, resolveOpts);
        const nextSettings = engineSettings(next, nextMirrors, nextTransform);
        // A new port is tapped before anything else changes, so that a refusal leaves the attachment as
        // it was, and before the old port is released, so that there is no untapped window.
        const moved = next.port !== spec.port ? await intercept(dp, next.port, engine, netnsPath) : undefined;
        if (!sameSettings(nextSettings, settings)) {
          try {
            await engine.update(nextSettings);
          } catch (err) {
            await moved?.detach();
            throw classifyNativeError(err, 'applying the changed spec to new connections', netnsPath);
          }
        }
        if (moved) {
          const old = interception;
          interception = moved;
          await old.detach();
        }
        spec = next;
        mirrors = nextMirrors;
        settings = nextSettings;
      });
    },
    refreshTargets() {
      return serial(async () => {
        if (state !== 'attached') return false;
        const next = await resolveMirrors(spec, resolveOpts);
        if (sameMirrors(next, mirrors)) return false;
        const nextSettings = { ...settings, mirrors: next };
        try {
          await engine.update(nextSettings);
        } catch (err) {
          throw classifyNativeError(err, 'updating the mirror targets', netnsPath);
        }
        mirrors = next;
        settings = nextSettings;
        return true;
      });
    },
    detach(o = {}) {
      if (o.now || o.signal?.aborted) resetConnections();
      o.signal?.addEventListener('abort', resetConnections, { once: true });
      detached ??= serial(() => runDetach(o));
      return detached;
    },
    abort() {
      resetConnections();
      return attachment.detach({ now: true });
    },
  };
  return attachment;
}
