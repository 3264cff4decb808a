/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Maps and helpers shared by every probe family: reading an sk_buff, parsing
 * its IPv4/TCP/UDP headers, the in-kernel service filter, and emitting events.
 *
 * Kernel structs are never dereferenced by name here: BCC compiles against
 * whatever headers it finds (Debian's 6.1 on this project's 6.18 machines), so
 * every offset (OFF_*) is read from the running kernel's BTF by
 * tracer/capture/offsets.py and passed in with -D.
 */
#ifndef TRACER_COMMON_BPF_H
#define TRACER_COMMON_BPF_H

#include "tracer.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024
#endif
#ifndef WAKEUP_EVERY
#define WAKEUP_EVERY 1024 /* a power of two */
#endif
#ifndef SVC_KEYS_MAX
#define SVC_KEYS_MAX 4096
#endif
#ifndef NETNS_MAX
#define NETNS_MAX 1024
#endif
#ifndef PENDING_MAX
#define PENDING_MAX 16384
#endif
#ifndef FLOWS_MAX
#define FLOWS_MAX 65536
#endif

#define ETH_P_IP_BE 0x0008   /* htons(0x0800) */
#define ETH_P_IPV6_BE 0xDD86 /* htons(0x86DD) */
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17

#ifndef MODE_HIST
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#endif
BPF_PERCPU_ARRAY(stats, u64, TRACER_STAT_NR);
BPF_PERCPU_ARRAY(nat_hist, u64, TRACER_HIST_NR);
BPF_HASH(svc_keys, struct tracer_svc_key, u8, SVC_KEYS_MAX);
#ifdef SCOPE_NETNS
BPF_HASH(netns_allow, u32, u8, NETNS_MAX);
#endif

struct tracer_pkt {
	u32 saddr, daddr;
	u32 seq, ack;
	u16 sport, dport;
	u16 ip_id, len;
	u8 proto, ttl, tcp_flags, ip_hlen, tcp_hlen;
	u8 encap;                      /* TRACER_ENCAP_*: encap.bpf.h */
	u32 outer_saddr, outer_daddr;  /* the tunnel's addresses, if encap */
};

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

static __always_inline void stat_add(u32 idx, u64 n)
{
	u64 *v = stats.lookup(&idx);
	if (v)
		*v += n;
}

static __always_inline u64 read_u64(const void *base, u32 off)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
	return v;
}

static __always_inline u32 read_u32(const void *base, u32 off)
{
	u32 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
	return v;
}

static __always_inline u16 read_u16(const void *base, u32 off)
{
	u16 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
	return v;
}

static __always_inline u8 read_u8(const void *base, u32 off)
{
	u8 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
	return v;
}

/*
 * Fields of the kernel objects a program reaches from its context: the skb,
 * its device, their network namespace, the netfilter hook state, a socket.
 * Where every attached program gets that context with BTF types (BTF
 * tracepoints, "tp_btf", 5.5+; netfilter programs, whose bpf_nf_ctx is typed
 * by nf_is_valid_access() in net/netfilter/nf_bpf_link.c, 6.4+), Python
 * defines KERNEL_PTRS_BTF and these are plain loads: the verifier checks each
 * against BTF and the JIT emits one instruction with an exception-table
 * entry, where bpf_probe_read_kernel() is a helper call with its own checks.
 * The pointers they return (skb->dev, dev->nd_net.net, ...) are BTF-typed
 * too; what is not a struct pointer (skb->head, skb->_nfct) comes back as a
 * plain number, so packet bytes and the conntrack entry are read with
 * read_*() either way.
 */
#ifdef KERNEL_PTRS_BTF
#if defined(RX_LIST) || defined(RX_KPROBE) || defined(RX_FENTRY) || defined(NAT_KPROBE) || \
	defined(NAT_FENTRY) || defined(RX_TRACEPOINT) || defined(TX_TRACEPOINT) || defined(DROP_TRACEPOINT)
#error "KERNEL_PTRS_BTF needs every program's context BTF-typed (tp_btf, netfilter)"
#endif
#define field_u64(p, off) (*(const u64 *)((const char *)(p) + (off)))
#define field_u32(p, off) (*(const u32 *)((const char *)(p) + (off)))
#define field_u16(p, off) (*(const u16 *)((const char *)(p) + (off)))
#define field_u8(p, off) (*(const u8 *)((const char *)(p) + (off)))
#else
#define field_u64(p, off) read_u64(p, off)
#define field_u32(p, off) read_u32(p, off)
#define field_u16(p, off) read_u16(p, off)
#define field_u8(p, off) read_u8(p, off)
#endif

static __always_inline u32 netns_of_net(const void *net)
{
	return net ? field_u32(net, OFF_NET_INUM) : 0;
}

static __always_inline u32 netns_of_dev(const void *dev)
{
	return dev ? netns_of_net((const void *)field_u64(dev, OFF_DEV_ND_NET)) : 0;
}

/* dev->name (IFNAMSIZ = 16 bytes), as two 8-byte words. */
static __always_inline void copy_ifname(char *dst, const void *dev)
{
	*(u64 *)&dst[0] = field_u64(dev, OFF_DEV_NAME);
	*(u64 *)&dst[8] = field_u64(dev, OFF_DEV_NAME + 8);
}

static __always_inline int netns_in_scope(u32 ino)
{
#ifdef SCOPE_NETNS
	return netns_allow.lookup(&ino) != NULL;
#else
	return 1;
#endif
}

/* L3 header of an skb whose network header is set (netfilter, transmit). */
static __always_inline const void *skb_network(const void *skb)
{
	u16 nh = field_u16(skb, OFF_SKB_NETWORK_HEADER);
	if (nh == 0xffff) /* (typeof(skb->network_header))~0U: not set */
		return NULL;
	return (const void *)(field_u64(skb, OFF_SKB_HEAD) + nh);
}

