// In-kernel transforms (docs/adr/0006-in-kernel-transforms.md): the engine's sk_msg program against the
// reference meaning of each op (bench/src/transform-reference.ts), with real sockets on 127.0.0.1. The app
// and the mirror target are servers in this process that record every connection's bytes.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TransformSchema } from '../../api/src/streampath.js';
import { xorshift32 } from '../../bench/src/transform-data.js';
import { applyOps, type XformOp } from '../../bench/src/transform-reference.js';
import { planTransform } from '../../sidecar/src/dataplane/transform.js';
import { Engine } from '../lib/engine.js';
import type { EngineTransform } from '../lib/types.js';
import { Peer, startLocalEngine, until } from './fixtures/engine-harness.js';

const engines: Engine[] = [];
const servers: net.Server[] = [];
const sockets: net.Socket[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(engines.splice(0).map((e) => e.stop()));
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** A server that records each connection's bytes; `ended` resolves at the connection's EOF. */
interface Recorded {
  bytes: Buffer[];
  length: number;
  ended: Promise<Buffer>;
  reset: boolean;
}
interface Recorder {
  port: number;
  conns: Recorded[];
}

async function recorder(opts: { readDelayMs?: number; answer?: string; readGate?: Promise<void> } = {}): Promise<Recorder> {
  const conns: Recorded[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    sockets.push(sock);
    let done!: (b: Buffer) => void;
    const r: Recorded = { bytes: [], length: 0, ended: new Promise((res) => (done = res)), reset: false };
    conns.push(r);
    sock.on('error', () => {
      r.reset = true;
      done(Buffer.concat(r.bytes));
    });
    sock.on('data', (d: Buffer) => {
      r.bytes.push(d);
      r.length += d.length;
      if (opts.answer) sock.write(opts.answer);
      if (opts.readDelayMs) {
        sock.pause();
        setTimeout(() => sock.resume(), opts.readDelayMs);
      }
    });
    sock.on('end', () => {
      sock.end();
      done(Buffer.concat(r.bytes));
    });
    if (opts.readGate) {
      // A reader that stalls until the gate opens: its socket's receive queue and the sender's send
      // buffer fill up.
      sock.pause();
      void opts.readGate.then(() => sock.resume());
    }
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as net.AddressInfo).port, conns };
}

async function plan(applyTo: 'mirror' | 'primary' | 'both', ops: unknown[], holdMs?: number): Promise<EngineTransform> {
  const t = TransformSchema.parse({ applyTo, ops, ...(holdMs !== undefined ? { holdMs } : {}) });
  return (await planTransform(t))!;
}

const MASK: XformOp = { mask: { after: 'Authorization: ', until: '\r\n', with: '*' } };
const REPLACE: XformOp = { replace: { from: 'prod-db-1', to: 'stag-db-1' } };
const GROW: XformOp = { replace: { from: 'db-1', to: 'database-number-1' } };
const SHRINK: XformOp = { replace: { from: 'prod-db-1', to: 'p1' } };
const UPPER: XformOp = { byteMap: { preset: 'uppercase' } };

interface Setup {
  engine: Engine;
  app: Recorder;
  mirror: Recorder;
}

async function setup(transform: EngineTransform, mirrorOpts: Parameters<typeof recorder>[0] = {}): Promise<Setup> {
  const app = await recorder();
  const mirror = await recorder(mirrorOpts);
  const engine = startLocalEngine(engines, {
    upstream: { host: '127.0.0.1', port: app.port },
    mirrors: [{ name: 'staging', host: '127.0.0.1', port: mirror.port, samplingPercent: 100 }],
    turnTimeoutMs: 0,
    transform,
  });
  return { engine, app, mirror };
}

/**
 * Sends `chunks` on one connection, each only once the engine has taken the previous ones (sent them to
 * the app and the mirror, or holds them): each chunk is its own send on the engine's side. Then ends.
 */
