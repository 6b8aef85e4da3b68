// The contract between the native data plane (native/src, loaded as kstreams.node) and the TypeScript that
// drives it. The rest of the code reaches the addon only through native/lib (this file and index.ts).
// JS sets up and tears down; it never touches stream bytes.

/**
 * The engine binds its upstream connections (to the app) to these sources, and the sk_lookup program
 * leaves connections from them to the app: the two defaults must agree, or the engine intercepts itself
 * (an endless loop of connections to its own listener). See docs/adr/0004-ipv6-bypass.md.
 * 127.0.0.6 (Istio's choice) reaches every local IPv4 address through lo. IPv6 has no loopback range:
 * ::1 is the one loopback address, and the kernel lets it reach the pod's other local IPv6 addresses.
 */
export const DEFAULT_UPSTREAM_SOURCE_V4 = '127.0.0.6';
export const DEFAULT_UPSTREAM_SOURCE_V6 = '::1';
export const DEFAULT_UPSTREAM_SOURCES: readonly string[] = [DEFAULT_UPSTREAM_SOURCE_V4, DEFAULT_UPSTREAM_SOURCE_V6];

/**
 * The source list both sides use: `list` when given (exactly those, at most one per family), else the
 * defaults with `single` in place of the default of its own family. Pure; the addon validates addresses.
 */
export function sourcesPerFamily(single: string | undefined, list: readonly string[] | undefined): string[] {
  if (list !== undefined) return [...list];
  if (single === undefined) return [...DEFAULT_UPSTREAM_SOURCES];
  const isV6 = single.includes(':');
  return [single, isV6 ? DEFAULT_UPSTREAM_SOURCE_V4 : DEFAULT_UPSTREAM_SOURCE_V6];
}

/** A numeric IP address (IPv4 dotted, or IPv6) and a port. Names are resolved before they reach here. */
export interface Endpoint {
  host: string;
  port: number;
}

/**
 * A capture (docs/capture.md): the sampled connections are recorded into files under `path` instead of
 * being sent to a socket. The engine makes a session directory there at start() / update() (which throw
 * when it cannot) and writes it from a thread of its own: a disk that is slow, full or failing cuts the
 * capture of a connection (TargetStats.capture), never the primary.
 */
export interface CaptureConfig {
  /** Absolute directory; made if missing. Each engine target writes its own session directory in it. */
  path: string;
  /** Also record the app's answers (app -> client bytes, `<id>.s2c`). Default false. */
  responses?: boolean;
  /**
   * Data bytes the capture may hold (both directions, all connections); once reached, new connections
   * are not recorded and live ones are cut (end how: cut) at exactly that many bytes. 0 or absent: none.
   */
  maxBytes?: number;
  /** Data bytes one connection's record may hold (both directions); then that capture is cut. 0: none. */
  maxConnectionBytes?: number;
}

interface MirrorCommon {
  /** Name in counters and status (e.g. the StreamPath target's name or address). Unique per engine. */
  name: string;
  /** 0..100: a connection is mirrored to this target when hash(4-tuple) mod 10000 < percent * 100. */
  samplingPercent: number;
  /**
   * Socket targets: read the target's answers and compare them with the app's answers of the same
   * connection (TargetStats.responsesCompared / responsesDiverged). The app's stay zero-copy.
   */
  compareResponses?: boolean;
}

/** A mirror socket target: resolved to a numeric address. */
export interface SocketMirrorConfig extends MirrorCommon {
  host: string;
  port: number;
  file?: undefined;
}

/** A capture target: the connections go to files. */
export interface FileMirrorConfig extends MirrorCommon {
  file: CaptureConfig;
  host?: undefined;
  port?: undefined;
}

/** One mirror target as the engine sees it: resolved, with its share of connections. */
export type MirrorConfig = SocketMirrorConfig | FileMirrorConfig;

/**
 * What a running engine may change for the connections it accepts from then on (Engine.update). Live
 * connections keep the settings they were opened with: a mirror keeps its target, pipes and buffer.
 */
