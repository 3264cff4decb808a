/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A packet's IPv4 header and the first bytes of its TCP/UDP header, parsed
 * into struct tracer_pkt, the tuple every filter and event works on.
 * Tunnel packets: encap.bpf.h, built on parse_ipv4().
 */
#ifndef TRACER_PACKET_BPF_H
#define TRACER_PACKET_BPF_H

#include "tracer.h"

#define ETH_P_IP_BE 0x0008   /* htons(0x0800) */
#define ETH_P_IPV6_BE 0xDD86 /* htons(0x86DD) */
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMP_ 1

struct tracer_pkt {
	u32 saddr, daddr;
	u32 seq, ack;
	u16 sport, dport;
	u16 ip_id, len;
	u8 proto, ttl, tcp_flags, ip_hlen, tcp_hlen;
	u8 encap;                      /* TRACER_ENCAP_*: encap.bpf.h */
	u32 outer_saddr, outer_daddr;  /* the tunnel's addresses, if encap */
	/* An ICMP error's type and code, and the tuple of the packet it quotes
	 * (quoted_proto 0: none, or unreadable): tracer.h, struct tracer_event. */
	u32 quoted_saddr, quoted_daddr;
	u16 quoted_sport, quoted_dport;
	u8 icmp_type, icmp_code, quoted_proto;
};

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

/* The ICMP header of an error message and the start of what it quotes: the
 * offending packet's IPv4 header, then its first 8 bytes (RFC 792), of which
 * the ports are the first 4 for TCP and UDP. */
struct tracer_icmp_quote {
	u8 type, code;
	u16 check;
	u32 rest;
	struct tracer_iphdr ip;
	u16 sport, dport;
};

static __always_inline int icmp_is_error(u8 type)
{
	return type == TRACER_ICMP_DEST_UNREACH || type == TRACER_ICMP_TIME_EXCEEDED ||
	       type == TRACER_ICMP_PARAMETERPROB;
}

/* An ICMP error's type, code and the quoted packet's tuple into p. Errors
 * about a packet the sender could not deliver (a REJECT rule, a closed UDP
 * port, no route, TTL, DF and too big) carry the Service's tuple only in
 * their quote. Other ICMP messages leave p alone. A quote that cannot be
 * read leaves quoted_proto 0 (the caller counts it). */
static __always_inline void parse_icmp_error(const char *l4, struct tracer_pkt *p)
{
	struct tracer_icmp_quote q;
	if (bpf_probe_read_kernel(&q, sizeof(q), l4))
		return;
	if (!icmp_is_error(q.type))
		return;
	p->icmp_type = q.type;
	p->icmp_code = q.code;
	if ((q.ip.vihl >> 4) != 4)
		return;
	u32 ihl = (q.ip.vihl & 0x0f) * 4;
	if (ihl < 20 || !q.ip.protocol)
		return;
	p->quoted_saddr = q.ip.saddr;
	p->quoted_daddr = q.ip.daddr;
	p->quoted_proto = q.ip.protocol;
	if (q.ip.frag_off & bpf_htons(0x1fff))
		return;
	if (q.ip.protocol != IPPROTO_TCP_ && q.ip.protocol != IPPROTO_UDP_)
		return;
	if (ihl != sizeof(q.ip)) {
		/* Options in the quoted header: the ports follow them. */
		const char *ports = l4 + 8 + ihl;
		if (bpf_probe_read_kernel(&q.sport, 4, ports))
			return;
	}
	p->quoted_sport = q.sport;
	p->quoted_dport = q.dport;
}

/* Parse IPv4 and the first bytes of TCP/UDP (of an ICMP error, the tuple it
 * quotes). Returns 0 on success. Both
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
	if (ip.protocol == IPPROTO_ICMP_) {
		parse_icmp_error((const char *)l3 + ihl, p);
		return 0;
	}
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

#endif /* TRACER_PACKET_BPF_H */
