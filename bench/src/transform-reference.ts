// What the transform ops mean, as whole-buffer functions: the output every implementation (the C and Node
// baselines of the transform bench, KStreams' in-kernel transforms) must produce from a client -> server
// stream, however the stream was cut into reads. The bench's correctness test compares the proxies' output
// with these; nothing here streams, so nothing here can get a read boundary wrong.
//
// Bytes: the ops' strings are UTF-8 (as the StreamPath's are); mask.with must be one byte; a byteMap pair's
// key and value are bytes written as the StreamPath writes them (one ASCII character, or 0xNN).
import { byteOf } from '../../api/src/streampath.js';

/** One op, in the shape of a StreamPath's spec.transform.ops[] entry (program ops are not modelled here). */
export type XformOp =
  | { mask: { after: string; until: string; with: string } }
  | { replace: { from: string; to: string } }
  | { byteMap: { preset?: 'uppercase' | 'lowercase'; pairs?: Record<string, string> } };

/** The three ops of the transform bench, by the name the proxies' --op flag takes. */
export const BENCH_OPS = {
  mask: { mask: { after: 'Authorization: ', until: '\r\n', with: '*' } },
  replace: { replace: { from: 'prod-db-1', to: 'stag-db-1' } },
  uppercase: { byteMap: { preset: 'uppercase' } },
} as const satisfies Record<string, XformOp>;

export type BenchOpName = keyof typeof BENCH_OPS;
export const BENCH_OP_NAMES = Object.keys(BENCH_OPS) as BenchOpName[];

function bytes(s: string, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length === 0) throw new Error(`${what} must not be empty`);
  return b;
}

function oneByte(s: string, what: string): number {
  const b = Buffer.from(s, 'utf8');
  if (b.length !== 1) throw new Error(`${what} must be one byte, got ${JSON.stringify(s)}`);
  return b[0] as number;
}

/** The 256-entry byte table of a byteMap op: the preset's, with the pairs overriding their bytes' entries. */
export function byteTable(op: Extract<XformOp, { byteMap: unknown }>['byteMap']): Uint8Array {
  const t = new Uint8Array(256);
  for (let i = 0; i < 256; i++) t[i] = i;
  if (op.preset === 'uppercase') for (let c = 0x61; c <= 0x7a; c++) t[c] = c - 32;
  if (op.preset === 'lowercase') for (let c = 0x41; c <= 0x5a; c++) t[c] = c + 32;
  for (const [k, v] of Object.entries(op.pairs ?? {})) t[byteOf(k)] = byteOf(v);
  return t;
}

/**
 * mask: every byte after each occurrence of `after`, up to but not including the next occurrence of `until`,
 * becomes `with`; the search for the next `after` resumes after that `until`. With no `until` before the end
 * of the stream, everything to the end is masked (a secret cut short is still a secret).
 */
function mask(input: Buffer, after: Buffer, until: Buffer, withByte: number): Buffer {
  const out = Buffer.from(input);
  let p = 0;
  while (p < out.length) {
    const a = out.indexOf(after, p);
    if (a < 0) break;
    const start = a + after.length;
    const u = out.indexOf(until, start);
    const end = u < 0 ? out.length : u;
    out.fill(withByte, start, end);
    p = u < 0 ? out.length : u + until.length;
  }
  return out;
}

/** replace: each leftmost non-overlapping occurrence of `from` becomes `to` (the scan resumes after it). */
function replace(input: Buffer, from: Buffer, to: Buffer): Buffer {
  const parts: Buffer[] = [];
  let p = 0;
  for (;;) {
    const i = input.indexOf(from, p);
    if (i < 0) break;
    parts.push(input.subarray(p, i), to);
    p = i + from.length;
  }
  parts.push(input.subarray(p));
  return Buffer.concat(parts);
}

/** The op applied to a whole stream. */
export function applyOp(op: XformOp, input: Uint8Array): Buffer {
  const buf = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  if ('mask' in op) return mask(buf, bytes(op.mask.after, 'mask.after'), bytes(op.mask.until, 'mask.until'), oneByte(op.mask.with, 'mask.with'));
  if ('replace' in op) return replace(buf, bytes(op.replace.from, 'replace.from'), Buffer.from(op.replace.to, 'utf8'));
  const t = byteTable(op.byteMap);
  const out = Buffer.allocUnsafe(buf.length);
  for (let i = 0; i < buf.length; i++) out[i] = t[buf[i] as number] as number;
  return out;
}

/** The ops applied in order, each to the previous one's output (how spec.transform.ops chains them). */
export function applyOps(ops: readonly XformOp[], input: Uint8Array): Buffer {
  let b: Buffer = Buffer.from(input);
  for (const op of ops) b = applyOp(op, b);
  return b;
}

/** Length of the longest suffix of buf[from, end) that is a proper prefix of pat. */
export function partialSuffix(buf: Buffer, from: number, pat: Buffer, end = buf.length): number {
  for (let i = Math.max(from, end - (pat.length - 1)); i < end; i++) {
    if (buf.compare(pat, 0, end - i, i, end) === 0) return end - i;
  }
  return 0;
}

/**
 * How many bytes at the end of `prefix` (the stream so far) a streaming implementation cannot pass on yet,
 * because what they become depends on bytes still to come: a partial `until` while masking (the bytes are
 * masked unless `until` completes), a partial `from`. Everything before them is final, and an implementation
 * that holds back more can stall a request/response protocol: a request's last bytes would wait for the next
 * request. (A partial `after` need not wait: those bytes are passed on unchanged either way.)
 */
export function pendingBytes(op: XformOp, prefix: Uint8Array): number {
  const buf = Buffer.from(prefix.buffer, prefix.byteOffset, prefix.byteLength);
  if ('byteMap' in op) return 0;
  if ('replace' in op) {
    const from = bytes(op.replace.from, 'replace.from');
    let p = 0;
    for (;;) {
      const i = buf.indexOf(from, p);
      if (i < 0) break;
      p = i + from.length;
    }
    return partialSuffix(buf, p, from);
  }
  const after = bytes(op.mask.after, 'mask.after');
  const until = bytes(op.mask.until, 'mask.until');
  let p = 0;
  for (;;) {
    const a = buf.indexOf(after, p);
    if (a < 0) return 0;
    const start = a + after.length;
    const u = buf.indexOf(until, start);
    if (u < 0) return partialSuffix(buf, start, until);
    p = u + until.length;
  }
}