export interface EngineSettings {
  mirrors: MirrorConfig[];
  /**
   * Bytes of each kernel pipe (primary and per mirror connection): bounds memory per connection. Without
   * CAP_SYS_RESOURCE a size above fs.pipe-max-size (1 MiB by default) is refused (start() throws, update()
   * throws and keeps the previous size); within it, a size the per-user pipe budget cannot grant degrades
   * per connection (EngineStats.pipeResizeFailures, TargetStats.connectionsSkipped) instead of failing.
   * Pipes are taken from a per-worker pool when bytes arrive and returned when they are empty, so idle
   * connections hold none. See docs/adr/0003-stream-engine.md.
   */
  pipeSize: number;
  /**
   * Turn pacing of mirrors (docs/adr/0005-turn-paced-mirrors.md): client bytes that the client sent after
   * the app had answered are released to a mirror once that mirror's target has answered the previous
   * turn, or after this many milliseconds (counted in TargetStats.turnWaitsExpired). 0 turns pacing off:
   * bytes go to the mirror as soon as they are copied (for targets that never answer, e.g. a recorder).
   */
  turnTimeoutMs: number;
  /**
   * Send buffer (SO_SNDBUF) a lagging mirror connection may grow to: its slack beyond its pipe, in kernel
   * socket memory. Mirror sockets start at the kernel's default and grow to this size when they first
   * fall behind, as long as the engine's mirrorBufferBudget has room; the kernel doubles the value for
   * its bookkeeping.
   */
  mirrorBufferSize: number;
  /**
   * In-kernel transform (docs/adr/0006-in-kernel-transforms.md): an sk_msg program on the engine's
   * SOCKHASH rewrites what the engine sends to the mirrors (mirror) and/or to the app (primary). A live
   * edit applies to new connections. start()/update() throw (code ProgramRejected, TransformUnsupported,
   * TransformInvalid or TransformFailed; the verifier's output in `log`) when it cannot be loaded; nothing
   * of it is then left loaded.
   */
  transform?: EngineTransform;
}

/** An op of EngineTransform, encoded: kind 1 mask (a = after, b = until, with), 2 replace (a = from,
 * b = to), 3 byteMap (a = the 256-byte table). */
export interface EngineTransformOp {
  kind: 1 | 2 | 3;
  a: Uint8Array;
  b?: Uint8Array;
  /** mask: the byte written over masked bytes. */
  with?: number;
}

export interface EngineTransform {
  mirror: boolean;
  primary: boolean;
  /**
   * How long bytes an op holds back (the end of a send that may start a pattern) wait for the client's
   * next bytes before they are released as no match; a mirror also releases them once the app has
   * answered the turn, and every hold is released at the client's end. 0: released as soon as the client
   * is quiet. Default 20.
   */
  holdMs?: number;
  ops: EngineTransformOp[];
  /** A user-supplied BPF object whose sk_msg program runs after the ops (docs/transforms.md). */
  program?: { elf: Uint8Array; section?: string; name?: string };
}

export interface EngineConfig extends EngineSettings {
  /**
   * The network namespace whose sockets the engine creates (listener, upstream and mirror connections):
   * a path such as /run/netns/NAME or /proc/PID/ns/net. Undefined: the namespace of the calling process.
   * Only the engine's own threads enter it (setns on a thread); the Node process stays where it is.
   */
  netnsPath?: string;
  /** Listener address. Default: dual-stack [::]:0 (a free port). */
  listen?: Endpoint;
  /**
   * Where primary bytes go: a fixed endpoint (plain proxy), or 'original-destination': the address the
   * client connected to, read with getsockname() on the accepted socket (after sk_lookup steering).
   * 'none': a recorder. There is no app: the client's bytes go to the mirror targets only (a file target
   * records them) and the engine ends each connection when its client does.
   */
  upstream: Endpoint | 'original-destination' | 'none';
  /**
   * upstream 'none' (a recorder, `kstreams record`): a client turn starts after this many milliseconds of
   * silence, since no answers end one (docs/capture.md). Default 50.
   */
  turnGapMs?: number;
  /**
   * Source addresses the engine binds its upstream connections to, at most one per family (an upstream
   * of a family without one is left unbound). The sk_lookup program lets connections from them through
   * to the app, so the engine does not intercept itself. Default DEFAULT_UPSTREAM_SOURCES
   * (127.0.0.6 and ::1); must match InterceptionConfig.bypassSources. [] binds nothing (a remote
   * upstream: loopback sources only reach local addresses).
   */
  upstreamSources?: string[];
  /** One source that replaces the default of its own family; ignored when upstreamSources is set. */
  upstreamSource?: string;
  /** How long a mirror connect may take before that mirror connection is counted as failed. */
  mirrorConnectTimeoutMs: number;
  /**
   * Engine-wide cap on the send-buffer memory that mirror connections may grow into beyond the kernel's
   * default (see mirrorBufferSize): many lagging mirrors cannot add up to node-wide TCP memory pressure.
   * Default 64 MiB.
   */
  mirrorBufferBudget?: number;
  /** Number of epoll worker threads. Default 1. */
  threads?: number;
}

