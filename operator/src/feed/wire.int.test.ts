// The feed transports' one contract (wire.ts), each against real TLS clients on loopback: the hello-less
// line flow, pings answered below JavaScript, ALPN enforced, the line bound, the idle timeout, writes after
// the end, certificate rotation for new connections only, and close() ending every connection.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createTcpServer, connect as connectTcp, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
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
function client(port: number, caPem: string, alpn: string[] = [FEED_ALPN], extra: ConnectionOptions = {}) {
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  let buf = '';
  const sock: TLSSocket = connect({ host: '127.0.0.1', port, ca: caPem, servername: 'feed.test.svc', ALPNProtocols: alpn, ...extra });
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

let wire: WireServer | undefined;
afterEach(async () => {
  await wire?.close();
  wire = undefined;
});

/** Starts a server whose connections echo every line back as "echo:<line>" and record their closes. */
async function startEcho(start: (o: WireServerOptions) => Promise<WireServer>, extra: Partial<WireServerOptions> = {}) {
  const conns: WireConnection[] = [];
  const closes: string[] = [];
  const got: string[] = [];
  let onClose: (() => void) | undefined;
  let onOpen: (() => void) | undefined;
  const w = await start({
    host: '127.0.0.1',
    port: 0,
    tls: serving,
    idleTimeoutMs: 30_000,
    maxLineBytes: 1024,
    maxQueueBytes: 1 << 20,
    log: pino({ level: 'silent' }),
    onConnection: (conn) => {
      conns.push(conn);
      onOpen?.();
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
  wire = w;
  const closedCount = async (n: number) => {
    while (closes.length < n) await new Promise<void>((r) => (onClose = r));
  };
  const openedCount = async (n: number) => {
    while (conns.length < n) await new Promise<void>((r) => (onOpen = r));
  };
  return { conns, closes, got, closedCount, openedCount, port: w.port, wire: w };
}

describe.each(transports)('the feed transport on %s', (_kind, start) => {
  const echo = (extra: Partial<WireServerOptions> = {}) => startEcho(start, extra);

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

// The native transport seals and opens TLS 1.3 records itself once the handshake is done, without OpenSSL's
// per-connection object (native/src/feed/tls13_records.h): every test above runs on it already; these check
// what only it has, against real clients.
describe('the native transport without an SSL object per connection', () => {
  const nativeStart = (o: WireServerOptions) => (native.ok ? native.start(o) : Promise.reject(new Error(native.error)));
  const big = (n: number, seed: number) => Array.from({ length: n }, (_, i) => String.fromCharCode(33 + ((i * 7 + seed) % 90))).join('');

  it.each(['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256'])(
    'carries lines of many records both ways with %s, and the agent ending is a close',
    async (suite) => {
      const s = await startEcho(nativeStart, { maxLineBytes: 1 << 20 });
      const c = client(s.port, ca.certPem, [FEED_ALPN], { ciphers: suite });
      await c.secure;
      expect(c.sock.getCipher().standardName).toBe(suite);
      await s.openedCount(1);
      expect(s.wire.stats()).toEqual({ handshakes: 0, records: 1, openssl: 0 });
      // 100 KB up (7 records) and its echo down; 300 KB down in one write (19 records).
      const up = big(100_000, 1);
      c.sock.write(`${up}\n`);
      expect(await c.next()).toBe(`echo:${up}`);
      const down = big(300_000, 2);
      s.conns[0]!.write(`${down}\n`);
      expect(await c.next()).toBe(down);
      c.sock.write(`${PING_LINE}\n`);
      expect(await c.next()).toBe(PONG_LINE);
      c.sock.end(); // close_notify, then FIN
      await s.closedCount(1);
      expect(s.closes).toEqual(['closed by the agent']);
      expect(s.wire.stats()).toEqual({ handshakes: 0, records: 0, openssl: 0 });
    },
  );

  it('keeps the SSL object for a TLS 1.2 client, and for every client with tlsRecords: false', async () => {
    const s = await startEcho(nativeStart);
    const old = client(s.port, ca.certPem, [FEED_ALPN], { maxVersion: 'TLSv1.2' });
    await old.secure;
    expect(old.sock.getProtocol()).toBe('TLSv1.2');
    old.sock.write('one\n');
    expect(await old.next()).toBe('echo:one');
    expect(s.wire.stats()).toEqual({ handshakes: 0, records: 0, openssl: 1 });
    await s.wire.close();
    await old.closed;

    const off = await startEcho(nativeStart, { tlsRecords: false });
    const c = client(off.port, ca.certPem);
    await c.secure;
    expect(c.sock.getProtocol()).toBe('TLSv1.3');
    c.sock.write('two\n');
    expect(await c.next()).toBe('echo:two');
    expect(off.wire.stats()).toEqual({ handshakes: 0, records: 0, openssl: 1 });
  });

  it('follows KeyUpdate both ways (OpenSSL s_client: k, then K, which asks for ours)', async () => {
    const s = await startEcho(nativeStart);
    const dir = mkdtempSync(join(tmpdir(), 'ks-wire-'));
    try {
      writeFileSync(join(dir, 'ca.pem'), ca.certPem);
      const args = ['s_client', '-msg', '-connect', `127.0.0.1:${s.port}`, '-tls1_3', '-alpn', FEED_ALPN];
      args.push('-CAfile', join(dir, 'ca.pem'), '-servername', 'feed.test.svc', '-verify_return_error');
      const sc = spawn('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
      // Its output and its diagnostics (KEYUPDATE goes to stderr) in one string.
      let out = '';
      const waiters: Array<() => void> = [];
      const collect = (d: string) => {
        out += d;
        for (const w of waiters.splice(0)) w();
      };
      sc.stdout.setEncoding('utf8').on('data', collect);
      sc.stderr.setEncoding('utf8').on('data', collect);
      const exited = new Promise<number | null>((r) => sc.once('exit', (code) => r(code)));
      const seen = async (text: string, times = 1) => {
        while (out.split(text).length - 1 < times) await new Promise<void>((r) => waiters.push(r));
      };
      await s.openedCount(1);
      expect(s.wire.stats().records).toBe(1);
      sc.stdin.write('before\n');
      await seen('echo:before');
      // A command is a read of its own (s_client drops the rest of the read it starts): each waits for its echo.
      sc.stdin.write('k\n'); // a KeyUpdate: the client's next records use its next key
      await seen('KEYUPDATE');
      sc.stdin.write('middle\n');
      await seen('echo:middle');
      sc.stdin.write('K\n'); // update_requested: ours follows, then our records use our next key
      await seen('KEYUPDATE', 2);
      sc.stdin.write('after\n');
      await seen('echo:after');
      // Our KeyUpdate (update_not_requested) came before the echo sealed with our next key, and only once.
      const ours = '<<< TLS 1.3, Handshake [length 0005], KeyUpdate\n    18 00 00 01 00';
      expect(out.split(ours).length - 1).toBe(1);
      expect(out.indexOf(ours)).toBeLessThan(out.lastIndexOf('echo:after'));
      expect(s.got).toEqual(['before', 'middle', 'after']);
      expect(s.closes).toEqual([]);
      sc.stdin.end(); // s_client sends close_notify at the end of its input
      expect(await exited).toBe(0);
      await s.closedCount(1);
      expect(s.closes).toEqual(['closed by the agent']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('ends a connection whose record was altered on the way, saying why', async () => {
    const s = await startEcho(nativeStart);
    // A TCP relay between the client and the feed that flips one bit of the first chunk it is told to.
    let flip = false;
    const relays: Socket[] = [];
    const relay = createTcpServer((from) => {
      const to = connectTcp(s.port, '127.0.0.1');
      relays.push(from, to);
      from.on('data', (d: Buffer) => {
        if (flip) {
          flip = false;
          d[d.length - 1]! ^= 1; // the record's tag
        }
        to.write(d);
      });
      to.pipe(from);
      from.on('error', () => undefined);
      to.on('error', () => undefined);
      from.on('close', () => to.destroy());
      to.on('close', () => from.destroy());
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (relay.address() as { port: number }).port;
      const c = client(port, ca.certPem);
      await c.secure;
      await s.openedCount(1); // the client's Finished went through unaltered
      c.sock.write('fine\n');
      expect(await c.next()).toBe('echo:fine');
      flip = true;
      c.sock.write('altered\n');
      await s.closedCount(1);
      expect(s.closes).toEqual(['TLS error: a TLS record that does not authenticate (bad_record_mac)']);
      expect(s.got).toEqual(['fine']);
      await c.closed;
    } finally {
      for (const r of relays) r.destroy();
      await new Promise<void>((r) => relay.close(() => r()));
    }
  });
});
