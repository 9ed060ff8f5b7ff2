/* eBPF host routing for routed mode; compiled by bcc from dataplane/hostrouting.py.
 *
 * Where: tc ingress (clsact, direct action) on each pod's host-side veth (from_pod), and optionally
 * on a node uplink (from_uplink). Only struct __sk_buff, the packet's own headers and UAPI helper
 * types are read: no kernel struct offsets, so the installed headers may be another kernel's.
 *
 * What: the kernel's own FIB (bpf_fib_lookup: the routes the CNI plugin and moord install, policy
 * rules included) decides; no route map of our own. A packet whose next hop is another local pod's
 * host veth goes straight into that pod's netns (bpf_redirect_peer: no second trip through the
 * node's stack and per-CPU backlog); one whose next hop is elsewhere leaves by bpf_redirect_neigh
 * with the FIB's next hop (the kernel's neighbour code, its states and probes, as forwarding would).
 * TTL / hop limit are decremented and the IPv4 checksum fixed as ip_forward() does.
 *
 * Everything else is TC_ACT_OK, the normal stack: non-IP (ARP), IPv4 options and fragments, IPv6
 * hop-by-hop, ICMP other than echo (errors are the stack's), TTL <= 1 (time exceeded), multicast,
 * link-local, every FIB answer but success (to the node itself, no neighbour yet, frag needed,
 * forwarding off, blackhole...), a source address that is not one of the pod's (the stack and its
 * rp_filter decide: the fast path must not turn a spoofed source into a forwarded one), a GSO
 * packet whose segments would not fit the egress MTU, and a next hop back out of the same device.
 *
 * A packet longer than a route MTU metric that may apply to it is passed too (C_MTU): the stack
 * honours an unlocked `mtu N` on a route when it forwards, bpf_fib_lookup only a locked one
 * (route_mtu below; moord fills the trie, see routemtu.py).
 *
 * pods: host veths of local pods (ifindex -> 1): where bpf_redirect_peer may go.
 * sources: (ifindex, family, address) of each pod route (IP/32, IP/128 dev <veth> proto moor).
 * counters: per-CPU packet counts by outcome (C_* below), read by hostrouting.py.
 * route_mtu: LPM trie (version, destination prefix) -> the smallest MTU metric of the routes to
 *   that prefix or any prefix covering it, in any table; empty on a node without such routes.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>

#define C_PEER 0        /* redirected into a local pod */
#define C_NEIGH 1       /* redirected out of the node */
#define C_NOT_IP 2      /* ARP and other non-IP */
#define C_SPECIAL 3     /* TTL <= 1, ICMP non-echo, options, fragments, multicast, link-local */
#define C_SOURCE 4      /* source not the pod's */
#define C_FIB 5         /* the FIB said anything but success (to the node, no neighbour, frag needed...) */
#define C_MTU 6         /* over a route MTU metric, GSO segments too big for the egress device, or a hairpin */
#define C_N 8

#define AF_INET_ 2
#define AF_INET6_ 10
#define IP_MF_ 0x2000
#define IP_OFFMASK_ 0x1fff

/* bcc 0.26 declares bpf_redirect_neigh() without its nexthop arguments (kernel 5.10's form) */
static long (*redirect_neigh)(u32 ifindex, struct bpf_redir_neigh *params, int plen, u64 flags) =
    (void *)BPF_FUNC_redirect_neigh;

struct src_key {
    u32 ifindex;
    u32 family;
    u8 addr[16];
};

BPF_PERCPU_ARRAY(counters, u64, C_N);
BPF_HASH(pods, u32, u8, MAX_PODS);
BPF_HASH(sources, struct src_key, u8, MAX_PODS * 4);


static __always_inline int count(int what, int verdict)
{
    u32 k = what;
    u64 *v = counters.lookup(&k);
    if (v)
        *v += 1;
    return verdict;
}

/* bytes of the L4 header of a GSO packet (its segments carry it each); 0: unknown, pass it on */
static __always_inline u32 l4_len(void *l4, void *data_end, u8 proto)
{
    if (proto == IPPROTO_TCP) {
        u8 *doff = (u8 *)l4 + 12;
        if ((void *)(doff + 1) > data_end)
            return 0;
        return (*doff >> 4) * 4;
    }
    if (proto == IPPROTO_UDP)
        return 8;
    return 0;
}

struct mtu_key {
    u32 prefixlen;  /* 8 (the version byte) + the prefix length */
    u8 version;     /* 4 or 6: the families never match each other */
    u8 addr[16];
};
BPF_F_TABLE("lpm_trie", struct mtu_key, u32, route_mtu, MAX_MTU_ROUTES, BPF_F_NO_PREALLOC);

