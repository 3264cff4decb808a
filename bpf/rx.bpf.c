/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Probe point "rx": a packet received by a device (netif_receive_skb).
 * Backends, chosen by tracer/capture/backends.py from what the kernel offers,
 * all attached by name from Python:
 *   RX_RAW_TRACEPOINT  trc_rx_raw on raw tracepoint netif_receive_skb (4.17+):
 *                      args[0] is the skb; no record is built, the cheapest
 *   RX_TRACEPOINT      trc_rx_tp on net:netif_receive_skb; the skb address
 *                      sits at RX_TP_SKBADDR_OFF in the record (read from the
 *                      tracepoint's format file)
 *   RX_KPROBE          trc_rx_kprobe on RX_KPROBE_FUNC (CONFIG_KPROBES)
 *   RX_FENTRY          fentry on __netif_receive_skb_core (5.5+, BTF)
 * The packet's L3 header is skb->data at all of them.
 */
#include <uapi/linux/ptrace.h> /* struct pt_regs for PT_REGS_PARM*: user ABI, stable */
#include "common.bpf.h"

static __always_inline int rx_event(const void *skb)
{
#ifndef MODE_HIST
	const void *dev = skb_dev(skb);
	struct tracer_event *e =
		packet_event(TRACER_PROBE_RX, skb, dev, netns_of_dev(dev), skb_data(skb));
	if (e)
		event_submit(e);
#endif
	return 0;
}

#if defined(RX_RAW_TRACEPOINT)
int trc_rx_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return rx_event((const void *)ctx->args[0]);
}
#elif defined(RX_TRACEPOINT)
int trc_rx_tp(void *args)
{
	return rx_event((const void *)*(u64 *)((char *)args + RX_TP_SKBADDR_OFF));
}
#elif defined(RX_KPROBE)
/* __netif_receive_skb_core takes struct sk_buff **pskb since 5.7 (commit
 * 88eb1944e18c); __netif_receive_skb and netif_receive_skb take the skb. */
int trc_rx_kprobe(struct pt_regs *ctx)
{
	const void *skb = (const void *)PT_REGS_PARM1(ctx);
#if RX_KPROBE_PSKB
	skb = (const void *)read_u64(skb, 0);
#endif
	return rx_event(skb);
}
#elif defined(RX_FENTRY)
KFUNC_PROBE(__netif_receive_skb_core, void **pskb)
{
	return rx_event((const void *)read_u64(pskb, 0));
}
#endif
