/* VPC session (5-tuple) counting for moor's probe; compiled by bcc from dataplane/probe/sessions.py.
 *
 * Where: cgroup_skb ingress and egress programs attached to the root of the cgroup v2 hierarchy, so
 * they see every packet a local socket (host or pod, any netns) sends or receives. Only stable UAPI
 * contexts are read (struct __sk_buff, struct bpf_sock, the packet's IP/UDP/TCP headers): no kernel
 * struct offsets, so the installed headers may belong to another kernel.
 *
 * Cost: the programs run per packet, but touch the session map only when a flow is new or the time
 * this packet's direction refreshes (last_seen for a sent packet, last_rx for a received one) is
 * older than the granularity. A packet first checks a 4-entry cache of the flows its
 * socket used recently, kept in socket-local storage (a pointer walk, no hashing): connected
 * sockets and clients with few peers stop there. A socket with more peers at once (a UDP server
 * with many clients) then checks a per-CPU 2-way set-associative cache of recently written flows
 * (an array, so the lookup is a multiply and two compares); only a flow missing from both reads
 * the session map. The big map's bucket array is megabytes: touching it for every packet of
 * thousands of flows costs TLB misses, which is what the caches avoid.
 *
 * A session is the 5-tuple seen from the local socket: (netns cookie, protocol, local addr/port,
 * remote addr/port), for both directions (a reply and a request share one session). last is its
 * last packet either way, last_rx its last RECEIVED packet (the ingress program; 0: none yet), so a
 * session that keeps sending but gets nothing back shows (a stale VPC/NAT session after a route
 * change). The caches keep one stamp per direction, so a flow's received packets are cached as
 * its sent ones are: the per-packet check is the same load and compare either way, and a flow
 * with traffic both ways costs at most one more map write per granularity.
 *
 * These programs never filter: they always return 1 (allow).
 *
 * Build-time parameters (-D from sessions.py): MAX_SESSIONS, REFUSED_MAX, GRAN_NS, L2_BITS; GRAN_J, the
 * same granularity in jiffies when sessions.py could measure the kernel's HZ (bpf_jiffies64() is
 * inlined by the verifier to one load, where bpf_ktime_get_coarse_ns() is a helper call that costs
 * ~35 ns on the machine the bench ran on); and SKB_NETNS_COOKIE when the running kernel lets
 * cgroup_skb call bpf_get_netns_cookie(skb) (kernels from 2025 on). Without it the netns cookie is
 * remembered per socket by a sock_create hook: sockets created before the probe started are
 * attributed to netns cookie 0 (unknown), and minisocks (no storage) are not counted.
 */

#define S_IPPROTO_TCP 6
#define S_IPPROTO_UDP 17
#define S_ETH_P_IP 0x0800
#define S_ETH_P_IPV6 0x86DD
#define S_TCP_LISTEN 10 /* BPF_TCP_LISTEN */

#ifndef MAX_SESSIONS
#define MAX_SESSIONS 262144
#endif
#ifndef REFUSED_MAX
#define REFUSED_MAX 65536
#endif
#ifndef GRAN_NS
#define GRAN_NS 1000000000ULL
#endif
#define CACHE_WAYS 4 /* per socket, power of two */
#ifndef L2_BITS
#define L2_BITS 10   /* per-CPU cache: 2^L2_BITS sets of 2 flows */
#endif

/* counters[] slots, read by sessions.py */
#define C_REFUSED 0   /* distinct sessions refused because the map was full (approx., see refused) */
#define C_REFUSED_TRIES 1 /* insert attempts refused */
#define C_NEW 2       /* sessions inserted */
#define C_NCOUNTERS 4

/* wire formats (RFC 791, RFC 8200): declared here, not taken from any kernel header */
struct ip4h {
    u8 vihl;        /* version << 4 | header length in 32-bit words */
    u8 tos;
    u16 len;
    u16 id;
    u16 frag;       /* flags and fragment offset, network order */
    u8 ttl;
    u8 proto;
    u16 csum;
    u32 saddr;
    u32 daddr;
};

struct ip6h {
    u32 vtcfl;
    u16 plen;
    u8 nexthdr;
    u8 hlim;
    u32 saddr[4];
    u32 daddr[4];
};

struct skey {      /* 48 bytes, 8-aligned: compared as six u64 (same_key, same_flow) */
    u64 netns;      /* netns cookie of the socket */
    u32 laddr[4];   /* local address, network order; IPv4 in laddr[0] */
    u32 raddr[4];   /* remote address */
    u16 lport;      /* host order */
    u16 rport;      /* host order */
    u8 proto;       /* IPPROTO_TCP / IPPROTO_UDP */
    u8 family;      /* 4 or 6 */
    u16 pad;
};

