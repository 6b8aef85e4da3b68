// The raw surface of kstreams.node, declared once (what native/src/*_binding.cc export). native/lib's
// classes wrap it; nothing else in the project sees it.
import type { DrainResult, Endpoint, EngineConfig, EngineSettings, EngineStats } from './types.js';
import type { InterceptionCounters } from './interception.js';
import type { RawKernelProbe } from './kernel.js';
import type { ReplayConfig, ReplayConnection, ReplayResult, ReplayStats } from './replay.js';

/** An opaque engine handle (a napi External); the engine stops when it is collected. */
export type RawEngineHandle = { readonly __brand: 'kstreams.EngineHandle' };

export interface RawEngineStart {
  handle: RawEngineHandle;
  listenHost: string;
  listenPort: number;
  listenerFd: number;
  pipeSize: number;
}

/** EngineConfig as the addon takes it: sources already resolved to one list. */
export type RawEngineConfig = Omit<EngineConfig, 'upstreamSource' | 'upstreamSources'> & { upstreamSources: string[] };

export interface RawInterceptionOptions {
  netnsPath: string | undefined;
  port: number;
  listenerFd: number;
  bypassSources: string[];
}

export interface RawInterception {
  readonly linkId: number;
  readonly programId: number;
  readonly mapIds: number[];
  counters(): InterceptionCounters;
  detach(): void;
}

export interface RawAddon {
  engineStart(config: RawEngineConfig): RawEngineStart;
  engineStats(handle: RawEngineHandle): EngineStats;
  /** Settings for connections accepted from now on; resolves to the effective pipe size. */
  engineUpdate(handle: RawEngineHandle, settings: EngineSettings): number;
  /** Stops accepting, lets live connections end until timeoutMs, resets the rest, joins the workers. */
  engineDrain(handle: RawEngineHandle, timeoutMs: number): Promise<DrainResult>;
  /** Resets every live connection (RST both ways) and joins the workers. */
  engineStop(handle: RawEngineHandle): Promise<DrainResult>;
  samplingBucket(src: Endpoint, dst: Endpoint): number;
  Interception: new (options: RawInterceptionOptions) => RawInterception;
  probeKernelFeatures(): RawKernelProbe;
  replayStart(config: ReplayConfig, conns: ReplayConnection[]): RawReplayHandle;
  replayStats(handle: RawReplayHandle): ReplayStats;
  /** Resets the connections still open; replayWait then resolves with cancelled: true. */
  replayCancel(handle: RawReplayHandle): void;
  replayWait(handle: RawReplayHandle): Promise<ReplayResult>;
  /** The agent feed's TLS transport (absent from an addon built before it). */
  FeedWire?: new (options: RawFeedWireOptions, onEvents: (events: RawFeedEvent[]) => void) => RawFeedWire;
}

/** An opaque replay handle (a napi External); the replay is cancelled when it is collected. */
export type RawReplayHandle = { readonly __brand: 'kstreams.ReplayHandle' };

/**
 * One event of the feed transport: [0, id, remote] a connection finished its handshake with the feed's ALPN;
 * [1, id, line] one line it sent (not a ping: those are answered natively); [2, id, reason] it is gone (after
 * its last line); [3, 0, ''] the server stopped, after every connection's close event.
 */
export type RawFeedEvent = [0 | 1 | 2 | 3, number, string];

export interface RawFeedWireOptions {
  host: string;
  port: number;
  keyPem: string;
  certPem: string;
  alpn: string;
  pingLine: string;
  pongLine: string;
  idleTimeoutMs: number;
  maxLineBytes: number;
  maxQueueBytes: number;
  /** TLS 1.3 connections leave their SSL object after the handshake (default true; native/src/feed/tls13_records.h). */
  tlsRecords?: boolean;
}

/** Connections in their handshake, and open ones by who seals their records (the feed itself, or OpenSSL). */
export interface RawFeedStats {
  handshakes: number;
  records: number;
  openssl: number;
}

export interface RawFeedWire {
  readonly port: number;
  /** Queues a line for connection `id`; false when it is gone (or its queue is over its bound: it is closed). */
  send(id: number, line: string): boolean;
  /** Sends what is queued for `id`, then closes it. */
  end(id: number): void;
  setTls(keyPem: string, certPem: string): void;
  stats(): RawFeedStats;
  /** Closes every connection and stops the thread; the [3] event follows. */
  close(): void;
}
