/* SPDX-License-Identifier: GPL-2.0 */
/*
 * "nat" backend on kernels with kprobes: entry and return of the NAT hook
 * function, NAT_KPROBE_FUNC, one of (see tracer/capture/backends.py):
 *   nf_nat_inet_fn(void *priv, struct sk_buff *skb, const struct nf_hook_state *state)
 *   nf_nat_ipv4_fn(...same arguments...)   (kernels before nf_nat_inet_fn)
 * Both run once per packet per NAT hook, so this measures what the netfilter
 * link backend measures, plus the kprobe's own cost.
 * A kretprobe has no arguments: the entry records the skb and hook per thread.
 */
#include <uapi/linux/ptrace.h> /* struct pt_regs for PT_REGS_PARM*: user ABI, stable */
#include "maps.bpf.h"
#include "kernel_fields.bpf.h"
#include "service_filter.bpf.h"
#include "nat.bpf.h"

#ifndef PENDING_MAX
#define PENDING_MAX 16384
#endif

struct tracer_nat_call {
	u64 skb;
	u32 netns;
	u8 hook;
	u8 in_scope;
};

BPF_HASH(nat_calls, u64, struct tracer_nat_call, PENDING_MAX);

/* Every call is recorded, in scope or not: the kretprobe cannot tell which
 * namespace it returns in, and a return without its entry must mean a lost
 * entry (TRACER_STAT_NAT_UNPAIRED), not another node's NAT. */
int trc_nat_kprobe(struct pt_regs *ctx)
{
	const void *skb = (const void *)PT_REGS_PARM2(ctx);
	const void *state = (const void *)PT_REGS_PARM3(ctx);
	struct tracer_nat_call call = {};
	call.netns = netns_of_net((const void *)read_u64(state, OFF_HOOK_STATE_NET));
	call.in_scope = netns_in_scope(call.netns);
	bpf_probe_read_kernel(&call.hook, 1, (const char *)state + OFF_HOOK_STATE_HOOK);
	call.skb = (u64)skb;
	u64 tid = bpf_get_current_pid_tgid();
	nat_calls.update(&tid, &call);
	if (call.in_scope)
		nat_enter(skb);
	return 0;
}

int trc_nat_kretprobe(struct pt_regs *ctx)
{
	u64 tid = bpf_get_current_pid_tgid();
	struct tracer_nat_call *found = nat_calls.lookup(&tid);
	if (!found) {
		stat_add(TRACER_STAT_NAT_UNPAIRED, 1);
		return 0;
	}
	struct tracer_nat_call call = *found;
	nat_calls.delete(&tid);
	if (call.in_scope)
		nat_exit((const void *)call.skb, call.hook, call.netns);
	return 0;
}
