// The agent's end of the operator feed (docs/adr/0008): one HTTP/2 stream to the operator, over TLS
// checked against the operator's CA, authenticated by the pod's projected ServiceAccount token. It receives
// the agent's configuration and sends the agent's report when it changes (and at least every keepalive).
// Fail-static: when the stream breaks, the last configuration stays applied; the client reconnects with
// exponential backoff and full jitter, and follows a redirect to the leader.
import { readFile } from 'node:fs/promises';
import { connect, constants, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import type { Logger } from 'pino';
import { encodeFrame, FEED_PATH, FrameDecoder, OperatorFrameSchema, type ConfigFrame } from '../../../api/src/feed.js';
import type { AgentReport } from '../../../api/src/agent.js';
import { formatIssues } from '../../../api/src/streampath.js';
import { Backoff } from '../../../runtime/src/backoff.js';
import type { FeedEvent } from './metrics.js';

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
  private session: ClientHttp2Session | undefined;
  private stream: ClientHttp2Stream | undefined;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private next = 0;
  /** Where the last redirect pointed (the leader), tried first. */
  private preferred: string | undefined;
  private applied = 0;
  private lastSent: string | undefined;
  private lastSentAt = 0;
  private sending = false;
  private readonly backoff: Backoff;
  /** A configuration was received on some stream at least once. */
  configured = false;

  constructor(private readonly o: FeedClientOptions) {
    // Full jitter: after an operator restart, thousands of agents spread their reconnects over the window.
    this.backoff = o.backoff ?? new Backoff({ initialMs: 500, maxMs: 10_000, jitter: 1 });
  }

  get connected(): boolean {
    return this.stream !== undefined && !this.stream.closed;
  }

  start(): void {
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    this.stream?.close(constants.NGHTTP2_NO_ERROR);
    this.session?.destroy();
    await this.loop;
  }

  /** Sends the report now, whether or not it changed, and waits until it is written. */
  async flush(): Promise<void> {
    while (this.sending) await new Promise((r) => setImmediate(r));
    await this.sendReport(true);
    const s = this.stream;
    if (s && !s.closed && s.writableLength > 0) await new Promise<void>((r) => s.write('', () => r()));
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
          this.o.onEvent?.('redirect');
          // Straight to the leader, unless redirects go round in circles.
          delay = this.backoff.attempts < 3 ? 0 : this.backoff.next();
          if (delay === 0) this.backoff.next();
          this.o.logger.info({ operator: address, leader: e.redirect }, 'operator feed: redirected to the leader');
        } else {
          if (address === this.preferred) this.preferred = undefined;
          delay = this.backoff.next();
          this.o.logger.warn({ operator: address, err: e.message, retryInMs: delay }, 'operator feed unavailable; keeping the last configuration');
        }
      }
      this.session?.destroy();
      this.session = undefined;
      this.stream = undefined;
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

  /** One stream, until it ends. Resolves when a stream that worked ends; rejects when it never worked. */
  private async connectOnce(address: string): Promise<void> {
    const token = (await readFile(this.o.tokenFile, 'utf8').catch((err: Error) => {
      throw new FeedError(`cannot read the feed token ${this.o.tokenFile}: ${err.message}`);
    })).trim();
    const keepaliveMs = this.o.keepaliveMs ?? 15_000;
    return new Promise<void>((resolve, reject) => {
      let worked = false;
      let settled = false;
      const timers: NodeJS.Timeout[] = [];
      const finish = (err?: Error) => {
        if (settled) return;
        settled = true;
        for (const t of timers) clearInterval(t);
        if (worked && !(err instanceof FeedError && err.redirect)) {
          this.o.onEvent?.('closed');
          resolve();
        } else {
          if (!(err instanceof FeedError && err.redirect)) this.o.onEvent?.(err && !(err instanceof FeedError) ? 'error' : 'refused');
          reject(err ?? new FeedError('stream ended before any configuration'));
        }
      };
      const session = connect(`https://${address}`, {
        ...(this.o.caPem ? { ca: this.o.caPem } : {}),
        ...(this.o.serverName ? { servername: this.o.serverName } : {}),
      });
      this.session = session;
      session.on('error', (err) => finish(new Error(`${address}: ${err.message}`)));
      session.on('close', () => finish(new Error(`${address}: connection closed`)));
      // A connect that hangs (blackholed address) gives way to the next address.
      const connectTimer = setTimeout(() => session.destroy(new Error(`no TLS connection within ${keepaliveMs} ms`)), keepaliveMs);
      session.once('connect', () => clearTimeout(connectTimer));
      session.once('close', () => clearTimeout(connectTimer));

      const req = session.request(
        { ':method': 'POST', ':path': FEED_PATH, authorization: `Bearer ${token}`, 'content-type': 'application/x-ndjson' },
        { endStream: false },
      );
      this.stream = req;
      req.on('error', (err) => finish(new Error(`${address}: ${err.message}`)));
      req.on('response', (headers) => {
        const status = Number(headers[':status']);
        if (status !== 200) {
          let body = '';
          req.setEncoding('utf8');
          req.on('data', (c: string) => (body += c.length < 2048 ? c : ''));
          req.on('end', () => finish(new FeedError(`${address}: HTTP ${status}: ${body.trim() || 'refused'}`)));
          return;
        }
        this.o.onEvent?.('connected');
        this.lastSent = undefined;
        void this.sendReport(true);
        timers.push(setInterval(() => void this.sendReport(false), this.o.reportCheckMs ?? 1_000));
        // Liveness of the operator: a ping unanswered within a keepalive ends the stream.
        timers.push(
          setInterval(() => {
            const t = setTimeout(() => session.destroy(new Error(`no PING answer within ${keepaliveMs} ms`)), keepaliveMs);
            session.ping((err) => {
              clearTimeout(t);
              if (err) session.destroy(err);
            });
          }, keepaliveMs),
        );
        for (const t of timers) t.unref();
        const decoder = new FrameDecoder();
        // Program bytes this stream was sent, by SHA-256: later frames name them by hash only.
        const programs = new Map<string, string>();
        req.on('data', (chunk: Buffer) => {
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
            if (f.type === 'redirect') {
              return finish(new FeedError(`${address} does not lead`, f.address));
            }
            for (const [k, p] of Object.entries(f.programs)) {
              if ('data' in p) {
                if (p.sha256) programs.set(p.sha256, p.data);
              } else if ('sha256' in p) {
                const data = programs.get(p.sha256);
                if (data === undefined) return finish(new Error(`${address}: program ${k} sent by a hash this stream never carried`));
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
                this.applied = Math.max(this.applied, f.version);
                return this.sendReport(false);
              })
              .catch((err: unknown) => this.o.logger.error({ err }, 'applying the operator configuration failed'));
          }
        });
        req.on('end', () => finish(new Error(`${address}: the operator ended the stream`)));
      });
      req.on('close', () => finish(new Error(`${address}: stream closed`)));
    });
  }

  /** Sends the report when it differs from the last one sent, or when a keepalive is due. */
  private async sendReport(force: boolean): Promise<void> {
    const stream = this.stream;
    if (!stream || stream.closed || this.sending) return;
    this.sending = true;
    try {
      const report = await this.o.report();
      const body = JSON.stringify(report);
      const due = Date.now() - this.lastSentAt >= (this.o.keepaliveMs ?? 15_000);
      const key = `${this.applied}|${body}`;
      if (!force && !due && key === this.lastSent) return;
      if (stream !== this.stream || stream.closed) return;
      stream.write(encodeFrame({ type: 'report', applied: this.applied, report }));
      this.lastSent = key;
      this.lastSentAt = Date.now();
    } catch (err) {
      this.o.logger.warn({ err }, 'building the report failed');
    } finally {
      this.sending = false;
    }
  }
}
