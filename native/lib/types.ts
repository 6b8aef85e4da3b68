// The contract between the native data plane (native/src, loaded as kstreams.node) and the TypeScript that
// drives it. The rest of the code reaches the addon only through native/lib (this file and index.ts).
// JS sets up and tears down; it never touches stream bytes.

/** A numeric IP address (IPv4 dotted, or IPv6) and a port. Names are resolved before they reach here. */
export interface Endpoint {
  host: string;
  port: number;
}

/** One mirror target as the engine sees it: resolved, with its share of connections. */
export interface MirrorConfig {
  /** Name in counters and status (e.g. the StreamPath target's name or address). Unique per engine. */
  name: string;
  host: string;
  port: number;
  /** 0..100: a connection is mirrored to this target when hash(4-tuple) mod 10000 < percent * 100. */
  samplingPercent: number;
}

export interface EngineConfig {
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
   */
  upstream: Endpoint | 'original-destination';
  /**
   * Source address the engine binds its upstream connections to. The sk_lookup program lets connections
   * from it through to the app, so the engine does not intercept itself. Default 127.0.0.6.
   */
  upstreamSource?: string;
  mirrors: MirrorConfig[];
  /** Bytes of each kernel pipe (primary and per mirror connection): bounds memory per connection. */
  pipeSize: number;
  /** How long a mirror connect may take before that mirror connection is counted as failed. */
  mirrorConnectTimeoutMs: number;
  /** Number of epoll worker threads. Default 1. */
  threads?: number;
}

export interface TargetStats {
  name: string;
  /** Primary connections for which a mirror connection to this target was opened. */
  connectionsMirrored: number;
  /** Mirror connections cut because the target could not keep up (or errored mid-stream). */
  connectionsCut: number;
  /** Mirror connections that failed to connect (refused, unreachable, timed out). */
  connectFailures: number;
  /** Mirror connections currently open. */
  connectionsActive: number;
  /** Bytes written to this target's sockets. */
  bytesMirrored: number;
  /** Primary bytes that this target did not get (after a cut or a failed connect, for sampled connections). */
  bytesDropped: number;
}

export interface EngineStats {
  connectionsAccepted: number;
  connectionsActive: number;
  connectionsClosed: number;
  /** Accepted connections whose upstream (app) connect failed: the client got a reset. */
  upstreamConnectFailures: number;
  /** Client -> app bytes delivered to the app. */
  bytesClientToApp: number;
  /** App -> client bytes delivered to the client. */
  bytesAppToClient: number;
  targets: TargetStats[];
}

export interface InterceptionConfig {
  /** Network namespace whose socket lookups are steered (same forms as EngineConfig.netnsPath). */
  netnsPath?: string;
  /** The tapped inbound TCP port. */
  port: number;
  /** The engine's listener (Engine.listenerFd); it must live in that same namespace. */
  listenerFd: number;
  /** Connections from this source address are left to the kernel's normal lookup. Default 127.0.0.6. */
  bypassSource?: string;
}

export interface KernelFeatures {
  bpfSyscall: boolean;
  btf: boolean;
  skLookup: boolean;
  sockmap: boolean;
  /** Human-readable reasons for the features that are missing. */
  problems: string[];
}

/** Errors thrown by the addon carry Node-style fields. */
export interface NativeError extends Error {
  code: string; // errno name, e.g. 'EPERM', 'ENOENT', or 'EKSTREAMS_*' for our own
  syscall?: string;
  errno?: number;
}
