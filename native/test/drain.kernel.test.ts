// Ending an engine never presents a truncated stream as complete: drain() lets live connections finish
// until its deadline and resets (RST) what is left; stop() resets at once; update() never touches live
// connections. Servers and clients are in this process, on 127.0.0.1; the client writes at a fixed rate so
// that connections are mid-stream when the engine is told to end.
import { afterEach, describe, expect, it } from 'vitest';
import net from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { Engine } from '../lib/engine.js';
import type { EngineConfig } from '../lib/types.js';
import { startLocalEngine, until } from './fixtures/engine-harness.js';

const MB = 1 << 20;
const engines: Engine[] = [];
const sockets: net.Socket[] = [];
const children: ChildProcess[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const c of children.splice(0)) c.kill('SIGKILL');
  await Promise.all(engines.splice(0).map((e) => e.stop()));
});

interface Received {
  bytes: number;
  sha: string;
  /** 'eof': an orderly end of stream; 'reset': ECONNRESET (or another error). */
  end?: 'eof' | 'reset';
}

// The app is python, not Node: libuv reports a reset that arrives behind unread bytes as an orderly end
// (uv__stream_io synthesizes EOF on POLLHUP after a partial read), so a Node app cannot tell the two
// apart, and this test is about what the engine sends. recv() raising ECONNRESET is the kernel's answer.
const HASHING_APP = `
import hashlib, json, socket, sys, threading
lock = threading.Lock()
def out(o):
    with lock:
        sys.stdout.write(json.dumps(o) + "\\n"); sys.stdout.flush()
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0)); srv.listen(256)
out({"port": srv.getsockname()[1]})
def serve(c, i):
    h, n = hashlib.sha256(), 0
    try:
        while True:
            d = c.recv(1 << 16)
            if not d:
                out({"i": i, "bytes": n, "sha": h.hexdigest(), "end": "eof"}); c.close(); return
            n += len(d); h.update(d)
            if n == len(d): out({"i": i, "bytes": n, "sha": "", "first": True})
    except OSError as e:
        out({"i": i, "bytes": n, "sha": "", "end": "reset", "error": e.__class__.__name__})
i = 0
while True:
    c, _ = srv.accept(); threading.Thread(target=serve, args=(c, i), daemon=True).start(); i += 1
`;

/** An app (python, see above) that hashes what each connection sends and records how it ended. */
async function hashingApp(): Promise<{ port: number; conns: Received[] }> {
  const child = spawn('python3', ['-c', HASHING_APP], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const conns: Received[] = [];
  let buf = '';
  const port = await new Promise<number>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`hashing app exited with ${code}`)));
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const m = JSON.parse(buf.slice(0, i)) as { port?: number; i: number; bytes: number; sha: string; end?: 'eof' | 'reset'; first?: boolean };
        buf = buf.slice(i + 1);
        if (m.port !== undefined) resolve(m.port);
        else if (m.first) conns[m.i] = { bytes: m.bytes, sha: '' };
        else conns[m.i] = { bytes: m.bytes, sha: m.sha, ...(m.end ? { end: m.end } : {}) };
      }
    });
  });
  return { port, conns };
}

interface Sent {
  bytes: number;
  sha: string;
  error?: string;
  /** The handshake completed: the connection is queued on the engine's listener (or accepted). */
  connected: Promise<void>;
  done: Promise<void>;
}

