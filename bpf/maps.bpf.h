/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The maps Python reads or fills, by name (tracer/capture/session.py): the
 * event ring buffer, the counters, the NAT hook time histogram, the Service's
 * keys and the namespaces in scope; and the two counters' update helpers.
 * Their sizes are -D macros from ProgramSettings.macros()
 * (tracer/capture/program.py); the defaults here are for a bare compile.
 * Maps only the C reads live with their users: flows and foreign_flows in
 * service_filter.bpf.h, nat_pending in nat.bpf.h, nat_calls in
 * nat_kprobe.bpf.c.
 */
#ifndef TRACER_MAPS_BPF_H
#define TRACER_MAPS_BPF_H

#include "tracer.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024
#endif
#ifndef SVC_KEYS_MAX
#define SVC_KEYS_MAX 4096
#endif
#ifndef NETNS_MAX
#define NETNS_MAX 1024
#endif

/* --mode hist emits no events, so it has no ring buffer to reserve. */
#ifndef MODE_HIST
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#endif
BPF_PERCPU_ARRAY(stats, u64, TRACER_STAT_NR);
BPF_PERCPU_ARRAY(nat_hist, u64, TRACER_HIST_NR);
BPF_HASH(svc_keys, struct tracer_svc_key, u8, SVC_KEYS_MAX);
#ifdef SCOPE_NETNS
BPF_HASH(netns_allow, u32, u8, NETNS_MAX);
#endif

static __always_inline void stat_add(u32 idx, u64 n)
{
	u64 *v = stats.lookup(&idx);
	if (v)
		*v += n;
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

#endif /* TRACER_MAPS_BPF_H */
