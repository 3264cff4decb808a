/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The NAT measurement shared by every "nat" backend: on entry to the NAT hook
 * take the time, in a per-CPU slot checked against the skb; on exit read the
 * packet's tuple and its conntrack entry, which say whether the connection is
 * the Service's, whether this was its first packet and what the tuple was
 * before. A changed tuple is one NAT event (before/after, hook, kind, hook
 * latency); every packet of the service, changed or not, lands in the
 * in-kernel latency histogram.
 */
#ifndef TRACER_NAT_BPF_H
#define TRACER_NAT_BPF_H

#include "tracer.h"
#include "maps.bpf.h"
#include "kernel_fields.bpf.h"
#include "packet.bpf.h"
#include "service_filter.bpf.h"
#include "event.bpf.h"

/* include/uapi/linux/netfilter.h */
#define NF_INET_PRE_ROUTING 0
#define NF_INET_LOCAL_OUT 3
/* include/uapi/linux/netfilter/nf_conntrack_common.h */
#define IPS_CONFIRMED (1ULL << 3)
#define IP_CT_IS_REPLY 3

/* What nat_enter() leaves for nat_exit(): per CPU, the last NAT_SLOTS
 * entries, each tagged with its skb. Not a hash map keyed by the skb: both
 * brackets of one NAT hook run on the same CPU, back to back, and a per-CPU
 * array costs a few ns where an LRU hash update, lookup and delete cost ~150
 * ns per packet (measured with kernel.bpf_stats_enabled, bench/). Entries are
 * used in turn and exit looks from the newest back, so a packet whose NAT hook
 * is interrupted by other packets' (softirq over a LOCAL_OUT in process
 * context) still finds its own. A packet that never reaches exit (dropped in
 * the NAT hook) leaves an entry that is simply reused. A packet whose entry
 * exit cannot find (it moved to another CPU in between, possible only in
 * preemptible process context, or more than NAT_SLOTS other packets crossed
 * a NAT hook on this CPU meanwhile) is still recorded, rewrite and all, with
 * nat_ns 0 ("not measured") and counted in TRACER_STAT_NAT_UNTIMED: exit
 * checks the skb, so no time is ever measured wrong, and none goes missing
 * unsaid.
 * Entry takes the time and nothing else: everything else (is the connection
 * the Service's, was this its first packet, what the tuple was before) exit
 * reads from the conntrack entry, which the NAT hook does not replace. */
#define NAT_SLOTS 4 /* a power of two */

/* Fault injection for the tests of that path (tests/capture, hidden option
 * --fault-nat-entry-one-in): entry records one packet in NAT_ENTRY_ONE_IN, so
 * exit meets packets whose entry it cannot find. 1: every packet. */
#ifndef NAT_ENTRY_ONE_IN
#define NAT_ENTRY_ONE_IN 1
#endif

struct tracer_nat_slot {
	u64 skb; /* whose entry this is; 0 once consumed */
	u64 ts;
};

struct tracer_nat_pending {
	u32 next;
	struct tracer_nat_slot slot[NAT_SLOTS];
};

BPF_PERCPU_ARRAY(nat_pending, struct tracer_nat_pending, 1);

/* The conntrack entry as exit reads it, in one bpf_probe_read_kernel(): both
 * tuples and the status word after them (offsets from BTF). */
#define CT_VIEW_FROM OFF_CT_ORIG_TUPLE
#define CT_VIEW_LEN (OFF_CT_STATUS + 8 - OFF_CT_ORIG_TUPLE)
#if OFF_CT_REPLY_TUPLE < OFF_CT_ORIG_TUPLE || OFF_CT_STATUS < OFF_CT_REPLY_TUPLE || CT_VIEW_LEN > 192
#error "nf_conn is not laid out as ct_view_read() reads it: tuples, then status"
#endif

struct tracer_ct_view {
	u64 w[(CT_VIEW_LEN + 7) / 8];
};

#define CT_VIEW_AT(v, type, off) (*(type *)((u8 *)(v)->w + (off) - CT_VIEW_FROM))
#define CT_TUPLE_IP(v, tuple, field) CT_VIEW_AT(v, u32, (tuple) + (field))
#define CT_TUPLE_PORT(v, tuple, field) CT_VIEW_AT(v, u16, (tuple) + (field))

