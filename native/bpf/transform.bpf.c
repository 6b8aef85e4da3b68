// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * In-kernel transforms: an SK_MSG verdict program on the engine's SOCKHASH. Every socket the engine sends
 * transformed bytes on (a mirror connection, or the upstream connection to the app) is put in the hash
 * before its first byte, so the program runs on every send: splice(pipe -> socket), sendfile(memfd ->
 * socket) and write() all reach tcp_bpf_sendmsg, which copies the bytes into pages of its own (the pages
 * the program writes are never the pipe's, so a primary page shared by tee() is never touched) and then
 * runs this program on them.
 *
 * The ops of the connection's profile run in order over the message, each on the output of the previous:
 * mask, replace (any lengths: bpf_msg_pop_data/push_data) and byteMap. A pattern split across two sends is
 * found: an op that ends a message on a partial match holds those bytes back (pops them into the socket's
 * state) and pushes them in front of the next message. The engine releases holds with a flush: it sets
 * ledger.flush and writes one trigger byte, which the program removes after running the ops in their
 * final mode (a partial match at a flush is no match).
 *
 * Fail closed: whatever goes wrong (no state, a helper failing) is SK_DROP, which fails the send with
 * EACCES: untransformed bytes never leave. The ledger counts what the program consumed, so that the engine
 * can prove after each send that the program ran over every byte the kernel took (a send the kernel cut
 * short after the verdict would otherwise leave the next bytes unexamined; the engine then closes the leg).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "transform.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define XF_BLOCK 64
/* Accesses stay within this distance of the window's base (the verifier bounds packet offsets at 64 KiB,
 * and offsets must stay provable): ensure() slides the window forward, which costs no copy once the
 * message is linear. */
#define XF_WINDOW 16384
#define XF_MAX_STEPS (1 << 17)

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, XF_MAX_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} xf_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct xf_conn);
} xf_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XF_MAX_PROFILES);
	__type(key, __u32);
	__type(value, struct xf_profile);
} xf_profiles SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, XF_MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct xf_ledger);
} xf_ledger SEC(".maps");

/* The user's program (spec.transform ops[].program), tail-called after the built-in ops. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} xf_user SEC(".maps");

/* One op's walk over one message: pointers on the stack (constant while the walk's loops run), the
 * changing scalars in the socket's state (struct xf_walk). */
struct pass {
	struct sk_msg_md *msg;
	struct xf_op *op;
	struct xf_hold *hold;
	struct xf_walk *w;
	__u32 final;
};

/* A walk is a sequence of small steps, one per bpf_loop iteration: each step ends where its outcome
 * would fork the verifier's paths, so the verifier checks each action once instead of every product. */
enum action { ACT_SCAN = 0, ACT_CHECK = 1, ACT_APPLY = 2 };


static __always_inline int ensure(struct pass *p, __u32 pos)
{
	__u32 size = p->msg->size;

	if (p->w->valid && pos >= p->w->base && pos - p->w->base < XF_WINDOW)
		return 0;
	if (pos >= size)
		return 0;
	if (bpf_msg_pull_data(p->msg, pos, size, 0)) {
		p->w->err = XF_PULL;
		return -1;
	}
	p->w->base = pos;
	p->w->valid = 1;
	return 0;
}

/* x & mask, in a way clang cannot fold away after an earlier range check (the verifier needs the mask). */
static __always_inline __u32 bounded(__u32 x, __u32 mask)
{
	asm volatile("" : "+r"(x));
	return x & mask;
}

/* A pointer to byte `x` of the message with `n` (a constant) readable bytes behind it, or NULL. */
#define AT(p, x, n)                                                                  \
	({                                                                           \
		__u8 *__data = (__u8 *)(long)(p)->msg->data;                         \
		__u8 *__end = (__u8 *)(long)(p)->msg->data_end;                      \
		__u32 __off = (x) - (p)->w->base;                                       \
		__u8 *__r = 0;                                                       \
		if (__off < XF_WINDOW + 1024) {                                      \
			__off = bounded(__off, 0x7fff);                              \
			if (__data + __off + (n) <= __end)                           \
				__r = __data + __off;                                \
		}                                                                    \
		__r;                                                                 \
	})

