/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Probe point "tx": a packet handed to a device for transmission
 * (__dev_queue_xmit -> net_dev_queue), e.g. into a pod's cali* veth or out of
 * the node's uplink. The network header is set by then.
 *   TX_TP_BTF          trc_tx_btf on BTF-typed raw tracepoint net_dev_queue
 *                      (tp_btf): ctx[0] = skb, fields read as plain loads
 *   TX_RAW_TRACEPOINT  trc_tx_raw on raw tracepoint net_dev_queue: args[0] = skb
 *   TX_TRACEPOINT      trc_tx_tp on net:net_dev_queue, skb at TX_TP_SKBADDR_OFF
 */
#include "kernel_fields.bpf.h"
#include "event.bpf.h"

static __always_inline int tx_event(const void *skb)
{
#ifndef MODE_HIST
	const void *dev = skb_dev(skb);
	struct tracer_event *e =
		packet_event(TRACER_PROBE_TX, skb, dev, netns_of_dev(dev), skb_network(skb));
	if (e)
		event_submit(e);
#endif
	return 0;
}

#if defined(TX_TP_BTF)
/* BTF-typed raw tracepoint net_dev_queue: see trc_rx_btf in rx.bpf.c. */
int trc_tx_btf(u64 *ctx)
{
	return tx_event((const void *)ctx[0]);
}
#elif defined(TX_RAW_TRACEPOINT)
int trc_tx_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return tx_event((const void *)ctx->args[0]);
}
#elif defined(TX_TRACEPOINT)
int trc_tx_tp(void *args)
{
	return tx_event((const void *)*(u64 *)((char *)args + TX_TP_SKBADDR_OFF));
}
#endif
