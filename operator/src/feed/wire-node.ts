// The feed's transport on Node's `tls` (see wire.ts). Each connection costs the operator about 27 KiB of
// native memory (OpenSSL's buffers are kept while idle): the native transport is the one for many agents.
import { createServer, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { FEED_ALPN, PING_LINE, PONG_LINE } from '../../../api/src/feed.js';
import type { WireServer, WireServerOptions } from './wire.js';

interface Open {
  /** performance.now() of the last read. */
  lastRead: number;
  /** Closes it as idle (with that reason). */
  idle(): void;
}

export async function startNodeWire(o: WireServerOptions): Promise<WireServer> {
  const secure = (tls: { keyPem: string; certPem: string }) => ({ key: tls.keyPem, cert: tls.certPem, minVersion: 'TLSv1.2' as const });
  const server = createServer({ ...secure(o.tls), ALPNProtocols: [FEED_ALPN] });
  const open = new Map<TLSSocket, Open>();
  // Idle means nothing *read*, as on the native transport (a socket's own timeout counts writes too, which
  // would keep the connection of an agent that died while the operator writes to it until TCP keepalive gave
  // up). One sweep for all connections: a timer per connection would be re-armed on every read.
  const sweep = setInterval(() => {
    const now = performance.now();
    for (const c of open.values()) if (now - c.lastRead >= o.idleTimeoutMs) c.idle();
  }, Math.max(10, Math.min(250, o.idleTimeoutMs / 4)));
  sweep.unref();
  server.on('tlsClientError', (err) => o.log.debug({ err: err.message }, 'feed: TLS handshake failed'));
  server.on('secureConnection', (sock: TLSSocket) => {
    const remote = `${sock.remoteAddress}:${sock.remotePort}`;
    if (sock.alpnProtocol !== FEED_ALPN) {
      o.log.debug({ remote, alpn: sock.alpnProtocol }, `feed: a connection without ALPN ${FEED_ALPN} closed`);
      sock.destroy();
      return;
    }
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 30_000);
    let reason = 'closed by the agent';
    const state: Open = {
      lastRead: performance.now(),
      idle: () => {
        reason = `nothing read for ${o.idleTimeoutMs} ms`;
        open.delete(sock);
        sock.destroy();
      },
    };
    open.set(sock, state);
    const h = o.onConnection({
      remote,
      write: (line) => {
        if (sock.destroyed || !sock.writable) return false;
        if (sock.writableLength + Buffer.byteLength(line) > o.maxQueueBytes) {
          reason = `more than ${o.maxQueueBytes} bytes queued (the agent is not reading)`;
          sock.destroy();
          return false;
        }
        sock.write(line);
        return true;
      },
      end: () => {
        reason = 'closed by the operator';
        sock.end();
      },
    });
    // The partial line as raw chunks and their byte count: bounded without measuring it again per chunk, and
    // decoded once whole (a character split across chunks decodes right).
    let partial: Buffer[] = [];
    let partialBytes = 0;
    sock.on('data', (chunk: Buffer) => {
      state.lastRead = performance.now();
      let start = 0;
      for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
        const piece = chunk.subarray(start, nl);
        let line = partialBytes ? Buffer.concat([...partial, piece]).toString('utf8') : piece.toString('utf8');
        partial = [];
        partialBytes = 0;
        start = nl + 1;
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === PING_LINE) sock.write(`${PONG_LINE}\n`);
        else if (line.trim() !== '') h.line(line);
        if (sock.destroyed) return;
      }
      if (start < chunk.length) {
        partial.push(chunk.subarray(start));
        partialBytes += chunk.length - start;
      }
      if (partialBytes > o.maxLineBytes) {
        reason = `a frame larger than ${o.maxLineBytes} bytes`;
        sock.destroy();
      }
    });
    sock.on('error', (err) => (reason = err.message));
    sock.on('end', () => sock.end());
    sock.on('close', () => {
      open.delete(sock);
      h.closed(reason);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch((err: unknown) => {
    clearInterval(sweep);
    throw err;
  });
  return {
    port: (server.address() as AddressInfo).port,
    kind: 'node',
    setTls: (tls) => server.setSecureContext(secure(tls)),
    // Node's tls keeps an SSL object per connection; handshakes in progress are not visible from here.
    stats: () => ({ handshakes: 0, records: 0, openssl: open.size }),
    close: () =>
      new Promise<void>((resolve) => {
        clearInterval(sweep);
        server.close(() => resolve());
        for (const s of open.keys()) s.destroy();
      }),
  };
}