enum { NO_MATCH = 0, FULL = 1, PARTIAL = 2 };


/* Compare or copy n bytes between the message at x and buf: words first, then the tail bytes; one
 * bpf_loop callback per unit, so that the verifier walks the body once whatever n is. */
enum { UNIT_CMP = 0, UNIT_TO_MSG = 1, UNIT_FROM_MSG = 2 };

struct units {
	struct pass *p;
	__u8 *buf;
	__u32 x;
	__u32 words;
	__u32 n;
	__u32 mode;
	__u32 differ;
	__u32 err;
};

static int unit_cb(__u32 i, void *ctx)
{
	struct units *u = ctx;

	if (i < u->words) {
		__u32 k = bounded(i, XF_MAX_PATTERN / 8 - 1);
		__u64 *w = (__u64 *)AT(u->p, u->x + 8 * k, 8);
		__u64 *v = (__u64 *)(u->buf + 8 * k);

		if (!w) {
			u->err = 1;
			return 1;
		}
		if (u->mode == UNIT_CMP) {
			if (*w != *v) {
				u->differ = 1;
				return 1;
			}
		} else if (u->mode == UNIT_TO_MSG) {
			*w = *v;
		} else {
			*v = *w;
		}
	} else {
		__u32 j = u->words * 8 + (i - u->words);
		__u8 *b, *c;

		if (j >= u->n)
			return 1;
		j = bounded(j, XF_MAX_PATTERN - 1);
		b = AT(u->p, u->x + j, 1);
		c = u->buf + j;
		if (!b) {
			u->err = 1;
			return 1;
		}
		if (u->mode == UNIT_CMP) {
			if (*b != *c) {
				u->differ = 1;
				return 1;
			}
		} else if (u->mode == UNIT_TO_MSG) {
			*b = *c;
		} else {
			*c = *b;
		}
	}
	return 0;
}

static __noinline int units(struct pass *p, __u32 x, __u8 *buf, __u32 n, __u32 mode)
{
	struct units u = { .p = p, .buf = buf, .x = x, .n = n, .mode = mode };

	if (n > XF_MAX_PATTERN || !buf)
		return -1;
	if (ensure(p, x))
		return -1;
	u.words = n / 8;
	bpf_loop(u.words + (n - u.words * 8), unit_cb, &u, 0);
	if (u.err) {
		p->w->err = XF_PULL;
		return -1;
	}
	return u.differ;
}

/* Does pat[0..len) occur at x? PARTIAL: the bytes from x to p->w->end are a proper prefix of it. */
static __always_inline int match_at(struct pass *p, __u32 x, __u8 *pat, __u32 len)
{
	__u32 avail, n;
	int r;

	if (x >= p->w->end || len == 0 || len > XF_MAX_PATTERN)
		return NO_MATCH;
	avail = p->w->end - x;
	n = len < avail ? len : avail;
	r = units(p, x, pat, n, UNIT_CMP);
	if (r != 0)
		return NO_MATCH;
	return n == len ? FULL : PARTIAL;
}

static __always_inline int copy_at(struct pass *p, __u32 x, __u8 *buf, __u32 len, int to_msg)
{
	return units(p, x, buf, len, to_msg ? UNIT_TO_MSG : UNIT_FROM_MSG) ? -1 : 0;
}

static __always_inline int write_at(struct pass *p, __u32 x, const __u8 *src, __u32 len)
{
	return copy_at(p, x, (__u8 *)src, len, 1);
}