struct sval {
    u64 first;      /* CLOCK_MONOTONIC (coarse) ns */
    u64 last;       /* the last packet either way (refreshed once per granularity); >= last_rx */
    u64 last_rx;    /* the last packet received (ingress); 0: none received since the probe started */
};

/* a cache entry's stamps: when the session map's last (any direction) and last_rx were last made
 * fresh for this flow; jiffies with GRAN_J, else ns. A received packet checks last_rx, a sent one
 * last (a write of last_rx writes last too). */
struct cent {
    u64 flow[5];    /* struct skey without its netns (the socket implies it): bytes 8-47 of the key */
    u64 last;
    u64 last_rx;
};

struct sockstate {
    struct cent e[CACHE_WAYS];
    u64 netns;      /* only used without SKB_NETNS_COOKIE */
};

BPF_F_TABLE("hash", struct skey, struct sval, sessions, MAX_SESSIONS, BPF_F_NO_PREALLOC);
/* sessions refused while the map was full, so dropped() counts each one once (up to REFUSED_MAX
 * remembered; older ones may be counted again) */
BPF_TABLE("lru_hash", struct skey, u8, refused, REFUSED_MAX);
BPF_PERCPU_ARRAY(counters, u64, C_NCOUNTERS);
BPF_SK_STORAGE(sockstate, struct sockstate);

struct l2ent {       /* 64 bytes */
    struct skey k;
    u64 last;       /* as cent.last */
    u64 last_rx;    /* as cent.last_rx */
};
struct l2set {
    struct l2ent w[2];
};
BPF_PERCPU_ARRAY(l2cache, struct l2set, 1 << L2_BITS);

static __always_inline void count(int slot)
{
    u64 *c = counters.lookup(&slot);
    if (c)
        *c += 1;
}

static __always_inline void record(struct skey *k, u64 now, int egress)
{
    struct sval *v = sessions.lookup(k);
    if (!v) {
        struct sval nv = {.first = now, .last = now, .last_rx = egress ? 0 : now};
        int err = sessions.insert(k, &nv); /* BPF_NOEXIST: a racing CPU's first_seen wins */
        if (err == 0) {
            count(C_NEW);
            return;
        }
        if (err != -17 /* EEXIST: inserted by another CPU meanwhile (refreshed below) */) {
            count(C_REFUSED_TRIES);
            if (!refused.lookup(k)) {
                u8 one = 1;
                refused.update(k, &one);
                count(C_REFUSED);
            }
            return;
        }
        v = sessions.lookup(k);
        if (!v)
            return;
    }
    if (!egress && now - v->last_rx >= GRAN_NS) {
        v->last_rx = now;
        v->last = now;
    } else if (now - v->last >= GRAN_NS) {
        v->last = now;
    }
}

/* the flow part of a key (all but the netns) against a socket cache entry: five 8-byte compares */
static __always_inline int same_flow(const u64 *flow, const struct skey *k)
{
    const u64 *b = (const u64 *)k + 1;
    return flow[0] == b[0] && flow[1] == b[1] && flow[2] == b[2] && flow[3] == b[3] && flow[4] == b[4];
}

