/* SPDX-License-Identifier: GPL-2.0 */
/*
 * "nat" backend on kernels with BPF netfilter links (6.4+, commit
 * 84601d6ee68a "bpf: add bpf_link support for BPF_NETFILTER programs").
 * Python attaches trc_nat_nf_enter just before and trc_nat_nf_exit just after
 * each NAT hook priority, in the node's network namespace:
 *   PRE_ROUTING, LOCAL_OUT   NF_IP_PRI_NAT_DST (-100): enter -101, exit -99
 *   POST_ROUTING, LOCAL_IN   NF_IP_PRI_NAT_SRC (+100): enter  99, exit 101
 * The links are scoped to that namespace, so no netns check is needed.
 */
#include "kernel_fields.bpf.h"
#include "nat.bpf.h"

/* struct bpf_nf_ctx (include/linux/filter.h); the verifier allows reading
 * both pointers (net/netfilter/nf_bpf_link.c, nf_is_valid_access). */
struct tracer_nf_ctx {
	const void *state;
	const void *skb;
};

int trc_nat_nf_enter(struct tracer_nf_ctx *ctx)
{
	nat_enter(ctx->skb);
	return 1; /* NF_ACCEPT */
}

int trc_nat_nf_exit(struct tracer_nf_ctx *ctx)
{
	const void *state = ctx->state;
	u8 hook = field_u8(state, OFF_HOOK_STATE_HOOK);
#ifdef MODE_HIST
	u32 netns = 0; /* only events carry it: two reads saved per packet */
#else
	u32 netns = netns_of_net((const void *)field_u64(state, OFF_HOOK_STATE_NET));
#endif
	nat_exit(ctx->skb, hook, netns);
	return 1; /* NF_ACCEPT */
}