/* Hold back [x, end): copy into the op's hold and pop from the message. */
static __noinline int hold_tail(struct pass *p, __u32 x)
{
	struct xf_hold *h = p->hold;
	__u32 n = p->w->end - x;

	if (!h || n == 0 || n >= XF_MAX_PATTERN)
		return -1;
	if (copy_at(p, x, h->bytes, n, 0))
		return -1;
	if (bpf_msg_pop_data(p->msg, x, n, 0)) {
		p->w->err = XF_POP;
		return -1;
	}
	h->len = n;
	h->phase = p->w->phase;
	p->w->valid = 0;
	p->w->mvalid = 0;
	p->w->end = x;
	p->w->held = n;
	return 0;
}

/* Push the op's held bytes back in front of the message. */
static __noinline int release_hold(struct pass *p)
{
	struct xf_hold *h = p->hold;
	__u32 n;

	if (!h)
		return -1;
	n = h->len;
	if (n == 0)
		return 0;
	if (n >= XF_MAX_PATTERN)
		return -1;
	if (bpf_msg_push_data(p->msg, 0, n, 0)) {
		p->w->err = XF_PUSH;
		return -1;
	}
	p->w->valid = 0;
	p->w->end += n;
	p->w->phase = h->phase;
	h->len = 0;
	return write_at(p, 0, h->bytes, n);
}

/* Bytes equal to c in the 8 bytes of v: the high bit of each matching byte set (exact, no false hits). */
static __always_inline __u64 hits(__u64 v, __u64 c8)
{
	__u64 x = v ^ c8;
	__u64 t = (x & 0x7f7f7f7f7f7f7f7fULL) + 0x7f7f7f7f7f7f7f7fULL;

	return ~(t | x | 0x7f7f7f7f7f7f7f7fULL);
}

/* Index (0-7) of the lowest byte flagged in h (bit 7 of each flagged byte), branch-free. */
static __always_inline __u32 first_hit(__u64 h)
{
	__u64 low = h & -h;

	return ((low >> 7) * 0x0001020304050607ULL) >> 56;
}

struct bytes_ctx {
	struct pass *p;
	__u32 from;
	__u32 stop;
	__u32 found;
	__u8 c;
	__u8 err;
};

static int find_byte_cb(__u32 i, void *ctx)
{
	struct bytes_ctx *f = ctx;
	__u32 x = f->from + i;
	__u8 *b;

	if (x >= f->stop)
		return 1;
	b = AT(f->p, x, 1);
	if (!b) {
		f->err = 1;
		return 1;
	}
	if (*b == f->c) {
		f->found = x;
		return 1;
	}
	return 0;
}

static int fill_byte_cb(__u32 i, void *ctx)
{
	struct bytes_ctx *f = ctx;
	__u32 x = f->from + i;
	__u8 *b;

	if (x >= f->stop)
		return 1;
	b = AT(f->p, x, 1);
	if (!b) {
		f->err = 1;
		return 1;
	}
	*b = f->c;
	return 0;
}

/* First x in [from, min(from + XF_BLOCK, end)) with byte c, or the block's end when there is none. A full
 * block is scanned a word at a time (SWAR, no per-byte branch); a short block at the end byte by byte.
 * With dist > 0 (a pattern of dist + 1 bytes) and the block's whole pattern span inside the region, a
 * candidate must also have the pattern's last byte `cl` dist bytes further: far fewer false candidates
 * for the same work per word, and no partial match can start in such a block. */
