/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Events: filling a struct tracer_event (tracer.h) from a parsed packet, and
 * the ring buffer's reserve and submit; packet_event() is the whole path of
 * the rx, tx and drop probes (scope, parse, filter, reserve, fill).
 */
#ifndef TRACER_EVENT_BPF_H
#define TRACER_EVENT_BPF_H

#include "tracer.h"
#include "maps.bpf.h"
#include "kernel_fields.bpf.h"
#include "packet.bpf.h"
#include "encap.bpf.h"
#include "service_filter.bpf.h"

#ifndef WAKEUP_EVERY
#define WAKEUP_EVERY 1024 /* a power of two */
#endif

/* Copy a parsed packet and its device into a reserved event. */
static __always_inline void fill_event(struct tracer_event *e, u64 ts, u8 probe, const void *skb,
				       const void *dev, u32 netns, const struct tracer_pkt *p)
{
	e->ts_ns = ts;
	e->skb = (u64)skb;
	/* An encapsulated packet's conntrack entry, if any, is the tunnel flow's
	 * (iptunnel_xmit() and vxlan_rcv() scrub the inner one): not its own. */
	e->ct = p->encap ? 0 : field_u64(skb, OFF_SKB_NFCT) & ~7ULL; /* NFCT_PTRMASK */
	e->netns_ino = netns;
	if (dev) {
		e->ifindex = field_u32(dev, OFF_DEV_IFINDEX);
		copy_ifname(e->ifname, dev);
	} else {
		e->ifindex = 0;
		*(u64 *)&e->ifname[0] = 0;
		*(u64 *)&e->ifname[8] = 0;
	}
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = p->sport;
	e->dport = p->dport;
	e->seq = p->seq;
	e->ack = p->ack;
	e->ip_id = p->ip_id;
	e->len = p->len;
	e->ttl = p->ttl;
	e->proto = p->proto;
	e->tcp_flags = p->tcp_flags;
	e->cpu = bpf_get_smp_processor_id();
	e->probe = probe;
	e->hook = TRACER_HOOK_NONE;
	e->nat_saddr = 0;
	e->nat_daddr = 0;
	e->nat_sport = 0;
	e->nat_dport = 0;
	e->nat_ns = 0;
	e->nat_kind = TRACER_NAT_NONE;
	e->nat_first = 0;
	e->drop_reason = 0;
	e->ip_hlen = p->ip_hlen;
	e->tcp_hlen = p->tcp_hlen;
	e->encap = p->encap;
	e->outer_saddr = p->outer_saddr;
	e->outer_daddr = p->outer_daddr;
	e->quoted_saddr = p->quoted_saddr;
	e->quoted_daddr = p->quoted_daddr;
	e->quoted_sport = p->quoted_sport;
	e->quoted_dport = p->quoted_dport;
	e->icmp_type = p->icmp_type;
	e->icmp_code = p->icmp_code;
	e->quoted_proto = p->quoted_proto;
	e->pad = 0;
}

#ifndef MODE_HIST
/* Reserve an event, counting a full ring buffer as loss of this probe. */
static __always_inline struct tracer_event *event_reserve(u8 probe)
{
	struct tracer_event *e = events.ringbuf_reserve(sizeof(struct tracer_event));
	if (!e) {
		stat_add(TRACER_STAT_LOST, 1);
		stat_add(TRACER_STAT_LOST_BASE + probe, 1);
	}
	return e;
}

/* Submit without waking the reader, except every WAKEUP_EVERY events per CPU:
 * a wakeup per event would cost the data path an IPI and a context switch,
 * and the reader polls on a short timeout anyway. (BCC 0.26 has no
 * ringbuf_query() to wake on the amount of data instead.) */
static __always_inline void event_submit(struct tracer_event *e)
{
	u64 flags = BPF_RB_NO_WAKEUP;
	u32 idx = TRACER_STAT_EVENTS;
	u64 *n = stats.lookup(&idx);
	if (n) {
		*n += 1;
		if ((*n & (WAKEUP_EVERY - 1)) == 0)
			flags = BPF_RB_FORCE_WAKEUP;
	}
	events.ringbuf_submit(e, flags);
}

/* The common path of rx, tx and drop probes: scope, parse, filter, emit.
 * l3 is the packet's IPv4 header (how to find it depends on the probe). */
static __always_inline struct tracer_event *packet_event(u8 probe, const void *skb,
							 const void *dev, u32 netns,
							 const void *l3)
{
	if (!netns_in_scope(netns))
		return NULL;
	u16 proto = field_u16(skb, OFF_SKB_PROTOCOL);
	if (proto != ETH_P_IP_BE) {
		stat_add(proto == ETH_P_IPV6_BE ? TRACER_STAT_IPV6_SKIPPED : TRACER_STAT_NON_IP, 1);
		return NULL;
	}
	struct tracer_pkt p = {};
	if (parse_packet(l3, &p)) {
		stat_add(TRACER_STAT_PARSE_ERROR, 1);
		return NULL;
	}
	if (p.icmp_type && !p.quoted_proto)
		stat_add(TRACER_STAT_ICMP_UNQUOTED, 1);
	/* A tunnel packet's conntrack entry is the tunnel's (see fill_event):
	 * judged like a packet with none. */
	if (!packet_wanted(&p, p.encap ? 0 : field_u64(skb, OFF_SKB_NFCT)))
		return NULL;
	struct tracer_event *e = event_reserve(probe);
	if (e)
		fill_event(e, bpf_ktime_get_ns(), probe, skb, dev, netns, &p);
	return e;
}
#endif /* !MODE_HIST */

#endif /* TRACER_EVENT_BPF_H */
