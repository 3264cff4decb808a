/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Which packets are wanted: the namespaces in scope, the Service's keys
 * (svc_keys, filled by tracer/capture/service_filter.py), its connections by
 * their conntrack entry, other Services' flows to shared endpoints, and the
 * user's extra filters (FILTER_*, and the flows they let through, TRACK_FLOWS).
 */
#ifndef TRACER_SERVICE_FILTER_BPF_H
#define TRACER_SERVICE_FILTER_BPF_H

#include "tracer.h"
#include "maps.bpf.h"
#include "packet.bpf.h"

#ifndef FLOWS_MAX
#define FLOWS_MAX 65536
#endif

struct tracer_flow_key {
	u32 saddr, daddr;
	u16 sport, dport;
	u32 proto;
};

#ifdef TRACK_FLOWS
/* Flows that passed the user's extra filters, recorded at NAT time in both
 * directions and both translations, so that later hops whose tuple no longer
 * shows the client (after MASQUERADE) or the endpoint (before DNAT) still
 * match. LRU: an evicted flow is counted in the filter's favour (re-added at
 * its next NAT event), never silently kept growing. */
BPF_TABLE("lru_hash", struct tracer_flow_key, u8, flows, FLOWS_MAX);
#endif

/* Flows on this node that belong to another Service whose endpoints are also
 * this one's (nginx-demo-2 selects the same pods as nginx-demo-1): learnt at
 * NAT time from conntrack's original destination, so that their later hops,
 * which carry only the endpoint's address, are left out too. */
BPF_TABLE("lru_hash", struct tracer_flow_key, u8, foreign_flows, FLOWS_MAX);

static __always_inline int netns_in_scope(u32 ino)
{
#ifdef SCOPE_NETNS
	return netns_allow.lookup(&ino) != NULL;
#else
	return 1;
#endif
}

/* Is this tuple the service's? Returns TRACER_ROLE_* bits (0: no). */
static __always_inline u8 svc_match(const struct tracer_pkt *p)
{
#ifdef FILTER_PROTO
	if (p->proto != FILTER_PROTO)
		return 0;
#endif
	struct tracer_svc_key k = {};
	u8 role = 0;
	u8 *r;
	k.proto = p->proto;
	k.addr = p->daddr;
	k.port = p->dport;
	r = svc_keys.lookup(&k);
	if (r)
		role |= *r;
	k.addr = p->saddr;
	k.port = p->sport;
	r = svc_keys.lookup(&k);
	if (r)
		role |= *r;
	return role;
}

/* The user's extra filters (client, port, endpoint), on one tuple. */
static __always_inline int user_match(const struct tracer_pkt *p)
{
#ifdef FILTER_CLIENT
	if (p->saddr != FILTER_CLIENT && p->daddr != FILTER_CLIENT)
		return 0;
#endif
#ifdef FILTER_ENDPOINT
	if (p->saddr != FILTER_ENDPOINT && p->daddr != FILTER_ENDPOINT)
		return 0;
#endif
#ifdef FILTER_PORT
	if (p->sport != FILTER_PORT && p->dport != FILTER_PORT)
		return 0;
#endif
	return 1;
}

static __always_inline void flow_key_of(const struct tracer_pkt *p, struct tracer_flow_key *k)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
}

/* The flow's key as the packet shows it, and the key of its other direction. */
static __always_inline void flow_keys_both_ways(const struct tracer_pkt *p, struct tracer_flow_key *k,
						struct tracer_flow_key *r)
{
	flow_key_of(p, k);
	r->saddr = p->daddr;
	r->daddr = p->saddr;
	r->sport = p->dport;
	r->dport = p->sport;
	r->proto = p->proto;
}

static __always_inline void foreign_add(const struct tracer_pkt *p)
{
	struct tracer_flow_key k = {}, r = {};
	u8 one = 1;
	flow_keys_both_ways(p, &k, &r);
	foreign_flows.update(&k, &one);
	foreign_flows.update(&r, &one);
}

static __always_inline int foreign_known(const struct tracer_pkt *p)
{
	struct tracer_flow_key k = {};
	flow_key_of(p, &k);
	return foreign_flows.lookup(&k) != NULL;
}

/* Is addr:port/proto one of the Service's keys (its original destination)? */
static __always_inline int svc_key_known(u32 addr, u16 port, u8 proto)
{
#ifdef FILTER_PROTO
	if (proto != FILTER_PROTO)
		return 0;
#endif
	struct tracer_svc_key k = {};
	k.addr = addr;
	k.port = port;
	k.proto = proto;
	return svc_keys.lookup(&k) != NULL;
}

