// The agent's end of the operator feed (docs/adr/0008): one TLS connection to the operator (ALPN
// kstreams-feed/1, newline-delimited JSON frames), checked against the operator's CA, authenticated by the
// pod's projected ServiceAccount token in its first frame. It receives
// the agent's configuration and sends the agent's report when it changes (and at least every keepalive).
// Fail-static: when the connection breaks, the last configuration stays applied; the client reconnects with
// exponential backoff and full jitter, and follows a redirect to the leader.
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { connect as tlsConnect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { encodeFrame, FEED_ALPN, FrameDecoder, OperatorFrameSchema, PING_LINE, type ConfigFrame } from '../../../api/src/feed.js';
import type { AgentReport } from '../../../api/src/agent.js';
import { formatIssues } from '../../../api/src/streampath.js';
import { Backoff } from '../../../runtime/src/backoff.js';
import type { FeedEvent } from './metrics.js';

/**
 * One TLS context per CA bundle, shared by every connect: building one parses the bundle's certificates,
 * about 1 ms of CPU, which a context per connection paid again on every reconnect. A new bundle (a CA
 * rotation) gets its own; the few kept are dropped together when there are more.
 */
const contexts = new Map<string, SecureContext>();
function contextFor(caPem: string): SecureContext {
  let c = contexts.get(caPem);
  if (!c) {
    if (contexts.size >= 4) contexts.clear();
    contexts.set(caPem, (c = createSecureContext({ ca: caPem })));
  }
  return c;
}

export interface FeedClientOptions {
  addresses: string[];
  serverName?: string;
  caPem?: string;
  tokenFile: string;
  logger: Logger;
  /** A new configuration; resolves once it is applied (its version is then reported as applied). */
  onConfig(frame: ConfigFrame): Promise<void>;
  report(): Promise<AgentReport>;
  /** How often the report is compared with the last one sent. */
  reportCheckMs?: number;
  /** A report is sent at least this often, and the connection is pinged as often. */
  keepaliveMs?: number;
  backoff?: Backoff;
  onEvent?: (e: FeedEvent) => void;
}

/** Why a connection attempt ended, for the log and the next choice of address. */
class FeedError extends Error {
  constructor(
    message: string,
    readonly redirect?: string,
  ) {
    super(message);
  }
}

export class FeedClient {
  private stopped = false;
  private socket: TLSSocket | undefined;
  /** The socket's handshake is done and the hello written (reports may go). */
  private open = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private next = 0;
  /** Where the last redirect pointed (the leader), tried first. */
  private preferred: string | undefined;
  /**
   * The replica that sent the last redirect: it answered, so it is up. When the leader it named cannot be
   * reached (killed, its Lease not expired yet), that replica is tried next, not the round of addresses: it is
   * the likeliest next leader, and the others may be as dead as the old one.
   */
  private redirectedBy: string | undefined;
  /** The last config version applied on the current stream (versions count per stream, from 1). */
  private applied = 0;
  /** Counts streams: an apply that ends after its stream did is not reported on the next one. */
  private stream = 0;
  private lastSent: string | undefined;
  private lastSentAt = 0;
  private sending = false;
  private readonly backoff: Backoff;
  /** A configuration was received on some connection at least once. */
  configured = false;

  constructor(private readonly o: FeedClientOptions) {
    // Full jitter: after an operator restart, thousands of agents spread their reconnects over the window.
    this.backoff = o.backoff ?? new Backoff({ initialMs: 500, maxMs: 10_000, jitter: 1 });
  }

  get connected(): boolean {
    return this.open && this.socket !== undefined && !this.socket.destroyed;
  }

  start(): void {
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    this.socket?.destroy();
    await this.loop;
  }

  /** Sends the report now, whether or not it changed, and waits until it is written. */
  async flush(): Promise<void> {
    while (this.sending) await new Promise((r) => setImmediate(r));
    await this.sendReport(true);
    const s = this.socket;
    if (s && this.open && !s.destroyed && s.writableLength > 0) await new Promise<void>((r) => s.write('', () => r()));
  }

  /** Sends the report now if it changed (e.g. right after a converge). */
  nudge(): void {
    void this.sendReport(false);
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const address = this.pickAddress();
      let delay: number;
      try {
        await this.connectOnce(address);
        delay = this.backoff.next();
        this.o.logger.warn({ operator: address, retryInMs: delay }, 'operator feed closed; keeping the last configuration, reconnecting');
      } catch (err) {
        const e = err as FeedError;
        if (e.redirect) {
          this.preferred = e.redirect;
          this.redirectedBy = address;
          this.o.onEvent?.('redirect');
          // Straight to the leader, unless redirects go round in circles.
          delay = this.backoff.attempts < 3 ? 0 : this.backoff.next();
          if (delay === 0) this.backoff.next();
          this.o.logger.info({ operator: address, leader: e.redirect }, 'operator feed: redirected to the leader');
        } else {
          if (address === this.preferred) {
            this.preferred = this.redirectedBy !== address ? this.redirectedBy : undefined;
            this.redirectedBy = undefined;
          }
          delay = this.backoff.next();
          this.o.logger.warn({ operator: address, err: e.message, retryInMs: delay }, 'operator feed unavailable; keeping the last configuration');
        }
      }
      this.socket?.destroy();
      this.socket = undefined;
      this.open = false;
      if (this.stopped) break;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, delay);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  private pickAddress(): string {
    if (this.preferred) return this.preferred;
    const a = this.o.addresses[this.next % this.o.addresses.length]!;
    this.next++;
    return a;
  }

  /** One connection, until it ends. Resolves when a connection that worked ends; rejects when it never worked. */
  private async connectOnce(address: string): Promise<void> {
    const token = (await readFile(this.o.tokenFile, 'utf8').catch((err: Error) => {
      throw new FeedError(`cannot read the feed token ${this.o.tokenFile}: ${err.message}`);
    })).trim();
    const keepaliveMs = this.o.keepaliveMs ?? 15_000;
    const { host, port } = splitAddress(address);
    return new Promise<void>((resolve, reject) => {
      let worked = false;
      let settled = false;
      let stream = -1;
      const timers: NodeJS.Timeout[] = [];
      let pongTimer: NodeJS.Timeout | undefined;
      const finish = (err?: Error) => {
        if (settled) return;
        settled = true;
        for (const t of timers) clearInterval(t);
        clearTimeout(pongTimer);
        sock.destroy();
        if (worked && !(err instanceof FeedError && err.redirect)) {
          this.o.onEvent?.('closed');
          resolve();
        } else {
          if (!(err instanceof FeedError && err.redirect)) this.o.onEvent?.(err && !(err instanceof FeedError) ? 'error' : 'refused');
          reject(err ?? new FeedError('connection ended before any configuration'));
        }
      };
      // The certificate names the Service's DNS names: an agent given an IP checks it against the IP SANs.
      const sock = tlsConnect({
        host,
        port,
        ALPNProtocols: [FEED_ALPN],
        ...(this.o.caPem ? { secureContext: contextFor(this.o.caPem) } : {}),
        ...(this.o.serverName ? { servername: this.o.serverName } : isIP(host) ? {} : { servername: host }),
      });
      this.socket = sock;
      sock.on('error', (err) => finish(new Error(`${address}: ${err.message}`)));
      sock.on('close', () => finish(new Error(`${address}: connection closed`)));
      sock.on('end', () => finish(new Error(`${address}: the operator ended the connection`)));
      // A connect that hangs (blackholed address) gives way to the next address.
      const connectTimer = setTimeout(() => sock.destroy(new Error(`no TLS connection within ${keepaliveMs} ms`)), keepaliveMs);
      sock.once('close', () => clearTimeout(connectTimer));
      sock.once('secureConnect', () => {
        clearTimeout(connectTimer);
        if (sock.alpnProtocol !== FEED_ALPN) {
          return finish(new FeedError(`${address}: not a KStreams feed (ALPN ${String(sock.alpnProtocol)}, wanted ${FEED_ALPN})`));
        }
        sock.setNoDelay(true);
        sock.setKeepAlive(true, keepaliveMs);
        this.open = true;
        // A new stream numbers its configurations from 1: the last one's versions mean nothing to it.
        this.applied = 0;
        stream = ++this.stream;
        sock.write(encodeFrame({ type: 'hello', token }));
        this.o.onEvent?.('connected');
        this.lastSent = undefined;
        void this.sendReport(true);
        timers.push(setInterval(() => void this.sendReport(false), this.o.reportCheckMs ?? 1_000));
        // Liveness of the operator: a ping unanswered within a keepalive ends the connection.
        timers.push(
          setInterval(() => {
            if (pongTimer) return;
            sock.write(`${PING_LINE}\n`);
            pongTimer = setTimeout(() => sock.destroy(new Error(`no answer to a ping within ${keepaliveMs} ms`)), keepaliveMs);
          }, keepaliveMs),
        );
        for (const t of timers) t.unref();
      });
      const decoder = new FrameDecoder();
      // Program bytes this connection was sent, by SHA-256: later frames name them by hash only.
      const programs = new Map<string, string>();
      sock.on('data', (chunk: Buffer) => {
        let frames: unknown[];
        try {
          frames = decoder.push(chunk);
        } catch (err) {
          return finish(new Error(`${address}: ${(err as Error).message}`));
        }
        for (const raw of frames) {
          const r = OperatorFrameSchema.safeParse(raw);
          if (!r.success) {
            this.o.logger.warn({ problems: formatIssues(r.error).slice(0, 3) }, 'operator feed: invalid frame ignored');
            continue;
          }
          const f = r.data;
          if (f.type === 'pong') {
            clearTimeout(pongTimer);
            pongTimer = undefined;
            continue;
          }
          if (f.type === 'redirect') return finish(new FeedError(`${address} does not lead`, f.address));
          if (f.type === 'refused') return finish(new FeedError(`${address}: refused (${f.status}): ${f.message}`));
          for (const [k, p] of Object.entries(f.programs)) {
            if ('data' in p) {
              if (p.sha256) programs.set(p.sha256, p.data);
            } else if ('sha256' in p) {
              const data = programs.get(p.sha256);
              if (data === undefined) return finish(new Error(`${address}: program ${k} sent by a hash this connection never carried`));
              f.programs[k] = { data, sha256: p.sha256 };
            }
          }
          worked = true;
          this.configured = true;
          this.backoff.reset();
          this.o.onEvent?.('config');
          void this.o
            .onConfig(f)
            .then(() => {
              if (stream !== this.stream) return;
              this.applied = Math.max(this.applied, f.version);
              return this.sendReport(false);
            })
            .catch((err: unknown) => this.o.logger.error({ err }, 'applying the operator configuration failed'));
        }
      });
    });
  }

  /** Sends the report when it differs from the last one sent, or when a keepalive is due. */
  private async sendReport(force: boolean): Promise<void> {
    const sock = this.socket;
    if (!sock || !this.open || sock.destroyed || this.sending) return;
    this.sending = true;
    try {
      const report = await this.o.report();
      // The frame is its own change key (it carries the applied version): one JSON encoding per check.
      const frame = encodeFrame({ type: 'report', applied: this.applied, report });
      const due = Date.now() - this.lastSentAt >= (this.o.keepaliveMs ?? 15_000);
      if (!force && !due && frame === this.lastSent) return;
      if (sock !== this.socket || sock.destroyed) return;
      sock.write(frame);
      this.lastSent = frame;
      this.lastSentAt = Date.now();
    } catch (err) {
      this.o.logger.warn({ err }, 'building the report failed');
    } finally {
      this.sending = false;
    }
  }
}

/** host:port or [v6]:port. */
function splitAddress(address: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(address) ?? /^([^:]+):(\d+)$/.exec(address);
  if (!m) throw new FeedError(`operator feed address ${address} is not host:port`);
  return { host: m[1]!, port: Number(m[2]) };
}