async function converse(s: Setup, chunks: Buffer[]): Promise<{ app: Buffer; mirror: Buffer }> {
  const appBase = s.engine.stats().bytesClientToApp;
  const mirrorBase = s.engine.stats().targets[0]!.bytesMirrored;
  const nApp = s.app.conns.length, nMirror = s.mirror.conns.length;
  const c = net.connect(s.engine.listenAddress.port, '127.0.0.1');
  sockets.push(c);
  c.on('error', () => undefined);
  await new Promise<void>((r) => c.once('connect', () => r()));
  let total = 0;
  for (const chunk of chunks) {
    c.write(chunk);
    total += chunk.length;
    await until('the engine to take the chunk', () => {
      const st = s.engine.stats();
      return st.bytesClientToApp - appBase >= total && st.targets[0]!.bytesMirrored - mirrorBase >= total;
    });
  }
  c.end();
  c.resume();
  await until('both connections', () => s.app.conns.length > nApp && s.mirror.conns.length > nMirror);
  const [app, mirror] = await Promise.all([s.app.conns[nApp]!.ended, s.mirror.conns[nMirror]!.ended]);
  return { app, mirror };
}

function pattern(op: XformOp): string {
  if ('mask' in op) return op.mask.after;
  if ('replace' in op) return op.replace.from;
  return 'abc';
}

describe('ops, each on the primary, the mirror and both', () => {
  const text = Buffer.from(
    'GET /orders HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer s3cr3t-t0ken\r\nX-DB: prod-db-1\r\n\r\n' +
      'select * from prod-db-1.orders; -- prod-db-1 prod-db- prod-db-1\r\nAuthorization: again\r\n',
  );
  for (const [name, ops] of Object.entries({ mask: [MASK], replace: [REPLACE], grow: [GROW], shrink: [SHRINK], upper: [UPPER], chain: [MASK, REPLACE, UPPER] })) {
    for (const applyTo of ['primary', 'mirror', 'both'] as const) {
      it(`${name} on ${applyTo}`, async () => {
        const s = await setup(await plan(applyTo, ops));
        const { app, mirror } = await converse(s, [text]);
        const transformed = applyOps(ops, text);
        expect(app.toString()).toBe((applyTo === 'mirror' ? text : transformed).toString());
        expect(mirror.toString()).toBe((applyTo === 'primary' ? text : transformed).toString());
        expect(s.engine.stats().transformFailures).toBe(0);
        expect(s.engine.stats().targets[0]!.transformFailures).toBe(0);
      });
    }
  }
});

describe('patterns split across sends', () => {
  // holdMs far beyond the test's pace: a held start of a pattern waits for the next chunk however slow.
  for (const [name, op] of Object.entries({ mask: MASK, replace: REPLACE, grow: GROW, shrink: SHRINK })) {
    it(`${name}: found when the input is cut at every offset around the pattern`, async () => {
      const s = await setup(await plan('both', [op], 10_000));
      const pat = pattern(op);
      const text = Buffer.from(`x${pat}value-1\r\nmore ${pat}tail\r\nend`);
      const at = text.indexOf(pat);
      const want = applyOps([op], text).toString();
      for (let cut = Math.max(1, at - 2); cut <= at + pat.length + 12 && cut < text.length; cut++) {
        const { app, mirror } = await converse(s, [text.subarray(0, cut), text.subarray(cut)]);
        expect(app.toString(), `cut at ${cut}`).toBe(want);
        expect(mirror.toString(), `cut at ${cut}`).toBe(want);
      }
      expect(s.engine.stats().transformFailures).toBe(0);
    });
  }

  it('every byte its own send: still the whole-stream result', async () => {
    const s = await setup(await plan('primary', [MASK, REPLACE], 10_000));
    const text = Buffer.from('a prod-db-1 b\r\nAuthorization: topsecret\r\nc prod-db-1');
    const { app } = await converse(s, [...text].map((b) => Buffer.from([b])));
    expect(app.toString()).toBe(applyOps([MASK, REPLACE], text).toString());
  });

  it('a held start of a pattern is released after holdMs when the client goes quiet, and at its end', async () => {
    const s = await setup(await plan('primary', [REPLACE], 50));
    const c = net.connect(s.engine.listenAddress.port, '127.0.0.1');
    sockets.push(c);
    await new Promise<void>((r) => c.once('connect', () => r()));
    c.write('request prod-db');
    await until('the app to get the held bytes', () => s.app.conns[0]?.length === 'request prod-db'.length, 5000);
    c.end('-1 is not a match any more');
    c.resume();
    expect((await s.app.conns[0]!.ended).toString()).toBe('request prod-db-1 is not a match any more');
  });
});