/** How a drain ended (Engine.drain). */
export interface DrainResult {
  /** Connections that ended by themselves (both sides closed) during the drain. */
  drained: number;
  /** Connections still open at the deadline: reset both ways (RST), never closed with FIN. */
  reset: number;
  /** Milliseconds the drain took. */
  ms: number;
}

export interface TargetStats {
  name: string;
  /** Primary connections for which a mirror connection to this target was opened. */
  connectionsMirrored: number;
  /** Mirror connections cut because the target could not keep up (or errored mid-stream). */
  connectionsCut: number;
  /** Mirror connections that failed to connect (refused, unreachable, timed out). */
  connectFailures: number;
  /**
   * Sampled connections for which no mirror connection was opened because the kernel would not give
   * the mirror a pipe large enough to take whole batches of the primary pipe (F_SETPIPE_SZ refused:
   * the per-user pipe budget, fs.pipe-user-pages-soft, shared by every process of the sidecar's uid on
   * the node), or no pipe at all (pipe2 failed). The primary went on unmirrored; its bytes count in
   * bytesDropped. Not included in connectionsMirrored.
   */
  connectionsSkipped: number;
  /** Mirror connections currently open. */
  connectionsActive: number;
  /**
   * Bytes that reached this target: written to its sockets, less what a cut's reset threw away unsent
   * or unacknowledged (SIOCOUTQ at the cut).
   */
  bytesMirrored: number;
  /** Primary bytes that this target did not get (after a cut or a failed connect, for sampled connections). */
  bytesDropped: number;
  /** Turns released to this target because its answer to the previous turn did not come within turnTimeoutMs. */
  turnWaitsExpired: number;
  /**
   * compareResponses: mirror connections whose answers were compared with the app's to their clean end
   * (a cut, failed or reset mirror, or one whose target fell more than the compare pipe behind, is not),
   * and those of them whose answers differed (a byte, or the length).
   */
  responsesCompared?: number;
  responsesDiverged?: number;
  /** Mirror connections of this target closed with a reset, or never opened, because their transform
   * could not be applied (never sent untransformed). */
  transformFailures: number;
  /**
   * File targets only. For them connectionsMirrored counts the connections recorded, connectionsCut the
   * captures cut (any reason below), bytesMirrored the client bytes written to the data files,
   * bytesDropped the client bytes of sampled connections not written (after a cut, or lost by a failed
   * write), connectionsSkipped the connections whose capture pipes or sockets the kernel refused.
   */
  capture?: CaptureStats;
}

export interface CaptureStats {
  /** The session directory this target writes now. */
  session: string;
  /** App -> client bytes written (responses: true). */
  responseBytes: number;
  /** Sampled connections not recorded because the capture was full (maxBytes reached, or the disk full). */
  connectionsNotRecorded: number;
  /** Captures cut because maxBytes or maxConnectionBytes was reached. */
  cutsFull: number;
  /** Captures cut because the writer fell behind (the capture lane, its pipe and its socket, was full: the disk too slow). */
  cutsSlow: number;
  /** Captures cut because a write failed (ENOSPC, EDQUOT, EIO). */
  cutsDisk: number;
  /**
   * A recorder's (`kstreams record`, no app to protect): times a connection's client was held back (not
   * read) until the writer had made room in its capture lane, where an engine with an app would cut (cutsSlow).
   */
  holds: number;
  /**
   * Data bytes (both directions) written back to disk and dropped from the page cache by the engine's
   * flusher (docs/capture.md, "How the writer keeps the page cache bounded"): a file's bytes up to 32 MiB
   * behind its write offset while it grows, all of them after its end.
   */
  bytesWrittenBack: number;
}

