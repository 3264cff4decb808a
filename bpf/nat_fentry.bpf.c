/* SPDX-License-Identifier: GPL-2.0 */
/*
 * "nat" backend on kernels with fentry/fexit (BPF trampolines, 5.5+): the
 * same entry/exit measurement as nat_kprobe.bpf.c on the NAT hook function
 * (nf_nat_inet_fn), without a trap per call, and fexit sees the arguments, so
 * no per-thread map.
 *
 * BPF_PROG is what BCC's KFUNC_PROBE expands to, under names BCC does not load
 * by itself: BCC 0.26 looks fentry targets up in vmlinux BTF only, and
 * nf_nat_inet_fn is in nf_nat.ko on distro kernels. tracer/capture/program.py
 * takes the bytecode and loads it against the function's BTF id in the
 * module's BTF (attach_btf_obj_fd, 5.11+), then attaches it.
 */
#include "kernel_fields.bpf.h"
#include "service_filter.bpf.h"
#include "nat.bpf.h"

/* unsigned int nf_nat_inet_fn(void *priv, struct sk_buff *skb,
 *                             const struct nf_hook_state *state) */
BPF_PROG(trc_nat_fentry, void *priv, const void *skb, const void *state)
{
	u32 netns = netns_of_net((const void *)read_u64(state, OFF_HOOK_STATE_NET));
	if (netns_in_scope(netns))
		nat_enter(skb);
	return 0;
}

BPF_PROG(trc_nat_fexit, void *priv, const void *skb, const void *state, unsigned int ret)
{
	u32 netns = netns_of_net((const void *)read_u64(state, OFF_HOOK_STATE_NET));
	if (!netns_in_scope(netns))
		return 0;
	u8 hook = 0;
	bpf_probe_read_kernel(&hook, 1, (const char *)state + OFF_HOOK_STATE_HOOK);
	nat_exit(skb, hook, netns);
	return 0;
}