static __always_inline __u32 find_in_block(struct pass *p, __u32 from, __u8 c, __u8 cl, __u32 dist, int *err)
{
	__u32 end = p->w->end;
	__u32 stop = end - from < XF_BLOCK ? end : from + XF_BLOCK;
	__u64 c8 = 0x0101010101010101ULL * c;
	__u64 l8 = 0x0101010101010101ULL * cl;

	if (stop - from == XF_BLOCK) {
		__u64 *w = (__u64 *)AT(p, from, XF_BLOCK);
		__u64 *v = 0;
		__u64 h[XF_BLOCK / 8], acc = 0;

		if (!w) {
			*err = XF_PULL;
			return stop;
		}
		if (dist > 0 && dist < XF_MAX_PATTERN && end - from >= XF_BLOCK + dist)
			v = (__u64 *)AT(p, from + dist, XF_BLOCK);
		if (v) {
#pragma unroll
			for (int k = 0; k < XF_BLOCK / 8; k++) {
				h[k] = hits(w[k], c8) & hits(v[k], l8);
				acc |= h[k];
			}
		} else {
#pragma unroll
			for (int k = 0; k < XF_BLOCK / 8; k++) {
				h[k] = hits(w[k], c8);
				acc |= h[k];
			}
		}
		if (!acc)
			return stop;
		/* branch-free: the verifier would fork at every "if (hit)" */
		__u64 best = XF_BLOCK;
#pragma unroll
		for (int k = XF_BLOCK / 8 - 1; k >= 0; k--) {
			__u64 any, cand, less;

			any = (h[k] | -h[k]) >> 63;                /* 1 when word k has a hit */
			cand = 8 * k + first_hit(h[k]);            /* its first hit (garbage when none) */
			cand = any * cand + (1 - any) * XF_BLOCK;  /* XF_BLOCK when none */
			less = (cand - best) >> 63;                /* cand < best (both < 2^63) */
			best = less * cand + (1 - less) * best;
		}
		return from + (__u32)best;
	} else {
		struct bytes_ctx f = { .p = p, .from = from, .stop = stop, .found = stop, .c = c };

		bpf_loop(XF_BLOCK, find_byte_cb, &f, 0);
		if (f.err)
			*err = XF_PULL;
		return f.found;
	}
}

/* De Bruijn: the index of the lowest set bit of a 64-bit word, without a branch or a count instruction. */
static const __u8 ctz_table[64] = {
	0, 1, 56, 2, 57, 49, 28, 3, 61, 58, 42, 50, 38, 29, 17, 4, 62, 47, 59, 36, 45, 43, 51, 22, 53, 39, 33, 30, 24, 18, 12, 5,
	63, 55, 48, 27, 60, 41, 37, 16, 46, 35, 44, 21, 52, 32, 23, 11, 54, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9, 13, 8, 7, 6,
};

static __always_inline __u32 lowest_bit(__u64 m)
{
	return ctz_table[bounded((__u32)(((m & -m) * 0x03f79d71b4ca8b09ULL) >> 58), 63)];
}

/* The candidate map of the 64-byte block at base: bit i set when byte base + i is the pattern's first
 * byte c and (when the pattern's whole span of the block lies in the region) its last byte cl follows dist
 * bytes later. -1: the block is not whole in the region (the byte-by-byte path takes it); -2: unreadable. */
static __always_inline int block_map(struct pass *p, __u32 base, __u8 c, __u8 cl, __u32 dist, __u64 *out)
{
	__u32 end = p->w->end;
	__u64 c8 = 0x0101010101010101ULL * c;
	__u64 l8 = 0x0101010101010101ULL * cl;
	__u64 *w, *v = 0, m = 0;

	if (base >= end || end - base < XF_BLOCK)
		return -1;
	w = (__u64 *)AT(p, base, XF_BLOCK);
	if (!w)
		return -2;
	if (dist > 0 && dist < XF_MAX_PATTERN && end - base >= XF_BLOCK + dist)
		v = (__u64 *)AT(p, base + dist, XF_BLOCK);
	if (v) {
#pragma unroll
		for (int k = 0; k < XF_BLOCK / 8; k++) {
			__u64 h = hits(w[k], c8) & hits(v[k], l8);

			m |= (((h >> 7) * 0x0102040810204080ULL) >> 56) << (8 * k);
		}
	} else {
#pragma unroll
		for (int k = 0; k < XF_BLOCK / 8; k++) {
			__u64 h = hits(w[k], c8);

			m |= (((h >> 7) * 0x0102040810204080ULL) >> 56) << (8 * k);
		}
	}
	*out = m;
	return 0;
}

/* The low bytes of word `word` that lie within the first `len` bytes (a mask): for comparing and writing
 * short runs a word at a time. Branch-free: unrolled per word, a branch would fork the verifier's paths. */
