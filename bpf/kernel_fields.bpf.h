/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Reading fields of the kernel objects a program reaches from its context:
 * the skb, its device, their network namespace, the netfilter hook state, a
 * socket.
 *
 * Kernel structs are never dereferenced by name: BCC compiles against
 * whatever kernel headers it is given, and a kernel with no build tree of its
 * own (/lib/modules/$(uname -r)/build; a custom-built 6.18, say) gets a
 * Debian 6.1 linux-headers tree from tracer/capture/kheaders.py, whose struct
 * layouts are 6.1's. So every offset (OFF_*, TUPLE_*) is read from the running
 * kernel's BTF by tracer/capture/offsets.py and passed in with -D.
 */
#ifndef TRACER_KERNEL_FIELDS_BPF_H
#define TRACER_KERNEL_FIELDS_BPF_H

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
 * Where every attached program gets its context with BTF types (BTF
 * tracepoints, "tp_btf", 5.5+; netfilter programs, whose bpf_nf_ctx is typed
 * by nf_is_valid_access() in net/netfilter/nf_bpf_link.c, 6.4+), Python
 * defines KERNEL_PTRS_BTF and field_*() are plain loads: the verifier checks
 * each against BTF and the JIT emits one instruction with an exception-table
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

/* Device of an skb that has one (rx, tx; a dropped skb may not). */
static __always_inline const void *skb_dev(const void *skb)
{
	return (const void *)field_u64(skb, OFF_SKB_DEV);
}

#endif /* TRACER_KERNEL_FIELDS_BPF_H */
