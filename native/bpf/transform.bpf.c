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

/*
 * What the verifier demands of a program loaded with CAP_BPF and CAP_NET_ADMIN only (no CAP_PERFMON, so
 * with its Spectre v1 hardening on), and how the program meets it:
 *  - a packet pointer moves only by constants: every access to the message first moves msg->data to the
 *    bytes it needs with bpf_msg_pull_data(msg, x, x + n) (no copy: the message is linear after the first
 *    pull) and then reads msg->data + constant, after one comparison with msg->data_end;
 *  - no pointer is compared with NULL unless the verifier knows it may be NULL (a map lookup's result);
 *  - no variable offset into a map value or the stack (it would turn on the verifier's exact comparison
 *    of scalars, and the loops would stop converging): an op, a pattern word and a byteMap table word are
 *    looked up by key in array maps (the lookup is inlined, the pointer comes back at offset 0), an op's
 *    hold state is taken out of the socket's state by constant offsets, and bit tricks replace tables.
 */
#define XF_BLOCK 64
#define XF_MAX_STEPS (1 << 17)

/*
 * What it costs to verify. The verifier walks a static subprogram, or a bpf_loop callback, anew for every
 * state its caller reaches it in, and every state it keeps for pruning holds all the frames of the call
 * chain (11 registers and the stack slots of each, about 10 KiB here). With the whole walk behind static
 * calls, the program took 846k instructions and 48.8k states to verify with the sidecar's capabilities,
 * and the kernel charged ~600 MiB to the loader's memory cgroup for them. A global function is verified
 * once, on its own, from its arguments' BTF types (a pointer argument is memory of its type's size, never
 * NULL with the arg:nonnull tag), and its callers continue from an unknown return value. So the op loop's
 * body and the two walks are global (xf_op_run, xf_walk_map, xf_walk_steps): 92k instructions, 4.5k
 * states, 32 MiB (ADR 0007, point 9). The price is one call and return per op per message.
 */
#define __arg_nonnull __attribute__((btf_decl_tag("arg:nonnull")))

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
	__uint(max_entries, XF_MAX_PROFILES * XF_MAX_OPS);
	__type(key, __u32);
	__type(value, struct xf_op);
} xf_ops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XF_MAX_PROFILES * XF_MAX_OPS * 2 * XF_PATTERN_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} xf_words SEC(".maps");

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
 * changing scalars in the socket's state (struct xf_walk: the verifier does not track map values, so each
 * loop callback is checked once, not once per position). */
struct pass {
	struct sk_msg_md *msg;
	struct xf_op *op;
	struct xf_walk *w;
	__u32 key;   /* XF_WORD_KEY(op key, 0, 0) */
	__u32 final;
};

/* A walk is a sequence of small steps, one per bpf_loop iteration: each step ends where its outcome
 * would fork the verifier's paths, so the verifier checks each action once instead of every product. */
enum action { ACT_SCAN = 0, ACT_CHECK = 1, ACT_APPLY = 2 };

enum { NO_MATCH = 0, FULL = 1, PARTIAL = 2 };

/* c ? a : b for c in {0, 1}, both loaded: clang turns a conditional load of one of two fields into a
 * variable offset, which the verifier refuses. */
static __always_inline __u64 sel(__u32 c, __u64 a, __u64 b)
{
	return b ^ ((a ^ b) & -(__u64)(c & 1));
}

/* 1 when x == k, 0 otherwise, without a branch (x, k < 2^63). */
static __always_inline __u64 is(__u64 x, __u64 k)
{
	return ((x ^ k) - 1) >> 63;
}

/* Between the words of an unrolled loop: keeps clang from loading every word first and spilling them, which
 * without CAP_PERFMON costs an lfence per spill (the verifier's Spectre v4 guard after stack stores). */
#define WORD_BARRIER(v) asm volatile("" : "+r"(v) :: "memory")

/* Moves msg->data to byte x of the message with min(n, size - x) bytes readable behind it (msg->data_end). */
static __always_inline int pull(struct pass *p, __u32 x, __u32 n)
{
	__u32 size = p->msg->size;

	if (x >= size || n == 0) {
		p->w->err = XF_PULL;
		return -1;
	}
	if (bpf_msg_pull_data(p->msg, x, size - x < n ? size : x + n, 0)) {
		p->w->err = XF_PULL;
		return -1;
	}
	return 0;
}

#define DATA(p) ((__u8 *)(long)(p)->msg->data)
#define DATA_END(p) ((__u8 *)(long)(p)->msg->data_end)

/* Word k of the op's pattern `which` (0: a, or the byteMap table; 1: b), or NULL. The key is written to
 * the walk's state, not the stack: without CAP_PERFMON the verifier puts an lfence after a stack store
 * over a slot that held a spilled register, which a key written per byte would pay every time. */
static __always_inline __u64 *pattern_word(struct pass *p, __u32 which, __u32 k)
{
	struct xf_walk *w = p->w;

	w->wkey = p->key + which * XF_PATTERN_WORDS + k;
	return bpf_map_lookup_elem(&xf_words, &w->wkey);
}