static __always_inline int ct_view_read(const void *ct, struct tracer_ct_view *v)
{
	return bpf_probe_read_kernel(v, CT_VIEW_LEN, (const char *)ct + CT_VIEW_FROM);
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

/* One Service packet's NAT hook time into the histogram, or, not measured
 * (dt 0), into the count of those that have none. */
static __always_inline void nat_time_add(u8 hook, u8 first, u64 dt)
{
	if (dt)
		nat_hist_add(hook, first, dt);
	else
		stat_add(TRACER_STAT_NAT_UNTIMED, 1);
}

static __always_inline void nat_enter(const void *skb)
{
#if NAT_ENTRY_ONE_IN > 1
	if (bpf_get_prandom_u32() % NAT_ENTRY_ONE_IN)
		return;
#endif
	u32 zero = 0;
	struct tracer_nat_pending *pend = nat_pending.lookup(&zero);
	if (!pend)
		return;
	struct tracer_nat_slot *np = &pend->slot[pend->next & (NAT_SLOTS - 1)];
	pend->next++;
	np->skb = (u64)skb;
	np->ts = bpf_ktime_get_ns();
}

/* The entry nat_enter() left for this skb on this CPU, looked for from the
 * newest back (see NAT_SLOTS); NULL if there is none. */
static __always_inline struct tracer_nat_slot *nat_slot_find(struct tracer_nat_pending *pend,
							     const void *skb)
{
#pragma unroll
	for (int j = 1; j <= NAT_SLOTS; j++) {
		struct tracer_nat_slot *s = &pend->slot[(pend->next - j) & (NAT_SLOTS - 1)];
		if (s->skb == (u64)skb)
			return s;
	}
	return NULL;
}

/* Consume this skb's entry: the hook's duration, and its start in *ts. With
 * no entry, 0 ("not measured"; a measured one is never 0) and *ts = now. */
static __always_inline u64 nat_hook_time(struct tracer_nat_pending *pend, const void *skb, u64 now,
					 u64 *ts)
{
	struct tracer_nat_slot *found = nat_slot_find(pend, skb);
	*ts = now;
	if (!found)
		return 0;
	found->skb = 0;
	*ts = found->ts;
	return now > *ts ? now - *ts : 1;
}

/* A connection's first packet is the one that walks the NAT rules
 * (nf_nat_inet_fn -> nf_nat_rule/ipt_do_table, or a null binding) at every
 * NAT hook it crosses, and the only one that crosses them before conntrack
 * confirms the entry (__nf_conntrack_confirm, at the last priority of
 * POST_ROUTING and LOCAL_IN). */
static __always_inline u8 ct_view_first(const struct tracer_ct_view *v)
{
	return !(CT_VIEW_AT(v, u64, OFF_CT_STATUS) & IPS_CONFIRMED);
}

/* ct_is_service() on the view exit has already read: is the connection's
 * original destination one of the Service's keys? */
static __always_inline int ct_view_is_service(const struct tracer_ct_view *v)
{
	u32 orig = OFF_CT_ORIG_TUPLE;
	return svc_key_known(CT_TUPLE_IP(v, orig, TUPLE_DST_IP), CT_TUPLE_PORT(v, orig, TUPLE_DST_PORT),
			     CT_VIEW_AT(v, u8, orig + TUPLE_PROTO));
}

/* One packet's pass through a NAT hook, as exit has read it. */
struct tracer_nat_pass {
	const void *skb;
	u64 ct;       /* its nf_conn */
	u64 ts, dt;   /* hook entry time and duration (nat_hook_time()) */
	u32 netns;
	u8 hook;      /* NF_INET_* */
	u8 first;     /* the connection's first packet (ct_view_first()) */
	u8 dst_hook;  /* a DNAT hook: PRE_ROUTING, LOCAL_OUT */
	u8 reply;     /* the packet goes in the reply direction (ctinfo) */
};

/* The packet's tuple before this NAT hook, from its tuple after and the
 * connection's: a DNAT hook (PRE_ROUTING, LOCAL_OUT) rewrites only the
 * destination, an SNAT hook only the source, and what it was is the
 * original tuple's (original direction) or the reply tuple's (replies). */
static __always_inline void tuple_before(const struct tracer_ct_view *v, int dst_hook, int reply,
					 const struct tracer_pkt *after, struct tracer_pkt *before)
{
	*before = *after;
	u32 tuple = reply ? OFF_CT_REPLY_TUPLE : OFF_CT_ORIG_TUPLE;
	int ports = after->proto == IPPROTO_TCP_ || after->proto == IPPROTO_UDP_;
	if (dst_hook) {
		before->daddr = CT_TUPLE_IP(v, tuple, TUPLE_DST_IP);
		if (ports)
			before->dport = CT_TUPLE_PORT(v, tuple, TUPLE_DST_PORT);
	} else {
		before->saddr = CT_TUPLE_IP(v, tuple, TUPLE_SRC_IP);
		if (ports)
			before->sport = CT_TUPLE_PORT(v, tuple, TUPLE_SRC_PORT);
	}
}

#ifdef TRACK_FLOWS
/* Does the Service's packet pass the user's filters, on either tuple or as a
 * flow they let through earlier? */
static __always_inline int nat_wanted(u8 first, const struct tracer_pkt *before,
				      const struct tracer_pkt *after)
{
	if (first) {
		/* A new binding is judged on its own tuples: what the flow map
		 * remembers of an earlier binding of the same client tuple (reset,
		 * then chosen again, maybe to another endpoint) no longer holds. */
		if (user_match(before) || (svc_match(after) && user_match(after)))
			return 1;
		flow_del(before);
		return 0;
	}
	return user_match(before) || flow_known(before) ||
	       (svc_match(after) && (user_match(after) || flow_known(after)));
}

/* Both translations of a flow the user's filters let through, for the
 * packet probes' later hops (service_filter.bpf.h, flows). */
static __always_inline void nat_flows_add(const struct tracer_pkt *before, const struct tracer_pkt *after)
{
	flow_add(before);
	flow_add(after);
}
#else
static __always_inline int nat_wanted(u8 first, const struct tracer_pkt *before,
				      const struct tracer_pkt *after)
{
	return user_match(before) || user_match(after);
}

static __always_inline void nat_flows_add(const struct tracer_pkt *before, const struct tracer_pkt *after)
{
}
#endif /* TRACK_FLOWS */

#ifdef MODE_HIST
static __always_inline void nat_event(const struct tracer_nat_pass *n, const struct tracer_pkt *before,
				      const struct tracer_pkt *after)
{
}
#else
/* A changed tuple is one NAT event: the tuple before, the tuple after, the
 * hook, what it did and its time. */
static __always_inline void nat_event(const struct tracer_nat_pass *n, const struct tracer_pkt *before,
				      const struct tracer_pkt *after)
{
	if (same_tuple(before, after))
		return;
	nat_flows_add(before, after);
	struct tracer_event *e = event_reserve(TRACER_PROBE_NAT);
	if (!e)
		return;
	fill_event(e, n->ts, TRACER_PROBE_NAT, n->skb, skb_dev(n->skb), n->netns, before);
	e->ct = n->ct;
	e->hook = n->hook;
	e->nat_saddr = after->saddr;
	e->nat_daddr = after->daddr;
	e->nat_sport = after->sport;
	e->nat_dport = after->dport;
	e->nat_ns = n->dt > 0xffffffffULL ? 0xffffffff : (u32)n->dt;
	e->nat_first = n->first;
	if (n->dst_hook)
		e->nat_kind = n->reply ? TRACER_NAT_REV_SNAT : TRACER_NAT_DNAT;
	else
		e->nat_kind = n->reply ? TRACER_NAT_REV_DNAT : TRACER_NAT_SNAT;
	event_submit(e);
}
#endif /* MODE_HIST */

#ifdef NAT_HIST_ONLY
/* Histogram only: the Service's packets' hook time, nothing else. */
static __always_inline void nat_record(const struct tracer_nat_pass *n, const struct tracer_ct_view *v,
				       int belongs)
{
	if (belongs)
		nat_time_add(n->hook, n->first, n->dt);
}
#else
/* The tuples before and after the hook, the filters on them, then the
 * histogram and, for a changed tuple, the event. */
static __always_inline void nat_record(const struct tracer_nat_pass *n, const struct tracer_ct_view *v,
				       int belongs)
{
	struct tracer_pkt after = {};
	if (parse_ipv4(skb_network(n->skb), &after))
		return;
	struct tracer_pkt before;
	tuple_before(v, n->dst_hook, n->reply, &after, &before);
	if (!belongs) {
		/* Another Service's connection to shared endpoints: not ours, but
		 * its tuple looks like ours from here on; remembered for the
		 * packet probes. */
		if (svc_match(&before))
			foreign_add(&after);
		return;
	}
	if (!nat_wanted(n->first, &before, &after))
		return;
	nat_time_add(n->hook, n->first, n->dt);
	nat_event(n, &before, &after);
}
#endif /* NAT_HIST_ONLY */

/* After the NAT hook: its time, the conntrack entry (NAT does nothing to a
 * packet without one), then nat_record(). */
static __always_inline void nat_exit(const void *skb, u8 hook, u32 netns)
{
	u64 now = bpf_ktime_get_ns();
	u32 zero = 0;
	struct tracer_nat_pending *pend = nat_pending.lookup(&zero);
	if (!pend)
		return;
	struct tracer_nat_pass n = {};
	n.skb = skb;
	n.netns = netns;
	n.hook = hook;
	n.dt = nat_hook_time(pend, skb, now, &n.ts);
	u64 nfct = field_u64(skb, OFF_SKB_NFCT);
	n.ct = nfct & ~7ULL; /* NFCT_PTRMASK */
	struct tracer_ct_view v;
	if (!n.ct || ct_view_read((const void *)n.ct, &v))
		return;
	n.first = ct_view_first(&v);
	n.dst_hook = hook == NF_INET_PRE_ROUTING || hook == NF_INET_LOCAL_OUT;
	n.reply = (nfct & 7) >= IP_CT_IS_REPLY;
	nat_record(&n, &v, ct_view_is_service(&v));
}

#endif /* TRACER_NAT_BPF_H */
