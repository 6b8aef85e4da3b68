/* Shared by sk_lookup.bpf.c and the loader (native/src/interception.cc). */
#ifndef KSTREAMS_SK_LOOKUP_H
#define KSTREAMS_SK_LOOKUP_H

/* Slots of the per-CPU `counters` array: what the program did with a lookup for the tapped port. */
enum sk_lookup_counter {
	SK_LOOKUP_STEERED = 0,      /* assigned to the engine's listener */
	SK_LOOKUP_BYPASSED = 1,     /* from the bypass source: left to the normal lookup (the app) */
	SK_LOOKUP_NO_LISTENER = 2,  /* listener map empty (engine gone): fail-open to the app */
	SK_LOOKUP_ASSIGN_FAILED = 3, /* bpf_sk_assign refused (e.g. v6 lookup, v4-only listener): to the app */
	SK_LOOKUP_COUNTERS = 4,
};

/* The one slot of the `listener` SOCKMAP. */
#define SK_LOOKUP_LISTENER_KEY 0

#endif
