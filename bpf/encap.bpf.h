/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Tunnels between nodes. Calico's VXLAN mode (vxlan.calico) and IPIP mode
 * (tunl0) wrap a pod's packet in an outer IPv4 header between the two nodes'
 * addresses. On the uplink, after encapsulation (tx) and before
 * decapsulation (rx), that outer header says nothing about the Service: the
 * inner packet is the one every other probe sees, and the one to filter on
 * and to report. parse_packet() parses the outer header and, for a tunnel it
 * knows, the inner one, which then takes the outer one's place in the tuple.
 *
 * What is recognised (one level only, no tunnel inside a tunnel):
 *   VXLAN  UDP to VXLAN_PORT, the 8-byte VXLAN header with its I flag set
 *          (RFC 7348), an inner Ethernet header of type IPv4
 *   IPIP   IPv4 protocol 4 (RFC 2003): the inner IPv4 header follows
 * Every read is a fixed-size bpf_probe_read_kernel; there are no loops. A
 * tunnel packet whose inner header is not IPv4 (or cannot be read) is kept as
 * the outer packet, which the Service filter then leaves out.
 */
#ifndef TRACER_ENCAP_BPF_H
#define TRACER_ENCAP_BPF_H

#include "tracer.h"
#include "kernel_fields.bpf.h"
#include "packet.bpf.h"

#ifndef VXLAN_PORT
/* IANA's VXLAN port and Calico's default (FelixConfiguration vxlanPort).
 * Linux's own default, 8472, is what flannel uses: -DVXLAN_PORT=8472. */
#define VXLAN_PORT 4789
#endif
#define IPPROTO_IPIP_ 4
#define VXLAN_FLAG_I 0x08

/* The VXLAN header and the inner Ethernet header after it. */
struct tracer_vxlan_eth {
	u8 flags;
	u8 reserved1[3];
	u8 vni[3];
	u8 reserved2;
	u8 dst[6];
	u8 src[6];
	u16 proto;
};

#define UDP_HLEN 8

/* The inner IPv4 header of a tunnel packet whose outer header p holds (its
 * kind in *kind), or NULL when p is no tunnel packet we know. */
static __always_inline const char *encap_inner(const char *l3, const struct tracer_pkt *p,
					       u8 *kind)
{
	/* A non-first fragment starts with no tunnel header. */
	if (read_u16(l3, 6) & bpf_htons(0x1fff))
		return NULL;
	const char *l4 = l3 + p->ip_hlen;
	if (p->proto == IPPROTO_IPIP_) {
		*kind = TRACER_ENCAP_IPIP;
		return l4;
	}
	if (p->proto == IPPROTO_UDP_ && p->dport == bpf_htons(VXLAN_PORT)) {
		struct tracer_vxlan_eth h;
		if (bpf_probe_read_kernel(&h, sizeof(h), l4 + UDP_HLEN))
			return NULL;
		if (!(h.flags & VXLAN_FLAG_I) || h.proto != ETH_P_IP_BE)
			return NULL;
		*kind = TRACER_ENCAP_VXLAN;
		return l4 + UDP_HLEN + sizeof(h);
	}
	return NULL;
}

/* parse_ipv4(), then the inner packet of a known tunnel in place of the
 * outer one (outer addresses kept aside). Returns 0 on success. */
static __always_inline int parse_packet(const void *l3, struct tracer_pkt *p)
{
	if (parse_ipv4(l3, p))
		return -1;
	u8 kind = TRACER_ENCAP_NONE;
	const char *inner = encap_inner((const char *)l3, p, &kind);
	if (!inner)
		return 0;
	struct tracer_pkt in = {};
	if (parse_ipv4(inner, &in))
		return 0;
	in.encap = kind;
	in.outer_saddr = p->saddr;
	in.outer_daddr = p->daddr;
	*p = in;
	return 0;
}

#endif /* TRACER_ENCAP_BPF_H */
