/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A packet's IPv4 header and the first bytes of its TCP/UDP header, parsed
 * into struct tracer_pkt, the tuple every filter and event works on.
 * Tunnel packets: encap.bpf.h, built on parse_ipv4().
 */
#ifndef TRACER_PACKET_BPF_H
#define TRACER_PACKET_BPF_H

#define ETH_P_IP_BE 0x0008   /* htons(0x0800) */
#define ETH_P_IPV6_BE 0xDD86 /* htons(0x86DD) */
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17

struct tracer_pkt {
	u32 saddr, daddr;
	u32 seq, ack;
	u16 sport, dport;
	u16 ip_id, len;
	u8 proto, ttl, tcp_flags, ip_hlen, tcp_hlen;
	u8 encap;                      /* TRACER_ENCAP_*: encap.bpf.h */
	u32 outer_saddr, outer_daddr;  /* the tunnel's addresses, if encap */
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

#endif /* TRACER_PACKET_BPF_H */