/* the bound on the route MTU metrics that may apply to `addr` (0: none); one trie lookup */
static __always_inline u32 metric_mtu(u8 version, void *addr, int addr_len)
{
    struct mtu_key k = {};
    k.prefixlen = 8 + addr_len * 8;
    k.version = version;
    if (version == 4)
        __builtin_memcpy(k.addr, addr, 4);
    else
        __builtin_memcpy(k.addr, addr, 16);
    u32 *mtu = route_mtu.lookup(&k);
    return mtu ? *mtu : 0;
}

/* longer than `bound`: the packet, or for GSO each segment it will be cut into */
static __always_inline int too_long(struct __sk_buff *skb, u32 bound, u32 len, u32 hdrs, void *l4,
                                    void *data_end, u8 proto)
{
    if (!bound)
        return 0;
    if (skb->gso_size) {
        u32 l4h = l4_len(l4, data_end, proto);
        return !l4h || skb->gso_size + hdrs + l4h > bound;
    }
    return len > bound;
}

static __always_inline int ports(struct bpf_fib_lookup *fib, void *l4, void *data_end, u8 proto)
{
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
        __be16 *p = l4;
        if ((void *)(p + 2) > data_end)
            return -1;
        fib->sport = p[0];
        fib->dport = p[1];
    }
    return 0;
}

/* after a successful lookup: where the packet goes (T_POD, T_OUT), or T_PASS (counted) */
#define T_PASS 0
#define T_POD 1
#define T_OUT 2
static __always_inline int target(struct __sk_buff *skb, struct bpf_fib_lookup *fib, u32 in_ifindex,
                                  u32 hdrs, void *l4, void *data_end, u8 proto, int only_pods)
{
    u32 out = fib->ifindex;
    if (out == in_ifindex)  /* back out where it came from: the stack sends the ICMP redirect */
        return count(C_MTU, T_PASS);
    if (skb->gso_size) {
        /* the stack would check skb_gso_validate_network_len(); the FIB did not (tot_len 0) */
        u32 l4h = l4_len(l4, data_end, proto);
        if (!l4h || skb->gso_size + hdrs + l4h > fib->mtu_result)
            return count(C_MTU, T_PASS);
    }
    if (pods.lookup(&out))
        return T_POD;
    return only_pods ? count(C_FIB, T_PASS) : T_OUT;
}

static __always_inline int redirect(struct bpf_fib_lookup *fib, struct ethhdr *eth, int family, int to)
{
    u32 out = fib->ifindex;
    if (to == T_POD) {
        /* into the pod's netns at once: the pod sees the frame its veth would have had */
        __builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
        __builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
        count(C_PEER, 0);
        return bpf_redirect_peer(out, 0);
    }
    struct bpf_redir_neigh nh = {};
    nh.nh_family = family;
    if (family == AF_INET_)
        nh.ipv4_nh = fib->ipv4_dst;  /* the gateway, or the destination on a connected route */
    else
        __builtin_memcpy(nh.ipv6_nh, fib->ipv6_dst, 16);
    count(C_NEIGH, 0);
    return redirect_neigh(out, &nh, sizeof(nh), 0);
}

static __always_inline int route4(struct __sk_buff *skb, u32 in_ifindex, int from_pod)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    if ((void *)(ip + 1) > data_end)
        return count(C_SPECIAL, TC_ACT_OK);
    if (ip->ihl != 5 || ip->ttl <= 1 || (ip->frag_off & bpf_htons(IP_MF_ | IP_OFFMASK_)))
        return count(C_SPECIAL, TC_ACT_OK);
    u32 daddr = bpf_ntohl(ip->daddr);
    if ((daddr >> 28) == 0xe || daddr == 0xffffffff)
        return count(C_SPECIAL, TC_ACT_OK);
    void *l4 = (void *)(ip + 1);
    u8 proto = ip->protocol;
    if (proto == IPPROTO_ICMP) {
        u8 *type = l4;
        if ((void *)(type + 1) > data_end || (*type != 0 && *type != 8))  /* echo reply, echo */
            return count(C_SPECIAL, TC_ACT_OK);
    }
    if (from_pod) {
        struct src_key k = {};
        k.ifindex = in_ifindex;
        k.family = AF_INET_;
        __builtin_memcpy(k.addr, &ip->saddr, 4);
        if (!sources.lookup(&k))
            return count(C_SOURCE, TC_ACT_OK);
    }
    struct bpf_fib_lookup fib = {};
    fib.family = AF_INET_;
    fib.tos = ip->tos;
    fib.l4_protocol = proto;
    /* non-GSO: the FIB checks the length against the MTU it knows (device, locked metric, PMTU
     * exceptions); an unlocked metric is route_mtu's (too_long below) */
    fib.tot_len = skb->gso_size ? 0 : bpf_ntohs(ip->tot_len);
    fib.ifindex = in_ifindex;
    fib.ipv4_src = ip->saddr;
    fib.ipv4_dst = ip->daddr;
    if (ports(&fib, l4, data_end, proto) < 0)
        return count(C_SPECIAL, TC_ACT_OK);
    int rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS)
        return count(C_FIB, TC_ACT_OK);
    if (too_long(skb, metric_mtu(4, &ip->daddr, 4), bpf_ntohs(ip->tot_len), sizeof(*ip), l4, data_end, proto))
        return count(C_MTU, TC_ACT_OK);
    int to = target(skb, &fib, in_ifindex, sizeof(*ip), l4, data_end, proto, !from_pod);
    if (to == T_PASS)
        return TC_ACT_OK;
    /* ip_decrease_ttl(): TTL is the high byte of its 16-bit word */
    u32 check = ip->check;
    check += bpf_htons(0x0100);
    ip->check = (u16)(check + (check >= 0xFFFF));
    ip->ttl--;
    return redirect(&fib, eth, AF_INET_, to);
}

