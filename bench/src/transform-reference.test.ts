// The reference transforms, against outputs worked out by hand, and the bench data's properties that the
// harness relies on (lengths kept, the block repeats without a pattern across its seams).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BENCH_REPLY, benchBlock, benchRequest, density } from './transform-data.js';
import { applyOp, applyOps, BENCH_OPS, partialSuffix, pendingBytes, type XformOp } from './transform-reference.js';

const t = (op: XformOp, s: string): string => applyOp(op, Buffer.from(s, 'latin1')).toString('latin1');
const pending = (op: XformOp, s: string): number => pendingBytes(op, Buffer.from(s, 'latin1'));
const { mask, replace, uppercase } = BENCH_OPS;

describe('mask', () => {
  it('masks from after `after` up to `until`, keeping both', () => {
    expect(t(mask, 'GET / HTTP/1.1\r\nAuthorization: Bearer abc\r\nHost: x\r\n')).toBe('GET / HTTP/1.1\r\nAuthorization: **********\r\nHost: x\r\n');
  });

  it('masks every occurrence, resuming the search after `until`', () => {
    expect(t(mask, 'Authorization: a\r\nAuthorization: bb\r\n')).toBe('Authorization: *\r\nAuthorization: **\r\n');
  });

  it('an `after` inside a masked region is masked over, not a new start', () => {
    expect(t(mask, 'Authorization: Authorization: x\r\nz')).toBe('Authorization: ****************\r\nz');
  });

  it('nothing to mask between adjacent markers; a lone \\r or \\n is masked', () => {
    expect(t(mask, 'Authorization: \r\n')).toBe('Authorization: \r\n');
    expect(t(mask, 'Authorization: a\rb\nc\r\r\n')).toBe('Authorization: ******\r\n');
  });

  it('with no `until` the rest of the stream is masked', () => {
    expect(t(mask, 'x Authorization: secret')).toBe('x Authorization: ******');
    expect(t(mask, 'Authorization: s\r')).toBe('Authorization: **');
  });

  it('near misses of `after` are left alone', () => {
    expect(t(mask, 'AuthAuthorization:x\r\nauthorization: y\r\nAuthorization:  z\r\n')).toBe('AuthAuthorization:x\r\nauthorization: y\r\nAuthorization: **\r\n');
  });

  it('uses the `with` byte and multi-byte markers', () => {
    expect(t({ mask: { after: '<s>', until: '</s>', with: '#' } }, 'a<s>xy</s>b<s>z</')).toBe('a<s>##</s>b<s>###');
  });
});

describe('replace', () => {
  it('replaces every leftmost non-overlapping occurrence', () => {
    expect(t(replace, 'db=prod-db-1 and prod-db-1prod-db-1')).toBe('db=stag-db-1 and stag-db-1stag-db-1');
    expect(t({ replace: { from: 'aa', to: 'b' } }, 'aaaaa')).toBe('bba');
  });

  it('does not rescan what it wrote, and may change the length', () => {
    expect(t({ replace: { from: 'a', to: 'aa' } }, 'aba')).toBe('aabaa');
    expect(t({ replace: { from: 'prod-', to: '' } }, 'prod-prod-db-1')).toBe('db-1');
  });

  it('leaves partial matches alone', () => {
    expect(t(replace, 'prod-db-prod-db-2 prod-db-')).toBe('prod-db-prod-db-2 prod-db-');
  });
});

describe('byteMap', () => {
  it('uppercase maps a-z only', () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const out = applyOp(uppercase, all);
    for (let i = 0; i < 256; i++) expect(out[i]).toBe(i >= 0x61 && i <= 0x7a ? i - 32 : i);
  });

  it('pairs override the preset for their byte: one table lookup per byte', () => {
    expect(t({ byteMap: { preset: 'lowercase', pairs: { a: 'Z', '-': '_' } } }, 'Aab-C')).toBe('aZb_c');
    expect(t({ byteMap: { pairs: { '0x0a': ' ', '0xC1': 'A' } } }, 'x\n\xc1')).toBe('x A');
  });
});