static __always_inline __u64 word_mask(__u32 len, __u32 word)
{
	__s64 d = (__s64)len - 8 * (__s64)word;  /* bytes of this word within len, before clamping */
	__u64 n;

	d &= ~(d >> 63);                         /* max(d, 0) */
	d -= (d - 8) & ~((d - 8) >> 63);         /* min(d, 8) */
	n = (__u64)d;
	return ((1ULL << (4 * n)) << (4 * n)) - 1; /* n == 8: 2^64 - 1 */
}

enum { QUICK_NONE = 0, QUICK_MATCH = 1, QUICK_MISS = 2 };

/* A pattern of at most 16 bytes compared at x in two words, when its bytes are all in the region and the
 * window: QUICK_MATCH or QUICK_MISS; QUICK_NONE when the slow path must decide (long pattern, near the end). */
static __always_inline int quick_match(struct pass *p, __u32 x, const __u8 *pat, __u32 len)
{
	__u64 *w, m0, m1, d;

	if (len == 0 || len > 16 || x + len > p->w->end)
		return QUICK_NONE;
	w = (__u64 *)AT(p, x, 16);
	if (!w)
		return QUICK_NONE;
	m0 = word_mask(len, 0);
	m1 = word_mask(len, 1);
	d = ((w[0] ^ *(const __u64 *)pat) & m0) | ((w[1] ^ *(const __u64 *)(pat + 8)) & m1);
	return d ? QUICK_MISS : QUICK_MATCH;
}

/* Overwrite [from, to) with `with`; at most one block. A word at a time under a mask when the block is in
 * the window; byte by byte only near the end of the message. */
static __always_inline int fill(struct pass *p, __u32 from, __u32 to, __u8 with)
{
	__u64 v = 0x0101010101010101ULL * with;
	__u64 *w;

	if (to <= from)
		return 0;
	if (to - from == 1) {
		__u8 *b = AT(p, from, 1);

		if (!b)
			return -1;
		*b = with;
		return 0;
	}
	w = (__u64 *)AT(p, from, XF_BLOCK);
	if (w && to - from <= XF_BLOCK) {
		__u32 n = to - from;

#pragma unroll
		for (int k = 0; k < XF_BLOCK / 8; k++) {
			__u64 m = word_mask(n, k);

			w[k] = (w[k] & ~m) | (v & m);
		}
		return 0;
	} else {
		struct bytes_ctx f = { .p = p, .from = from, .stop = to, .c = with };

		bpf_loop(XF_BLOCK, fill_byte_cb, &f, 0);
		return f.err ? -1 : 0;
	}
}

