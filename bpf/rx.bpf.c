/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Probe point "rx": a packet received by a device (netif_receive_skb).
 * Backends, chosen by tracer/capture/backends.py from what the kernel offers:
 *   RX_TP_BTF          trc_rx_btf on the BTF-typed raw tracepoint
 *                      netif_receive_skb ("tp_btf", 5.5+): ctx[0] is the skb,
 *                      typed, so its fields are plain loads (KERNEL_PTRS_BTF)
 *   RX_RAW_TRACEPOINT  trc_rx_raw on raw tracepoint netif_receive_skb (4.17+):
 *                      args[0] is the skb; no record is built, the cheapest
 *   RX_TRACEPOINT      trc_rx_tp on net:netif_receive_skb; the skb address
 *                      sits at RX_TP_SKBADDR_OFF in the record (read from the
 *                      tracepoint's format file)
 *   RX_KPROBE          trc_rx_kprobe on __netif_receive_skb_core (RX_PSKB: it
 *                      takes struct sk_buff **pskb since 5.7), or, where that
 *                      is only a compiler clone (Debian's 6.1), trc_rx_kprobe
 *                      on __netif_receive_skb_one_core (or __netif_receive_skb)
 *                      and trc_rx_list_kp on __netif_receive_skb_list_core
 *   RX_FENTRY          trc_rx_fentry and trc_rx_list_fe on the same two
 *                      functions, loaded and attached by Python from BCC's
 *                      bytecode (tracer/capture/program.py)
 * The tracepoint fires once per __netif_receive_skb_core() call; its two
 * callers together see the same packets (backends.py says why).
 * The packet's L3 header is skb->data at all of them.
 */
#include <uapi/linux/ptrace.h> /* struct pt_regs for PT_REGS_PARM*: user ABI, stable */
#include "maps.bpf.h"
#include "kernel_fields.bpf.h"
#include "event.bpf.h"

#ifndef RX_LIST_MAX
/* A list comes from one NAPI poll (GRO flushes every net.core.gro_normal_batch
 * = 8 skbs; drivers pass at most their poll weight, 64 by default). */
#define RX_LIST_MAX 64
#endif
#define RX_LIST_COUNT_MAX 1024

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

#if defined(RX_KPROBE) || defined(RX_FENTRY)
/* The first argument of the one-skb function. */
static __always_inline int rx_one(const void *arg)
{
#if RX_PSKB
	return rx_event((const void *)read_u64(arg, 0));
#else
	return rx_event(arg);
#endif
}

#ifdef RX_LIST
/* __netif_receive_skb_list_core(struct list_head *head, bool pfmemalloc) runs
 * every skb of the list through __netif_receive_skb_core(), in order: one
 * event each, in that order. skbs are linked through skb->list (4.19+). A
 * list longer than RX_LIST_MAX is counted, not silently cut: what is past the
 * bound counts as lost. */
static __always_inline int rx_list(const void *head)
{
#ifndef MODE_HIST
	const void *pos = (const void *)read_u64(head, 0); /* head->next */
	u32 i;
#pragma clang loop unroll(disable)
	for (i = 0; i < RX_LIST_MAX; i++) {
		if (!pos || pos == head)
			return 0;
		rx_event((const char *)pos - OFF_SKB_LIST);
		pos = (const void *)read_u64(pos, 0);
	}
	u64 missed = 0;
#pragma clang loop unroll(disable)
	for (i = 0; i < RX_LIST_COUNT_MAX; i++) {
		if (!pos || pos == head)
			break;
		missed++;
		pos = (const void *)read_u64(pos, 0);
	}
	if (missed) {
		stat_add(TRACER_STAT_LOST, missed);
		stat_add(TRACER_STAT_LOST_BASE + TRACER_PROBE_RX, missed);
	}
#endif
	return 0;
}
#endif
#endif

#if defined(RX_TP_BTF)
/* Loaded and attached by Python from BCC's bytecode (tracer/capture/
 * program.py), as BPF_PROG_TYPE_TRACING against btf_trace_netif_receive_skb. */
int trc_rx_btf(u64 *ctx)
{
	return rx_event((const void *)ctx[0]);
}
#elif defined(RX_RAW_TRACEPOINT)
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
int trc_rx_kprobe(struct pt_regs *ctx)
{
	return rx_one((const void *)PT_REGS_PARM1(ctx));
}
#ifdef RX_LIST
int trc_rx_list_kp(struct pt_regs *ctx)
{
	return rx_list((const void *)PT_REGS_PARM1(ctx));
}
#endif
#elif defined(RX_FENTRY)
/* BPF_PROG is what BCC's KFUNC_PROBE expands to, under names BCC does not
 * load by itself: BCC 0.26 would look the target up in vmlinux BTF only. */
BPF_PROG(trc_rx_fentry, const void *arg)
{
	return rx_one(arg);
}

BPF_PROG(trc_rx_list_fe, const void *head)
{
	return rx_list(head);
}
#endif
