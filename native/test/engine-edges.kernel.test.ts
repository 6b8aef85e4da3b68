// Edge-triggered readiness shortcuts of the engine (ADR 0003): a splice that returns fewer bytes than the
// pipe has slots marks the socket drained without a read that would return EAGAIN. These tests try the
// cases where a looser rule would stall a connection for good (nothing afterwards wakes it): bytes followed
// at once by a FIN (caught a rule that ignored EPOLLRDHUP), and bursts of tiny segments into a small P
// (loopback usually coalesces them, so this one guards more than it proves).
import { afterEach, describe, expect, it } from 'vitest';
import net from 'node:net';
import { Engine } from '../lib/engine.js';
import { until } from './fixtures/engine-harness.js';

const engines: Engine[] = [];
const servers: net.Server[] = [];
const sockets: net.Socket[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(engines.splice(0).map((e) => e.stop()));
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** A server on 127.0.0.1 that collects what each connection sends; `onConn` may answer. */
async function collector(onConn?: (sock: net.Socket, got: () => Buffer) => void) {
  const conns: { data: Buffer[]; ended: boolean }[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    sockets.push(sock);
    const c = { data: [] as Buffer[], ended: false };
    conns.push(c);
    sock.on('data', (d) => c.data.push(d));
    sock.on('end', () => (c.ended = true));
    sock.on('error', () => undefined);
    onConn?.(sock, () => Buffer.concat(c.data));
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return { port, conns, bytes: (i = 0) => Buffer.concat(conns[i]?.data ?? []) };
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true, noDelay: true }, () => resolve(s));
    sockets.push(s);
    s.on('error', reject);
  });
}

describe('a short splice is trusted as "drained" only when it proves it', () => {
  it('forwards thousands of 1-byte segments queued faster than the engine reads them, with no later byte to wake it', async () => {
    const app = await collector();
    const mirror = await collector();
    // 64 KiB pipes: the mirrored connection's P has 16 slots, so 16 one-byte segments can fill it.
    const e = Engine.start({
      listen: { host: '127.0.0.1', port: 0 },
      upstream: { host: '127.0.0.1', port: app.port },
      mirrors: [{ name: 'm', host: '127.0.0.1', port: mirror.port, samplingPercent: 100 }],
      pipeSize: 64 * 1024,
      mirrorConnectTimeoutMs: 2000, turnTimeoutMs: 1000, mirrorBufferSize: 4 << 20,
    });
    engines.push(e);
    const client = await connect(e.listenAddress.port);
    // A mirror that is still connecting holds only its pipe's 16 slots: 16 one-byte segments. Wait for
    // its connection so that this test is about the primary's reads, not about a mirror cut while
    // connecting (tested elsewhere).
    await until('the mirror connection', () => mirror.conns.length === 1);
    const sent: number[] = [];
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 200; i++) {
        const b = (round * 200 + i) & 0xff;
        sent.push(b);
        client.write(Buffer.of(b)); // TCP_NODELAY: one segment each
      }
      // The connection stays open: a wrongly cleared readable flag would strand bytes here for good.
      await until(`${sent.length} bytes at the app`, () => app.bytes().length === sent.length);
    }
    expect(app.bytes().equals(Buffer.from(sent))).toBe(true);
    client.end();
    await until('the mirror stream', () => mirror.conns[0]?.ended && mirror.bytes().length === sent.length);
    expect(mirror.bytes().equals(Buffer.from(sent))).toBe(true);
  });

  it('sees the FIN that arrives together with the last bytes, both ways', async () => {
    // The app answers 3 bytes and its FIN in one go once it has the client's 5 bytes and FIN.
    const app = await collector((sock, got) => sock.on('end', () => got().length === 5 && sock.end(Buffer.from('abc'))));
    const e = Engine.start({
      listen: { host: '127.0.0.1', port: 0 },
      upstream: { host: '127.0.0.1', port: app.port },
      mirrors: [],
      pipeSize: 1 << 20,
      mirrorConnectTimeoutMs: 2000, turnTimeoutMs: 1000, mirrorBufferSize: 4 << 20,
    });
    engines.push(e);
    for (let i = 0; i < 50; i++) {
      const client = await connect(e.listenAddress.port);
      const got: Buffer[] = [];
      const ended = new Promise<void>((r) => client.on('end', r));
      client.on('data', (d) => got.push(d));
      client.end(Buffer.from('hello'));
      await ended;
      expect(Buffer.concat(got).toString()).toBe('abc');
      expect(app.conns[i]).toMatchObject({ ended: true });
      expect(app.bytes(i).toString()).toBe('hello');
    }
  });
});
