// moor drop probe (bcc). Counts dropped packets per (reason, netns, ifindex, flow) in the kernel,
// and UDP sockets whose receive buffer overflowed per (netns, local address, port).
//
// Nothing here uses a kernel header's struct layout: every kernel-struct member is read with
// bpf_probe_read_kernel at an offset that drops.py took from the running kernel's BTF
// (/sys/kernel/btf/vmlinux) and passes in as a -D define. skb:kfree_skb is attached either raw
// (KFS_RAW: the arguments of trace_kfree_skb(), positions from the BTF typedef btf_trace_kfree_skb)
// or as the classic tracepoint (its record read at the offsets of the tracefs format file).
//
// Cost: the program runs once per dropped packet (never for delivered ones). Each helper call is a
// large part of that, so the fields of one struct are read in one "window" (the span from the
// first to the last field the probe needs, start aligned to 8), and the IP header together with
// the first bytes after it.
//
// Time: every flow aggregate and socket entry keeps the time of its first and of its last drop.
// With STAMP_JIFFIES (drops.py knows the kernel's HZ) the stamp is bpf_jiffies64(), which the
// verifier inlines into one load; otherwise bpf_ktime_get_boot_ns(), a helper call that measured
// ~45 ns a drop, a fifth of this program's cost (see probe/kclock.py). First is written once, with
// the entry; last only moves forward (a CPU that read the clock before another's store does not
// write), so first <= last always.
//
// The defines:
//   KFS_RAW KFS_SKB_ARG KFS_REASON_ARG [KFS_RX_SK_ARG]  raw tracepoint argument positions
//   TP_SKBADDR TP_PROTOCOL TP_REASON [TP_RX_SK]        or: skb:kfree_skb record offsets
//   SKB_HEAD SKB_NETWORK_HEADER SKB_LEN SKB_DEV SKB_SK [SKB_PROTOCOL]   struct sk_buff
//   SKB_WIN_START SKB_WIN_LEN                           the sk_buff window
//   DEV_IFINDEX DEV_NET  DEV_WIN_START DEV_WIN_LEN      struct net_device (nd_net.net)
//   NET_INUM                                            struct net (ns.inum)
//   SK_NET SK_FAMILY SK_NUM SK_RCV_SADDR [SK_V6_RCV_SADDR]  SKC_WIN_START SKC_WIN_LEN   sock_common
//   SK_RCVBUF [SK_PROTOCOL]                             struct sock
//   REASON_CONSUMED  the value of SKB_CONSUMED on this kernel (never counted)
//   HAVE_IGNORE      some reasons are not counted (the `ignored` array says which)
//   UDPF_RC_ARG UDPF_SK_ARG  argument positions of the raw tracepoint udp_fail_queue_rcv_skb
//   STAMP_JIFFIES    stamp drops with jiffies (else CLOCK_BOOTTIME ns)
//   SKB_DESTRUCTOR TX_DTOR_1 TX_DTOR_2 TX_DTOR_3  sk_buff.destructor, and the addresses of the
//                    destructors of an skb a socket is sending (sock_wfree, __sock_wfree, tcp_wfree)
//   ERR_NOMEM AF_INET_ AF_INET6_ ETH_P_IP_ ETH_P_IPV6_ MAX_FLOWS MAX_SOCKS IGNORE_SLOTS

#define KREAD(dst, base, off) \
    bpf_probe_read_kernel(&(dst), sizeof(dst), (const void *)((const char *)(base) + (off)))
// a field inside a window that was read from `start`
#define AT(type, win, start, off) (*(const type *)((const u8 *)(win) + ((off) - (start))))

#ifdef STAMP_JIFFIES
#define STAMP() tick
#else
#define STAMP() bpf_ktime_get_boot_ns()
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NTOHS(x) ((u16)__builtin_bswap16((u16)(x)))
#else
#define NTOHS(x) ((u16)(x))
#endif

struct drop_key {
    u32 reason;
    u32 netns;       // inode of the network namespace (net->ns.inum); 0 when unknown
    u32 ifindex;     // 0 when unknown
    u8 family;       // 4, 6, or 0 when the packet was not parsed as IP
    u8 proto;        // IP protocol (upper layer, after IPv6 extension headers)
    u8 fragment;     // 1 for any fragment (first included)
    u8 has_fbytes;
    u8 saddr[16];
    u8 daddr[16];
    u16 sport;       // host order; 0 for non-first fragments and port-less protocols
    u16 dport;
    u8 fbytes[2];    // bytes 2-3 after the IP header (IPv6: after the fragment header)
    u16 pad;
};

