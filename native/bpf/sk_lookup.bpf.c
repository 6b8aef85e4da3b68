// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Interception: steers new TCP connections for the tapped port of a pod's network namespace to the
 * engine's listener. Fail-open by construction: whenever the listener is not there (engine killed, map
 * entry gone) or cannot take the lookup, SK_PASS without a selected socket lets the kernel's normal
 * lookup deliver to the app. Never SK_DROP.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sk_lookup.h"

/* uapi <linux/in.h> and <sys/socket.h> do not build for -target bpf; the values are ABI. */
#define KS_AF_INET 2
#define KS_AF_INET6 10
#define KS_IPPROTO_TCP 6

/* Set through the skeleton before load, so the verifier sees constants and prunes dead branches. */
const volatile __u32 tapped_port = 0;          /* host byte order, like bpf_sk_lookup.local_port */
const volatile __u32 bypass_v4_enabled = 0;
const volatile __u32 bypass_v4 = 0;            /* network byte order */
const volatile __u32 bypass_v6_enabled = 0;
const volatile __u32 bypass_v6[4] = {};        /* network byte order */

/* The engine's listener; an entry vanishes when its socket closes, which is what makes kill -9 fail open. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} listener SEC(".maps");

/* Per-CPU so the hot path never contends; user space sums the CPUs (see enum sk_lookup_counter). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SK_LOOKUP_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &slot);

	if (value)
		*value += 1;
}

static __always_inline int from_bypass_source(const struct bpf_sk_lookup *ctx)
{
	/*
	 * Loaded unconditionally, one field at a time: behind a branch clang folds these into one
	 * "ctx + offset" pointer, and the verifier rejects dereferencing a modified ctx pointer. Reading
	 * remote_ip6 on an IPv4 lookup is fine: the kernel's ctx rewrite yields zeros.
	 */
	__u32 family = ctx->family;
	__u32 remote4 = ctx->remote_ip4;
	__u32 remote6_0 = ctx->remote_ip6[0];
	__u32 remote6_1 = ctx->remote_ip6[1];
	__u32 remote6_2 = ctx->remote_ip6[2];
	__u32 remote6_3 = ctx->remote_ip6[3];

	if (family == KS_AF_INET)
		return bypass_v4_enabled && remote4 == bypass_v4;
	if (family == KS_AF_INET6)
		return bypass_v6_enabled && remote6_0 == bypass_v6[0] && remote6_1 == bypass_v6[1] &&
		       remote6_2 == bypass_v6[2] && remote6_3 == bypass_v6[3];
	return 0;
}

SEC("sk_lookup")
int kstreams_steer(struct bpf_sk_lookup *ctx)
{
	__u32 key = SK_LOOKUP_LISTENER_KEY;
	struct bpf_sock *sk;
	long err;

	if (ctx->protocol != KS_IPPROTO_TCP || ctx->local_port != tapped_port)
		return SK_PASS;
	if (from_bypass_source(ctx)) {
		count(SK_LOOKUP_BYPASSED);
		return SK_PASS;
	}
	sk = bpf_map_lookup_elem(&listener, &key);
	if (!sk) {
		count(SK_LOOKUP_NO_LISTENER);
		return SK_PASS;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	/* The lookup took a reference whatever the outcome; the verifier rejects a path that leaks it. */
	bpf_sk_release(sk);
	count(err ? SK_LOOKUP_ASSIGN_FAILED : SK_LOOKUP_STEERED);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
