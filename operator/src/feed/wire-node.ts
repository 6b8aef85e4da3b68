// The feed's transport on Node's `tls` (see wire.ts). Each connection costs the operator about 27 KiB of
// native memory (OpenSSL's buffers are kept while idle): the native transport is the one for many agents.
import { createServer, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { FEED_ALPN, PING_LINE, PONG_LINE } from '../../../api/src/feed.js';
import type { WireServer, WireServerOptions } from './wire.js';

export async function startNodeWire(o: WireServerOptions): Promise<WireServer> {
  const secure = (tls: { keyPem: string; certPem: string }) => ({ key: tls.keyPem, cert: tls.certPem, minVersion: 'TLSv1.2' as const });
  const server = createServer({ ...secure(o.tls), ALPNProtocols: [FEED_ALPN] });
  const sockets = new Set<TLSSocket>();
  server.on('tlsClientError', (err) => o.log.debug({ err: err.message }, 'feed: TLS handshake failed'));
  server.on('secureConnection', (sock: TLSSocket) => {
    const remote = `${sock.remoteAddress}:${sock.remotePort}`;
    if (sock.alpnProtocol !== FEED_ALPN) {
      o.log.debug({ remote, alpn: sock.alpnProtocol }, `feed: a connection without ALPN ${FEED_ALPN} closed`);
      sock.destroy();
      return;
    }
    sockets.add(sock);
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 30_000);
    let reason = 'closed by the agent';
    sock.setTimeout(o.idleTimeoutMs, () => {
      reason = `nothing read for ${o.idleTimeoutMs} ms`;
      sock.destroy();
    });
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
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      buf += chunk;
      let start = 0;
      for (;;) {
        const nl = buf.indexOf('\n', start);
        if (nl < 0) break;
        const line = buf.slice(start, nl);
        start = nl + 1;
        if (line === PING_LINE) sock.write(`${PONG_LINE}\n`);
        else if (line.trim() !== '') h.line(line);
        if (sock.destroyed) return;
      }
      buf = buf.slice(start);
      if (Buffer.byteLength(buf) > o.maxLineBytes) {
        reason = `a frame larger than ${o.maxLineBytes} bytes`;
        sock.destroy();
      }
    });
    sock.on('error', (err) => (reason = err.message));
    sock.on('end', () => sock.end());
    sock.on('close', () => {
      sockets.delete(sock);
      h.closed(reason);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    port: (server.address() as AddressInfo).port,
    kind: 'node',
    setTls: (tls) => server.setSecureContext(secure(tls)),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      }),
  };
}