describe('data', () => {
  it('binary data through a byteMap that moves every byte value (255 - b), on both', async () => {
    const pairs: Record<string, string> = {};
    for (let b = 0; b < 256; b++) pairs[`0x${b.toString(16).padStart(2, '0')}`] = `0x${(255 - b).toString(16).padStart(2, '0')}`;
    const op: XformOp = { byteMap: { pairs } };
    const s = await setup(await plan('both', [op]));
    const data = randomBytes(3 << 20);
    const { app, mirror } = await converse(s, [data]);
    const want = Buffer.from(data.map((b) => 255 - b));
    expect(app.equals(want)).toBe(true);
    expect(mirror.equals(want)).toBe(true);
  });

  it('the ASCII case presets (word arithmetic in the kernel) leave every other byte value alone', async () => {
    const s = await setup(await plan('both', [UPPER]));
    const lower = await setup(await plan('primary', [{ byteMap: { preset: 'lowercase' } }]));
    const data = Buffer.concat([randomBytes(1 << 20), Buffer.from(Array.from({ length: 256 }, (_, b) => b))]);
    const { app, mirror } = await converse(s, [data]);
    expect(app.equals(applyOps([UPPER], data))).toBe(true);
    expect(mirror.equals(applyOps([UPPER], data))).toBe(true);
    const low = await converse(lower, [data]);
    expect(low.app.equals(applyOps([{ byteMap: { preset: 'lowercase' } }], data))).toBe(true);
  });

  it('200 concurrent connections, each transformed on both legs', async () => {
    const s = await setup(await plan('both', [MASK, REPLACE]));
    const texts = Array.from({ length: 200 }, (_, i) =>
      Buffer.from(`conn ${i}: Authorization: key-${i}-${'z'.repeat(i)}\r\nuse prod-db-1;\r\n`.repeat(40)),
    );
    const results = await Promise.all(
      texts.map(async (t) => {
        const c = net.connect(s.engine.listenAddress.port, '127.0.0.1');
        sockets.push(c);
        await new Promise<void>((r) => c.once('connect', () => r()));
        c.end(t);
        c.resume();
        await new Promise((r) => c.once('close', r));
      }),
    );
    expect(results).toHaveLength(200);
    await until('200 app and mirror connections', () => s.app.conns.length === 200 && s.mirror.conns.length === 200);
    const want = new Set(texts.map((t) => applyOps([MASK, REPLACE], t).toString()));
    const got = await Promise.all([...s.app.conns, ...s.mirror.conns].map((r) => r.ended));
    for (const g of got) expect(want.has(g.toString())).toBe(true);
    expect(new Set(got.slice(0, 200).map(String)).size).toBe(200);
    expect(s.engine.stats().transformFailures).toBe(0);
    expect(s.engine.stats().targets[0]!.connectionsCut).toBe(0);
  });
});