/* Compare or write n bytes of the op's pattern `which` with the message at x: a word at a time, then the
 * tail bytes; one bpf_loop callback per unit, so that the verifier walks the body once whatever n is. */
enum { UNIT_CMP = 0, UNIT_TO_MSG = 1 };

struct units {
	struct pass *p;
	__u32 x;
	__u32 which;
	__u32 words;
	__u32 n;
	__u32 mode;
	__u32 differ;
	__u32 err;
};

static int unit_cb(__u32 i, void *ctx)
{
	struct units *u = ctx;
	struct pass *p = u->p;
	__u32 j = i < u->words ? 8 * i : u->words * 8 + (i - u->words);
	__u64 *v;
	__u8 *d;

	if (j >= u->n || j >= XF_MAX_PATTERN) 
		return 1;
	v = pattern_word(p, u->which, j / 8);
	if (!v) {
		u->err = 1;
		return 1;
	}
	if (i < u->words) {
		if (pull(p, u->x + j, 8)) {
			u->err = 1;
			return 1;
		}
		d = DATA(p);
		if (d + 8 > DATA_END(p)) {
			u->err = 1;
			return 1;
		}
		if (u->mode == UNIT_CMP) {
			if (*(__u64 *)d != *v) {
				u->differ = 1;
				return 1;
			}
		} else {
			*(__u64 *)d = *v;
		}
	} else {
		__u8 c = *v >> (8 * (j & 7));

		if (pull(p, u->x + j, 1)) {
			u->err = 1;
			return 1;
		}
		d = DATA(p);
		if (d + 1 > DATA_END(p)) {
			u->err = 1;
			return 1;
		}
		if (u->mode == UNIT_CMP) {
			if (*d != c) {
				u->differ = 1;
				return 1;
			}
		} else {
			*d = c;
		}
	}
	return 0;
}

static __noinline int units(struct pass *p, __u32 x, __u32 which, __u32 n, __u32 mode)
{
	struct units u = { .p = p, .x = x, .which = which, .n = n, .mode = mode };

	if (n > XF_MAX_PATTERN)
		return -1;
	u.words = n / 8;
	bpf_loop(u.words + (n - u.words * 8), unit_cb, &u, 0);
	if (u.err) {
		p->w->err = XF_PULL;
		return -1;
	}
	return u.differ;
}

/* Does the pattern `which` (len bytes) occur at x? PARTIAL: the bytes from x to p->w->end are a proper
 * prefix of it. */
static __always_inline int match_at(struct pass *p, __u32 x, __u32 which, __u32 len)
{
	__u32 avail, n;
	int r;

	if (x >= p->w->end || len == 0 || len > XF_MAX_PATTERN)
		return NO_MATCH;
	avail = p->w->end - x;
	n = len < avail ? len : avail;
	r = units(p, x, which, n, UNIT_CMP);
	if (r != 0)
		return NO_MATCH;
	return n == len ? FULL : PARTIAL;
}

static __always_inline int write_at(struct pass *p, __u32 x, __u32 which, __u32 len)
{
	return units(p, x, which, len, UNIT_TO_MSG) ? -1 : 0;
}

/* Hold back [x, end), a proper prefix of the pattern of the current phase: pop it (its count is kept). */
static __noinline int hold_tail(struct pass *p, __u32 x)
{
	__u32 n = p->w->end - x;

	if (n == 0 || n > XF_HOLD_LEN)
		return -1;
	if (bpf_msg_pop_data(p->msg, x, n, 0)) {
		p->w->err = XF_POP;
		return -1;
	}
	p->w->mvalid = 0;
	p->w->end = x;
	p->w->held = n;
	return 0;
}

/* Push the op's held bytes (the first n bytes of the pattern of its phase) back in front of the message. */
static __noinline int release_hold(struct pass *p, __u32 n)
{
	if (n == 0)
		return 0;
	if (n > XF_HOLD_LEN)
		return -1;
	if (bpf_msg_push_data(p->msg, 0, n, 0)) {
		p->w->err = XF_PUSH;
		return -1;
	}
	p->w->end += n;
	return write_at(p, 0, p->w->phase == XF_IN_MASK ? 1 : 0, n);
}

/* Bytes equal to c in the 8 bytes of v: the high bit of each matching byte set (exact, no false hits). */
static __always_inline __u64 hits(__u64 v, __u64 c8)
{
	__u64 x = v ^ c8, k7 = 0x7f7f7f7f7f7f7f7fULL;
	__u64 t;

	WORD_BARRIER(k7);
	t = (x & k7) + k7;
	return ~(t | x | k7);
}

/* The high bits of the 8 bytes of h (bit 7 of each) as 8 bits. */
static __always_inline __u64 pack(__u64 h)
{
	return ((h >> 7) * 0x0102040810204080ULL) >> 56;
}

/* Index of the lowest set bit of m (m != 0), without a branch, a table or a count instruction. */
static __always_inline __u32 lowest_bit(__u64 m)
{
	__u64 x = (m & -m) - 1;

	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (x * 0x0101010101010101ULL) >> 56;
}

