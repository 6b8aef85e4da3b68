// The feed's HTTP/2 server, on every replica (TLS from the webhook's certificate source, so the cert
// carries the Service's DNS names and is signed by the operator's CA, which the webhook gives the agents).
// One POST /v1/agents/stream per agent: a replica that does not lead answers with a redirect frame naming
// the leader; the leader checks the agent's token and hands the stream to the controller's hub.
import { constants, createSecureServer, type SecureServerOptions, type Http2SecureServer, type IncomingHttpHeaders, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { AgentFrameSchema, encodeFrame, FEED_PATH, FrameDecoder, type AgentFrame } from '../../../api/src/feed.js';
import { formatIssues } from '../../../api/src/streampath.js';
import { FeedAuthError, type AgentIdentity } from './auth.js';

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
  /** A stream with no frame from its agent for this long is taken for dead (agents report at least every keepalive). */
  idleTimeoutMs: number;
  onStream?: (outcome: 'served' | 'redirected' | 'refused') => void;
  /**
   * HTTP/2 session options (settings, maxSessionMemory, ...); default Node's. bench/operator/feed-memory.ts
   * measured smaller tables, windows and stream limits: they change nothing of the ~55 KiB of native memory a
   * TLS + HTTP/2 session costs (docs/bench.md).
   */
  http2?: Pick<SecureServerOptions, 'settings' | 'maxSessionMemory' | 'maxHeaderListPairs' | 'peerMaxConcurrentStreams' | 'maxOutstandingPings' | 'maxSettings'>;
}

export interface RunningFeedServer {
  port: number;
  server: Http2SecureServer;
  setTls(tls: { keyPem: string; certPem: string }): void;
  /** Ends every stream (agents reconnect elsewhere) and stops listening. */
  close(): Promise<void>;
}

function refuse(stream: ServerHttp2Stream, status: number, message: string): void {
  if (stream.destroyed) return;
  stream.respond({ ':status': status, 'content-type': 'text/plain; charset=utf-8' });
  stream.end(`${message}\n`);
}

export async function startFeedServer(o: FeedServerOptions): Promise<RunningFeedServer> {
  const log = o.log;
  const server = createSecureServer({ key: o.tls.keyPem, cert: o.tls.certPem, minVersion: 'TLSv1.2', allowHTTP1: false, ...o.http2 });
  server.on('sessionError', (err) => log.debug({ err: err.message }, 'feed: session error'));
  server.on('tlsClientError', (err) => log.debug({ err: err.message }, 'feed: TLS handshake failed'));
  // Dead connections (a node gone without a RST) are found by the agents' keepalive reports going quiet.
  const sessions = new Set<ServerHttp2Session>();
  server.on('session', (session) => {
    sessions.add(session);
    session.on('close', () => sessions.delete(session));
    session.setTimeout(o.idleTimeoutMs, () => session.destroy());
  });

  server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    stream.on('error', () => {});
    if (headers[':path'] !== FEED_PATH || headers[':method'] !== 'POST') {
      return refuse(stream, 404, `the operator's feed serves POST ${FEED_PATH} only`);
    }
    const leader = o.backend.leaderAddress();
    if (leader !== undefined) {
      o.onStream?.('redirected');
      if (leader === null) return refuse(stream, 503, 'no leader elected yet; retry');
      stream.respond({ ':status': 200, 'content-type': 'application/x-ndjson' });
      stream.end(encodeFrame({ type: 'redirect', address: leader }));
      return;
    }
    const auth = String(headers.authorization ?? '');
    const token = /^Bearer (.+)$/.exec(auth)?.[1];
    if (!token) {
      o.onStream?.('refused');
      return refuse(stream, 401, 'no bearer token: the agent presents its projected ServiceAccount token');
    }
    o.backend.authenticate(token).then(
      (identity) => serve(stream, identity),
      (err: unknown) => {
        o.onStream?.('refused');
        const status = err instanceof FeedAuthError ? err.status : 500;
        log.warn({ status, err: (err as Error).message }, 'feed: agent refused');
        refuse(stream, status, (err as Error).message);
      },
    );
  });

  const serve = (stream: ServerHttp2Stream, identity: AgentIdentity) => {
    if (stream.destroyed) return;
    let handlers: FeedSessionHandlers;
    const conn: FeedConnection = {
      send: (line) => {
        if (stream.destroyed || stream.closed) return false;
        stream.write(line);
        return true;
      },
      close: (reason) => {
        if (stream.destroyed) return;
        log.debug({ pod: `${identity.namespace}/${identity.pod}`, reason }, 'feed: closing stream');
        stream.close(constants.NGHTTP2_NO_ERROR);
      },
    };
    try {
      handlers = o.backend.attach(identity, conn);
    } catch (err) {
      o.onStream?.('refused');
      const status = err instanceof FeedAuthError ? err.status : 500;
      return refuse(stream, status, (err as Error).message);
    }
    o.onStream?.('served');
    stream.respond({ ':status': 200, 'content-type': 'application/x-ndjson' });
    const decoder = new FrameDecoder();
    let closed = false;
    /** Chunks read while an earlier one waits for its turn (handlers.later), in order. */
    let held: Buffer[] | undefined;
    const take = (chunk: Buffer) => {
      let frames: unknown[];
      try {
        frames = decoder.push(chunk);
      } catch (err) {
        log.warn({ pod: `${identity.namespace}/${identity.pod}`, err: (err as Error).message }, 'feed: bad frame, closing the stream');
        stream.close(constants.NGHTTP2_PROTOCOL_ERROR);
        return;
      }
      for (const raw of frames) {
        const r = AgentFrameSchema.safeParse(raw);
        if (!r.success) {
          log.warn({ pod: `${identity.namespace}/${identity.pod}`, problems: formatIssues(r.error).slice(0, 3) }, 'feed: invalid frame ignored');
          continue;
        }
        handlers.frame(r.data);
      }
    };
    const release = () => {
      const chunks = held;
      held = undefined;
      for (const c of chunks ?? []) take(c);
    };
    const done = () => {
      if (closed) return;
      // What the agent said last (its final report, all detached) counts, even if it was still held.
      release();
      closed = true;
      handlers.closed();
    };
    stream.on('data', (chunk: Buffer) => {
      if (held) return void held.push(chunk);
      if (!handlers.later) return take(chunk);
      held = [chunk];
      handlers.later(() => {
        if (!closed) release();
      });
    });
    stream.on('close', done);
    stream.on('end', () => {
      if (!stream.destroyed) stream.end();
    });
  };

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  log.info({ port, host: o.host }, 'agent feed listening');
  return {
    port,
    server,
    setTls: (tls) => server.setSecureContext({ key: tls.keyPem, cert: tls.certPem, minVersion: 'TLSv1.2' }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Open sessions would keep close() waiting: end them; agents reconnect (to the next leader).
        for (const s of sessions) s.destroy();
      }),
  };
}