export interface EngineStats {
  connectionsAccepted: number;
  connectionsActive: number;
  connectionsClosed: number;
  /** Accepted connections whose upstream (app) connect failed (refused, unreachable): the client got a reset. */
  upstreamConnectFailures: number;
  /**
   * Accepted connections the engine could not set up for want of a resource (pipe, socket, epoll
   * registration: ENFILE, EMFILE, ENOMEM): the client got a reset. Not the app's fault.
   */
  setupFailures: number;
  /**
   * Connections reset both ways (RST to the client and the app) because they were still open when a drain's
   * deadline passed or stop() was called: never closed with FIN after a truncated stream.
   */
  connectionsReset: number;
  /**
   * Closes meant as resets whose SO_LINGER {1, 0} the kernel refused: they may have ended with a FIN. There
   * is no other way to force a reset; expected 0.
   */
  resetFailures: number;
  /** Worker threads that stopped because epoll_wait failed (their connections were reset); expected 0. */
  workerFailures: number;
  /** Connections reset because the transform of their bytes to the app could not be applied. */
  transformFailures: number;
  /**
   * Times a worker stopped taking new connections for 100 ms because the process (or the system) was
   * out of file descriptors: connections then wait in the listen backlog instead of being refused.
   */
  acceptPauses: number;
  /**
   * Connections whose primary pipes stayed smaller than pipeSize because the kernel refused to enlarge
   * them (without CAP_SYS_RESOURCE: the per-user pipe budget, fs.pipe-user-pages-soft, is used up). They
   * were proxied all the same, with the kernel's default pipe size (64 KiB, or 8 KiB over the budget): slower,
   * never reset. Mirrors of such a connection are sized to its smaller batches.
   */
  pipeResizeFailures: number;
  /** Client -> app bytes delivered to the app. */
  bytesClientToApp: number;
  /** App -> client bytes delivered to the client. */
  bytesAppToClient: number;
  /** Kernel pipes held now by connections (in use), and idle in the workers' pools. */
  pipesInUse: number;
  pipesPooled: number;
  /** Bytes of pipe capacity (F_GETPIPE_SZ) of those pipes: the engine's share of the per-uid pipe budget. */
  pipeBytesInUse: number;
  pipeBytesPooled: number;
  /**
   * Bytes granted now to lagging mirror connections, out of mirrorBufferBudget: their grown send buffers
   * and the spills of their held turns (docs/adr/0005-turn-paced-mirrors.md).
   */
  mirrorBufferInUse: number;
  mirrorBufferBudget: number;
  /** Send-buffer grows and spill growth refused because mirrorBufferBudget was used up (a counter). */
  mirrorBufferDenied: number;
  targets: TargetStats[];
}

export interface InterceptionConfig {
  /** Network namespace whose socket lookups are steered (same forms as EngineConfig.netnsPath). */
  netnsPath?: string;
  /** The tapped inbound TCP port. */
  port: number;
  /** The engine's listener (Engine.listenerFd); it must live in that same namespace. */
  listenerFd: number;
  /**
   * Connections from these source addresses (at most one per family) are left to the kernel's normal
   * lookup. Default DEFAULT_UPSTREAM_SOURCES (127.0.0.6 and ::1), what the engine binds by default.
   */
  bypassSources?: string[];
  /** One bypass address that replaces the default of its own family; ignored when bypassSources is set. */
  bypassSource?: string;
}

export interface KernelFeatures {
  bpfSyscall: boolean;
  btf: boolean;
  skLookup: boolean;
  sockmap: boolean;
  /**
   * Features reported false only because this process may not probe them (bpf() refused with EPERM or
   * EACCES: no CAP_BPF / CAP_NET_ADMIN): the kernel may well have them. Absent from older probes.
   */
  unknown?: ('skLookup' | 'sockmap')[];
  /** Human-readable reasons for the features that are missing or could not be probed. */
  problems: string[];
}

/** Errors thrown by the addon carry Node-style fields. */
export interface NativeError extends Error {
  code: string; // errno name, e.g. 'EPERM', 'ENOENT', or 'EKSTREAMS_*' for our own
  syscall?: string;
  errno?: number;
}