// The program's fast paths work on windows of 72 and 136 bytes of one pull (a mask's value and an `until` of
// one or two bytes decided in the window, the search's next candidate from a 128-byte map); the general
// path takes what is near the end of a message, longer patterns and length changes. A stream with values
// of every length from 0 to past two windows, near misses, matches back to back and lone first bytes
// crosses every window edge, in sends cut at random places.
describe('window edges of the fast paths', () => {
  function stream(seed: number, after: string, until: string, bytes: number): Buffer {
    const next = xorshift32(seed);
    const filler = 'abcdefghij klmnopqrstuvwxyz0123456789-=;:<>/@\r';
    const misses = [after.slice(0, 1), after.slice(0, 2), after.slice(0, after.length - 1), until.slice(0, 1), '\r', 'A', 'Au', 'prod-db-', 'p'];
    let s = '';
    let len = 0;
    while (s.length < bytes) {
      const r = next() % 10;
      if (r < 3) for (let i = next() % 150; i > 0; i--) s += filler[next() % filler.length];
      else if (r < 5) s += misses[next() % misses.length]!;
      else {
        // a value of every length in turn, 0 to 300, of bytes that are not the until's first byte
        let v = '';
        for (let i = len; i > 0; i--) {
          const ch = filler[next() % filler.length]!;
          v += ch === until[0] ? 'x' : ch;
        }
        len = (len + 1) % 301;
        s += `${after}${v}${until}`;
        if (next() % 4 === 0) s += `${after}${until}`; // back to back, an empty value
      }
    }
    return Buffer.from(s, 'latin1');
  }
  const cases: Record<string, XformOp[]> = {
    'mask, two-byte until': [MASK],
    'mask, one-byte until': [{ mask: { after: 'key=', until: ';', with: '#' } }],
    'mask, one-byte after and until': [{ mask: { after: '@', until: ' ', with: '_' } }],
    'mask, four-byte until (general path)': [{ mask: { after: '<s>', until: '</s>', with: '.' } }],
    'replace, same length': [REPLACE],
    'replace, growing and shrinking': [GROW, SHRINK],
    'chain: mask, replace, uppercase': [MASK, REPLACE, UPPER],
  };
  for (const [name, ops] of Object.entries(cases)) {
    it(name, async () => {
      const s = await setup(await plan('both', ops, 10_000));
      const first = ops[0]!;
      const [after, until] = 'mask' in first ? [first.mask.after, first.mask.until] : ['prod-db-1', '\r\n'];
      const text = Buffer.concat([stream(0x5eed + name.length, after, until, 200_000), stream(7, 'Authorization: ', '\r\n', 50_000)]);
      const next = xorshift32(name.length * 7919);
      const chunks: Buffer[] = [];
      for (let at = 0; at < text.length; ) {
        const n = Math.min(text.length - at, 1 + (next() % 70_000));
        chunks.push(text.subarray(at, at + n));
        at += n;
      }
      const { app, mirror } = await converse(s, chunks);
      const want = applyOps(ops, text);
      for (const [who, got] of [['app', app], ['mirror', mirror]] as const) {
        if (!got.equals(want)) {
          let i = 0;
          while (i < want.length && want[i] === got[i]) i++;
          throw new Error(`${who} differs at byte ${i} of ${want.length} (got ${got.length}): got ${JSON.stringify(got.subarray(Math.max(0, i - 60), i + 40).toString('latin1'))} want ${JSON.stringify(want.subarray(Math.max(0, i - 60), i + 40).toString('latin1'))}`);
        }
      }
      expect(s.engine.stats().transformFailures).toBe(0);
      expect(s.engine.stats().targets[0]!.transformFailures).toBe(0);
    }, 60_000);
  }
});

describe('the primary with a mirror-only transform', () => {
  it('stays byte-exact over hundreds of MB full of the patterns (tee shares its pages with the mirror)', async () => {
    // holdMs: the test's pacing pauses the client, which must not release a held pattern start early.
    const s = await setup(await plan('mirror', [MASK, REPLACE, UPPER], 10_000));
    // The stream is dense with both patterns, so the program rewrites the mirror's copy everywhere.
    const unit = Buffer.from('Authorization: Bearer abcdefghijklmnop\r\nprod-db-1 prod-db-1 lower case text\r\n');
    const block = Buffer.concat(Array.from({ length: Math.ceil((1 << 20) / unit.length) }, () => unit));
    const blocks = 256; // ~256 MiB
    const sent = createHash('sha256');
    const c = net.connect(s.engine.listenAddress.port, '127.0.0.1');
    sockets.push(c);
    await new Promise<void>((r) => c.once('connect', () => r()));
    const whole = applyOps([MASK, REPLACE, UPPER], block);
    for (let i = 0; i < blocks; i++) {
      sent.update(block);
      if (!c.write(block)) await new Promise((r) => c.once('drain', r));
      // Paced by the mirror (it shares this process with the client and the app): it must keep up for
      // its whole copy to be checked too; the primary is not waited for.
      if (i >= 8) await until('the mirror to keep up', () => (s.mirror.conns[0]?.length ?? 0) >= (i - 8) * whole.length, 30_000, 2);
    }
    c.end();
    c.resume();
    await until('the app connection', () => s.app.conns.length === 1);
    const app = await s.app.conns[0]!.ended;
    expect(app.length).toBe(block.length * blocks);
    expect(createHash('sha256').update(app).digest('hex'), 'the app\'s bytes').toBe(sent.digest('hex'));
    // The mirror got the whole stream, transformed.
    await until('the mirror connection', () => s.mirror.conns.length === 1);
    const mirror = await s.mirror.conns[0]!.ended;
    const wantMirror = createHash('sha256');
    for (let i = 0; i < blocks; i++) wantMirror.update(whole);
    expect(mirror.length).toBe(whole.length * blocks);
    if (!mirror.equals(Buffer.concat(Array.from({ length: blocks }, () => whole)))) {
      const ref = Buffer.concat(Array.from({ length: blocks }, () => whole));
      let i = 0;
      while (i < ref.length && ref[i] === mirror[i]) i++;
      throw new Error(`mirror differs at byte ${i}: got ${JSON.stringify(mirror.subarray(Math.max(0, i - 40), i + 40).toString())} want ${JSON.stringify(ref.subarray(Math.max(0, i - 40), i + 40).toString())}`);
    }
    expect(createHash('sha256').update(mirror).digest('hex')).toBe(wantMirror.digest('hex'));
    const t = s.engine.stats().targets[0]!;
    expect(t.connectionsCut).toBe(0);
    expect(t.transformFailures).toBe(0);
  }, 180_000);
});

