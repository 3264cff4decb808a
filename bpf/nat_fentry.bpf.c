/* SPDX-License-Identifier: GPL-2.0 */
/*
 * "nat" backend on kernels with fentry/fexit (BPF trampolines, 5.5+): the
 * same entry/exit measurement as nat_kprobe.bpf.c on NAT_FENTRY_FUNC, without
 * a trap per call, and fexit sees the arguments, so no per-thread map.
 */
#include "nat.bpf.h"

/* KFUNC_PROBE pastes its first argument; expand NAT_FENTRY_FUNC first. */
#define TRC_KFUNC_PROBE(fn, ...) KFUNC_PROBE(fn, __VA_ARGS__)
#define TRC_KRETFUNC_PROBE(fn, ...) KRETFUNC_PROBE(fn, __VA_ARGS__)

TRC_KFUNC_PROBE(NAT_FENTRY_FUNC, void *priv, void *skb, void *state)
{
	u32 netns = netns_of_net((const void *)read_u64(state, OFF_HOOK_STATE_NET));
	if (netns_in_scope(netns))
		nat_enter(skb);
	return 0;
}

TRC_KRETFUNC_PROBE(NAT_FENTRY_FUNC, void *priv, void *skb, void *state, int ret)
{
	u32 netns = netns_of_net((const void *)read_u64(state, OFF_HOOK_STATE_NET));
	if (!netns_in_scope(netns))
		return 0;
	u8 hook = 0;
	bpf_probe_read_kernel(&hook, 1, (const char *)state + OFF_HOOK_STATE_HOOK);
	nat_exit(skb, hook, netns);
	return 0;
}