describe('ops chain in order', () => {
  it('each op sees the previous one\'s output', () => {
    expect(applyOps([replace, uppercase], Buffer.from('prod-db-1')).toString()).toBe('STAG-DB-1');
    expect(applyOps([uppercase, replace], Buffer.from('prod-db-1')).toString()).toBe('PROD-DB-1');
  });
});

describe('pendingBytes: what a streaming implementation must hold back', () => {
  it('a partial `until` while masking, nothing otherwise', () => {
    expect(pending(mask, 'Authorization: abc\r')).toBe(1);
    expect(pending(mask, 'Authorization: abc')).toBe(0);
    expect(pending(mask, 'Authorization: abc\r\n\r')).toBe(0);
    expect(pending(mask, 'x Authorizat')).toBe(0);
    expect(pending(mask, 'Authorization: \r')).toBe(1);
  });

  it('a partial `from`, after the last replacement', () => {
    expect(pending(replace, 'x prod-db-')).toBe(8);
    expect(pending(replace, 'x p')).toBe(1);
    expect(pending(replace, 'prod-db-1')).toBe(0);
    expect(pending(replace, 'prod-db-1p')).toBe(1);
    expect(pending(uppercase, 'abc')).toBe(0);
  });

  it('holding back exactly pendingBytes is enough: the rest of the output never changes', () => {
    const alphabet = ['Authorization: ', '\r\n', '\r', 'A', 'x', 'prod-db-1', 'prod-', 'p', '-db-1'];
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...alphabet), { maxLength: 24 }), fc.array(fc.constantFrom(...alphabet), { maxLength: 8 }), (a, b) => {
        for (const op of [mask, replace, uppercase] as XformOp[]) {
          const prefix = Buffer.from(a.join(''), 'latin1');
          const whole = applyOp(op, Buffer.from(a.join('') + b.join(''), 'latin1'));
          const sure = applyOp(op, prefix).subarray(0, prefix.length - pendingBytes(op, prefix));
          // The ops of this test keep lengths, so "final bytes of the prefix" are a prefix of the output.
          expect(whole.subarray(0, sure.length).equals(sure)).toBe(true);
        }
      }),
    );
  });

  it('partialSuffix finds the longest proper prefix at the end', () => {
    const p = Buffer.from('abab');
    expect(partialSuffix(Buffer.from('xxaba'), 0, p)).toBe(3);
    expect(partialSuffix(Buffer.from('xxabab'), 0, p)).toBe(2);
    expect(partialSuffix(Buffer.from('xxab'), 3, p)).toBe(0);
  });
});

describe('the bench data', () => {
  it('requests have the asked size, and the ops keep their length', () => {
    for (const size of [512, 4096]) {
      const r = benchRequest(size, 3);
      expect(r.length).toBe(size);
      expect(r.subarray(-2).toString()).toBe('\r\n');
      for (const op of Object.values(BENCH_OPS)) expect(applyOp(op, r).length).toBe(size);
    }
    expect(BENCH_REPLY.length).toBe(64);
  });

  it('the block repeats cleanly: the transform of a repetition is the repetition of the transform', () => {
    const block = benchBlock();
    for (const op of Object.values(BENCH_OPS)) {
      const once = applyOp(op, block);
      expect(applyOp(op, Buffer.concat([block, block, block])).equals(Buffer.concat([once, once, once]))).toBe(true);
      expect(pendingBytes(op, block)).toBe(0);
      expect(once.equals(block)).toBe(false);
    }
  });

  it('is dense with the patterns', () => {
    const block = benchBlock();
    expect(density(BENCH_OPS.mask, block)).toBeGreaterThan(8);
    expect(density(BENCH_OPS.replace, block)).toBeGreaterThan(8);
    expect(density(BENCH_OPS.uppercase, block)).toBeGreaterThan(500);
  });
});
