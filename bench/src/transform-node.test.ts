// The Node transform baseline's streaming logic (bench/tools/xform-proxy.mjs) against the reference, on
// random streams cut into random chunks: same output, and after every chunk exactly the bytes that are
// final have been passed on (pendingBytes held back, no more). The kernel test runs the real proxy.
import fc from 'fast-check';
import type { Transform } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createTransform } from '../tools/xform-proxy.mjs';
import { applyOp, BENCH_OPS, pendingBytes, type XformOp } from './transform-reference.js';

/** Drives the Transform's own methods chunk by chunk (they answer synchronously). */
function run(t: Transform, chunks: Buffer[], onChunk: (outSoFar: number, inSoFar: number) => void): Buffer {
  const out: Buffer[] = [];
  let outLen = 0;
  let inLen = 0;
  const take = (err?: Error | null, data?: Buffer) => {
    if (err) throw err;
    if (data) {
      out.push(Buffer.from(data));
      outLen += data.length;
    }
  };
  for (const c of chunks) {
    t._transform(Buffer.from(c), 'buffer' as BufferEncoding, take);
    inLen += c.length;
    onChunk(outLen, inLen);
  }
  t._flush?.(take); // a byteMap holds nothing back and has no _flush
  return Buffer.concat(out);
}

const OPS: Array<[string, XformOp, boolean]> = [
  ['mask', BENCH_OPS.mask, true],
  ['replace', BENCH_OPS.replace, true],
  ['uppercase', BENCH_OPS.uppercase, true],
  ['mask <s>..</s>', { mask: { after: '<s>', until: '</s>', with: '#' } }, true],
  ['replace growing', { replace: { from: 'ab', to: 'xyz' } }, false],
  ['replace deleting', { replace: { from: 'prod-', to: '' } }, false],
  ['byteMap pairs', { byteMap: { preset: 'lowercase', pairs: { a: 'Z', '0x0a': ' ' } } }, true],
];
const PIECES = ['Authorization: ', 'Authorization:', 'Auth', '\r\n', '\r', '\n', 'prod-db-1', 'prod-', 'p', 'db-1', 'ab', 'a', '<s>', '</s>', '</', 'x', 'Q'];

describe('xform-proxy.mjs transforms', () => {
  for (const [name, op, keepsLength] of OPS) {
    it(`${name}: equals the reference however the stream is cut, holding back only undecided bytes`, () => {
      fc.assert(
        fc.property(fc.array(fc.constantFrom(...PIECES), { maxLength: 40 }), fc.array(fc.nat(60), { maxLength: 12 }), (pieces, cutsRaw) => {
          const input = Buffer.from(pieces.join(''), 'latin1');
          const cuts = [...new Set(cutsRaw.map((c) => Math.min(c, input.length)))].sort((a, b) => a - b);
          const chunks: Buffer[] = [];
          let prev = 0;
          for (const c of [...cuts, input.length]) {
            chunks.push(input.subarray(prev, c));
            prev = c;
          }
          const out = run(createTransform(op), chunks, (outSoFar, inSoFar) => {
            if (keepsLength) expect(outSoFar).toBe(inSoFar - pendingBytes(op, input.subarray(0, inSoFar)));
          });
          expect(out.toString('latin1')).toBe(applyOp(op, input).toString('latin1'));
        }),
        { numRuns: 400 },
      );
    });
  }

  it('refuses ops it cannot apply', () => {
    expect(() => createTransform({ mask: { after: 'a', until: 'b', with: '**' } })).toThrow(/one byte/);
    expect(() => createTransform({ byteMap: { pairs: { ab: 'c' } } })).toThrow(/ASCII character or 0xNN/);
    expect(() => createTransform({ program: {} })).toThrow(/unknown op/);
  });
});