/* Enter `phase`: the walk's copy of the pattern it looks for (struct xf_walk.plen .. p1). Inlined: a mask
 * changes phase twice per match, and a subprogram call and its return cost more than this body on a CPU
 * whose kernel returns through a Safe RET thunk (ADR 0007 point 7). */
static __always_inline int set_phase(struct pass *p, __u32 phase)
{
	struct xf_op *op = p->op;
	struct xf_walk *w = p->w;
	__u32 m = phase == XF_IN_MASK;

	w->phase = phase;
	w->plen = sel(m, op->b_len, op->a_len);
	w->pc = sel(m, op->b[0] | (__u32)op->b[1] << 8, op->a[0] | (__u32)op->a[1] << 8);
	w->p0 = sel(m, *(__u64 *)op->b, *(__u64 *)op->a);
	w->p1 = sel(m, *(__u64 *)(op->b + 8), *(__u64 *)(op->a + 8));
	return 0;
}

/* The candidate map of the bytes [from, min(from + XF_BLOCK, end)): bit i set when byte from + i is the
 * pattern's first byte c and, when the pattern is longer and the byte after is in the region, that byte
 * is its second one c2 (the walk's pattern: set_phase). Into w->map0 or map1 by phase. One pull for the
 * block; the block's words at constant offsets. */
