/* Shared by transform.bpf.c and its loader (native/src/engine/transform.cc). The layouts are ABI between the
 * two: the loader writes profiles and per-connection state, the program writes the ledger. */
#ifndef KSTREAMS_TRANSFORM_H
#define KSTREAMS_TRANSFORM_H

#ifndef __KERNEL__
#include <linux/types.h>
#endif

#define XF_MAX_OPS 32
#define XF_MAX_PATTERN 256
/* Profiles: one per edit of spec.transform; a connection keeps the profile it started with. */
#define XF_MAX_PROFILES 64
/* Transformed sockets open at once, per engine (one slot each in the sockhash and the ledger). */
#define XF_MAX_SLOTS 16384
/* The engine never hands a transformed socket more than this per send (see ADR 0006): the program
 * linearizes a message at most this large with one bpf_msg_pull_data. */
#define XF_MAX_SEND (32 * 1024)
/* The largest message the program walks: a send, every hold pushed back, and the growth of
 * length-increasing replaces (the loader sizes the sends of a profile so that this is not exceeded). */
#define XF_MAX_MSG (60 * 1024)

enum xf_kind {
	XF_NONE = 0,
	XF_MASK = 1,    /* a = after, b = until, with */
	XF_REPLACE = 2, /* a = from, b = to */
	XF_BYTEMAP = 3, /* a = the 256-byte table; with = XF_ASCII_UPPER/LOWER when it is exactly that table */
};

/* byteMap tables the program applies with word arithmetic instead of a lookup per byte. */
enum xf_table {
	XF_TABLE = 0,
	XF_ASCII_UPPER = 1,
	XF_ASCII_LOWER = 2,
};

/* The op as the program reads it, at constant offsets only (the verifier without CAP_PERFMON refuses
 * variable offsets into packets and the stack, and variable offsets into map values stop its pruning): the
 * first XF_QUICK bytes of each pattern here; every pattern byte, and a byteMap's table, in xf_words. */
#define XF_QUICK 16
#define XF_PATTERN_WORDS (XF_MAX_PATTERN / 8)

struct xf_op {
	__u8 kind;
	__u8 with;
	__u16 a_len;
	__u16 b_len;
	__u16 pad;
	__u8 a[XF_QUICK]; /* zero-padded */
	__u8 b[XF_QUICK];
};

/* Keys of the per-op maps: xf_ops[XF_OP_KEY(profile, op)], and word k of pattern `which` (0: a or the
 * byteMap table, 1: b) at xf_words[XF_WORD_KEY(XF_OP_KEY(profile, op), which, k)] (bytes in memory order). */
#define XF_OP_KEY(profile, op) ((profile) * XF_MAX_OPS + (op))
#define XF_WORD_KEY(opkey, which, k) (((opkey) * 2 + (which)) * XF_PATTERN_WORDS + (k))

struct xf_profile {
	__u32 nops;
	__u32 user_program; /* 1: tail-call the user's program (slot 0 of xf_user) after the ops */
};

enum xf_phase {
	XF_SEARCH = 0,  /* looking for `after` (mask) or `from` (replace) */
	XF_IN_MASK = 1, /* inside a masked value, looking for `until` */
};

/* An op's state between messages, 16 bits in xf_conn.holds: its phase (bit 8: a masked value may go on in
 * the next send) and how many bytes it held back at the end of a message (bits 0-7) because they may start
 * a pattern that the next bytes complete. Those bytes are a proper prefix of the pattern the op was looking
 * for in that phase (`after`/`from` in XF_SEARCH, `until` in XF_IN_MASK), so their count is all the program
 * keeps: the next run pushes that prefix back in front of the message (or a flush releases it). */
#define XF_HOLD_PHASE 0x100
#define XF_HOLD_LEN 0xff

/* The scalars of one op's walk over one message. They live in the socket's state rather than on the
 * program's stack: the verifier does not track map values, so the walk's loop callbacks converge at once
 * (on the stack, every iteration's different position was a new state to verify). The socket is locked
 * while its program runs, so one walk at a time uses them. */
struct xf_walk {
	__u32 pos;    /* next byte to examine */
	__u32 end;    /* end of the bytes this op may touch (the trigger byte of a flush excluded) */
	__u32 phase;
	__u32 err;
	__u32 held;   /* bytes this op holds back at the end */
	__u32 action; /* what the next step does */
	__u32 cand;   /* candidate position found by the last scan */
	__u32 match;  /* outcome of the candidate's comparison */
	__u32 run_err;
	__u32 run_held;
	/* The pattern the op looks for in its phase (`after`/`from`, or `until` inside a mask): its length,
	 * first two bytes (pc: first | second << 8) and first 16 bytes as words, copied at each phase change so
	 * that a step reads them at constant offsets instead of choosing between two fields. */
	__u32 plen;
	__u32 pc;
	__u32 wkey;   /* the key of the last xf_words lookup (a key in map memory costs no stack store) */
	__u64 p0;
	__u64 p1;
	/* Candidate maps of the 64-byte block at mbase, one bit per byte, for the op's first pattern (bit 0 of
	 * mvalid) and its second (bit 1): computed once per block, so that the candidates of a dense block
	 * are taken one by one without scanning it again. */
	__u32 mbase;
	__u32 mvalid; /* bits 0 and 1: map0 and map1 at mbase; bit 2 (XF_WIDE_VALID): wmap0/wmap1 at wbase */
	__u64 map0;
	__u64 map1;
	/* The search pattern's candidate map of the XF_WIDE (128) bytes at wbase, in two words: computed by a
	 * step's fast path from the window it pulled at a match (or at the start of a scan), so that the next
	 * candidate is found without another pull. */
	__u32 wbase;
	__u32 wpad;
	__u64 wmap0;
	__u64 wmap1;
};

/* Per-socket state (BPF_MAP_TYPE_SK_STORAGE): created by the loader before the socket's first byte. */
struct xf_conn {
	__u32 profile;
	__u32 slot;
	struct xf_walk walk;
	__u64 holds[XF_MAX_OPS / 4]; /* op i: bits 16 * (i % 4) of holds[i / 4] */
};

/* Per-slot ledger (mmapped by the engine): what the program saw, to prove after every send that it ran
 * over every byte the kernel took. */
struct xf_ledger {
	__u64 consumed; /* input bytes the program examined (each once), trigger bytes included */
	__u64 emitted;  /* bytes the program passed on, held bytes excluded until released */
	__u32 flush;    /* set by the engine before a 1-byte trigger write: release every hold */
	__u32 held;     /* bytes held back now, all ops together */
	__u32 failed;   /* enum xf_failure of the first failure; the connection is then closed by the engine */
	__u32 runs;
};

enum xf_failure {
	XF_OK = 0,
	XF_NO_STATE = 1,   /* socket without state: never set up, or state lost */
	XF_NO_PROFILE = 2, /* profile index out of range */
	XF_PULL = 3,       /* bpf_msg_pull_data failed (kernel memory) */
	XF_PUSH = 4,       /* bpf_msg_push_data failed */
	XF_POP = 5,        /* bpf_msg_pop_data failed */
	XF_TOO_LONG = 6,   /* a message longer than the program can walk */
	XF_NO_USER = 7,    /* the user's program is not in place */
	XF_USER_DROP = 8,  /* the user's program returned SK_DROP (counted by the engine, not set here) */
};

#endif