static __always_inline int same_key(const struct skey *x, const struct skey *y)
{
    const u64 *a = (const u64 *)x, *b = (const u64 *)y;
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

static __always_inline int handle(struct __sk_buff *skb, int egress)
{
    /* the socket as sock_common: full sockets, and request/timewait minisocks (which have no
     * local storage, so their few packets take the map path) */
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return 1;
    if (sk->state == S_TCP_LISTEN)
        return 1;

    struct skey k;
    __builtin_memset(&k, 0, sizeof(k));
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    u16 *ports;
    u32 proto;
    if (skb->protocol == bpf_htons(S_ETH_P_IP)) {
        struct ip4h *ip = data;
        if ((void *)(ip + 1) > end)
            return 1;
        proto = ip->proto;
        if (proto != S_IPPROTO_UDP && proto != S_IPPROTO_TCP)
            return 1;
        if (ip->frag & bpf_htons(0x1fff))
            return 1; /* a non-first fragment: no ports */
        u32 hl = (ip->vihl & 0xf) * 4;
        if (hl < sizeof(*ip))
            return 1;
        ports = data + hl;
        if ((void *)(ports + 2) > end)
            return 1;
        k.family = 4;
        if (egress) {
            k.laddr[0] = ip->saddr;
            k.raddr[0] = ip->daddr;
        } else {
            k.laddr[0] = ip->daddr;
            k.raddr[0] = ip->saddr;
        }
    } else if (skb->protocol == bpf_htons(S_ETH_P_IPV6)) {
        struct ip6h *ip6 = data;
        if ((void *)(ip6 + 1) > end)
            return 1;
        /* extension headers (fragments among them) are not walked: such packets are not counted */
        proto = ip6->nexthdr;
        if (proto != S_IPPROTO_UDP && proto != S_IPPROTO_TCP)
            return 1;
        ports = (void *)(ip6 + 1);
        if ((void *)(ports + 2) > end)
            return 1;
        k.family = 6;
        if (egress) {
            __builtin_memcpy(k.laddr, ip6->saddr, 16);
            __builtin_memcpy(k.raddr, ip6->daddr, 16);
        } else {
            __builtin_memcpy(k.laddr, ip6->daddr, 16);
            __builtin_memcpy(k.raddr, ip6->saddr, 16);
        }
    } else {
        return 1;
    }
    k.proto = proto;
    if (egress) {
        k.lport = bpf_ntohs(ports[0]);
        k.rport = bpf_ntohs(ports[1]);
    } else {
        k.lport = bpf_ntohs(ports[1]);
        k.rport = bpf_ntohs(ports[0]);
    }

#ifdef GRAN_J
    u64 tick = bpf_jiffies64();
#define CACHE_GRAN GRAN_J
#else
    u64 tick = bpf_ktime_get_coarse_ns();
#define CACHE_GRAN GRAN_NS
#endif
/* the stamp this packet's direction refreshes (egress is a constant in each program) */
#define STAMP(x) (egress ? (x)->last : (x)->last_rx)

    /* 1: the socket's own cache */
    struct sockstate *st = sockstate.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    struct cent *e = 0;
    if (st) {
        u32 h = k.raddr[0] ^ k.raddr[3] ^ k.rport ^ (k.rport >> 2) ^ k.proto;
        e = &st->e[h & (CACHE_WAYS - 1)];
        if (tick - STAMP(e) < CACHE_GRAN && same_flow(e->flow, &k))
            return 1; /* this direction written to the session map less than a granularity ago */
    }
#ifdef SKB_NETNS_COOKIE
    k.netns = bpf_get_netns_cookie(skb);
#else
    if (!st)
        return 1; /* a request or timewait minisock: no storage, so no netns to attribute it to */
    k.netns = st->netns;
#endif

    /* 2: this CPU's cache of recently written flows */
    u32 h2 = ((u32)k.lport << 16 | k.rport) ^ k.laddr[0] ^ k.raddr[0] ^ k.laddr[3] ^ k.raddr[3] ^
             (u32)k.netns ^ (u32)(k.netns >> 32) ^ k.proto;
    u32 set = (h2 * 0x9E3779B1u) >> (32 - L2_BITS);
    struct l2set *c2 = l2cache.lookup(&set);
    struct l2ent *w = 0;
    /* the stamps the caches take: after a map write both directions' stamps are fresh for a
     * received packet, only last for a sent one (last_rx: 0, never fresh, unless known below) */
    u64 last = tick, last_rx = egress ? 0 : tick;
    if (c2) {
        if (same_key(&c2->w[0].k, &k))
            w = &c2->w[0];
        else if (same_key(&c2->w[1].k, &k))
            w = &c2->w[1];
        if (w) {
            if (tick - STAMP(w) < CACHE_GRAN) {
                last = w->last;   /* fresh: the socket cache takes the same stamps */
                last_rx = w->last_rx;
                goto fill_socket_cache;
            }
            if (egress)
                last_rx = w->last_rx;   /* a sent packet leaves this flow's last_rx as it was */
        } else { /* replace the way written longer ago */
            w = c2->w[0].last <= c2->w[1].last ? &c2->w[0] : &c2->w[1];
        }
    }

    /* 3: the session map */
    record(&k, bpf_ktime_get_coarse_ns(), egress);
    if (w) {
        __builtin_memcpy(&w->k, &k, sizeof(k));
        w->last = last;
        w->last_rx = last_rx;
    }
fill_socket_cache:
    if (e) {
        __builtin_memcpy(e->flow, (const u64 *)&k + 1, sizeof(e->flow));
        e->last = last;
        e->last_rx = last_rx;
    }
    return 1;
#undef STAMP
}

int sess_egress(struct __sk_buff *skb)
{
    return handle(skb, 1);
}

int sess_ingress(struct __sk_buff *skb)
{
    return handle(skb, 0);
}

#ifndef SKB_NETNS_COOKIE
/* cgroup/sock_create: remember the socket's netns for the skb programs (older kernels) */
int sess_sock_create(struct bpf_sock *ctx)
{
    struct sockstate *st = sockstate.sk_storage_get(ctx, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (st)
        st->netns = bpf_get_netns_cookie(ctx);
    return 1;
}
#endif