/* L3 header at receive: netif_receive_skb runs before
 * skb_reset_network_header() in __netif_receive_skb_core(), but
 * eth_type_trans() has already pulled the MAC header, so skb->data is L3. */
static __always_inline const void *skb_data(const void *skb)
{
	return (const void *)field_u64(skb, OFF_SKB_DATA);
}

struct tracer_iphdr {
	u8 vihl, tos;
	u16 tot_len, id, frag_off;
	u8 ttl, protocol;
	u16 check;
	u32 saddr, daddr;
};

struct tracer_l4hdr {
	u16 sport, dport;
	u32 seq, ack; /* TCP only */
	u8 doff, flags;
};

/* Parse IPv4 and the first bytes of TCP/UDP. Returns 0 on success. Both
 * headers come in one read when the IPv4 header has no options (nearly
 * always): each bpf_probe_read_kernel() costs a helper call. Reading past a
 * short packet stays inside the skb's buffer (tailroom, skb_shared_info),
 * and those bytes are used only if the protocol says they are a header. */
static __always_inline int parse_ipv4(const void *l3, struct tracer_pkt *p)
{
	struct {
		struct tracer_iphdr ip;
		struct tracer_l4hdr l4;
	} h;
	if (!l3)
		return -1;
	int both = bpf_probe_read_kernel(&h, sizeof(h), l3) == 0;
	if (!both && bpf_probe_read_kernel(&h.ip, sizeof(h.ip), l3))
		return -1;
	struct tracer_iphdr ip = h.ip;
	if ((ip.vihl >> 4) != 4)
		return -1;
	u32 ihl = (ip.vihl & 0x0f) * 4;
	if (ihl < 20)
		return -1;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->ip_id = ip.id;
	p->len = ip.tot_len;
	p->ttl = ip.ttl;
	p->proto = ip.protocol;
	p->ip_hlen = ihl;
	/* Only the first fragment carries the L4 header. */
	if (ip.frag_off & bpf_htons(0x1fff))
		return 0;
	if (ip.protocol != IPPROTO_TCP_ && ip.protocol != IPPROTO_UDP_)
		return 0;
	if (!both || ihl != sizeof(h.ip)) {
		if (bpf_probe_read_kernel(&h.l4, sizeof(h.l4), (const char *)l3 + ihl))
			return 0;
	}
	p->sport = h.l4.sport;
	p->dport = h.l4.dport;
	if (ip.protocol == IPPROTO_TCP_) {
		p->seq = h.l4.seq;
		p->ack = h.l4.ack;
		p->tcp_flags = h.l4.flags;
		p->tcp_hlen = (h.l4.doff >> 4) * 4;
	}
	return 0;
}

#include "encap.bpf.h"

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

/* Flows on this node that belong to another Service whose endpoints are also
 * this one's (nginx-demo-2 selects the same pods as nginx-demo-1): learnt at
 * NAT time from conntrack's original destination, so that their later hops,
 * which carry only the endpoint's address, are left out too. */
BPF_TABLE("lru_hash", struct tracer_flow_key, u8, foreign_flows, FLOWS_MAX);

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

/* The whole filter for one tuple at a non-NAT probe. A packet with a
 * conntrack entry is judged by its connection (ct_is_service(): every packet
 * of a connection whose original destination is the Service's shows the
 * Service's frontend or one of its endpoints anyway); one without (receive
 * runs before conntrack, a namespace crossing scrubs it) by its tuple, and,
 * when that shows an endpoint but no frontend, by whether NAT saw the flow
 * as another Service's (foreign_known: no other Service's flow ever shows
 * this Service's frontend, so that lookup is spared). */
static __always_inline int packet_wanted(const struct tracer_pkt *p, u64 nfct)
{
	int belongs = ct_is_service((const void *)(nfct & ~7ULL));
	if (belongs == 0)
		return 0;
	if (belongs < 0) {
		u8 role = svc_match(p);
		if (!role || (!(role & TRACER_ROLE_FRONTEND) && foreign_known(p)))
			return 0;
	}
#ifdef TRACK_FLOWS
	return user_match(p) || flow_known(p);
#else
	return user_match(p);
#endif
}

static __always_inline u32 log2_slot(u64 v)
{
	u32 r = 0;
#pragma unroll
	for (int i = 32; i > 0; i >>= 1) {
		if (v >= (1ULL << i)) {
			v >>= i;
			r += i;
		}
	}
	return r < TRACER_HIST_SLOTS ? r : TRACER_HIST_SLOTS - 1;
}

static __always_inline void nat_hist_add(u8 hook, u8 first, u64 ns)
{
	if (hook >= TRACER_HIST_HOOKS)
		return;
	u32 idx = ((u32)hook * 2 + (first ? 1 : 0)) * TRACER_HIST_SLOTS + log2_slot(ns);
	u64 *v = nat_hist.lookup(&idx);
	if (v)
		*v += 1;
}

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
	/* A tunnel packet's conntrack entry is the tunnel's (see fill_event):
	 * judged like a packet with none. */
	if (!packet_wanted(&p, p.encap ? 0 : field_u64(skb, OFF_SKB_NFCT)))
		return NULL;
	struct tracer_event *e = event_reserve(probe);
	if (e)
		fill_event(e, bpf_ktime_get_ns(), probe, skb, dev, netns, &p);
	return e;
}

/* Device and namespace of an skb that has a device (rx, tx). */
static __always_inline const void *skb_dev(const void *skb)
{
	return (const void *)field_u64(skb, OFF_SKB_DEV);
}
#endif /* !MODE_HIST */

#endif /* TRACER_COMMON_BPF_H */
