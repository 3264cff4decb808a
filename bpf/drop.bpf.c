/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Probe point "drop": a packet freed as dropped (kfree_skb), with the
 * kernel's reason (enum skb_drop_reason, 5.17+; names come from BTF).
 *   DROP_TP_BTF          trc_drop_btf on BTF-typed raw tracepoint kfree_skb
 *                        (tp_btf): the raw tracepoint's arguments, typed
 *   DROP_RAW_TRACEPOINT  trc_drop_raw on raw tracepoint kfree_skb: args[0] is
 *                        the skb, args[DROP_RAW_REASON_ARG] the reason (its
 *                        position read from BTF's btf_trace_kfree_skb, since
 *                        6.12 added rx_sk after it)
 *   DROP_TRACEPOINT      trc_drop_tp on skb:kfree_skb, fields at the offsets
 *                        of the tracepoint's format file
 * A dropped skb may have no device any more: its namespace then comes from
 * its socket, or, for a packet the TCP stack dropped after looking up the
 * receiving socket (skb->dev and skb->sk both cleared by then; a RST to a
 * listener, say), from the tracepoint's rx_sk (6.12+, commit c53795d48ee8).
 * A packet with none of them is out of scope.
 */
#include "kernel_fields.bpf.h"
#include "event.bpf.h"

static __always_inline int drop_event(const void *skb, u32 reason, const void *rx_sk)
{
#ifndef MODE_HIST
#ifdef DROP_REASON_CONSUMED
	/* SKB_CONSUMED (value from BTF) is a normal free, not a drop (6.2+). */
	if (reason == DROP_REASON_CONSUMED)
		return 0;
#endif
	const void *dev = skb_dev(skb);
	u32 netns = netns_of_dev(dev);
	if (!netns) {
		const void *sk = (const void *)field_u64(skb, OFF_SKB_SK);
		if (!sk)
			sk = rx_sk;
		if (sk)
			netns = netns_of_net((const void *)field_u64(sk, OFF_SOCK_NET));
	}
	struct tracer_event *e = packet_event(TRACER_PROBE_DROP, skb, dev, netns, skb_network(skb));
	if (e) {
		e->drop_reason = reason;
		event_submit(e);
	}
#endif
	return 0;
}

#if defined(DROP_TP_BTF)
/* BTF-typed raw tracepoint kfree_skb (see trc_rx_btf in rx.bpf.c): the same
 * arguments as the raw tracepoint's, the skb and rx_sk typed. */
int trc_drop_btf(u64 *ctx)
{
	u32 reason = 0;
	const void *rx_sk = NULL;
#ifdef DROP_RAW_REASON_ARG
	reason = (u32)ctx[DROP_RAW_REASON_ARG];
#endif
#ifdef DROP_RAW_RX_SK_ARG
	rx_sk = (const void *)ctx[DROP_RAW_RX_SK_ARG];
#endif
	return drop_event((const void *)ctx[0], reason, rx_sk);
}
#elif defined(DROP_RAW_TRACEPOINT)
int trc_drop_raw(struct bpf_raw_tracepoint_args *ctx)
{
	u32 reason = 0;
	const void *rx_sk = NULL;
#ifdef DROP_RAW_REASON_ARG
	reason = (u32)ctx->args[DROP_RAW_REASON_ARG];
#endif
#ifdef DROP_RAW_RX_SK_ARG
	rx_sk = (const void *)ctx->args[DROP_RAW_RX_SK_ARG];
#endif
	return drop_event((const void *)ctx->args[0], reason, rx_sk);
}
#elif defined(DROP_TRACEPOINT)
int trc_drop_tp(void *args)
{
	const void *skb = (const void *)*(u64 *)((char *)args + DROP_TP_SKBADDR_OFF);
	u32 reason = 0;
	const void *rx_sk = NULL;
#ifdef DROP_TP_REASON_OFF
	reason = *(u32 *)((char *)args + DROP_TP_REASON_OFF);
#endif
#ifdef DROP_TP_RX_SK_OFF
	rx_sk = (const void *)*(u64 *)((char *)args + DROP_TP_RX_SK_OFF);
#endif
	return drop_event(skb, reason, rx_sk);
}
#endif
