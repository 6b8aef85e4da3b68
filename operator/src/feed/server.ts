// The feed's server, on every replica (TLS from the webhook's certificate source, so the cert carries the
// Service's DNS names and is signed by the operator's CA, which the webhook gives the agents). One TLS
// connection per agent (ALPN kstreams-feed/1, wire.ts): its first frame is the agent's hello with its token;
// a replica that does not lead answers with a redirect frame naming the leader; the leader checks the
// token and hands the connection to the controller's hub.
import type { Logger } from 'pino';
import { AgentFrameSchema, encodeFrame, HelloFrameSchema, MAX_FRAME_BYTES, type AgentFrame } from '../../../api/src/feed.js';
import { formatIssues } from '../../../api/src/streampath.js';
import { FeedAuthError, type AgentIdentity } from './auth.js';
import type { WireServer, WireServerOptions, WireStats } from './wire.js';
import { startNodeWire } from './wire-node.js';
import { loadNativeWire } from './wire-native.js';

/** What the hub sees of one agent's stream. */
export interface FeedConnection {
  /** Writes one encoded frame (a line of JSON, as encodeFrame makes it); false when the stream is gone. */
  send(line: string): boolean;
  close(reason: string): void;
}

export interface FeedSessionHandlers {
  frame(frame: AgentFrame): void;
  closed(): void;
  /**
   * Runs `work` (reading what the agent sent) now or a little later: the leader reads reports after the
   * configurations it still has to send. Without it, at once.
   */
  later?(work: () => void): void;
}

export interface FeedBackend {
  /** undefined: this replica leads and serves agents itself; otherwise the leader's address (null: not known yet). */
  leaderAddress(): string | null | undefined;
  authenticate(token: string): Promise<AgentIdentity>;
  /** The leader takes the stream (or refuses it with a FeedAuthError). */
  attach(identity: AgentIdentity, conn: FeedConnection): FeedSessionHandlers;
}

export interface FeedServerOptions {
  host: string;
  port: number;
  tls: { keyPem: string; certPem: string };
  backend: FeedBackend;
  log: Logger;
  /** A stream with no frame from its agent for this long is taken for dead (agents ping and report at least every keepalive). */
  idleTimeoutMs: number;
  onStream?: (outcome: 'served' | 'redirected' | 'refused') => void;
  /** native: the addon's transport (the default where it loads); node: Node's tls. */
  transport?: 'native' | 'node' | 'auto';
  /** The native transport's own TLS 1.3 records (WireServerOptions.tlsRecords; default true). */
  tlsRecords?: boolean;
  /** An agent that sends no hello within this long is closed. */
  helloTimeoutMs?: number;
}

export interface RunningFeedServer {
  port: number;
  transport: 'native' | 'node';
  setTls(tls: { keyPem: string; certPem: string }): void;
  stats(): WireStats;
  /** Ends every stream (agents reconnect elsewhere) and stops listening. */
  close(): Promise<void>;
}

/** Lines an agent may send before its hello is answered (its first report follows the hello at once). */
const MAX_EARLY_LINES = 16;