#define CT_DST_FROM (OFF_CT_ORIG_TUPLE + TUPLE_DST_IP)
#if TUPLE_DST_PORT - TUPLE_DST_IP >= 23 || TUPLE_PROTO - TUPLE_DST_IP >= 24
#error "nf_conntrack_tuple.dst is not laid out as ct_is_service() reads it"
#endif

/* Is the connection the Service's: is its original destination (before any
 * DNAT: the cluster IP, external IP, node port, or a pod reached directly)
 * one of the Service's keys? One read of the conntrack tuple and one lookup,
 * for every packet of the connection in either direction and before or
 * after NAT; it also leaves out other Services' connections to shared
 * endpoints, whose tuples look like this one's. -1: no conntrack entry to
 * ask (receive runs before conntrack; crossing into another namespace
 * scrubs it; untracked), the caller decides by the packet's tuple. */
static __always_inline int ct_is_service(const void *ct)
{
	if (!ct)
		return -1;
	union {
		u8 b[24];
		u64 q[3];
	} dst = {};
	if (bpf_probe_read_kernel(&dst, sizeof(dst), (const char *)ct + CT_DST_FROM))
		return -1;
	return svc_key_known(*(u32 *)&dst.b[0], *(u16 *)&dst.b[TUPLE_DST_PORT - TUPLE_DST_IP],
			     dst.b[TUPLE_PROTO - TUPLE_DST_IP]);
}

#ifdef TRACK_FLOWS
static __always_inline int flow_known(const struct tracer_pkt *p)
{
	struct tracer_flow_key k = {};
	flow_key_of(p, &k);
	return flows.lookup(&k) != NULL;
}

static __always_inline void flow_del(const struct tracer_pkt *p)
{
	struct tracer_flow_key k = {}, r = {};
	flow_keys_both_ways(p, &k, &r);
	flows.delete(&k);
	flows.delete(&r);
}

static __always_inline void flow_add(const struct tracer_pkt *p)
{
	struct tracer_flow_key k = {}, r = {};
	u8 one = 1;
	flow_keys_both_ways(p, &k, &r);
	if (flows.update(&k, &one) || flows.update(&r, &one))
		stat_add(TRACER_STAT_FLOW_OVERFLOW, 1);
}
#endif

/* The packet an ICMP error quotes, as a packet of its own in *q; 0 when p
 * is no ICMP error with a readable quote. Conntrack gives an error about one
 * of its connections that connection's entry (ctinfo RELATED), so where the
 * skb has an entry, ct_is_service() already judges it; the quote decides
 * where it has none (receive, before conntrack; after a namespace crossing). */
static __always_inline int quoted_packet(const struct tracer_pkt *p, struct tracer_pkt *q)
{
	if (!p->quoted_proto)
		return 0;
	q->saddr = p->quoted_saddr;
	q->daddr = p->quoted_daddr;
	q->sport = p->quoted_sport;
	q->dport = p->quoted_dport;
	q->proto = p->quoted_proto;
	return 1;
}

/* The whole filter for one tuple at a non-NAT probe. A packet with a
 * conntrack entry is judged by its connection (ct_is_service(): every packet
 * of a connection whose original destination is the Service's shows the
 * Service's frontend or one of its endpoints anyway); one without (receive
 * runs before conntrack, a namespace crossing scrubs it) by its tuple, and,
 * when that shows an endpoint but no frontend, by whether NAT saw the flow
 * as another Service's (foreign_known: no other Service's flow ever shows
 * this Service's frontend, so that lookup is spared). An ICMP error about
 * one of the Service's packets is judged by the tuple it quotes. */
static __always_inline int packet_wanted(const struct tracer_pkt *p, u64 nfct)
{
	int belongs = ct_is_service((const void *)(nfct & ~7ULL));
	if (belongs == 0)
		return 0;
	struct tracer_pkt q = {};
	int quoted = quoted_packet(p, &q);
	if (belongs < 0) {
		/* An ICMP error is the Service's when the packet it quotes is. */
		const struct tracer_pkt *t = quoted ? &q : p;
		u8 role = svc_match(t);
		if (!role || (!(role & TRACER_ROLE_FRONTEND) && foreign_known(t)))
			return 0;
	}
#ifdef TRACK_FLOWS
	return user_match(p) || flow_known(p) || (quoted && (user_match(&q) || flow_known(&q)));
#else
	return user_match(p) || (quoted && user_match(&q));
#endif
}

#endif /* TRACER_SERVICE_FILTER_BPF_H */
