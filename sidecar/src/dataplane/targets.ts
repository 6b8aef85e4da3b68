// Turns the StreamPath's mirror targets into the numeric endpoints the engine needs. The engine never
// resolves names: a name that resolves differently later is picked up by the next update().
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { posix } from 'node:path';
import { mirrorSettings, targetName, type MirrorTarget, type StreamPathSpec } from '../../../api/src/streampath.js';
import type { CaptureConfig, Endpoint, MirrorConfig } from '../../../native/lib/types.js';
import { AttachError } from './errors.js';

/** Resolves a host name (not a numeric address) to a numeric address. */
export type HostLookup = (host: string) => Promise<string>;
/** Resolves a mirror target given as a Service reference; the in-pod agent asks the API. */
export type ServiceResolver = (target: MirrorTarget) => Promise<Endpoint>;

export const defaultLookup: HostLookup = async (host) => (await dnsLookup(host)).address;

/** Splits `host:port` / `[v6]:port`; the schema has already checked the shape. */
export function splitHostPort(address: string): Endpoint {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(address) ?? /^([^:]+):(\d+)$/.exec(address);
  if (!m) throw new Error(`not host:port: ${address}`);
  return { host: m[1]!, port: Number(m[2]) };
}

export interface ResolveOptions {
  lookup?: HostLookup;
  resolveService?: ServiceResolver;
  /** File targets' paths are resolved under this directory (the sidecar's capture volume). */
  captureRoot?: string;
}

/**
 * A file target's directory: under `root` when given (`/shop` -> `<root>/shop`), refused when `..`
 * segments would take it out of `root`; as written otherwise.
 */
export function resolveCapturePath(path: string, root: string | undefined, field = 'file.path'): string {
  if (root === undefined) return path;
  const base = posix.normalize(root).replace(/\/+$/, '') || '/';
  const resolved = posix.join(base, path);
  if (resolved === base || resolved.startsWith(base === '/' ? '/' : `${base}/`)) return resolved.replace(/\/+$/, '') || '/';
  throw new AttachError(
    'CapturePathOutsideVolume',
    `${field}: ${path} leaves the capture volume: in a cluster a file target's path is resolved under the sidecar's capture volume ${base} (${path} would be ${resolved}); give a path without '..' above its root, such as /${posix.basename(resolved) || 'capture'}`,
    field,
  );
}

async function resolveOne(t: MirrorTarget, field: string, opts: ResolveOptions): Promise<Endpoint | CaptureConfig> {
  if (t.file !== undefined) {
    return {
      path: resolveCapturePath(t.file.path, opts.captureRoot, `${field}.file.path`),
      responses: t.file.responses,
      maxBytes: t.file.maxBytes,
      ...(t.file.maxConnectionBytes !== undefined ? { maxConnectionBytes: t.file.maxConnectionBytes } : {}),
    };
  }
  if (t.address !== undefined) {
    const { host, port } = splitHostPort(t.address);
    if (isIP(host)) return { host, port };
    const lookup = opts.lookup ?? defaultLookup;
    try {
      const resolved = await lookup(host);
      return { host: resolved, port };
    } catch (err) {
      throw new AttachError(
        'TargetUnresolvable',
        `${field}.address: cannot resolve ${host} (${(err as Error).message}); give a numeric address or a name this host can resolve`,
        `${field}.address`,
        { cause: err },
      );
    }
  }
  if (!opts.resolveService) {
    throw new AttachError(
      'TargetUnresolvable',
      `${field}.service: service targets need a cluster; give address: host:port`,
      `${field}.service`,
    );
  }
  try {
    const ep = await opts.resolveService(t);
    if (!isIP(ep.host)) throw new Error(`the resolver returned ${ep.host}, not a numeric address`);
    return ep;
  } catch (err) {
    if (err instanceof AttachError) throw err;
    throw new AttachError(
      'TargetUnresolvable',
      `${field}.service: cannot resolve Service ${targetName(t)}: ${(err as Error).message}`,
      `${field}.service`,
      { cause: err },
    );
  }
}

/**
 * One MirrorConfig per target, in spec order, with names unique per engine (the engine keys counters by
 * name; two targets with the same address get `#2`, `#3` suffixes). None without spec.mirror.
 */
export async function resolveMirrors(spec: StreamPathSpec, opts: ResolveOptions = {}): Promise<MirrorConfig[]> {
  const mirror = mirrorSettings(spec);
  const endpoints = await Promise.all(
    mirror.targets.map((t, i) => resolveOne(t, `spec.mirror.targets[${i}]`, opts)),
  );
  const seen = new Map<string, number>();
  return mirror.targets.map((t, i) => {
    const base = targetName(t);
    const n = (seen.get(base) ?? 0) + 1;
    seen.set(base, n);
    const ep = endpoints[i]!;
    const name = n === 1 ? base : `${base}#${n}`;
    const samplingPercent = mirror.sampling.percent;
    if ('path' in ep) return { name, file: ep, samplingPercent };
    return { name, host: ep.host, port: ep.port, samplingPercent, ...(t.compareResponses ? { compareResponses: true } : {}) };
  });
}