static __always_inline int route6(struct __sk_buff *skb, u32 in_ifindex, int from_pod)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct ipv6hdr *ip6 = data + sizeof(*eth);
    if ((void *)(ip6 + 1) > data_end)
        return count(C_SPECIAL, TC_ACT_OK);
    u8 d0 = ip6->daddr.in6_u.u6_addr8[0], d1 = ip6->daddr.in6_u.u6_addr8[1];
    u8 s0 = ip6->saddr.in6_u.u6_addr8[0], s1 = ip6->saddr.in6_u.u6_addr8[1];
    if (ip6->hop_limit <= 1 || d0 == 0xff || (d0 == 0xfe && (d1 & 0xc0) == 0x80)
        || (s0 == 0xfe && (s1 & 0xc0) == 0x80))
        return count(C_SPECIAL, TC_ACT_OK);
    void *l4 = (void *)(ip6 + 1);
    u8 proto = ip6->nexthdr;
    if (proto == 0)  /* hop-by-hop options: every router reads them */
        return count(C_SPECIAL, TC_ACT_OK);
    if (proto == IPPROTO_ICMPV6) {
        u8 *type = l4;
        if ((void *)(type + 1) > data_end || (*type != 128 && *type != 129))
            return count(C_SPECIAL, TC_ACT_OK);
    }
    if (from_pod) {
        struct src_key k = {};
        k.ifindex = in_ifindex;
        k.family = AF_INET6_;
        __builtin_memcpy(k.addr, &ip6->saddr, 16);
        if (!sources.lookup(&k))
            return count(C_SOURCE, TC_ACT_OK);
    }
    struct bpf_fib_lookup fib = {};
    fib.family = AF_INET6_;
    fib.flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0FFFFFFF);
    fib.l4_protocol = proto;
    fib.tot_len = skb->gso_size ? 0 : bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
    fib.ifindex = in_ifindex;
    __builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
    __builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
    if (ports(&fib, l4, data_end, proto) < 0)
        return count(C_SPECIAL, TC_ACT_OK);
    int rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS)
        return count(C_FIB, TC_ACT_OK);
    if (too_long(skb, metric_mtu(6, &ip6->daddr, 16), bpf_ntohs(ip6->payload_len) + sizeof(*ip6), sizeof(*ip6),
                 l4, data_end, proto))
        return count(C_MTU, TC_ACT_OK);
    int to = target(skb, &fib, in_ifindex, sizeof(*ip6), l4, data_end, proto, !from_pod);
    if (to == T_PASS)
        return TC_ACT_OK;
    ip6->hop_limit--;
    return redirect(&fib, eth, AF_INET6_, to);
}

static __always_inline int route(struct __sk_buff *skb, int from_pod)
{
    u32 in_ifindex = skb->ingress_ifindex;
    if (skb->protocol == bpf_htons(ETH_P_IP))
        return route4(skb, in_ifindex, from_pod);
    if (skb->protocol == bpf_htons(ETH_P_IPV6))
        return route6(skb, in_ifindex, from_pod);
    return count(C_NOT_IP, TC_ACT_OK);
}

/* ingress of a pod's host veth: what the pod sends */
int from_pod(struct __sk_buff *skb)
{
    return route(skb, 1);
}

/* ingress of a node uplink: only what is for a local pod, straight into its netns (the way back
 * of traffic the pods send out); everything else, forwarded or not, is the stack's */
int from_uplink(struct __sk_buff *skb)
{
    return route(skb, 0);
}