struct counter {
    u64 packets;
    u64 bytes;
};

struct flow_val {
    u64 packets;
    u64 bytes;
    u64 first;       // STAMP() of the first drop counted here
    u64 last;        // and of the last one
};

struct sock_key {
    u32 netns;
    u8 family;       // 4 or 6
    u8 proto;
    u16 lport;       // host order
    u8 laddr[16];
};

struct sock_val {
    u64 drops;
    u32 rcvbuf;      // sk_rcvbuf when the last drop happened
    u32 pad;
    u64 first;       // STAMP() of the first and the last drop
    u64 last;
};

BPF_F_TABLE("hash", struct drop_key, struct flow_val, drops, MAX_FLOWS, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(drops_overflow, struct counter, 1);
BPF_F_TABLE("hash", struct sock_key, struct sock_val, rcvbuf_drops, MAX_SOCKS, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(rcvbuf_overflow, u64, 1);
// reasons (below IGNORE_SLOTS) that are not counted; filled by drops.py
BPF_ARRAY(ignored, u8, IGNORE_SLOTS);

// The last namespace a program read on this CPU (one slot per program, so two programs never
// interleave their writes to one), trusted for the rest of the jiffy it was read in: a struct net
// outlives its last device and socket by RCU grace periods (its teardown waits for them), far
// more than a tick, so a pointer that was namespace X this tick still is. It saves one helper call
// (~30 ns, bench/probe_overhead.py) per drop of a flood in one namespace.
struct netcache {
    u64 net;
    u64 tick;       // jiffies when net->ns.inum was read
    u32 inum;
    u32 pad;
};
#define NC_KFREE_SKB 0
#define NC_UDP_FAIL 1
BPF_PERCPU_ARRAY(netcache, struct netcache, 2);

static __always_inline u32 net_inum(const void *net, struct netcache *c, u64 tick)
{
    u32 inum = 0;
    if (!net)
        return 0;
    if (c && c->net == (u64)net && c->tick == tick)
        return c->inum;
    KREAD(inum, net, NET_INUM);
    if (c) {
        c->tick = 0;            // (a half-written slot never matches)
        c->net = (u64)net;
        c->inum = inum;
        c->tick = tick;
    }
    return inum;
}

static __always_inline void set_ports(struct drop_key *k, const u8 *l4)
{
    // l4: at least 4 bytes already read
    if (k->proto == 6 || k->proto == 17 || k->proto == 132 || k->proto == 136) {
        k->sport = ((u16)l4[0] << 8) | l4[1];
        k->dport = ((u16)l4[2] << 8) | l4[3];
    }
}

static __always_inline u32 parse_ipv4(struct drop_key *k, const u8 *ip)
{
    u8 h[24] = {};   // the header without options, and 4 bytes after it
    if (bpf_probe_read_kernel(h, sizeof(h), ip) || (h[0] >> 4) != 4)
        return 0;
    u32 ihl = (h[0] & 0xf) * 4;
    if (ihl < 20)
        return 0;
    k->family = 4;
    k->proto = h[9];
    __builtin_memcpy(k->saddr, h + 12, 4);
    __builtin_memcpy(k->daddr, h + 16, 4);
    u16 fo = ((u16)h[6] << 8) | h[7];
    u8 l4[4] = {};
    if (ihl == 20)
        __builtin_memcpy(l4, h + 20, 4);
    else if (bpf_probe_read_kernel(l4, 4, ip + ihl))
        return ((u16)h[2] << 8) | h[3];
    if (fo & 0x3fff) {              // MF set or a non-zero offset: a fragment
        k->fragment = 1;
        k->fbytes[0] = l4[2];
        k->fbytes[1] = l4[3];
        k->has_fbytes = 1;
    }
    if (!(fo & 0x1fff))             // the first fragment (or no fragment) carries the L4 header
        set_ports(k, l4);
    return ((u16)h[2] << 8) | h[3];
}

static __always_inline u32 parse_ipv6(struct drop_key *k, const u8 *ip)
{
    u8 h[48] = {};   // the fixed header, and 8 bytes after it
    if (bpf_probe_read_kernel(h, sizeof(h), ip) || (h[0] >> 4) != 6)
        return 0;
    k->family = 6;
    __builtin_memcpy(k->saddr, h + 8, 16);
    __builtin_memcpy(k->daddr, h + 24, 16);
    u32 total = (((u32)h[4] << 8) | h[5]) + 40;
    u8 nh = h[6];
    u8 next[8] = {};                 // the 8 bytes at p
    __builtin_memcpy(next, h + 40, 8);
    const u8 *p = ip + 40;
    int first = 1;
#pragma unroll
    for (int i = 0; i < 6; i++) {
        if (nh == 0 || nh == 43 || nh == 60 || nh == 51) {   // hop-by-hop, routing, dest opts, AH
            u32 len = nh == 51 ? ((u32)next[1] + 2) * 4 : ((u32)next[1] + 1) * 8;
            nh = next[0];
            p += len;
            if (bpf_probe_read_kernel(next, 8, p))
                return total;
            continue;
        }
        if (nh == 44) {                                      // fragment header
            k->fragment = 1;
            u16 fo = ((u16)next[2] << 8) | next[3];
            nh = next[0];
            p += 8;
            if (bpf_probe_read_kernel(next, 8, p))
                return total;
            k->fbytes[0] = next[2];
            k->fbytes[1] = next[3];
            k->has_fbytes = 1;
            if (fo & 0xfff8) {                               // not the first fragment: no L4 header
                first = 0;
                break;
            }
            continue;
        }
        break;
    }
    k->proto = nh;
    if (first)
        set_ports(k, next);
    return total;
}

static __always_inline int count_drop(const void *skb, u32 reason, const void *sk, u16 protocol)
{
    if (reason == REASON_CONSUMED)
        return 0;
#ifdef HAVE_IGNORE
    if (reason < IGNORE_SLOTS) {
        u32 slot = reason;
        u8 *skip = ignored.lookup(&slot);
        if (skip && *skip)
            return 0;
    }
#endif
    u64 sw[SKB_WIN_LEN / 8];
    if (bpf_probe_read_kernel(sw, sizeof(sw), (const u8 *)skb + SKB_WIN_START))
        return 0;
    u64 tick = bpf_jiffies64();
    u32 slot = NC_KFREE_SKB;
    struct netcache *nc = netcache.lookup(&slot);
#ifdef KFS_RAW
    protocol = NTOHS(AT(u16, sw, SKB_WIN_START, SKB_PROTOCOL));
#endif

    struct drop_key k = {};
    k.reason = reason;

    // where: the device's namespace and index; the socket's namespace when there is no device, or
    // when the device field does not agree with the socket (skb->dev shares a union with rbtree
    // links while an skb sits in a TCP out-of-order queue) — unless the socket is the sender's:
    // an skb still owned for sending (a write destructor; no receiving socket given) that crossed
    // into another namespace without the stack's ip_rcv() orphaning it (eBPF host routing's
    // bpf_redirect_neigh from a pod's veth) is dropped on a real device there, as the same
    // packet forwarded by the stack is
    const void *dev = AT(void *, sw, SKB_WIN_START, SKB_DEV);
    int sending = 0;
#ifdef TX_DTOR_1
    if (!sk) {
        u64 dtor = (u64)AT(void *, sw, SKB_WIN_START, SKB_DESTRUCTOR);
        sending = dtor && (dtor == TX_DTOR_1 || dtor == TX_DTOR_2 || dtor == TX_DTOR_3);
    }
#endif
    if (!sk)
        sk = AT(void *, sw, SKB_WIN_START, SKB_SK);
    u32 dev_ns = 0, sk_ns = 0;
    int ifindex = 0;
    if (dev) {
        const void *net = 0;
#if DEV_WIN_LEN <= 128
        u64 dw[DEV_WIN_LEN / 8];
        if (!bpf_probe_read_kernel(dw, sizeof(dw), (const u8 *)dev + DEV_WIN_START)) {
            ifindex = AT(int, dw, DEV_WIN_START, DEV_IFINDEX);
            net = AT(void *, dw, DEV_WIN_START, DEV_NET);
        }
#else
        KREAD(ifindex, dev, DEV_IFINDEX);
        KREAD(net, dev, DEV_NET);
#endif
        dev_ns = net_inum(net, nc, tick);
    }
    if (sk) {
        const void *net = 0;
        KREAD(net, sk, SK_NET);
        sk_ns = net_inum(net, nc, tick);
    }
    if (dev_ns && ifindex > 0 && (!sk_ns || sk_ns == dev_ns || sending)) {
        k.netns = dev_ns;
        k.ifindex = ifindex;
    } else {
        k.netns = sk_ns;
    }

    u32 bytes = 0;
    if (protocol == ETH_P_IP_ || protocol == ETH_P_IPV6_) {
        const u8 *head = AT(u8 *, sw, SKB_WIN_START, SKB_HEAD);
        u16 nh = AT(u16, sw, SKB_WIN_START, SKB_NETWORK_HEADER);
        if (head) {
            if (protocol == ETH_P_IP_)
                bytes = parse_ipv4(&k, head + nh);
            else
                bytes = parse_ipv6(&k, head + nh);
        }
    }
    if (!bytes)
        bytes = AT(u32, sw, SKB_WIN_START, SKB_LEN);

    u64 now = STAMP();
    struct flow_val *v = drops.lookup(&k);
    if (!v) {
        struct flow_val init = {.first = now, .last = now};
        drops.insert(&k, &init);
        v = drops.lookup(&k);           // ours, or the one another CPU inserted first
        if (!v) {                       // the map is full
            u32 zero = 0;
            struct counter *o = drops_overflow.lookup(&zero);
            if (o) {
                o->packets += 1;
                o->bytes += bytes;
            }
            return 0;
        }
    }
    __sync_fetch_and_add(&v->packets, 1);
    __sync_fetch_and_add(&v->bytes, bytes);
    if (now > v->last)
        v->last = now;
    return 0;
}

#ifdef KFS_RAW
// raw tracepoint: the arguments of trace_kfree_skb() (positions from the BTF typedef
// btf_trace_kfree_skb), without the perf record the classic tracepoint builds first
int on_kfree_skb(struct bpf_raw_tracepoint_args *ctx)
{
    const void *rx_sk = 0;
#ifdef KFS_RX_SK_ARG
    rx_sk = (const void *)ctx->args[KFS_RX_SK_ARG];
#endif
    return count_drop((const void *)ctx->args[KFS_SKB_ARG], (u32)ctx->args[KFS_REASON_ARG], rx_sk, 0);
}
#else
// classic tracepoint skb:kfree_skb: the record at the offsets of its tracefs format file
int on_kfree_skb(void *ctx)
{
    const u8 *c = ctx;
    const void *rx_sk = 0;
#ifdef TP_RX_SK
    rx_sk = *(void *const *)(c + TP_RX_SK);
#endif
    return count_drop(*(void *const *)(c + TP_SKBADDR), *(const u32 *)(c + TP_REASON), rx_sk,
                      *(const u16 *)(c + TP_PROTOCOL));
}
#endif

int on_udp_fail_queue_rcv_skb(struct bpf_raw_tracepoint_args *ctx)
{
    int rc = (int)ctx->args[UDPF_RC_ARG];
    if (rc != -ERR_NOMEM)           // -ENOBUFS is UDP memory pressure (reason PROTO_MEM), not rcvbuf
        return 0;
    const void *sk = (const void *)ctx->args[UDPF_SK_ARG];
    if (!sk)
        return 0;
    u64 cw[SKC_WIN_LEN / 8];
    if (bpf_probe_read_kernel(cw, sizeof(cw), (const u8 *)sk + SKC_WIN_START))
        return 0;
    struct sock_key k = {};
    u64 tick = bpf_jiffies64();
    u32 slot = NC_UDP_FAIL;
    k.netns = net_inum(AT(void *, cw, SKC_WIN_START, SK_NET), netcache.lookup(&slot), tick);
    u16 family = AT(u16, cw, SKC_WIN_START, SK_FAMILY);
    k.lport = AT(u16, cw, SKC_WIN_START, SK_NUM);
#ifdef SK_PROTOCOL
    u16 proto = 0;
    KREAD(proto, sk, SK_PROTOCOL);
    k.proto = proto;
#else
    k.proto = 17;
#endif
    if (family == AF_INET_) {
        k.family = 4;
        __builtin_memcpy(k.laddr, (const u8 *)cw + (SK_RCV_SADDR - SKC_WIN_START), 4);
    }
#ifdef SK_V6_RCV_SADDR
    else if (family == AF_INET6_) {
        k.family = 6;
        __builtin_memcpy(k.laddr, (const u8 *)cw + (SK_V6_RCV_SADDR - SKC_WIN_START), 16);
    }
#endif
    int rcvbuf = 0;
    KREAD(rcvbuf, sk, SK_RCVBUF);

    u64 now = STAMP();
    struct sock_val *v = rcvbuf_drops.lookup(&k);
    if (!v) {
        struct sock_val init = {.first = now, .last = now};
        rcvbuf_drops.insert(&k, &init);
        v = rcvbuf_drops.lookup(&k);
        if (!v) {
            u32 zero = 0;
            u64 *o = rcvbuf_overflow.lookup(&zero);
            if (o)
                *o += 1;
            return 0;
        }
    }
    __sync_fetch_and_add(&v->drops, 1);
    v->rcvbuf = (u32)rcvbuf;
    if (now > v->last)
        v->last = now;
    return 0;
}