/* One step of a mask or replace op. */
static int step(__u32 i, void *ctx)
{
	struct pass *p = ctx;
	struct xf_op *op = p->op;
	__u32 x, from = p->w->pos;
	int err = 0;

	if (!op || p->w->err)
		return 1;

	if (p->w->action == ACT_SCAN) {
		__u8 *pat;
		__u32 len;
		int q;

		if (from >= p->w->end)
			return 1;
		if (ensure(p, from))
			return 1;
		if (p->w->phase == XF_IN_MASK) {
			pat = op->b;
			len = op->b_len;
		} else {
			pat = op->a;
			len = op->a_len;
		}
		if (len == 0 || len > XF_MAX_PATTERN) {
			p->w->err = XF_TOO_LONG;
			return 1;
		}
		{
			__u32 which = p->w->phase == XF_IN_MASK ? 1 : 0;
			__u32 base = p->w->mbase, block_end;
			__u64 m;
			int r = 0;

			if (!(p->w->mvalid & (1 << which)) || from < base || from - base >= XF_BLOCK) {
				r = block_map(p, from, pat[0], pat[bounded(len - 1, XF_MAX_PATTERN - 1)], len - 1, &m);
				if (r == -2) {
					p->w->err = XF_PULL;
					return 1;
				}
				if (r == 0) {
					if (base != from)
						p->w->mvalid = 0;
					p->w->mbase = base = from;
					p->w->map[which & 1] = m;
					p->w->mvalid |= 1 << which;
				}
			}
			if (r == 0) {
				__u32 off = bounded(from - base, XF_BLOCK - 1);

				m = p->w->map[which & 1] & ~((1ULL << off) - 1);
				block_end = base + XF_BLOCK;
				x = m ? base + lowest_bit(m) : block_end;
			} else {
				/* the short block at the end of the region, byte by byte */
				x = find_in_block(p, from, pat[0], pat[bounded(len - 1, XF_MAX_PATTERN - 1)], len - 1, &err);
				if (err) {
					p->w->err = XF_PULL;
					return 1;
				}
				block_end = from + XF_BLOCK;
			}
			if (p->w->phase == XF_IN_MASK && fill(p, from, x < p->w->end ? x : p->w->end, op->with)) {
				p->w->err = XF_PULL;
				return 1;
			}
			if (x >= p->w->end || x >= block_end) {
				p->w->pos = x < p->w->end ? x : p->w->end;
				return 0;
			}
		}
		/* The common case in this same step: a short pattern, decided in two words. */
		q = quick_match(p, x, pat, len);
		if (q == QUICK_MISS) {
			if (p->w->phase == XF_IN_MASK && fill(p, x, x + 1, op->with)) {
				p->w->err = XF_PULL;
				return 1;
			}
			p->w->pos = x + 1;
			return 0;
		}
		if (q == QUICK_MATCH) {
			if (p->w->phase == XF_IN_MASK) {
				p->w->phase = XF_SEARCH;
				p->w->pos = x + len;
				return 0;
			}
			if (op->kind == XF_MASK) {
				p->w->phase = XF_IN_MASK;
				p->w->pos = x + len;
				return 0;
			}
			if (op->b_len == len) {
				/* an equal-length replace, in place */
				__u64 *w = (__u64 *)AT(p, x, 16);
				__u64 m0 = word_mask(len, 0), m1 = word_mask(len, 1);

				if (!w) {
					p->w->err = XF_PULL;
					return 1;
				}
				w[0] = (w[0] & ~m0) | (*(const __u64 *)op->b & m0);
				w[1] = (w[1] & ~m1) | (*(const __u64 *)(op->b + 8) & m1);
				p->w->pos = x + len;
				return 0;
			}
			p->w->cand = x;
			p->w->match = FULL;
			p->w->action = ACT_APPLY;
			return 0;
		}
		p->w->cand = x;
		p->w->action = ACT_CHECK;
		return 0;
	}

	if (p->w->action == ACT_CHECK) {
		x = p->w->cand;
		if (p->w->phase == XF_IN_MASK)
			p->w->match = match_at(p, x, op->b, op->b_len);
		else
			p->w->match = match_at(p, x, op->a, op->a_len);
		if (p->w->err)
			return 1;
		p->w->action = ACT_APPLY;
		return 0;
	}

	/* ACT_APPLY */
	x = p->w->cand;
	p->w->action = ACT_SCAN;
	if (p->w->match == PARTIAL && !p->final) {
		hold_tail(p, x);
		return 1;
	}
	if (p->w->phase == XF_IN_MASK) {
		if (p->w->match == FULL) {
			p->w->phase = XF_SEARCH;
			p->w->pos = x + op->b_len;
			return 0;
		}
		/* not the terminator (or a flush inside a value): masked too */
		if (fill(p, x, x + 1, op->with)) {
			p->w->err = XF_PULL;
			return 1;
		}
		p->w->pos = x + 1;
		return 0;
	}
	if (p->w->match != FULL) {
		p->w->pos = x + 1;
		return 0;
	}
	if (op->kind == XF_MASK) {
		p->w->phase = XF_IN_MASK;
		p->w->pos = x + op->a_len;
		return 0;
	}
	/* XF_REPLACE */
	{
		__u32 a = op->a_len, b = op->b_len;

		if (a > XF_MAX_PATTERN || b > XF_MAX_PATTERN)
			return 1;
		if (b < a) {
			if (bpf_msg_pop_data(p->msg, x + b, a - b, 0)) {
				p->w->err = XF_POP;
				return 1;
			}
			p->w->valid = 0;
			p->w->mvalid = 0;
			p->w->end -= a - b;
		} else if (b > a) {
			if (bpf_msg_push_data(p->msg, x + a, b - a, 0)) {
				p->w->err = XF_PUSH;
				return 1;
			}
			p->w->valid = 0;
			p->w->mvalid = 0;
			p->w->end += b - a;
			if (p->w->end > XF_MAX_MSG) {
				p->w->err = XF_TOO_LONG;
				return 1;
			}
		}
		if (b && write_at(p, x, op->b, b))
			return 1;
		p->w->pos = x + b;
	}
	return 0;
}

