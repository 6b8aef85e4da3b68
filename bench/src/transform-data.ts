// The bytes the transform bench sends: HTTP-like requests dense with what the three ops look for
// (Authorization headers, "prod-db-1", lower-case text), deterministic so that every run and every path
// moves the same stream, and so that the expected output is known before the run.
import { applyOp, type XformOp } from './transform-reference.js';

const WORDS = ['order', 'status', 'shipped', 'payment', 'cart', 'checkout', 'invoice', 'customer', 'region', 'queue'];

/** A small deterministic generator (xorshift32), so that the data does not depend on Math.random. */
export function xorshift32(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

function token(next: () => number, n: number): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[next() % alphabet.length];
  return s;
}

/** One body line: a log-like record naming the database and carrying a credential. About 90 bytes. */
function bodyLine(next: () => number, i: number): string {
  const w = (k: number) => WORDS[(next() + k) % WORDS.length];
  return `${w(0)} ${w(1)} id=${i} db=prod-db-1 ${w(2)} Authorization: Basic ${token(next, 16)}\r\n`;
}

/**
 * One request of exactly `size` bytes: request line, headers (Host names prod-db-1, an Authorization
 * header with a bearer token) and a body of log-like lines, padded with lower-case text. It ends with
 * "\r\n", outside any masked region, so requests can follow each other without a pattern across them.
 */
export function benchRequest(size: number, seq = 0): Buffer {
  const next = xorshift32(0x9e3779b9 ^ (seq * 2654435761));
  const lines: string[] = [];
  let bodyBytes = 0;
  const head = (len: number) =>
    `POST /api/v1/orders/${seq} HTTP/1.1\r\nHost: prod-db-1.shop.internal\r\nAuthorization: Bearer ${token(next, 40)}\r\n` +
    `Content-Type: text/plain\r\nContent-Length: ${String(len).padStart(6, '0')}\r\n\r\n`;
  const headLen = Buffer.byteLength(head(0));
  if (size < headLen + 2) throw new Error(`a request needs at least ${headLen + 2} bytes`);
  const budget = size - headLen;
  for (let i = 0; ; i++) {
    const line = bodyLine(next, i);
    if (bodyBytes + line.length + 2 > budget) break;
    lines.push(line);
    bodyBytes += line.length;
  }
  const pad = budget - bodyBytes - 2;
  let filler = '';
  while (filler.length < pad) filler += `${WORDS[next() % WORDS.length]} `;
  lines.push(`${filler.slice(0, pad)}\r\n`);
  const out = Buffer.from(head(budget) + lines.join(''), 'latin1');
  if (out.length !== size) throw new Error(`request is ${out.length} bytes, wanted ${size}`);
  return out;
}

/** The bulk stream's unit: `count` requests of `size` bytes back to back (the stream repeats it). */
export function benchBlock(count = 16, size = 4096): Buffer {
  return Buffer.concat(Array.from({ length: count }, (_, i) => benchRequest(size, i + 1)));
}

/** The 64 B reply of the request/response load; the reply direction is never transformed. */
export const BENCH_REPLY = Buffer.from('HTTP/1.1 200 OK\r\nAuthorization: prod-db-1 reply\r\nContent-Length: 0\r\n\r\n'.padEnd(64, 'x'), 'latin1').subarray(0, 64);

/** Occurrences of what an op looks for in `data`, per KiB: how dense the load is for that op. */
export function density(op: XformOp, data: Buffer): number {
  const kib = data.length / 1024;
  if ('byteMap' in op) {
    const changed = applyOp(op, data);
    let n = 0;
    for (let i = 0; i < data.length; i++) if (changed[i] !== data[i]) n++;
    return n / kib;
  }
  const pat = Buffer.from('mask' in op ? op.mask.after : op.replace.from, 'utf8');
  let n = 0;
  for (let p = data.indexOf(pat); p >= 0; p = data.indexOf(pat, p + pat.length)) n++;
  return n / kib;
}
