// The feed's transport in the addon (see wire.ts and native/src/feed/feed_server.cc): one epoll thread
// does the TLS handshakes, reads and writes of every agent connection, answers pings, closes idle ones, and
// hands JavaScript batches of events (opened, line, closed). OpenSSL releases a connection's read and write
// buffers while it is idle, so an idle agent costs the operator a few KiB instead of Node's ~27.
import { addon } from '../../../native/lib/addon.js';
import type { RawAddon, RawFeedEvent, RawFeedWire } from '../../../native/lib/raw.js';
import { FEED_ALPN, PING_LINE, PONG_LINE } from '../../../api/src/feed.js';
import type { WireConnectionHandlers, WireServer, WireServerOptions } from './wire.js';

export type NativeWire = { ok: true; start(o: WireServerOptions): Promise<WireServer> } | { ok: false; error: string };

export function loadNativeWire(): NativeWire {
  let FeedWire: FeedWireCtor | undefined;
  try {
    FeedWire = addon().FeedWire;
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  }
  if (typeof FeedWire !== 'function') return { ok: false, error: 'this kstreams.node has no FeedWire (rebuild it: npm run build:native)' };
  const ctor = FeedWire;
  return { ok: true, start: async (o) => startNative(ctor, o) };
}

type FeedWireCtor = NonNullable<RawAddon['FeedWire']>;

function startNative(FeedWire: FeedWireCtor, o: WireServerOptions): WireServer {
  const conns = new Map<number, WireConnectionHandlers>();
  let closing: (() => void) | undefined;
  const onEvents = (events: RawFeedEvent[]) => {
    for (const [kind, id, data] of events) {
      if (kind === 0) {
        conns.set(
          id,
          o.onConnection({
            remote: data,
            write: (line) => wire.send(id, line),
            end: () => wire.end(id),
          }),
        );
      } else if (kind === 1) {
        conns.get(id)?.line(data);
      } else if (kind === 2) {
        const h = conns.get(id);
        conns.delete(id);
        h?.closed(data);
      } else if (kind === 3) {
        // The thread stopped after closing every connection.
        closing?.();
      }
    }
  };
  const wire: RawFeedWire = new FeedWire(
    {
      host: o.host,
      port: o.port,
      keyPem: o.tls.keyPem,
      certPem: o.tls.certPem,
      alpn: FEED_ALPN,
      pingLine: PING_LINE,
      pongLine: PONG_LINE,
      idleTimeoutMs: o.idleTimeoutMs,
      maxLineBytes: o.maxLineBytes,
      maxQueueBytes: o.maxQueueBytes,
      ...(o.tlsRecords === undefined ? {} : { tlsRecords: o.tlsRecords }),
    },
    onEvents,
  );
  return {
    port: wire.port,
    kind: 'native',
    setTls: (tls) => wire.setTls(tls.keyPem, tls.certPem),
    stats: () => wire.stats(),
    close: () =>
      new Promise<void>((resolve) => {
        closing = resolve;
        wire.close();
      }),
  };
}