static int map_byte_cb(__u32 i, void *ctx)
{
	struct bytes_ctx *f = ctx;
	struct xf_op *op = f->p->op;
	__u32 x = f->from + i;
	__u8 *b;

	if (x >= f->stop || !op)
		return 1;
	b = AT(f->p, x, 1);
	if (!b) {
		f->err = 1;
		return 1;
	}
	*b = op->a[*b];
	return 0;
}

/* byteMap over one block. */
static int map_block(__u32 i, void *ctx)
{
	struct pass *p = ctx;
	struct xf_op *op = p->op;
	__u32 from = p->w->pos, stop, j;

	if (!op || from >= p->w->end)
		return 1;
	if (ensure(p, from))
		return 1;
	stop = p->w->end - from < XF_BLOCK ? p->w->end : from + XF_BLOCK;
	if (stop - from == XF_BLOCK && op->with != XF_TABLE) {
		/* ASCII case: the letters' bit 5 flipped, eight bytes at a time (bytes >= 0x80 untouched) */
		__u64 *w = (__u64 *)AT(p, from, XF_BLOCK);
		__u64 first = op->with == XF_ASCII_UPPER ? 'a' : 'A';
		__u64 ge = 0x0101010101010101ULL * (0x80 - first);
		__u64 gt = 0x0101010101010101ULL * (0x80 - (first + 25) - 1);

		if (!w) {
			p->w->err = XF_PULL;
			return 1;
		}
#pragma unroll
		for (j = 0; j < XF_BLOCK / 8; j++) {
			__u64 v = w[j], lo = v & 0x7f7f7f7f7f7f7f7fULL;
			__u64 letter = (lo + ge) & ~(lo + gt) & ~v & 0x8080808080808080ULL;

			w[j] = v ^ (letter >> 2);
		}
	} else if (stop - from == XF_BLOCK) {
		__u64 *w = (__u64 *)AT(p, from, XF_BLOCK);

		if (!w) {
			p->w->err = XF_PULL;
			return 1;
		}
#pragma unroll
		for (j = 0; j < XF_BLOCK / 8; j++) {
			__u64 v = w[j], o = 0;
#pragma unroll
			for (int k = 0; k < 8; k++)
				o |= (__u64)op->a[(v >> (8 * k)) & 0xff] << (8 * k);
			w[j] = o;
		}
	} else {
		struct bytes_ctx f = { .p = p, .from = from, .stop = stop };

		bpf_loop(XF_BLOCK, map_byte_cb, &f, 0);
		if (f.err) {
			p->w->err = XF_PULL;
			return 1;
		}
	}
	p->w->pos = stop;
	return 0;
}

/* One bpf_loop call site per callback: the verifier inlines a bpf_loop only when its call site always has
 * the same callback (two walks behind one call, as clang merges them, cost an indirect call per step). */
static __noinline int walk_map(struct pass *p)
{
	return bpf_loop(XF_MAX_MSG / XF_BLOCK + 1, map_block, p, 0);
}

static __noinline int walk_steps(struct pass *p)
{
	return bpf_loop(XF_MAX_STEPS, step, p, 0);
}

struct run {
	struct sk_msg_md *msg;
	struct xf_conn *conn;
	struct xf_profile *prof;
	__u32 final;
};

