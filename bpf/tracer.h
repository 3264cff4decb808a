/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every struct and constant that crosses from the BPF programs to Python.
 * tracer/capture/abi.py mirrors this file; tests/capture/test_abi.py
 * compiles it with gcc and checks that the two agree.
 *
 * Only fixed-width types: the same layout on both sides, no padding left to
 * the compiler. Addresses, ports, IP ID, length, seq and ack stay in network
 * byte order as read from the packet; Python decodes them as big-endian.
 */
#ifndef TRACER_H
#define TRACER_H

#ifndef __u64
#include <linux/types.h>
#endif

/* Probe points, as users see them (tracer.capfile.schema.PROBES, 1-based). */
#define TRACER_PROBE_RX 1
#define TRACER_PROBE_TX 2
#define TRACER_PROBE_NAT 3
#define TRACER_PROBE_DROP 4
#define TRACER_PROBE_NR 5

/* What a NAT event did (tracer.capfile.schema.NAT_KINDS, 1-based). */
#define TRACER_NAT_NONE 0
#define TRACER_NAT_DNAT 1
#define TRACER_NAT_SNAT 2
#define TRACER_NAT_REV_DNAT 3
#define TRACER_NAT_REV_SNAT 4

/* Tunnels whose inner IPv4 packet is parsed (tracer.capfile.schema.ENCAPS,
 * 1-based): the event's tuple and header fields are the inner packet's, the
 * outer addresses go to outer_saddr/outer_daddr. */
#define TRACER_ENCAP_NONE 0
#define TRACER_ENCAP_VXLAN 1 /* UDP to VXLAN_PORT, VXLAN header, inner Ethernet */
#define TRACER_ENCAP_IPIP 2  /* IPv4 protocol 4 (RFC 2003) */

/* Netfilter hooks are NF_INET_* (0..4); events of other probes carry this. */
#define TRACER_HOOK_NONE 255

struct tracer_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 skb;          /* sk_buff address */
	__u64 ct;           /* nf_conn address, 0 if none */
	__u32 netns_ino;    /* net->ns.inum */
	__u32 ifindex;
	char ifname[16];    /* IFNAMSIZ */
	__u32 saddr;        /* before the rewrite for nat events */
	__u32 daddr;
	__u32 nat_saddr;    /* after the rewrite (nat events only) */
	__u32 nat_daddr;
	__u32 seq;
	__u32 ack;
	__u32 nat_ns;       /* NAT hook duration (nat events only) */
	__u32 drop_reason;  /* enum skb_drop_reason (drop events only) */
	__u16 sport;
	__u16 dport;
	__u16 nat_sport;
	__u16 nat_dport;
	__u16 ip_id;
	__u16 len;          /* IPv4 total length */
	__u16 cpu;
	__u8 probe;         /* TRACER_PROBE_* */
	__u8 hook;          /* NF_INET_* or TRACER_HOOK_NONE */
	__u8 proto;
	__u8 ttl;
	__u8 tcp_flags;
	__u8 nat_kind;      /* TRACER_NAT_* */
	__u8 nat_first;     /* this packet ran the NAT rules (new binding) */
	__u8 ip_hlen;       /* IPv4 header length, bytes */
	__u8 tcp_hlen;      /* TCP header length (data offset), bytes; 0 if not TCP */
	__u8 encap;         /* TRACER_ENCAP_*: the fields above are the inner packet's */
	__u32 outer_saddr;  /* outer IPv4 header of an encapsulated packet, else 0 */
	__u32 outer_daddr;
	/* ICMP errors (TRACER_ICMP_ERROR_TYPES): the packet the error quotes (RFC
	 * 792: its IPv4 header and first 8 bytes), as the sender of the error
	 * saw it; for nat events, as the NAT hook left it. The fields above are
	 * the ICMP packet's own. quoted_proto 0: no error, or its quote was
	 * unreadable (TRACER_STAT_ICMP_UNQUOTED). */
	__u32 quoted_saddr;
	__u32 quoted_daddr;
	__u16 quoted_sport;
	__u16 quoted_dport;
	__u8 icmp_type;     /* an ICMP error's type (3, 11, 12), else 0 */
	__u8 icmp_code;
	__u8 quoted_proto;
	__u8 pad;
};

/* ICMP types whose message quotes the offending packet and that say it did
 * not get through: destination unreachable (3, code 4: fragmentation needed),
 * time exceeded (11), parameter problem (12). */
#define TRACER_ICMP_DEST_UNREACH 3
#define TRACER_ICMP_TIME_EXCEEDED 11
#define TRACER_ICMP_PARAMETERPROB 12

/* Counters in the per-CPU array "stats", summed by Python. */
#define TRACER_STAT_EVENTS 0          /* events queued to the ring buffer */
#define TRACER_STAT_LOST 1            /* events dropped: ring buffer full */
#define TRACER_STAT_FLOW_OVERFLOW 2   /* flow-tracking map insert failed */
#define TRACER_STAT_IPV6_SKIPPED 3    /* IPv6 packets in scope, not parsed */
#define TRACER_STAT_NON_IP 4          /* other non-IPv4 packets in scope */
#define TRACER_STAT_NAT_UNPAIRED 5    /* NAT exit without its entry record */
#define TRACER_STAT_PARSE_ERROR 6     /* IPv4 header unreadable or malformed */
#define TRACER_STAT_NAT_UNTIMED 7     /* Service packets through NAT whose hook time
                                       * was not measured (exit found no entry) */
#define TRACER_STAT_LOST_BASE 8       /* + TRACER_PROBE_*: lost per probe */
#define TRACER_STAT_ICMP_UNQUOTED 14  /* ICMP errors (namespaces in scope) whose quoted
                                       * packet was unreadable or not IPv4: judged by
                                       * their conntrack entry alone (not after LOST_BASE's
                                       * slots: room for two more probes) */
#define TRACER_STAT_NR 16

/* In-kernel log2 histogram of NAT hook time: per-CPU array indexed by
 * ((hook * 2) + first) * TRACER_HIST_SLOTS + slot, slot = log2(ns). */
#define TRACER_HIST_HOOKS 5
#define TRACER_HIST_SLOTS 32
#define TRACER_HIST_NR (TRACER_HIST_HOOKS * 2 * TRACER_HIST_SLOTS)

/* Key of the "svc_keys" hash map: an address:port:protocol of the service.
 * Value: TRACER_ROLE_* bits. */
struct tracer_svc_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

#define TRACER_ROLE_FRONTEND 1  /* cluster IP, external IP, node port */
#define TRACER_ROLE_ENDPOINT 2  /* pod IP:targetPort */

#endif /* TRACER_H */