static __noinline int block_map(struct pass *p, __u32 from)
{
	struct xf_walk *w = p->w;
	__u8 c = w->pc, c2 = w->pc >> 8;
	__u32 len = w->plen, in_mask = w->phase == XF_IN_MASK;
	__u32 end = w->end, avail;
	__u64 c8 = 0x0101010101010101ULL * c;
	__u64 m = 0;
	__u8 *d;

	if (from >= end)
		return -1;
	avail = end - from;
	if (avail >= XF_BLOCK) {
		if (pull(p, from, XF_BLOCK + 8))
			return -1;
		d = DATA(p);
		if (len > 1 && avail > XF_BLOCK && d + XF_BLOCK + 8 <= DATA_END(p)) {
			__u64 s8 = 0x0101010101010101ULL * c2;
			__u64 *w = (__u64 *)d;

#pragma unroll
			for (int k = 0; k < XF_BLOCK / 8; k++) {
				__u64 next = (w[k] >> 8) | (w[k + 1] << 56);

				m |= pack(hits(w[k], c8) & hits(next, s8)) << (8 * k);
				WORD_BARRIER(m);
			}
		} else if (d + XF_BLOCK <= DATA_END(p)) {
			__u64 *w = (__u64 *)d;

#pragma unroll
			for (int k = 0; k < XF_BLOCK / 8; k++) {
				m |= pack(hits(w[k], c8)) << (8 * k);
				WORD_BARRIER(m);
			}
		} else {
			p->w->err = XF_PULL;
			return -1;
		}
	} else {
		/* the short block at the end of the region: byte by byte, up to the region's end */
		if (pull(p, from, avail))
			return -1;
		d = DATA(p);
#pragma unroll
		for (int k = 0; k < XF_BLOCK - 1; k++) {
			__u64 x;

			if (d + k + 1 > DATA_END(p))
				break;
			x = d[k] ^ c;
			m |= ((x - 1) >> 63) << k;
		}
	}
	w = p->w;
	in_mask = w->phase == XF_IN_MASK;
	w->map1 = sel(in_mask, m, w->map1);
	w->map0 = sel(in_mask, w->map0, m);
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

/* The walk's pattern, when it has at most XF_QUICK bytes, compared at x in two words, when its bytes are
 * all in the region and 16 bytes are readable there: QUICK_MATCH or QUICK_MISS (msg->data is then at x);
 * QUICK_NONE when the slow path must decide (long pattern, near the end). */
static __always_inline int quick_match(struct pass *p, __u32 x)
{
	__u64 *d, m0, m1, diff;
	__u32 len = p->w->plen;

	if (len == 0 || len > XF_QUICK || x + len > p->w->end)
		return QUICK_NONE;
	/* a whole window when there is one: a mask's value is then masked with this same pull */
	if (pull(p, x, XF_BLOCK + 8))
		return QUICK_NONE;
	d = (__u64 *)DATA(p);
	if ((__u8 *)d + 16 > DATA_END(p))
		return QUICK_NONE;
	len = p->w->plen;
	m0 = word_mask(len, 0);
	m1 = word_mask(len, 1);
	diff = ((d[0] ^ p->w->p0) & m0) | ((d[1] ^ p->w->p1) & m1);
	return diff ? QUICK_MISS : QUICK_MATCH;
}

struct fill_ctx {
	struct pass *p;
	__u32 from;
	__u32 n;
	__u8 with;
	__u8 err;
};

static int fill_byte_cb(__u32 i, void *ctx)
{
	struct fill_ctx *f = ctx;
	__u8 *d;

	if (i >= f->n)
		return 1;
	if (pull(f->p, f->from + i, 1)) {
		f->err = 1;
		return 1;
	}
	d = DATA(f->p);
	if (d + 1 > DATA_END(f->p)) {
		f->err = 1;
		return 1;
	}
	*d = f->with;
	return 0;
}

/* Overwrite [from, to) with `with`; at most one block. A word at a time under a mask when a whole block is
 * readable; byte by byte only near the end of the message. */
static __noinline int fill(struct pass *p, __u32 from, __u32 to, __u32 with)
{
	__u64 v = 0x0101010101010101ULL * with;
	__u32 n;
	__u8 *d;

	if (to <= from)
		return 0;
	n = to - from;
	if (n > XF_BLOCK)
		return -1;
	if (n == 1) {
		if (pull(p, from, 1))
			return -1;
		d = DATA(p);
		if (d + 1 > DATA_END(p))
			return -1;
		*d = with;
		return 0;
	}
	if (pull(p, from, XF_BLOCK))
		return -1;
	d = DATA(p);
	if (d + XF_BLOCK <= DATA_END(p)) {
		__u64 *w = (__u64 *)d;

#pragma unroll
		for (int k = 0; k < XF_BLOCK / 8; k++) {
			__u64 m = word_mask(n, k);

			w[k] = (w[k] & ~m) | (v & m);
			WORD_BARRIER(n);
		}
		return 0;
	}
	{
		struct fill_ctx f = { .p = p, .from = from, .n = n, .with = with };

		bpf_loop(XF_BLOCK, fill_byte_cb, &f, 0);
		return f.err ? -1 : 0;
	}
	return 0;
}

/* The fast paths of a step read a window of XF_WINDOW bytes at msg->data after one pull: the candidate map
 * of its first XF_BLOCK bytes (each position's second byte is at most the 65th) and, at a candidate, the
 * two words of a pattern of up to XF_QUICK bytes. */
#define XF_WINDOW (XF_BLOCK + 8)

/* The candidate map of the XF_BLOCK bytes at d (XF_WINDOW readable, all in the region): bit i set when byte
 * i is the walk's pattern's first byte and, when the pattern is longer, byte i + 1 its second. Inlined into
 * the step that uses it: on this kernel every subprogram return goes through the Safe RET thunk. */
static __always_inline __u64 window_map(__u64 *d, __u32 pc, __u32 len)
{
	__u64 c8 = 0x0101010101010101ULL * (pc & 0xff);
	__u64 s8 = 0x0101010101010101ULL * ((pc >> 8) & 0xff);
	__u64 m = 0;

	if (len == 1) {
#pragma unroll
		for (int k = 0; k < XF_BLOCK / 8; k++) {
			__u64 mul = 0x0102040810204080ULL;

			WORD_BARRIER(mul);
			m |= ((hits(d[k], c8) >> 7) * mul >> 56) << (8 * k);
			WORD_BARRIER(m);
		}
		return m;
	}
#pragma unroll
	for (int k = 0; k < XF_BLOCK / 8; k++) {
		__u64 a = d[k], next = (a >> 8) | (d[k + 1] << 56), h, mul = 0x0102040810204080ULL;

		/* the constants are made again per word (WORD_BARRIER), not kept in registers: fewer live
		 * values, no spills (each spill costs an lfence without CAP_PERFMON) */
		h = hits(a, c8) & hits(next, s8);
		WORD_BARRIER(mul);
		m |= ((h >> 7) * mul >> 56) << (8 * k);
		WORD_BARRIER(m);
	}
	return m;
}

/* The n lowest bits set (n <= 64). */
static __always_inline __u64 low_bits(__u32 n)
{
	return ((1ULL << (n >> 1)) << (n - (n >> 1))) - 1;
}

/* The low 8 bits of b as 8 byte masks (bit i set: byte i is 0xff). */
static __always_inline __u64 byte_mask(__u64 b)
{
	__u64 rep = 0x0101010101010101ULL, pick = 0x8040201008040201ULL, k7 = 0x7f7f7f7f7f7f7f7fULL, t;

	WORD_BARRIER(rep);
	WORD_BARRIER(pick);
	WORD_BARRIER(k7);
	t = ((b & 0xff) * rep) & pick; /* byte i: bit i of b, in place */
	return (((t + k7) >> 7) & rep) * 0xff;
}

/* Inside a masked value whose `until` has one or two bytes, so that the window's map is exact (no candidate
 * to confirm): the first `until` at or after byte off of the window at msg->data (== base, XF_WINDOW bytes
 * readable and in the region) ends the value; the bytes from off up to it, or to the window's XF_BLOCK
 * bytes when it is not there, are masked in place with the same pull. No helper call, no subprogram. */
static __always_inline void mask_window(struct pass *p, __u64 *d, __u32 base, __u32 off)
{
	struct xf_walk *w = p->w;
	__u64 m = window_map(d, w->pc, w->plen);
	__u64 v = 0x0101010101010101ULL * p->op->with;
	__u32 j, ulen = w->plen;

	off &= XF_BLOCK - 1;
	m &= ~((1ULL << off) - 1);
	j = lowest_bit(m); /* 64 when m == 0 */
	/* the bytes to mask, one bit each, spread to byte masks a word at a time */
	m = low_bits(j) & ~low_bits(off);
#pragma unroll
	for (int k = 0; k < XF_BLOCK / 8; k++) {
		__u64 fm = byte_mask(m >> (8 * k));

		d[k] = (d[k] & ~fm) | (v & fm);
		WORD_BARRIER(m);
	}
	if (j < XF_BLOCK) {
		w->pos = base + j + ulen;
		set_phase(p, XF_SEARCH);
	} else {
		w->pos = base + XF_BLOCK;
	}
}

#define XF_WIDE (2 * XF_BLOCK)
#define XF_WIDE_WINDOW (XF_WIDE + 8)
#define XF_WIDE_VALID 4

/* The search pattern's candidate map of the XF_WIDE bytes at d (== base, XF_WIDE_WINDOW readable and in
 * the region), kept in the walk for the next steps. */
static __always_inline void wide_map(struct pass *p, __u64 *d, __u32 base)
{
	struct xf_walk *w = p->w;

	w->wmap0 = window_map(d, w->pc, w->plen);
	w->wmap1 = window_map(d + XF_BLOCK / 8, w->pc, w->plen);
	w->wbase = base;
	w->mvalid |= XF_WIDE_VALID;
}

/* The search's fast path (a pattern of at most XF_QUICK bytes, XF_WIDE_WINDOW bytes of the region at
 * from): the next candidate from the walk's wide map (mapped here with one pull when the map does not
 * cover from), then one pull at the candidate for everything else: its two-word comparison, an
 * equal-length replace or the start of a mask (whose value, with an `until` of up to two bytes, is masked
 * from the same window), and the wide map of that window for the candidates after it. So a match costs one
 * pull and one step, and no subprogram call. */
static __always_inline int search_wide(struct pass *p, __u32 from)
{
	struct xf_walk *w = p->w;
	struct xf_op *op = p->op;
	__u32 off, c, x, len;
	__u64 m0, m1, diff;
	__u64 *d;

	if (!(w->mvalid & XF_WIDE_VALID) || from < w->wbase || from - w->wbase >= XF_WIDE) {
		if (pull(p, from, XF_WIDE_WINDOW))
			return 1;
		d = (__u64 *)DATA(p);
		if ((__u8 *)d + XF_WIDE_WINDOW > DATA_END(p)) {
			w->err = XF_PULL;
			return 1;
		}
		wide_map(p, d, from);
	}
	off = (from - w->wbase) & (XF_WIDE - 1);
	m0 = w->wmap0 & ~low_bits(off < XF_BLOCK ? off : XF_BLOCK);
	m1 = w->wmap1 & ~low_bits(off > XF_BLOCK ? off - XF_BLOCK : 0);
	c = m0 ? lowest_bit(m0) : XF_BLOCK + lowest_bit(m1); /* XF_WIDE: none */
	if (c >= XF_WIDE) {
		w->pos = w->wbase + XF_WIDE;
		return 0;
	}
	x = w->wbase + c;
	if (x >= w->end || w->end - x < XF_WIDE_WINDOW) {
		/* near the end of the region: the general path decides from x */
		w->pos = x;
		return 0;
	}
	if (pull(p, x, XF_WIDE_WINDOW))
		return 1;
	d = (__u64 *)DATA(p);
	if ((__u8 *)d + XF_WIDE_WINDOW > DATA_END(p)) {
		w->err = XF_PULL;
		return 1;
	}
	len = w->plen;
	diff = ((d[0] ^ w->p0) & word_mask(len, 0)) | ((d[1] ^ w->p1) & word_mask(len, 1));
	if (diff) {
		w->pos = x + 1; /* the wide map still covers what follows */
		return 0;
	}
	if (op->kind == XF_MASK) {
		set_phase(p, XF_IN_MASK);
		w->pos = x + len;
		if (w->plen <= 2) {
			mask_window(p, d, x, len);
			if (w->phase == XF_SEARCH)
				wide_map(p, d, x);
		}
		return 0;
	}
	if (op->b_len == len) {
		/* an equal-length replace, in place */
		__u64 m0 = word_mask(len, 0), m1 = word_mask(len, 1);

		d[0] = (d[0] & ~m0) | (*(__u64 *)op->b & m0);
		d[1] = (d[1] & ~m1) | (*(__u64 *)(op->b + 8) & m1);
		w->pos = x + len;
		wide_map(p, d, x);
		return 0;
	}
	/* a replace that changes the length: pop or push, the general path */
	w->cand = x;
	w->match = FULL;
	w->action = ACT_APPLY;
	return 0;
}

/* One step of a mask or replace op. */
static int step(__u32 i, void *ctx)
{
	struct pass *p = ctx;
	struct xf_op *op = p->op;
	struct xf_walk *w = p->w;
	__u32 x, from = w->pos;

	if (w->err)
		return 1;

	if (w->action == ACT_SCAN) {
		__u32 base, block_end, off, in_mask, len, fast;
		__u64 m;
		int q;

		if (from >= w->end)
			return 1;
		if (w->plen == 0 || w->plen > XF_MAX_PATTERN) {
			w->err = XF_TOO_LONG;
			return 1;
		}
		in_mask = w->phase == XF_IN_MASK;
		/* a whole window of the region at from, and a short pattern: the fast paths */
		fast = w->plen <= XF_QUICK && w->end - from >= XF_WINDOW;
		if (fast && in_mask && w->plen <= 2) {
			__u8 *d;

			if (w->end - from >= XF_WIDE_WINDOW) {
				/* wide enough to map the search's next candidates if the value ends here */
				if (pull(p, from, XF_WIDE_WINDOW))
					return 1;
				d = DATA(p);
				if (d + XF_WIDE_WINDOW > DATA_END(p)) {
					w->err = XF_PULL;
					return 1;
				}
				mask_window(p, (__u64 *)d, from, 0);
				if (w->phase == XF_SEARCH)
					wide_map(p, (__u64 *)d, from);
				return 0;
			}
			if (pull(p, from, XF_WINDOW))
				return 1;
			d = DATA(p);
			if (d + XF_WINDOW > DATA_END(p)) {
				w->err = XF_PULL;
				return 1;
			}
			mask_window(p, (__u64 *)d, from, 0);
			return 0;
		}
		if (!in_mask && w->plen <= XF_QUICK && w->end - from >= XF_WIDE_WINDOW)
			return search_wide(p, from);
		base = w->mbase;
		if (!(w->mvalid & (1 << in_mask)) || from < base || from - base >= XF_BLOCK) {
			if (base != from)
				w->mvalid = 0;
			if (block_map(p, from)) {
				w->err = XF_PULL;
				return 1;
			}
			w->mbase = base = from;
			w->mvalid |= 1 << in_mask;
		}
		off = (from - base) & (XF_BLOCK - 1);
		m = sel(in_mask, w->map1, w->map0);
		m &= ~((1ULL << off) - 1);
		block_end = base + XF_BLOCK;
		x = m ? base + lowest_bit(m) : block_end;
		if (in_mask && fill(p, from, x < w->end ? x : w->end, op->with)) {
			w->err = XF_PULL;
			return 1;
		}
		if (x >= w->end || x >= block_end) {
			w->pos = x < w->end ? x : w->end;
			return 0;
		}
		/* The common case in this same step: a short pattern, decided in two words. */
		w->cand = x;
		q = quick_match(p, x);
		x = w->cand;
		if (q == QUICK_MISS) {
			if (w->phase == XF_IN_MASK && fill(p, x, x + 1, op->with)) {
				w->err = XF_PULL;
				return 1;
			}
			w->pos = w->cand + 1;
			return 0;
		}
		if (q == QUICK_MATCH) {
			len = w->plen;
			if (w->phase == XF_IN_MASK) {
				set_phase(p, XF_SEARCH);
				w->pos = x + len;
				return 0;
			}
			if (op->kind == XF_MASK) {
				set_phase(p, XF_IN_MASK);
				w->pos = x + len;
				/* the value starts in the window quick_match pulled at x: mask it in this step */
				if (w->plen <= 2 && w->end - x >= XF_WINDOW) {
					__u8 *d = DATA(p);

					if (d + XF_WINDOW <= DATA_END(p))
						mask_window(p, (__u64 *)d, x, len);
				}
				return 0;
			}
			if (op->b_len == len) {
				/* an equal-length replace, in place: msg->data is still at x */
				__u64 *d = (__u64 *)DATA(p);
				__u64 m0 = word_mask(len, 0), m1 = word_mask(len, 1);

				if ((__u8 *)d + 16 > DATA_END(p)) {
					w->err = XF_PULL;
					return 1;
				}
				d[0] = (d[0] & ~m0) | (*(__u64 *)op->b & m0);
				d[1] = (d[1] & ~m1) | (*(__u64 *)(op->b + 8) & m1);
				w->pos = x + len;
				return 0;
			}
			w->match = FULL;
			w->action = ACT_APPLY;
			return 0;
		}
		w->action = ACT_CHECK;
		return 0;
	}

	if (w->action == ACT_CHECK) {
		x = w->cand;
		if (w->phase == XF_IN_MASK)
			w->match = match_at(p, x, 1, op->b_len);
		else
			w->match = match_at(p, x, 0, op->a_len);
		if (w->err)
			return 1;
		w->action = ACT_APPLY;
		return 0;
	}

	/* ACT_APPLY */
	x = w->cand;
	w->action = ACT_SCAN;
	if (w->match == PARTIAL && !p->final) {
		hold_tail(p, x);
		return 1;
	}
	if (w->phase == XF_IN_MASK) {
		if (w->match == FULL) {
			set_phase(p, XF_SEARCH);
			w->pos = x + op->b_len;
			return 0;
		}
		/* not the terminator (or a flush inside a value): masked too */
		if (fill(p, x, x + 1, op->with)) {
			w->err = XF_PULL;
			return 1;
		}
		w->pos = x + 1;
		return 0;
	}
	if (w->match != FULL) {
		w->pos = x + 1;
		return 0;
	}
	if (op->kind == XF_MASK) {
		set_phase(p, XF_IN_MASK);
		w->pos = x + op->a_len;
		return 0;
	}
	/* XF_REPLACE */
	{
		__u32 a = op->a_len, b = op->b_len;

		if (a > XF_MAX_PATTERN || b > XF_MAX_PATTERN)
			return 1;
		if (b < a) {
			if (bpf_msg_pop_data(p->msg, x + b, a - b, 0)) {
				w->err = XF_POP;
				return 1;
			}
			w->mvalid = 0;
			w->end -= a - b;
		} else if (b > a) {
			if (bpf_msg_push_data(p->msg, x + a, b - a, 0)) {
				w->err = XF_PUSH;
				return 1;
			}
			w->mvalid = 0;
			w->end += b - a;
			if (w->end > XF_MAX_MSG) {
				w->err = XF_TOO_LONG;
				return 1;
			}
		}
		if (b && write_at(p, x, 1, b))
			return 1;
		w->pos = x + b;
	}
	return 0;
}

/* ASCII case of the 8 bytes of v: bit 5 of every letter of the other case flipped (bytes >= 0x80 kept). */
static __always_inline __u64 ascii_case(__u64 v, __u64 ge, __u64 gt)
{
	__u64 lo = v & 0x7f7f7f7f7f7f7f7fULL;
	__u64 letter = (lo + ge) & ~(lo + gt) & ~v & 0x8080808080808080ULL;

	return v ^ (letter >> 2);
}

/* Table byte b of a byteMap op; sets the walk's error when the table cannot be read. */
static __always_inline __u64 table_byte(struct pass *p, __u64 b)
{
	__u64 *t = pattern_word(p, 0, (b >> 3) & (XF_PATTERN_WORDS - 1));

	if (!t) {
		p->w->err = XF_PULL;
		return 0;
	}
	return (*t >> (8 * (b & 7))) & 0xff;
}

/* The ASCII case presets take this many bytes per step (one pull, word arithmetic): a pull and the step's
 * callback are two returns through the kernel's return thunk, dearer than the words' work of a 64-byte block
 * (2048 against 512: the program's time per KiB 0.21-0.23 -> 0.15-0.17 us); the table takes XF_BLOCK bytes
 * per step. */
#define XF_WIDE_BLOCK 2048

/* byteMap over one block (XF_WIDE_BLOCK or XF_BLOCK bytes), or over one byte at the end of the region. */
static int map_block(__u32 i, void *ctx)
{
	struct pass *p = ctx;
	struct xf_op *op = p->op;
	struct xf_walk *w = p->w;
	__u32 from = w->pos, left, n;
	__u64 first = op->with == XF_ASCII_UPPER ? 'a' : 'A';
	__u64 ge = 0x0101010101010101ULL * (0x80 - first);
	__u64 gt = 0x0101010101010101ULL * (0x80 - (first + 25) - 1);
	__u8 *d;

	if (from >= w->end)
		return 1;
	left = w->end - from;
	n = left >= XF_BLOCK ? XF_BLOCK : 1;
	if (op->with != XF_TABLE && left >= XF_WIDE_BLOCK)
		n = XF_WIDE_BLOCK;
	if (pull(p, from, n))
		return 1;
	d = DATA(p);
	if (n == XF_WIDE_BLOCK) {
		__u64 *wd = (__u64 *)d;

		if (d + XF_WIDE_BLOCK > DATA_END(p)) {
			w->err = XF_PULL;
			return 1;
		}
#pragma unroll
		for (int j = 0; j < XF_WIDE_BLOCK / 8; j++) {
			wd[j] = ascii_case(wd[j], ge, gt);
			WORD_BARRIER(ge);
		}
	} else if (n == XF_BLOCK) {
		__u64 *wd = (__u64 *)d;

		if (d + XF_BLOCK > DATA_END(p)) {
			w->err = XF_PULL;
			return 1;
		}
		if (op->with != XF_TABLE) {
#pragma unroll
			for (int j = 0; j < XF_BLOCK / 8; j++) {
				wd[j] = ascii_case(wd[j], ge, gt);
				WORD_BARRIER(ge);
			}
		} else {
			/* byte by byte in place: few values live across the lookups, so few spills */
#pragma unroll
			for (int k = 0; k < XF_BLOCK; k++)
				d[k] = table_byte(p, d[k]);
		}
	} else {
		if (d + 1 > DATA_END(p)) {
			w->err = XF_PULL;
			return 1;
		}
		if (op->with != XF_TABLE)
			*d = ascii_case(*d, ge, gt);
		else
			*d = table_byte(p, *d);
	}
	if (w->err)
		return 1;
	w->pos = from + n;
	return 0;
}

/* The walks, global (see the top). One bpf_loop call site per callback: the verifier inlines a bpf_loop only
 * when its call site always has the same callback (two walks behind one call, as clang merges them, cost an
 * indirect call per step). */
__noinline int xf_walk_map(struct sk_msg_md *msg, struct xf_op *op __arg_nonnull, struct xf_walk *w __arg_nonnull,
			   __u32 key, __u32 final)
{
	struct pass p = { .msg = msg, .op = op, .w = w, .key = key, .final = final };

	return bpf_loop(XF_MAX_MSG / XF_BLOCK + XF_BLOCK, map_block, &p, 0);
}

__noinline int xf_walk_steps(struct sk_msg_md *msg, struct xf_op *op __arg_nonnull, struct xf_walk *w __arg_nonnull,
			     __u32 key, __u32 final)
{
	struct pass p = { .msg = msg, .op = op, .w = w, .key = key, .final = final };

	return bpf_loop(XF_MAX_STEPS, step, &p, 0);
}

/* Op i's hold state (XF_HOLD_*) in the socket's state, by constant offsets. */
static __always_inline __u32 hold_get(struct xf_conn *conn, __u32 i)
{
	__u64 v = 0, q = i / 4;

#pragma unroll
	for (int k = 0; k < XF_MAX_OPS / 4; k++)
		v |= conn->holds[k] & -is(q, k);
	return (v >> (16 * (i & 3))) & 0xffff;
}

static __always_inline void hold_set(struct xf_conn *conn, __u32 i, __u32 s)
{
	__u64 q = i / 4, sh = 16 * (i & 3), keep = ~(0xffffULL << sh), put = (__u64)(s & 0xffff) << sh;

#pragma unroll
	for (int k = 0; k < XF_MAX_OPS / 4; k++) {
		__u64 mine = -is(q, k);

		conn->holds[k] = (conn->holds[k] & (keep | ~mine)) | (put & mine);
	}
}

struct run {
	struct sk_msg_md *msg;
	struct xf_conn *conn;
	struct xf_profile *prof;
	__u32 profile;
	__u32 final;
};

/* Op i of the profile over the message: 0 to go on with the next op, 1 to stop (the last op, or run_err set).
 * Global (see the top); a global function takes at most five arguments, so the profile and the final flag
 * share one (profile | final << 31). */
__noinline int xf_op_run(struct sk_msg_md *msg, struct xf_conn *conn __arg_nonnull, struct xf_profile *prof __arg_nonnull,
			 __u32 profile_final, __u32 i)
{
	__u32 profile = profile_final & 0x7fffffff, final = profile_final >> 31;
	struct xf_walk *w = &conn->walk;
	struct pass p = {};
	struct xf_op *op;
	__u32 size, key, hs;

	if (i >= prof->nops || i >= XF_MAX_OPS)
		return 1;
	key = XF_OP_KEY(profile, i);
	op = bpf_map_lookup_elem(&xf_ops, &key);
	if (!op) {
		w->run_err = XF_NO_PROFILE;
		return 1;
	}
	p.msg = msg;
	p.op = op;
	p.w = w;
	p.key = XF_WORD_KEY(key, 0, 0);
	p.final = final;
	hs = hold_get(conn, i);
	size = msg->size;
	w->pos = 0;
	/* a masked value may go on across sends: the phase is the op's, kept with its hold */
	set_phase(&p, hs & XF_HOLD_PHASE ? XF_IN_MASK : XF_SEARCH);
	w->err = 0;
	w->held = 0;
	w->action = ACT_SCAN;
	w->mvalid = 0;
	/* a flush's trigger byte is the last one: the ops never see it */
	w->end = final && size ? size - 1 : size;
	if (op->kind == XF_MASK || op->kind == XF_REPLACE) {
		if (release_hold(&p, hs & XF_HOLD_LEN)) {
			w->run_err = w->err ? w->err : XF_PUSH;
			return 1;
		}
	}
	if (w->end > XF_MAX_MSG) {
		w->run_err = XF_TOO_LONG;
		return 1;
	}
	if (op->kind == XF_BYTEMAP)
		xf_walk_map(p.msg, op, w, p.key, p.final);
	else if (op->kind == XF_MASK || op->kind == XF_REPLACE)
		xf_walk_steps(p.msg, op, w, p.key, p.final);
	if (w->err) {
		w->run_err = w->err;
		return 1;
	}
	if (w->pos < w->end && !w->held) {
		/* the step budget ran out before the end: never pass bytes that were not examined */
		w->run_err = XF_TOO_LONG;
		return 1;
	}
	hold_set(conn, i, (w->held & XF_HOLD_LEN) | (w->phase == XF_IN_MASK ? XF_HOLD_PHASE : 0));
	w->run_held += w->held;
	return 0;
}

static int run_op(__u32 i, void *ctx)
{
	struct run *r = ctx;

	return xf_op_run(r->msg, r->conn, r->prof, r->profile | (__u32)(r->final != 0) << 31, i) != 0;
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
	r.profile = profile;
	r.final = led->flush;
	led->flush = 0;
	conn->walk.run_err = 0;
	conn->walk.run_held = 0;
	if (size > XF_MAX_MSG) {
		led->failed = XF_TOO_LONG;
		return SK_DROP;
	}
	/* one piece from here on: the walk's pulls only move msg->data */
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
