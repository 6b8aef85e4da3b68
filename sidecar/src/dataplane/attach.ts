// Applies one StreamPath spec to one network namespace: a stream engine (splice/tee, in C threads) whose
// listener receives the tapped port's new connections through an sk_lookup interception. Shared by the
// `kstreams` CLI and the in-pod agent, so both attach, update and detach the same way.
import { existsSync } from 'node:fs';
import type { StreamPathSpec, TargetCounters } from '../../../operator/src/api/streampath.js';
import type {
  EngineConfig,
  EngineStats,
  InterceptionConfig,
  MirrorConfig,
} from '../../../native/lib/types.js';
import { Engine, Interception } from '../../../native/lib/index.js';
import { AttachError, classifyNativeError } from './errors.js';
import { planTransform, type TransformPlan } from './transform.js';
import { resolveMirrors, type HostLookup, type ServiceResolver } from './targets.js';

/** The part of native/lib's Engine this module uses. */
export interface EngineHandle {
  readonly listenerFd: number;
  stats(): EngineStats;
  updateMirrors(mirrors: MirrorConfig[]): void | Promise<void>;
  stop(): Promise<void>;
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

/** Counters in the shape of the StreamPath status (and the agent's report). */
export interface AttachmentCounters {
  /** Connections the engine accepted (intercepted) since attach. */
  connections: number;
  /** Client -> app bytes delivered to the app: the stream that is mirrored. */
  bytesPrimary: number;
  /** Bytes written to all mirror targets. */
  bytesMirrored: number;
  /** Primary bytes that sampled mirror connections did not get (cut or failed connects), all targets. */
  bytesDropped: number;
  targets: TargetCounters[];
  /** Not in the StreamPath status; for the CLI and logs. Connections open now. */
  connectionsActive: number;
  /** Not in the StreamPath status. Intercepted connections the app refused: those clients got a reset. */
  appConnectFailures: number;
}

export interface Attachment {
  readonly name: string;
  /** The port currently tapped. */
  readonly port: number;
  stats(): AttachmentCounters;
  /** Applies a changed spec live: new mirror set and sampling in place, a new port or pipe size by re-attaching. */
  update(spec: StreamPathSpec): Promise<void>;
  /**
   * Resolves the current spec's targets again (Service endpoints move, names change) and gives new
   * connections the new endpoints. Resolves to whether anything changed; the old endpoints stay on error.
   */
  refreshTargets(): Promise<boolean>;
  /** Interception first (new connections go straight to the app again), then the engine. Idempotent. */
  detach(): Promise<void>;
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
      return m.name === o.name && m.host === o.host && m.port === o.port && m.samplingPercent === o.samplingPercent;
    })
  );
}

function zeroTargets(mirrors: MirrorConfig[]): TargetCounters[] {
  return mirrors.map((m) => ({
    name: m.name,
    connectionsMirrored: 0,
    connectionsCut: 0,
    connectFailures: 0,
    bytesMirrored: 0,
    bytesDropped: 0,
  }));
}

/** Maps engine counters to the API's counters shape; `base` carries totals across engine restarts. */
export function toCounters(s: EngineStats, base?: AttachmentCounters): AttachmentCounters {
  const targets: TargetCounters[] = s.targets.map((t) => {
    const prev = base?.targets.find((b) => b.name === t.name);
    return {
      name: t.name,
      connectionsMirrored: t.connectionsMirrored + (prev?.connectionsMirrored ?? 0),
      connectionsCut: t.connectionsCut + (prev?.connectionsCut ?? 0),
      connectFailures: t.connectFailures + (prev?.connectFailures ?? 0),
      connectionsSkipped: (t.connectionsSkipped ?? 0) + (prev?.connectionsSkipped ?? 0),
      bytesMirrored: t.bytesMirrored + (prev?.bytesMirrored ?? 0),
      bytesDropped: t.bytesDropped + (prev?.bytesDropped ?? 0),
    };
  });
  // Totals include targets that were removed since (their bytes were mirrored or dropped all the same).
  const sum = (k: 'bytesMirrored' | 'bytesDropped') =>
    s.targets.reduce((a, t) => a + t[k], 0) + (base?.[k] ?? 0);
  return {
    connections: s.connectionsAccepted + (base?.connections ?? 0),
    bytesPrimary: s.bytesClientToApp + (base?.bytesPrimary ?? 0),
    bytesMirrored: sum('bytesMirrored'),
    bytesDropped: sum('bytesDropped'),
    targets,
    connectionsActive: s.connectionsActive,
    appConnectFailures: s.upstreamConnectFailures + (base?.appConnectFailures ?? 0),
  };
}