export async function startFeedServer(o: FeedServerOptions): Promise<RunningFeedServer> {
  const log = o.log;
  const helloTimeoutMs = o.helloTimeoutMs ?? 10_000;
  const wireOptions: WireServerOptions = {
    host: o.host,
    port: o.port,
    tls: o.tls,
    idleTimeoutMs: o.idleTimeoutMs,
    ...(o.tlsRecords === undefined ? {} : { tlsRecords: o.tlsRecords }),
    maxLineBytes: MAX_FRAME_BYTES,
    // A few full-size frames (a configuration with its programs); an agent that takes none of them is stuck.
    maxQueueBytes: 4 * MAX_FRAME_BYTES,
    log,
    onConnection: (conn) => {
      let phase: 'hello' | 'checking' | 'serving' | 'done' = 'hello';
      let handlers: FeedSessionHandlers | undefined;
      let who = conn.remote;
      let early: string[] = [];
      /** Lines read while an earlier one waits for its turn (handlers.later), in order. */
      let held: string[] | undefined;
      let gone = false;
      const refuse = (status: number, message: string) => {
        phase = 'done';
        conn.write(encodeFrame({ type: 'refused', status, message }));
        conn.end();
      };
      const helloTimer = setTimeout(() => {
        if (phase === 'hello') refuse(408, `no hello frame within ${helloTimeoutMs} ms`);
      }, helloTimeoutMs);
      helloTimer.unref();

      const take = (line: string) => {
        let raw: unknown;
        try {
          raw = JSON.parse(line);
        } catch (err) {
          log.warn({ pod: who, err: (err as Error).message }, 'feed: a frame that is not JSON, closing the stream');
          phase = 'done';
          conn.end();
          return;
        }
        const r = AgentFrameSchema.safeParse(raw);
        if (!r.success) {
          log.warn({ pod: who, problems: formatIssues(r.error).slice(0, 3) }, 'feed: invalid frame ignored');
          return;
        }
        handlers!.frame(r.data);
      };
      const release = () => {
        const lines = held;
        held = undefined;
        for (const l of lines ?? []) if (phase === 'serving') take(l);
      };
      const deliver = (line: string) => {
        if (held) return void held.push(line);
        if (!handlers!.later) return take(line);
        held = [line];
        handlers!.later(() => {
          if (!gone) release();
        });
      };

      const serve = (identity: AgentIdentity) => {
        if (gone || phase !== 'checking') return;
        who = `${identity.namespace}/${identity.pod}`;
        const fc: FeedConnection = {
          send: (line) => (phase === 'serving' ? conn.write(line) : false),
          close: (reason) => {
            if (phase !== 'serving') return;
            log.debug({ pod: who, reason }, 'feed: closing stream');
            phase = 'done';
            conn.end();
          },
        };
        try {
          handlers = o.backend.attach(identity, fc);
        } catch (err) {
          o.onStream?.('refused');
          return refuse(err instanceof FeedAuthError ? err.status : 500, (err as Error).message);
        }
        o.onStream?.('served');
        phase = 'serving';
        const lines = early;
        early = [];
        for (const l of lines) if (phase === 'serving') deliver(l);
      };

      const hello = (line: string) => {
        clearTimeout(helloTimer);
        let parsed: ReturnType<typeof HelloFrameSchema.safeParse>;
        try {
          parsed = HelloFrameSchema.safeParse(JSON.parse(line));
        } catch {
          return refuse(400, 'the first frame must be a hello: {"type":"hello","token":"..."}');
        }
        if (!parsed.success) {
          o.onStream?.('refused');
          return refuse(401, 'the first frame must be a hello with the projected ServiceAccount token');
        }
        const leader = o.backend.leaderAddress();
        if (leader !== undefined) {
          o.onStream?.('redirected');
          if (leader === null) return refuse(503, 'no leader elected yet; retry');
          phase = 'done';
          conn.write(encodeFrame({ type: 'redirect', address: leader }));
          conn.end();
          return;
        }
        phase = 'checking';
        o.backend.authenticate(parsed.data.token).then(serve, (err: unknown) => {
          if (gone || phase !== 'checking') return;
          o.onStream?.('refused');
          const status = err instanceof FeedAuthError ? err.status : 500;
          log.warn({ status, remote: conn.remote, err: (err as Error).message }, 'feed: agent refused');
          refuse(status, (err as Error).message);
        });
      };

      return {
        line: (line) => {
          if (phase === 'serving') return deliver(line);
          if (phase === 'hello') return hello(line);
          if (phase === 'checking') {
            early.push(line);
            if (early.length > MAX_EARLY_LINES) refuse(400, `more than ${MAX_EARLY_LINES} frames before the hello was answered`);
          }
        },
        closed: () => {
          clearTimeout(helloTimer);
          if (gone) return;
          // What the agent said last (its final report, all detached) counts, even if it was still held.
          if (phase === 'serving') release();
          gone = true;
          const wasServing = handlers !== undefined;
          phase = 'done';
          if (wasServing) handlers!.closed();
        },
      };
    },
  };

  const want = o.transport ?? 'auto';
  let wire: WireServer;
  if (want === 'node') wire = await startNodeWire(wireOptions);
  else {
    const native = loadNativeWire();
    if (native.ok) wire = await native.start(wireOptions);
    else if (want === 'native') throw new Error(`the feed's native transport is not available: ${native.error}`);
    else {
      log.warn({ err: native.error }, "feed: the native transport is not available, serving agents on Node's tls (about 4x the memory per agent)");
      wire = await startNodeWire(wireOptions);
    }
  }
  log.info({ port: wire.port, host: o.host, transport: wire.kind }, 'agent feed listening');
  return { port: wire.port, transport: wire.kind, setTls: (tls) => wire.setTls(tls), stats: () => wire.stats(), close: () => wire.close() };
}