/** Sends `total` random bytes at about `rate` bytes/s, then ends; resolves `done` when the socket closes. */
function streamTo(port: number, total: number, rate: number): Sent {
  const sock = net.connect({ host: '127.0.0.1', port });
  sockets.push(sock);
  const block = randomBytes(64 * 1024);
  const h = createHash('sha256');
  const s: Sent = { bytes: 0, sha: '', connected: new Promise((r) => sock.once('connect', () => r())), done: Promise.resolve() };
  s.done = new Promise<void>((resolve) => {
    sock.on('error', (err) => (s.error = (err as NodeJS.ErrnoException).code ?? err.message));
    sock.on('close', () => resolve());
  });
  sock.resume();
  const t0 = Date.now();
  const tick = () => {
    if (sock.destroyed) return;
    const due = Math.min(total, Math.floor(((Date.now() - t0) / 1000) * rate) + block.length);
    while (s.bytes < due) {
      const chunk = block.subarray(0, Math.min(block.length, due - s.bytes));
      h.update(chunk);
      s.bytes += chunk.length;
      sock.write(chunk);
    }
    if (s.bytes >= total) {
      s.sha = h.digest('hex');
      sock.end();
    } else setTimeout(tick, 5);
  };
  sock.once('connect', tick);
  return s;
}

const start = (config: Partial<EngineConfig> & Pick<EngineConfig, 'upstream'>) => startLocalEngine(engines, config);

/** Every connection either got every byte (and an orderly end), or saw a reset: never a truncated EOF. */
function expectWholeOrReset(sent: Sent[], got: Received[]): { whole: number; reset: number } {
  let whole = 0;
  let reset = 0;
  for (const r of got) {
    if (r.end === 'eof') {
      expect(sent.some((s) => s.sha === r.sha && s.bytes === r.bytes), `an orderly end after ${r.bytes} bytes must be the whole stream`).toBe(true);
      whole++;
    } else {
      expect(r.end).toBe('reset');
      reset++;
    }
  }
  return { whole, reset };
}

describe('drain and stop', () => {
  it('drain() past its deadline resets connections still streaming, both ways; none sees a truncated EOF', async () => {
    const app = await hashingApp();
    const e = start({ upstream: { host: '127.0.0.1', port: app.port } });
    const sent = [0, 1, 2, 3].map(() => streamTo(e.listenAddress.port, 32 * MB, 4 * MB));
    await until('4 connections streaming', () => app.conns.filter(Boolean).length === 4 && sent.every((s) => s.bytes > MB));
    const result = await e.drain(300);
    await Promise.all(sent.map((s) => s.done));
    await until('every app connection ended', () => app.conns.every((c) => c.end !== undefined));
    expect(result).toMatchObject({ drained: 0, reset: 4 });
    expect(expectWholeOrReset(sent, app.conns)).toEqual({ whole: 0, reset: 4 });
    // The clients were reset too.
    expect(sent.map((s) => s.error)).toEqual(Array(4).fill('ECONNRESET'));
  });

  it('drain() with time to spare lets every connection finish whole', async () => {
    const app = await hashingApp();
    const e = start({ upstream: { host: '127.0.0.1', port: app.port } });
    const sent = [0, 1, 2, 3].map(() => streamTo(e.listenAddress.port, 4 * MB, 8 * MB));
    await until('4 connections streaming', () => app.conns.filter(Boolean).length === 4);
    const result = await e.drain(30_000);
    await Promise.all(sent.map((s) => s.done));
    await until('4 app connections ended', () => app.conns.filter((c) => c?.end).length === 4);
    expect(result).toMatchObject({ drained: 4, reset: 0 });
    expect(expectWholeOrReset(sent, app.conns)).toEqual({ whole: 4, reset: 0 });
    expect(result.ms).toBeLessThan(30_000);
  });

  it('stop() during a drain resets at once', async () => {
    const app = await hashingApp();
    const e = start({ upstream: { host: '127.0.0.1', port: app.port } });
    const sent = [0, 1].map(() => streamTo(e.listenAddress.port, 64 * MB, 4 * MB));
    await until('2 connections streaming', () => app.conns.filter(Boolean).length === 2);
    const draining = e.drain(60_000);
    const t0 = Date.now();
    const [stopped, drained] = await Promise.all([e.stop(), draining]);
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(stopped).toEqual(drained);
    expect(stopped).toMatchObject({ reset: 2 });
    await Promise.all(sent.map((s) => s.done));
    await until('every app connection ended', () => app.conns.every((c) => c.end !== undefined));
    expect(expectWholeOrReset(sent, app.conns)).toEqual({ whole: 0, reset: 2 });
  });

  it('a drain accepts the connections already queued on the listener and serves them', async () => {
    const app = await hashingApp();
    const e = start({ upstream: { host: '127.0.0.1', port: app.port } });
    const sent = [0, 1, 2].map(() => streamTo(e.listenAddress.port, 1 * MB, 16 * MB));
    await Promise.all(sent.map((s) => s.connected));
    const result = await e.drain(30_000);
    await Promise.all(sent.map((s) => s.done));
    await until('3 app connections ended', () => app.conns.filter((c) => c?.end).length === 3);
    expect(result.reset).toBe(0);
    expect(expectWholeOrReset(sent, app.conns)).toEqual({ whole: 3, reset: 0 });
  });
});