describe('memory', () => {
  it('a stalled transformed mirror keeps its socket memory within its send buffer, and the primary goes on', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const s = await setup(await plan('mirror', [REPLACE]), { readGate: gate });
    const data = Buffer.alloc(32 << 20, 'prod-db-1 ');
    const mirrorPort = s.mirror.port;
    // skmem: w<wmem_queued> of the engine's socket to the mirror target, at its largest.
    const queued = () => {
      const out = spawnSync('ss', ['-tmnH', 'dst', `127.0.0.1:${mirrorPort}`], { encoding: 'utf8' }).stdout;
      return Math.max(0, ...[...out.matchAll(/\bw(\d+)\b/g)].map((m) => Number(m[1])));
    };
    let maxQueued = 0;
    const probe = setInterval(() => (maxQueued = Math.max(maxQueued, queued())), 20);
    try {
      const c = net.connect(s.engine.listenAddress.port, '127.0.0.1');
      sockets.push(c);
      c.on('error', () => undefined);
      await new Promise<void>((r) => c.once('connect', () => r()));
      c.end(data);
      c.resume();
      // The mirror lags: its send buffer holds transformed bytes the target does not read.
      await until('the stalled mirror socket to hold queued bytes', () => queued() > 0, 20_000);
      await until('the app connection', () => s.app.conns.length === 1);
      const app = await s.app.conns[0]!.ended;
      expect(app.length).toBe(data.length);
      open();
    } finally {
      clearInterval(probe);
      open();
    }
    expect(maxQueued).toBeGreaterThan(0);
    // The send buffer may grow to spec.mirror.bufferSize (4 MiB here; the kernel doubles it).
    expect(maxQueued).toBeLessThanOrEqual(2 * (4 << 20) + (1 << 20));
  }, 120_000);
});

describe('live edit', () => {
  it('new connections get the new ops, a live one keeps its own', async () => {
    const s = await setup(await plan('primary', [REPLACE], 10_000));
    const old = net.connect(s.engine.listenAddress.port, '127.0.0.1');
    sockets.push(old);
    await new Promise<void>((r) => old.once('connect', () => r()));
    old.write('first prod-db-1 ');
    await until('the old connection at the app', () => s.app.conns.length === 1 && s.app.conns[0]!.length > 0);
    s.engine.update({ mirrors: [], pipeSize: 256 * 1024, turnTimeoutMs: 0, mirrorBufferSize: 4 << 20, transform: await plan('primary', [UPPER]) });
    old.end('then prod-db-1');
    old.resume();
    expect((await s.app.conns[0]!.ended).toString()).toBe('first stag-db-1 then stag-db-1');
    const c = net.connect(s.engine.listenAddress.port, '127.0.0.1');
    sockets.push(c);
    await new Promise<void>((r) => c.once('connect', () => r()));
    c.end('second prod-db-1');
    c.resume();
    await until('the new connection', () => s.app.conns.length >= 2);
    expect((await s.app.conns[s.app.conns.length - 1]!.ended).toString()).toBe('SECOND PROD-DB-1');
  });

  it('an update without a change keeps the loaded profile (no reload per edit)', async () => {
    const t = await plan('both', [MASK]);
    const s = await setup(t);
    for (let i = 0; i < 100; i++) {
      // XF_MAX_PROFILES is 64: reloading an unchanged transform on every update would run out.
      s.engine.update({ mirrors: [{ name: 'staging', host: '127.0.0.1', port: s.mirror.port, samplingPercent: 100 }], pipeSize: 256 * 1024, turnTimeoutMs: i, mirrorBufferSize: 4 << 20, transform: t });
    }
    const { mirror } = await converse(s, [Buffer.from('Authorization: x\r\n')]);
    expect(mirror.toString()).toBe('Authorization: *\r\n');
  });
});

