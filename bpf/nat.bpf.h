/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The NAT measurement shared by every "nat" backend: on entry to the NAT hook
 * remember the packet's tuple, the conntrack status and the time, keyed by
 * the skb; on exit compare. A changed tuple is one NAT event (before/after,
 * hook, kind, hook latency); every packet of the service, changed or not,
 * lands in the in-kernel latency histogram.
 */
#ifndef TRACER_NAT_BPF_H
#define TRACER_NAT_BPF_H

#include "common.bpf.h"

/* include/uapi/linux/netfilter.h */
#define NF_INET_PRE_ROUTING 0
#define NF_INET_LOCAL_IN 1
#define NF_INET_LOCAL_OUT 3
/* include/uapi/linux/netfilter/nf_conntrack_common.h */
#define IPS_SRC_NAT_DONE (1ULL << 7)
#define IPS_DST_NAT_DONE (1ULL << 8)
#define IP_CT_IS_REPLY 3

struct tracer_nat_pending {
	u64 ts;
	u64 ct_status;
	struct tracer_pkt pkt;
	u8 wanted;
};

BPF_TABLE("lru_hash", u64, struct tracer_nat_pending, nat_pending, PENDING_MAX);

static __always_inline u64 ct_status(u64 nfct)
{
	const void *ct = (const void *)(nfct & ~7ULL);
	return ct ? read_u64(ct, OFF_CT_STATUS) : 0;
}

static __always_inline int same_tuple(const struct tracer_pkt *a, const struct tracer_pkt *b)
{
	return a->saddr == b->saddr && a->daddr == b->daddr && a->sport == b->sport &&
	       a->dport == b->dport;
}

static __always_inline void nat_enter(const void *skb)
{
	struct tracer_pkt p = {};
	if (parse_ipv4(skb_network(skb), &p))
		return;
	if (!svc_match(&p))
		return;
	struct tracer_nat_pending np = {};
	np.pkt = p;
	np.ct_status = ct_status(read_u64(skb, OFF_SKB_NFCT));
#ifdef TRACK_FLOWS
	np.wanted = user_match(&p) || flow_known(&p);
#else
	np.wanted = user_match(&p);
#endif
	u64 key = (u64)skb;
	/* Last, so the measured time is the NAT hook's, not ours. */
	np.ts = bpf_ktime_get_ns();
	nat_pending.update(&key, &np);
}

static __always_inline void nat_exit(const void *skb, u8 hook, u32 netns)
{
	u64 now = bpf_ktime_get_ns();
	u64 key = (u64)skb;
	struct tracer_nat_pending *found = nat_pending.lookup(&key);
	if (!found)
		return;
	struct tracer_nat_pending np = *found;
	nat_pending.delete(&key);

	u64 nfct = read_u64(skb, OFF_SKB_NFCT);
	if (ct_belongs(nfct, np.pkt.proto) == 0) {
		/* Another Service's connection to shared endpoints: not ours. */
		struct tracer_pkt now = {};
		if (parse_ipv4(skb_network(skb), &now) == 0)
			foreign_add(&now);
		return;
	}
	u64 done = (hook == NF_INET_PRE_ROUTING || hook == NF_INET_LOCAL_OUT) ? IPS_DST_NAT_DONE
									      : IPS_SRC_NAT_DONE;
	/* The packet that finds the NAT binding not yet set up is the one that
	 * walked the rules (nf_nat_inet_fn -> nf_nat_rule/ipt_do_table). */
	u8 first = !(np.ct_status & done) && (ct_status(nfct) & done);
	u64 dt = now - np.ts;

	struct tracer_pkt after = {};
	int parsed = parse_ipv4(skb_network(skb), &after) == 0;
#ifdef TRACK_FLOWS
	int wanted;
	if (first) {
		/* A new binding is judged on its own tuples: what the flow map
		 * remembers of an earlier binding of the same client tuple (reset,
		 * then chosen again, maybe to another endpoint) no longer holds. */
		wanted = user_match(&np.pkt) || (parsed && svc_match(&after) && user_match(&after));
		if (!wanted) {
			flow_del(&np.pkt);
			return;
		}
	} else {
		wanted = np.wanted ||
			 (parsed && svc_match(&after) && (user_match(&after) || flow_known(&after)));
	}
#else
	int wanted = np.wanted || (parsed && user_match(&after));
#endif
	if (!wanted)
		return;
	nat_hist_add(hook, first, dt);
#ifndef MODE_HIST
	if (!parsed || same_tuple(&np.pkt, &after))
		return;
#ifdef TRACK_FLOWS
	flow_add(&np.pkt);
	flow_add(&after);
#endif
	struct tracer_event *e = event_reserve(TRACER_PROBE_NAT);
	if (!e)
		return;
	fill_event(e, TRACER_PROBE_NAT, skb, skb_dev(skb), netns, &np.pkt);
	e->ts_ns = np.ts;
	e->ct = nfct & ~7ULL;
	e->hook = hook;
	e->nat_saddr = after.saddr;
	e->nat_daddr = after.daddr;
	e->nat_sport = after.sport;
	e->nat_dport = after.dport;
	e->nat_ns = dt > 0xffffffffULL ? 0xffffffff : (u32)dt;
	e->nat_first = first;
	int reply = (nfct & 7) >= IP_CT_IS_REPLY;
	if (done == IPS_DST_NAT_DONE)
		e->nat_kind = reply ? TRACER_NAT_REV_SNAT : TRACER_NAT_DNAT;
	else
		e->nat_kind = reply ? TRACER_NAT_REV_DNAT : TRACER_NAT_SNAT;
	event_submit(e);
#endif
}

#endif /* TRACER_NAT_BPF_H */