static int run_op(__u32 i, void *ctx)
{
	struct run *r = ctx;
	struct xf_conn *conn = r->conn;
	struct xf_walk *w;
	struct pass p = {};
	struct xf_op *op;
	__u32 size;

	if (!r->prof || !conn || i >= r->prof->nops || i >= XF_MAX_OPS)
		return 1;
	w = &conn->walk;
	i = bounded(i, XF_MAX_OPS - 1);
	op = &r->prof->ops[i];
	p.msg = r->msg;
	p.op = op;
	p.hold = &conn->hold[i];
	p.w = w;
	p.final = r->final;
	size = r->msg->size;
	w->base = 0;
	w->valid = 0;
	w->pos = 0;
	/* a masked value may go on across sends: the phase is the op's, kept with its hold */
	w->phase = p.hold->phase;
	w->err = 0;
	w->held = 0;
	w->action = ACT_SCAN;
	w->mvalid = 0;
	/* a flush's trigger byte is the last one: the ops never see it */
	w->end = r->final && size ? size - 1 : size;
	if (op->kind == XF_MASK || op->kind == XF_REPLACE) {
		if (release_hold(&p)) {
			w->run_err = w->err ? w->err : XF_PUSH;
			return 1;
		}
	}
	if (w->end > XF_MAX_MSG) {
		w->run_err = XF_TOO_LONG;
		return 1;
	}
	if (op->kind == XF_BYTEMAP)
		walk_map(&p);
	else if (op->kind == XF_MASK || op->kind == XF_REPLACE)
		walk_steps(&p);
	if (w->err) {
		w->run_err = w->err;
		return 1;
	}
	if (w->pos < w->end && !w->held) {
		/* the step budget ran out before the end: never pass bytes that were not examined */
		w->run_err = XF_TOO_LONG;
		return 1;
	}
	p.hold->phase = w->phase;
	w->run_held += w->held;
	return 0;
}

SEC("sk_msg")
int xf_verdict(struct sk_msg_md *msg)
{
	struct run r = {};
	struct xf_conn *conn;
	struct xf_ledger *led;
	struct xf_profile *prof;
	__u32 slot, profile, size;

	conn = bpf_sk_storage_get(&xf_conns, msg->sk, 0, 0);
	if (!conn)
		return SK_DROP;
	slot = conn->slot;
	led = bpf_map_lookup_elem(&xf_ledger, &slot);
	if (!led)
		return SK_DROP;
	if (led->failed)
		return SK_DROP;
	profile = conn->profile;
	prof = bpf_map_lookup_elem(&xf_profiles, &profile);
	if (!prof) {
		led->failed = XF_NO_PROFILE;
		return SK_DROP;
	}
	size = msg->size;
	led->consumed += size;
	led->runs += 1;
	r.msg = msg;
	r.conn = conn;
	r.prof = prof;
	r.final = led->flush;
	led->flush = 0;
	conn->walk.run_err = 0;
	conn->walk.run_held = 0;
	if (size > XF_MAX_MSG) {
		led->failed = XF_TOO_LONG;
		return SK_DROP;
	}
	if (bpf_msg_pull_data(msg, 0, size, 0)) {
		led->failed = XF_PULL;
		return SK_DROP;
	}
	bpf_loop(XF_MAX_OPS, run_op, &r, 0);
	if (conn->walk.run_err) {
		led->failed = conn->walk.run_err;
		return SK_DROP;
	}
	if (r.final) {
		/* drop the trigger byte: it was never the client's */
		size = msg->size;
		if (size == 0 || bpf_msg_pop_data(msg, size - 1, 1, 0)) {
			led->failed = XF_POP;
			return SK_DROP;
		}
		led->held = 0;
	} else {
		led->held = conn->walk.run_held;
	}
	led->emitted += msg->size;
	if (prof->user_program) {
		bpf_tail_call(msg, &xf_user, 0);
		led->failed = XF_NO_USER;
		return SK_DROP;
	}
	return SK_PASS;
}
