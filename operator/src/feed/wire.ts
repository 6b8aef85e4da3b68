// The feed's transport: TLS connections carrying newline-delimited frames (ALPN kstreams-feed/1). Two
// implementations of one contract: the native one (native/src/feed: one epoll thread, OpenSSL releasing its
// buffers while a connection is idle, so an idle agent costs the operator a few KiB) and Node's `tls`, used
// where the addon is not built. Both answer the agents' pings themselves (PING_LINE), so the operator's
// JavaScript sees only real frames, and both end a connection silent for idleTimeoutMs.
import type { Logger } from 'pino';

export interface WireConnection {
  /** Queues one line (ending in \n, as encodeFrame makes it); false once the connection is gone. */
  write(line: string): boolean;
  /** Sends what is queued, then closes. */
  end(): void;
  /** The peer's address (for logs). */
  readonly remote: string;
}

export interface WireConnectionHandlers {
  /** One frame's line, without its newline or a \r before it (never empty, never a ping). */
  line(line: string): void;
  /** The connection is gone; `reason` says why (for logs). Called once, after the last line. */
  closed(reason: string): void;
}

export interface WireServerOptions {
  host: string;
  port: number;
  tls: { keyPem: string; certPem: string };
  /**
   * A connection with nothing read for this long is closed (agents ping and report at least every keepalive).
   * Only reads count: writes to an agent that died do not keep its connection.
   */
  idleTimeoutMs: number;
  /** A line longer than this closes its connection. */
  maxLineBytes: number;
  /** More than this many bytes written and not yet taken by the agent closes its connection (it is not reading). */
  maxQueueBytes: number;
  /**
   * The native transport: TLS 1.3 connections leave OpenSSL's per-connection object after the handshake and
   * the feed seals and opens their records itself (default true; ADR 0008, Costs). Node's tls ignores it.
   */
  tlsRecords?: boolean;
  log: Logger;
  onConnection(conn: WireConnection): WireConnectionHandlers;
}

export interface WireStats {
  handshakes: number;
  records: number;
  openssl: number;
}

export interface WireServer {
  readonly port: number;
  /** Which implementation serves (for the log and the tests). */
  readonly kind: 'native' | 'node';
  /** New connections use this certificate; open ones keep theirs. */
  setTls(tls: { keyPem: string; certPem: string }): void;
  /** TLS connections: in their handshake, open with the feed's own TLS 1.3 records, open with an SSL object each. */
  stats(): WireStats;
  /** Closes every connection (each gets its `closed`) and stops listening. */
  close(): Promise<void>;
}