/**
 * The engine's configuration for a spec. `transform` is where in-kernel transforms plug in: today
 * planTransform() refuses every transform, so it is always undefined here; the release that adds them
 * turns the plan into sk_msg programs on the mirror and/or upstream sockets at this point.
 */
function engineConfig(
  spec: StreamPathSpec,
  mirrors: MirrorConfig[],
  opts: AttachOptions,
  transform: TransformPlan | undefined,
): EngineConfig {
  if (transform) throw new AttachError('TransformUnsupported', 'spec.transform: no transform plan can be applied yet', 'spec.transform');
  return {
    ...(opts.netnsPath !== undefined ? { netnsPath: opts.netnsPath } : {}),
    upstream: 'original-destination',
    mirrors,
    pipeSize: spec.mirror.pipeSize,
    mirrorConnectTimeoutMs: opts.mirrorConnectTimeoutMs ?? DEFAULT_MIRROR_CONNECT_TIMEOUT_MS,
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
  const transform = planTransform(opts.spec.transform);
  const resolveOpts = {
    ...(opts.lookup ? { lookup: opts.lookup } : {}),
    ...(opts.resolve ? { resolveService: opts.resolve } : {}),
  };
  let spec = opts.spec;
  let mirrors = await resolveMirrors(spec, resolveOpts);
  const dp = opts.dataPlane ?? nativeDataPlane;

  let engine = await startEngine(dp, engineConfig(spec, mirrors, opts, transform), netnsPath);
  let interception: InterceptionHandle;
  try {
    interception = await intercept(dp, spec.port, engine, netnsPath);
  } catch (err) {
    await stopQuietly(engine);
    throw err;
  }

  // Counters of engines replaced by update(): the attachment's totals survive a pipe size change.
  let carried: AttachmentCounters | undefined;
  let detached: Promise<void> | undefined;
  let final: AttachmentCounters | undefined;
  // update() and detach() must not interleave: both swap the engine or the interception.
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = queue.then(fn, fn);
    queue = run.catch(() => undefined);
    return run;
  };

  const attachment: Attachment = {
    name: opts.name,
    get port() {
      return spec.port;
    },
    stats() {
      if (final) return final;
      try {
        return toCounters(engine.stats(), carried);
      } catch {
        return (
          carried ?? {
            connections: 0,
            bytesPrimary: 0,
            bytesMirrored: 0,
            bytesDropped: 0,
            targets: zeroTargets(mirrors),
            connectionsActive: 0,
            appConnectFailures: 0,
          }
        );
      }
    },
    update(next) {
      return serial(async () => {
        if (detached) throw new AttachError('DataPlaneError', `StreamPath ${opts.name} is detached; attach it again`);
        const nextTransform = planTransform(next.transform);
        const nextMirrors = await resolveMirrors(next, resolveOpts);
        if (next.mirror.pipeSize !== spec.mirror.pipeSize) {
          // The pipe size is fixed per engine: start a new one, steer new connections to it, then retire
          // the old one. Connections on the old engine end when it stops.
          const fresh = await startEngine(dp, engineConfig(next, nextMirrors, opts, nextTransform), netnsPath);
          let freshInterception: InterceptionHandle;
          try {
            freshInterception = await intercept(dp, next.port, fresh, netnsPath);
          } catch (err) {
            await stopQuietly(fresh);
            throw err;
          }
          const old = { engine, interception };
          await old.interception.detach();
          const settled = toCounters(old.engine.stats(), carried);
          await old.engine.stop();
          carried = settled;
          engine = fresh;
          interception = freshInterception;
        } else {
          // A new port is tapped before anything else changes, so that a refusal leaves the attachment as
          // it was, and before the old port is released, so that there is no untapped window.
          const moved = next.port !== spec.port ? await intercept(dp, next.port, engine, netnsPath) : undefined;
          try {
            await engine.updateMirrors(nextMirrors);
          } catch (err) {
            await moved?.detach();
            throw classifyNativeError(err, 'updating the mirror targets', netnsPath);
          }
          if (moved) {
            const old = interception;
            interception = moved;
            await old.detach();
          }
        }
        spec = next;
        mirrors = nextMirrors;
      });
    },
    refreshTargets() {
      return serial(async () => {
        if (detached) return false;
        const next = await resolveMirrors(spec, resolveOpts);
        if (sameMirrors(next, mirrors)) return false;
        try {
          await engine.updateMirrors(next);
        } catch (err) {
          throw classifyNativeError(err, 'updating the mirror targets', netnsPath);
        }
        mirrors = next;
        return true;
      });
    },
    detach() {
      detached ??= serial(async () => {
        try {
          await interception.detach();
        } finally {
          final = attachment.stats();
          await engine.stop();
        }
      });
      return detached;
    },
  };
  return attachment;
}