describe('live settings', () => {
  it('update() with a new pipe size touches no live connection, and new ones use it', async () => {
    const app = await hashingApp();
    const mirror = await hashingApp();
    const mirrors = [{ name: 'm', host: '127.0.0.1', port: mirror.port, samplingPercent: 100 }];
    const e = start({ upstream: { host: '127.0.0.1', port: app.port }, mirrors, pipeSize: 64 * 1024 });
    const live = [0, 1].map(() => streamTo(e.listenAddress.port, 8 * MB, 4 * MB));
    await until('2 connections streaming', () => app.conns.filter(Boolean).length === 2);
    e.update({ mirrors, pipeSize: 512 * 1024, turnTimeoutMs: 500, mirrorBufferSize: 8 << 20 });
    expect(e.pipeSize).toBe(512 * 1024);
    const after = streamTo(e.listenAddress.port, 2 * MB, 32 * MB);
    await Promise.all([...live, after].map((s) => s.done));
    await until('every app connection ended', () => app.conns.length === 3 && app.conns.every((c) => c.end !== undefined));
    expect(expectWholeOrReset([...live, after], app.conns)).toEqual({ whole: 3, reset: 0 });
    expect(e.stats()).toMatchObject({ connectionsReset: 0, connectionsAccepted: 3 });
  });

  it('update() refuses a pipe size the kernel always refuses, and keeps the previous one', async () => {
    const app = await hashingApp();
    const e = start({ upstream: { host: '127.0.0.1', port: app.port } });
    let err: (Error & { code?: string }) | undefined;
    try {
      e.update({ mirrors: [], pipeSize: 2 ** 31 - 1, turnTimeoutMs: 1000, mirrorBufferSize: 4 << 20 });
    } catch (x) {
      err = x as Error & { code?: string };
    }
    // Root may raise pipes up to 2 GiB... but not above fs.pipe-max-size's ceiling of 2^31 rounded.
    if (err) expect(err.message).toMatch(/F_SETPIPE_SZ/);
    expect(e.pipeSize === 256 * 1024 || !err).toBe(true);
  });
});

describe('urgent data', () => {
  it('an urgent (MSG_OOB) byte travels inline, in order, and the connection goes on', async () => {
    const app = await hashingApp();
    const e = start({ upstream: { host: '127.0.0.1', port: app.port } });
    // Node cannot send MSG_OOB: python does, then more ordinary bytes and an orderly end.
    const py = spawn('python3', ['-c', `
import socket
s = socket.create_connection(("127.0.0.1", ${e.listenAddress.port}))
s.sendall(b"abc")
s.send(b"!", socket.MSG_OOB)
s.sendall(b"def" * 1000)
s.shutdown(socket.SHUT_WR)
while s.recv(65536): pass
`]);
    const code = await new Promise<number | null>((r) => py.once('exit', r));
    expect(code).toBe(0);
    await until('the app connection ended', () => app.conns[0]?.end);
    const expected = createHash('sha256').update(Buffer.from(`abc!${'def'.repeat(1000)}`)).digest('hex');
    expect(app.conns[0]).toMatchObject({ end: 'eof', bytes: 3004, sha: expected });
  });
});
