// The feed transports' one contract (wire.ts), each against real TLS clients on loopback: the hello-less
// line flow, pings answered below JavaScript, ALPN enforced, the line bound, the idle timeout, writes after
// the end, certificate rotation for new connections only, and close() ending every connection.
import { connect, type TLSSocket } from 'node:tls';
import { pino } from 'pino';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FEED_ALPN, PING_LINE, PONG_LINE } from '../../../api/src/feed.js';
import { createCA, issueServingCert } from '../webhook/certs.js';
import type { WireConnection, WireServer, WireServerOptions } from './wire.js';
import { startNodeWire } from './wire-node.js';
import { loadNativeWire } from './wire-native.js';

type Pem = { keyPem: string; certPem: string };
let ca: Pem;
let ca2: Pem;
let serving: Pem;
let serving2: Pem;

beforeAll(async () => {
  const now = Date.now();
  ca = await createCA({ commonName: 'wire-ca', nowMs: now, validitySeconds: 3600 });
  ca2 = await createCA({ commonName: 'wire-ca-2', nowMs: now, validitySeconds: 3600 });
  serving = await issueServingCert({ ca, sans: ['feed.test.svc', '127.0.0.1'], nowMs: now, validitySeconds: 3600 });
  serving2 = await issueServingCert({ ca: ca2, sans: ['feed.test.svc', '127.0.0.1'], nowMs: now, validitySeconds: 3600 });
});

// The addon is built wherever the tests run: a missing native transport fails here, it is not skipped.
const native = loadNativeWire();
const transports: Array<['node' | 'native', (o: WireServerOptions) => Promise<WireServer>]> = [
  ['node', startNodeWire],
  ['native', native.ok ? native.start : () => Promise.reject(new Error(native.error))],
];

/** A client that collects lines; `next()` awaits the next one. */
function client(port: number, caPem: string, alpn: string[] = [FEED_ALPN]) {
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  let buf = '';
  const sock: TLSSocket = connect({ host: '127.0.0.1', port, ca: caPem, servername: 'feed.test.svc', ALPNProtocols: alpn });
  sock.setEncoding('utf8');
  sock.on('error', () => undefined);
  sock.on('data', (c: string) => {
    buf += c;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      lines.push(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      waiters.shift()?.();
    }
  });
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  const secure = new Promise<void>((resolve, reject) => {
    sock.once('secureConnect', resolve);
    sock.once('error', reject);
  });
  secure.catch(() => undefined);
  return {
    sock,
    closed,
    secure,
    async next(): Promise<string> {
      while (lines.length === 0) await new Promise<void>((r) => waiters.push(r));
      return lines.shift()!;
    },
  };
}