// User programs: compiled here from native/test/fixtures/programs/*.bpf.c with the build's clang.
const programDir = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'programs');
let objDir = '';
function compile(name: string): Uint8Array {
  const out = join(objDir, `${name}.o`);
  execFileSync('clang', ['-g', '-O2', '-target', 'bpf', '-I/usr/include/x86_64-linux-gnu', '-c', join(programDir, `${name}.bpf.c`), '-o', out]);
  return new Uint8Array(readFileSync(out));
}

function progLoaded(name: string): boolean {
  const r = spawnSync('bpftool', ['-j', 'prog', 'show'], { encoding: 'utf8' });
  return (JSON.parse(r.stdout || '[]') as { name?: string }[]).some((p) => p.name === name);
}

describe('user programs', () => {
  beforeAll(() => {
    objDir = mkdtempSync(join(tmpdir(), 'ks-xf-prog-'));
  });
  afterAll(() => rmSync(objDir, { recursive: true, force: true }));

  async function withProgram(elf: Uint8Array, section?: string): Promise<EngineTransform> {
    const t = await plan('primary', [REPLACE]);
    return { ...t, program: { elf, name: 'test program', ...(section ? { section } : {}) } };
  }

  it('runs after the built-in ops on every byte', async () => {
    const s = await setup(await withProgram(compile('a_to_b')));
    const { app } = await converse(s, [Buffer.from('a prod-db-1 banana '), Buffer.from('and aardvark')]);
    expect(app.toString()).toBe('b stbg-db-1 bbnbnb bnd bbrdvbrk');
  });

  it('a program the verifier rejects: ProgramRejected with the verifier output, nothing left loaded', async () => {
    const elf = compile('unchecked_read');
    const app = await recorder();
    let err: (Error & { code?: string; log?: string }) | undefined;
    try {
      startLocalEngine(engines, { upstream: { host: '127.0.0.1', port: app.port }, transform: await withProgram(elf) });
    } catch (e) {
      err = e as typeof err;
    }
    expect(err?.code).toBe('ProgramRejected');
    expect(err?.message).toMatch(/rejected by the kernel's verifier/);
    expect(err?.log).toMatch(/invalid access to packet/);
    expect(progLoaded('ks_unchecked')).toBe(false);
  });

  it('a program of the wrong type, a missing section, not an ELF, and an oversized object are refused', async () => {
    const app = await recorder();
    const start = async (t: EngineTransform) => {
      try {
        startLocalEngine(engines, { upstream: { host: '127.0.0.1', port: app.port }, transform: t });
      } catch (e) {
        return e as Error & { code?: string };
      }
      throw new Error('started');
    };
    const xdp = await start(await withProgram(compile('wrong_type')));
    expect(xdp.code).toBe('ProgramRejected');
    expect(xdp.message).toMatch(/has no sk_msg program .*its programs: xdp \(xdp\)/);
    const section = await start(await withProgram(compile('a_to_b'), 'sk_msg/nope'));
    expect(section.message).toMatch(/has no section "sk_msg\/nope"/);
    const junk = await start(await withProgram(new Uint8Array(randomBytes(4096))));
    expect(junk.message).toMatch(/not an ELF object/);
    const big = new Uint8Array((1 << 20) + 1);
    big.set([0x7f, 0x45, 0x4c, 0x46]);
    const oversized = await start(await withProgram(big));
    expect(oversized.message).toMatch(/at most 1048576 bytes/);
    expect(progLoaded('ks_wrong_type')).toBe(false);
  });

  it('planTransform refuses a program that is not an ELF before any engine starts', async () => {
    const f = join(objDir, 'junk.o');
    writeFileSync(f, 'not an object');
    const t = TransformSchema.parse({ applyTo: 'primary', ops: [{ program: { path: f } }] });
    const { readProgramFile } = await import('../../sidecar/src/cli/program-file.js');
    await expect(planTransform(t, readProgramFile)).rejects.toThrow(/not an ELF object/);
  });
});

// The sidecar runs with CAP_BPF and CAP_NET_ADMIN only (the webhook adds nothing else): the transform
// program and a user program must load and run with exactly those. The engine runs here in a child process
// (uid 0, as in the pod) whose capabilities setpriv cut to that set.
describe("with the sidecar's capabilities only (CAP_BPF + CAP_NET_ADMIN)", () => {
  const CAP_NET_ADMIN = 12n, CAP_BPF = 39n;
  let child: Peer | undefined;
  beforeAll(() => {
    objDir = mkdtempSync(join(tmpdir(), 'ks-xf-caps-'));
  });
  afterEach(() => {
    if (child && child.child.exitCode === null) child.child.kill('SIGKILL');
    child = undefined;
  });
  afterAll(() => rmSync(objDir, { recursive: true, force: true }));

  it('every op and a user program load and transform both legs byte-exact', async () => {
    // a byteMap table (not a case preset), so that the table lookups run too
    const ops: XformOp[] = [MASK, REPLACE, GROW, { byteMap: { pairs: { x: 'y', '0x7a': 'Z' } } }];
    const t = await plan('both', ops, 10_000);
    const transform: EngineTransform = { ...t, program: { elf: compile('a_to_b'), name: 'test program' } };
    const app = await recorder();
    const mirror = await recorder();
    const config = {
      listen: { host: '127.0.0.1', port: 0 },
      upstream: { host: '127.0.0.1', port: app.port },
      mirrors: [{ name: 'staging', host: '127.0.0.1', port: mirror.port, samplingPercent: 100 }],
      pipeSize: 256 * 1024,
      mirrorConnectTimeoutMs: 2000,
      turnTimeoutMs: 0,
      mirrorBufferSize: 4 << 20,
      transform,
    };
    const json = JSON.stringify(config, (_k, v: unknown) => (v instanceof Uint8Array ? { $bytes: Buffer.from(v).toString('base64') } : v));
    const script = fileURLToPath(new URL('./fixtures/engine-child.mjs', import.meta.url));
    child = new Peer(
      spawn('setpriv', ['--inh-caps=-all', '--bounding-set=-all,+bpf,+net_admin', '--', process.execPath, script, json], { stdio: ['pipe', 'pipe', 'pipe'] }),
    );
    const [l] = await child.waitFor<{ port: number }>('listening', 1, 30_000);
    const capEff = BigInt(`0x${/^CapEff:\s+([0-9a-f]+)/m.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))![1]}`);
    expect(capEff).toBe((1n << CAP_NET_ADMIN) | (1n << CAP_BPF));

    // Dense with every pattern, cut into sends at odd places so that holds are exercised too.
    const unit = 'GET /a HTTP/1.1\r\nAuthorization: Bearer s3cr3t\r\nX-DB: prod-db-1\r\nbody: alpha xyz db-1 prod-db-';
    const text = Buffer.from(unit.repeat(3000) + 'end');
    const c = net.connect(l!.port, '127.0.0.1');
    sockets.push(c);
    c.on('error', () => undefined);
    await new Promise<void>((r) => c.once('connect', () => r()));
    for (let at = 0; at < text.length; ) {
      const n = Math.min(text.length - at, 1 + ((at * 7919) % 40_000));
      c.write(text.subarray(at, at + n));
      at += n;
    }
    c.end();
    c.resume();
    await until('both connections', () => app.conns.length > 0 && mirror.conns.length > 0);
    const [gotApp, gotMirror] = await Promise.all([app.conns[0]!.ended, mirror.conns[0]!.ended]);
    const want = Buffer.from(applyOps(ops, text).toString('latin1').replaceAll('a', 'b'), 'latin1');
    expect(gotApp.length).toBe(want.length);
    expect(gotApp.equals(want)).toBe(true);
    expect(gotMirror.equals(want)).toBe(true);
    type Sample = { stats: { transformFailures: number; targets: { transformFailures: number }[] } };
    const seen = child.lines.filter((x) => x.event === 'sample').length;
    const [sample] = (await child.waitFor<Sample>('sample', seen + 1)).slice(-1);
    expect(sample!.stats.transformFailures).toBe(0);
    expect(sample!.stats.targets[0]!.transformFailures).toBe(0);
  });
});
