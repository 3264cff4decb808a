/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The NAT measurement shared by every "nat" backend: on entry to the NAT hook
 * remember the packet's tuple, the conntrack status and the time, in a
 * per-CPU slot checked against the skb; on exit compare. A changed tuple is one NAT event (before/after,
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

/* What nat_enter() leaves for nat_exit(): per CPU, the last NAT_SLOTS
 * entries, each tagged with its skb. Not a hash map keyed by the skb: both
 * brackets of one NAT hook run on the same CPU, back to back, and a per-CPU
 * array costs a few ns where an LRU hash update, lookup and delete cost ~150
 * ns per packet (measured with kernel.bpf_stats_enabled, bench/). Entries are
 * used in turn and exit looks from the newest back, so a packet whose NAT hook
 * is interrupted by other packets' (softirq over a LOCAL_OUT in process
 * context) still finds its own. A packet that never reaches exit (dropped in
 * the NAT hook) leaves an entry that is simply reused; one that moved to
 * another CPU in between (possible only in preemptible process context) goes
 * unmeasured: exit checks the skb, so nothing is ever measured wrong. */
#define NAT_SLOTS 4 /* a power of two */

struct tracer_nat_slot {
	u64 skb; /* whose entry this is; 0 once consumed */
	u64 ts;
	u64 ct;  /* the nf_conn at entry: NAT does not change skb->_nfct */
	u64 ct_status;
	struct tracer_pkt pkt; /* tuple before NAT (not filled by the histogram-only path) */
	u8 wanted;
	u8 foreign; /* the tuple is the Service's, the connection another Service's */
};

struct tracer_nat_pending {
	u32 next;
	struct tracer_nat_slot slot[NAT_SLOTS];
};

BPF_PERCPU_ARRAY(nat_pending, struct tracer_nat_pending, 1);

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

/* Histogram only, no --client/--endpoint/--port: nothing needs the tuple. */
#if defined(MODE_HIST) && !defined(TRACK_FLOWS)
#define NAT_HIST_ONLY 1
#endif

static __always_inline void nat_enter(const void *skb)
{
	u64 nfct = field_u64(skb, OFF_SKB_NFCT);
	const void *ct = (const void *)(nfct & ~7ULL);
	int belongs = ct_is_service(ct);
	struct tracer_pkt p = {};
#ifdef NAT_HIST_ONLY
	if (belongs == 0)
		return;
	if (belongs < 0 && (parse_ipv4(skb_network(skb), &p) || !svc_match(&p)))
		return;
#else
	if (parse_ipv4(skb_network(skb), &p))
		return;
	/* A connection that is not the Service's matters only if its tuple
	 * looks like the Service's (a shared endpoint): exit records it as
	 * foreign for the packet probes. */
	if (belongs <= 0 && !svc_match(&p))
		return;
#endif
	u32 zero = 0;
	struct tracer_nat_pending *pend = nat_pending.lookup(&zero);
	if (!pend)
		return;
	struct tracer_nat_slot *np = &pend->slot[pend->next & (NAT_SLOTS - 1)];
	pend->next++;
#ifndef NAT_HIST_ONLY
	np->pkt = p;
#endif
	np->ct = (u64)ct;
	np->ct_status = ct ? read_u64(ct, OFF_CT_STATUS) : 0;
	np->foreign = belongs == 0;
#ifdef TRACK_FLOWS
	np->wanted = user_match(&p) || flow_known(&p);
#else
	np->wanted = user_match(&p); /* 1: no --client/--endpoint/--port */
#endif
	np->skb = (u64)skb;
	/* Last, so the measured time is the NAT hook's, not ours. */
	np->ts = bpf_ktime_get_ns();
}

static __always_inline void nat_exit(const void *skb, u8 hook, u32 netns)
{
	u64 now = bpf_ktime_get_ns();
	u32 zero = 0;
	struct tracer_nat_pending *pend = nat_pending.lookup(&zero);
	if (!pend)
		return;
	struct tracer_nat_slot *found = NULL;
#pragma unroll
	for (int j = 1; j <= NAT_SLOTS; j++) {
		struct tracer_nat_slot *s = &pend->slot[(pend->next - j) & (NAT_SLOTS - 1)];
		if (s->skb == (u64)skb) {
			found = s;
			break;
		}
	}
	if (!found)
		return;
	found->skb = 0;
#ifdef NAT_HIST_ONLY
	u64 dt = now - found->ts;
	u64 done = (hook == NF_INET_PRE_ROUTING || hook == NF_INET_LOCAL_OUT) ? IPS_DST_NAT_DONE
									      : IPS_SRC_NAT_DONE;
	u64 status_after = found->ct ? read_u64((const void *)found->ct, OFF_CT_STATUS) : 0;
	nat_hist_add(hook, !(found->ct_status & done) && (status_after & done), dt);
#else
	struct tracer_nat_slot np = *found;
	if (np.foreign) {
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
	u64 status_after = np.ct ? read_u64((const void *)np.ct, OFF_CT_STATUS) : 0;
	u8 first = !(np.ct_status & done) && (status_after & done);
	u64 dt = now - np.ts;
	u64 nfct = field_u64(skb, OFF_SKB_NFCT);
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
#endif /* !MODE_HIST */
#endif /* !NAT_HIST_ONLY */
}

#endif /* TRACER_NAT_BPF_H */