describe.each(transports)('the feed transport on %s', (_kind, start) => {
  let wire: WireServer | undefined;
  afterEach(async () => {
    await wire?.close();
    wire = undefined;
  });

  /** Starts a server whose connections echo every line back as "echo:<line>" and record their closes. */
  async function echo(extra: Partial<WireServerOptions> = {}) {
    const conns: WireConnection[] = [];
    const closes: string[] = [];
    const got: string[] = [];
    let onClose: (() => void) | undefined;
    wire = await start({
      host: '127.0.0.1',
      port: 0,
      tls: serving,
      idleTimeoutMs: 30_000,
      maxLineBytes: 1024,
      maxQueueBytes: 1 << 20,
      log: pino({ level: 'silent' }),
      onConnection: (conn) => {
        conns.push(conn);
        return {
          line: (l) => {
            got.push(l);
            conn.write(`echo:${l}\n`);
          },
          closed: (reason) => {
            closes.push(reason);
            onClose?.();
          },
        };
      },
      ...extra,
    });
    const closedCount = async (n: number) => {
      while (closes.length < n) await new Promise<void>((r) => (onClose = r));
    };
    return { conns, closes, got, closedCount, port: wire.port };
  }

  it('carries lines both ways, answers pings itself, and ends a connection when asked', async () => {
    const s = await echo();
    const c = client(s.port, ca.certPem);
    await c.secure;
    expect(c.sock.alpnProtocol).toBe(FEED_ALPN);
    c.sock.write(`{"type":"hello","token":"t"}\n${PING_LINE}\n{"a":1}`);
    // The pong may overtake the echo (the native transport answers it before JavaScript sees the line before).
    expect([await c.next(), await c.next()].sort()).toEqual(['echo:{"type":"hello","token":"t"}', PONG_LINE].sort());
    // A line split across writes (and TLS records) arrives whole.
    c.sock.write('}\n');
    expect(await c.next()).toBe('echo:{"a":1}}');
    expect(s.got).toEqual(['{"type":"hello","token":"t"}', '{"a":1}}']);
    // A \r before the newline is not part of the line; a character split across writes arrives whole.
    c.sock.write('crlf\r\n');
    expect(await c.next()).toBe('echo:crlf');
    const e = Buffer.from('"é"\n');
    c.sock.write(e.subarray(0, 2));
    await new Promise((r) => setTimeout(r, 20));
    c.sock.write(e.subarray(2));
    expect(await c.next()).toBe('echo:"é"');
    s.conns[0]!.write('bye\n');
    s.conns[0]!.end();
    expect(await c.next()).toBe('bye');
    await c.closed;
    await s.closedCount(1);
    expect(s.conns[0]!.write('late\n')).toBe(false);
  });

  it('closes a connection without the feed ALPN before JavaScript sees it, and one over the line bound', async () => {
    const s = await echo();
    const wrong = client(s.port, ca.certPem, ['h2']);
    await wrong.closed;
    expect(s.conns).toHaveLength(0);
    const big = client(s.port, ca.certPem);
    await big.secure;
    big.sock.write('x'.repeat(5000));
    await big.closed;
    await s.closedCount(1);
    expect(s.closes[0]).toMatch(/larger than 1024/);
    expect(s.got).toEqual([]);
  });

  it('closes a connection silent for the idle timeout, however much the operator writes to it; a pinging one stays', async () => {
    const s = await echo({ idleTimeoutMs: 600 });
    const quiet = client(s.port, ca.certPem);
    await quiet.secure;
    while (s.conns.length < 1) await new Promise((r) => setTimeout(r, 5));
    const busy = client(s.port, ca.certPem);
    await busy.secure;
    const t0 = Date.now();
    const pinger = setInterval(() => busy.sock.write(`${PING_LINE}\n`), 150);
    // Frames to the quiet agent (which it reads) do not make it alive: only what it sends does.
    const talker = setInterval(() => s.conns[0]!.write('news\n'), 100);
    try {
      await quiet.closed;
      expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
      await s.closedCount(1);
      expect(s.closes[0]).toMatch(/nothing read/);
      busy.sock.write('still here\n');
      // The pongs come first; then the echo of the line.
      for (let l = await busy.next(); l !== 'echo:still here'; l = await busy.next()) expect(l).toBe(PONG_LINE);
      expect(busy.sock.destroyed).toBe(false);
    } finally {
      clearInterval(pinger);
      clearInterval(talker);
    }
  }, 15_000);

  it('closes an agent that does not read once its queue passes the bound, and refuses a taken port', async () => {
    const s = await echo();
    const c = client(s.port, ca.certPem);
    await c.secure;
    c.sock.pause();
    c.sock.write('hello\n');
    while (s.conns.length === 0 || s.got.length === 0) await new Promise((r) => setTimeout(r, 10));
    const chunk = `${'y'.repeat(64 * 1024 - 1)}\n`;
    // The kernel's socket buffers take some megabytes first; the queue bound then closes the connection.
    let written = 0;
    while (s.conns[0]!.write(chunk) && written < 512 << 20) {
      written += chunk.length;
      if (written % (4 << 20) === 0) await new Promise((r) => setTimeout(r, 5));
    }
    await s.closedCount(1);
    expect(s.closes[0]).toMatch(/bytes queued \(the agent is not reading\)/);
    expect(written).toBeLessThan(512 << 20);
    c.sock.destroy();
    await expect(start({ host: '127.0.0.1', port: s.port, tls: serving, idleTimeoutMs: 1000, maxLineBytes: 1024, maxQueueBytes: 1024, log: pino({ level: 'silent' }), onConnection: () => ({ line: () => undefined, closed: () => undefined }) })).rejects.toThrow(/in use/i);
  });

  it('serves a burst of 600 connections at once (the native transport holds at most 256 handshakes, the rest wait)', async () => {
    const s = await echo();
    const clients = Array.from({ length: 600 }, () => client(s.port, ca.certPem));
    await Promise.all(
      clients.map(async (c, i) => {
        await c.secure;
        c.sock.write(`n${i}\n`);
        expect(await c.next()).toBe(`echo:n${i}`);
      }),
    );
    expect(s.conns).toHaveLength(600);
    for (const c of clients) c.sock.destroy();
    await s.closedCount(600);
  });

  it('serves a new certificate to new connections after setTls, and close() ends every connection', async () => {
    const s = await echo();
    const before = client(s.port, ca.certPem);
    await before.secure;
    wire!.setTls(serving2);
    const old = client(s.port, ca.certPem);
    await expect(old.secure).rejects.toThrow();
    const fresh = client(s.port, ca2.certPem);
    await fresh.secure;
    before.sock.write('one\n');
    fresh.sock.write('two\n');
    expect(await before.next()).toBe('echo:one');
    expect(await fresh.next()).toBe('echo:two');
    await wire!.close();
    wire = undefined;
    await Promise.all([before.closed, fresh.closed]);
    expect(s.closes).toHaveLength(2);
  });
});
