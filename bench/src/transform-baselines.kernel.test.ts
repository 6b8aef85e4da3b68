// The transform bench's user-space baselines (bench/tools/xform-proxy.c and xform-proxy.mjs) must produce
// what the reference produces, however the stream is cut into reads. Each proxy runs in its own network
// namespace (ks-b1-xt-*), reached over a veth pair from this process, which plays the client and the server.
// Every cut is forced into its own read: the test writes up to the cut, waits until the server has what the
// proxy can already pass on (all but pendingBytes: a partial `until` while masking, a partial `from`), then
// writes the rest. A proxy that holds back more than that would stall request/response traffic, and fails.
// Every connection ends with a half-close: the server answers after the client's FIN, and the answer, full
// of the patterns, must come back untouched.
import { once } from 'node:events';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Proc } from './procs.js';
import { BENCH_REPLY, benchBlock, benchRequest } from './transform-data.js';
import { benchNetns, vethTo, type XformNetns } from './transform-netns.js';
import { buildXformTools, startBaseline, type BaselineImpl, type XformTools } from './transform-proxies.js';
import { applyOp, BENCH_OP_NAMES, BENCH_OPS, pendingBytes, type BenchOpName, type XformOp } from './transform-reference.js';

const CAPTURE_PORT = 47320;
const PROXY_PORT: Record<BaselineImpl, number> = { c: 47330, node: 47340 };
const WAIT_MS = 5000;

/** One connection as the server sees it. */
class ServerConn {
  readonly chunks: Buffer[] = [];
  length = 0;
  readonly ended: Promise<unknown>;
  private waiters: Array<() => void> = [];

  constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.length += d.length;
      for (const w of this.waiters.splice(0)) w();
    });
    this.ended = once(socket, 'end');
  }

  data(): Buffer {
    return Buffer.concat(this.chunks);
  }

  /** Resolves once `n` bytes arrived; rejects after WAIT_MS naming `what`. */
  async waitFor(n: number, what: string): Promise<void> {
    const deadline = Date.now() + WAIT_MS;
    while (this.length < n) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${what}: the server got ${this.length} of ${n} bytes within ${WAIT_MS} ms (bytes held back that are final)`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
}

/** The upstream of the proxies: hands out accepted connections in order (the test runs one at a time). */
class Capture {
  private readonly server: net.Server;
  private readonly accepted: ServerConn[] = [];
  private waiting: Array<(c: ServerConn) => void> = [];

  constructor() {
    this.server = net.createServer({ allowHalfOpen: true, noDelay: true }, (s) => {
      s.on('error', () => undefined);
      const c = new ServerConn(s);
      const w = this.waiting.shift();
      if (w) w(c);
      else this.accepted.push(c);
    });
  }

  async listen(host: string, port: number): Promise<void> {
    this.server.listen(port, host);
    await once(this.server, 'listening');
  }

  next(): Promise<ServerConn> {
    const c = this.accepted.shift();
    if (c) return Promise.resolve(c);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('the proxy did not connect upstream within 5 s')), WAIT_MS);
      this.waiting.push((conn) => {
        clearTimeout(t);
        resolve(conn);
      });
    });
  }

  async close(): Promise<void> {
    this.server.close();
    for (const c of this.accepted) c.socket.destroy();
  }
}

/** Where the first difference is, for a readable failure. */
function firstDiff(a: Buffer, b: Buffer): string {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  if (i === n && a.length === b.length) return 'equal';
  const show = (x: Buffer) => JSON.stringify(x.subarray(Math.max(0, i - 20), i + 20).toString('latin1'));
  return `lengths ${a.length}/${b.length}, first difference at ${i}: got ${show(a)}, want ${show(b)}`;
}

let ns: XformNetns;
let tools: XformTools;
let capture: Capture;
let upstream: string;
let proxyHost: string;
const procs: Proc[] = [];

beforeAll(async () => {
  tools = buildXformTools();
  ns = benchNetns('xt');
  const veth = vethTo(ns);
  proxyHost = veth.nsAddress;
  capture = new Capture();
  await capture.listen(veth.rootAddress, CAPTURE_PORT);
  upstream = `${veth.rootAddress}:${CAPTURE_PORT}`;
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.stop(1000)));
  await capture?.close();
  await ns?.destroy();
});

/**
 * Sends `input` through the proxy on `port`, cut at `cuts` (each cut waited for at the server), then
 * half-closes; the server answers BENCH_REPLY after the FIN. Checks the output and the answer.
 */
async function exchange(port: number, op: XformOp, input: Buffer, cuts: number[], label: string): Promise<void> {
  const accepted = capture.next();
  const client = net.connect({ host: proxyHost, port, allowHalfOpen: true, noDelay: true });
  const reply: Buffer[] = [];
  client.on('data', (d: Buffer) => reply.push(d));
  const clientEnded = once(client, 'end');
  try {
    await once(client, 'connect');
    const conn = await accepted;
    const want = applyOp(op, input);
    let prev = 0;
    for (const cut of cuts) {
      if (cut <= prev || cut >= input.length) continue;
      client.write(input.subarray(prev, cut));
      const final = cut - pendingBytes(op, input.subarray(0, cut));
      await conn.waitFor(final, `${label}, cut at ${cut}`);
      // What arrived is the start of the right output (the ops of the bench keep lengths).
      const got = conn.data();
      if (!got.equals(want.subarray(0, got.length))) throw new Error(`${label}, cut at ${cut}: ${firstDiff(got, want.subarray(0, got.length))}`);
      prev = cut;
    }
    client.end(input.subarray(prev));
    await conn.ended;
    conn.socket.end(BENCH_REPLY);
    await clientEnded;
    const got = conn.data();
    if (!got.equals(want)) throw new Error(`${label}: ${firstDiff(got, want)}`);
    expect(Buffer.concat(reply).equals(BENCH_REPLY), `${label}: the reply came back changed`).toBe(true);
  } finally {
    client.destroy();
  }
}

/** Start offsets of every occurrence of `pat` in `data`. */
function occurrences(data: Buffer, pat: string): number[] {
  const out: number[] = [];
  for (let i = data.indexOf(pat); i >= 0; i = data.indexOf(pat, i + 1)) out.push(i);
  return out;
}

/** The patterns an op looks for (for uppercase: none; a few lower-case words stand in). */
function patterns(op: XformOp): string[] {
  if ('mask' in op) return [op.mask.after, op.mask.until];
  if ('replace' in op) return [op.replace.from];
  return ['payment', 'id='];
}

// Short streams with every awkward case: near misses, markers back to back, an `after` inside a masked
// region, `until` after a lone \r, overlapping partial `from`s; the first ends masking with a lone \r and no
// `until` (masked at the end), the second with a partial `from` (passed on unchanged at the end).
const TRICKY = [
  'GET / HTTP/1.1\r\nAuthorization: Bearer t0k\r\nAuthorization: \r\nAuthAuthorization: x\ry\r\n' +
    'Authorization: Authorization: z\r\r\nhost prod-db-prod-db-1prod-db-1 p x\r\nAuthorization: tail\r',
  'Authorizatio\r\nAuthorization:\r\nprod-db-1prod-db-1 prod-prod-db-1 Authorization: a\r\nAuthorization: b\r\nx prod-db-',
].map((s) => Buffer.from(s, 'latin1'));

describe.each(['c', 'node'] as BaselineImpl[])('the %s transform proxy', (impl) => {
  const ports: Partial<Record<BenchOpName, number>> = {};

  beforeAll(async () => {
    for (const [i, name] of BENCH_OP_NAMES.entries()) {
      const p = await startBaseline(ns, tools, impl, name, `${proxyHost}:${PROXY_PORT[impl] + i}`, upstream);
      procs.push(p.proc);
      ports[name] = p.port;
    }
  });

  describe.each(BENCH_OP_NAMES)('%s', (name) => {
    const op: XformOp = BENCH_OPS[name];
    const port = (): number => ports[name] as number;

    it('matches the reference with the stream cut once, at every offset of the awkward streams', async () => {
      for (const [s, input] of TRICKY.entries()) {
        for (let cut = 1; cut < input.length; cut++) await exchange(port(), op, input, [cut], `tricky ${s}`);
      }
    });

    it('matches the reference with every occurrence of each pattern cut at the same offset, for every offset around it', async () => {
      const input = benchBlock(2, 4096);
      for (const pat of patterns(op)) {
        const at = occurrences(input, pat);
        expect(at.length).toBeGreaterThan(10);
        for (let d = -1; d <= pat.length + 1; d++) {
          await exchange(port(), op, input, at.map((i) => i + d), `${JSON.stringify(pat)} cut at +${d}`);
        }
      }
    });

    it('matches the reference on 8 MiB written at once and on 64 KiB in random small reads', async () => {
      const block = benchBlock();
      await exchange(port(), op, Buffer.concat(Array.from({ length: 128 }, () => block)), [], '8 MiB');
      let x = 12345;
      const cuts: number[] = [];
      for (let c = 0; c < block.length; ) {
        x = (x * 1103515245 + 12345) % 2 ** 31;
        c += 1 + (x % 300);
        cuts.push(c);
      }
      await exchange(port(), op, block, cuts, 'random cuts');
    });

    it('request/response on one connection: each request passes whole before its reply', async () => {
      const accepted = capture.next();
      const client = net.connect({ host: proxyHost, port: port(), allowHalfOpen: true, noDelay: true });
      try {
        await once(client, 'connect');
        const conn = await accepted;
        const replies: Buffer[] = [];
        let replyBytes = 0;
        let wake: () => void = () => undefined;
        client.on('data', (d: Buffer) => {
          replies.push(d);
          replyBytes += d.length;
          wake();
        });
        for (let i = 1; i <= 5; i++) {
          const req = benchRequest(4096, i);
          client.write(req);
          await conn.waitFor(4096 * i, `request ${i}`);
          expect(conn.data().subarray(4096 * (i - 1)).equals(applyOp(op, req))).toBe(true);
          conn.socket.write(BENCH_REPLY);
          while (replyBytes < 64 * i) await new Promise<void>((resolve) => (wake = resolve));
        }
        expect(Buffer.concat(replies).equals(Buffer.concat(Array.from({ length: 5 }, () => BENCH_REPLY)))).toBe(true);
        client.end();
        await conn.ended;
        conn.socket.end();
        await once(client, 'end');
      } finally {
        client.destroy();
      }
    });
  });
});
