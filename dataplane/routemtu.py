"""Route MTU metrics for host routing: the routes carrying `mtu N`, followed in the kernel's tables.

Why: forwarding (ip_forward, ip6_forward) honours a route's MTU metric whether it is locked or not;
bpf_fib_lookup() checks a packet only against a *locked* one (ip_mtu_from_fib_result,
ip6_mtu_from_fib6), so without this the fast path would forward a DF packet the stack refuses with
"frag needed". The FIB result does not say which route matched, so the program cannot ask for that
route's metric; instead moord follows every unicast route with an MTU metric, in every table (policy
rules may pick any), and hands the program an LPM trie: per such prefix, the smallest MTU of it and of
every such prefix covering it. One trie lookup on the destination then bounds the MTU of any route
the FIB can have picked, and a packet larger than that bound goes to the stack, which decides
exactly. The bound errs one way only (a more specific route without a metric still gets its
covering route's bound: slower for packets over it, never wrong). An empty trie, the usual node,
costs one lookup that finds no root.

Following: a netlink socket on the route and link groups, with a classic BPF filter letting in
only route messages that carry RTA_METRICS, replaces without it (they may have dropped a metric;
not the learned routes' protocol, whose churn never carries one), link removals and links going
down (IPv4 flushes their routes without a message). A lost event (ENOBUFS) re-reads the tables.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass

from cni.netlink import wire as w
from cni.netlink.rtnl import RTNL, NetlinkError

from .routewatch import (RTM_F_CLONED, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK, _IFF_UP_BYTE, _hop_oifs,
                         _sw16, assemble, attach_filter, set_rcvbuf)

log = logging.getLogger("moord.routemtu")

RTA_METRICS = 8  # include/uapi/linux/rtnetlink.h
RTAX_MTU = 2
SKF_AD_NLATTR = 0xFFFFF000 + 12  # SKF_AD_OFF + SKF_AD_NLATTR: A = offset of attribute type X at/after A, or 0
RCVBUF = 4 << 20
_HDR_LEN = 16
_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}


@dataclass(frozen=True)
class MetricRoute:
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    mtu: int
    oifs: tuple[int, ...]


def socket_filter(learned: int = w.RTPROT_MOOR_BGP) -> list[tuple[int, int, int, int]]:
    """The event socket's filter (one netlink message per multicast skb, see the module doc)."""
    LDH, LDB, LDW_ABS, LD_IMM, LDX_IMM, JEQ, JSET, RET = 0x28, 0x30, 0x20, 0x00, 0x01, 0x15, 0x45, 0x06
    return assemble([
        (LDH, 0, 0, 4),  # nlmsg_type
        (JEQ, "route", 0, _sw16(w.RTM_NEWROUTE)),
        (JEQ, "route", 0, _sw16(w.RTM_DELROUTE)),
        (JEQ, "accept", 0, _sw16(w.RTM_DELLINK)),
        (JEQ, 0, "drop", _sw16(w.RTM_NEWLINK)),
        (LDB, 0, 0, _HDR_LEN + 8 + (_IFF_UP_BYTE - 24)),  # ifinfomsg.ifi_flags, the IFF_UP byte
        (JSET, "drop", "accept", w.IFF_UP),
        ("label", "route"),
        (LD_IMM, 0, 0, _HDR_LEN + w.RTMSG.size),  # A: where the attributes begin, after struct rtmsg
        (LDX_IMM, 0, 0, RTA_METRICS),  # X: the attribute type to find
        (LDW_ABS, 0, 0, SKF_AD_NLATTR),
        (JEQ, 0, "accept", 0),  # found: a route with metrics
        (LDH, 0, 0, 4),
        (JEQ, 0, "drop", _sw16(w.RTM_NEWROUTE)),
        (LDH, 0, 0, 6),  # nlmsg_flags
        (JSET, 0, "drop", _sw16(w.NLM_F_REPLACE)),
        (LDB, 0, 0, _HDR_LEN + 5),  # rtmsg.rtm_protocol
        (JEQ, "drop", "accept", learned),
        ("label", "accept"),
        (RET, 0, 0, 0xFFFFFFFF),
        ("label", "drop"),
        (RET, 0, 0, 0),
    ])


def parse(body: bytes) -> tuple[tuple, MetricRoute | None] | None:
    """(key, the route when it has an MTU metric else None) of a route message; None for what is
    not a unicast route in a table. key: what the kernel tells routes apart by (family, table,
    destination, tos, priority / IPv6 metric)."""
    if len(body) < w.RTMSG.size:
        return None
    fam, dlen, _sl, tos, tbl, _proto, _scope, rtype, rflags = w.RTMSG.unpack_from(body)
    if rtype != w.RTN_UNICAST or fam not in _VERSION or rflags & RTM_F_CLONED:
        return None
    a = w.parse_attrs(body[w.RTMSG.size:])
    tbl = w.u32(a[w.RTA_TABLE]) if w.RTA_TABLE in a else tbl
    raw = a.get(w.RTA_DST, b"\0" * (4 if fam == socket.AF_INET else 16))
    key = (fam, tbl, raw, dlen, tos, w.u32(a[w.RTA_PRIORITY]) if w.RTA_PRIORITY in a else 0)
    mtu = w.parse_attrs(a[RTA_METRICS]).get(RTAX_MTU) if RTA_METRICS in a else None
    if not mtu or not w.u32(mtu):
        return key, None
    oifs = ((w.u32(a[w.RTA_OIF]),) if w.RTA_OIF in a else ()) + _hop_oifs(a.get(w.RTA_MULTIPATH, b""))
    return key, MetricRoute(ipaddress.ip_network((ipaddress.ip_address(raw), dlen)), w.u32(mtu), oifs)


def bounds(routes) -> dict:
    """Per destination of a metric route: the smallest MTU of the metric routes to it or to any
    prefix covering it (every table: the trie stands for all of them)."""
    own: dict = {}
    for r in routes:
        own[r.dst] = min(r.mtu, own.get(r.dst, r.mtu))
    # each prefix's covering prefixes looked up by length (at most 33 or 129 look-ups): linear in
    # the routes, where comparing every pair would take seconds for thousands of metric routes
    lens = {v: sorted({d.prefixlen for d in own if d.version == v}) for v in (4, 6)}
    out = {}
    for dst, mtu in own.items():
        for ln in lens[dst.version]:
            if ln >= dst.prefixlen:
                break
            mtu = min(mtu, own.get(dst.supernet(new_prefix=ln), mtu))
        out[dst] = mtu
    return out


def _metric_route(m: w.Message):
    p = parse(m.body) if m.type == w.RTM_NEWROUTE else None
    return p if p is not None and p[1] is not None else None


def read_tables() -> dict:
    """Every metric route in every table, both families: key -> MetricRoute. Only those are kept
    while the dump is read (a node with 100k pod routes holds none of them here)."""
    out: dict = {}
    with RTNL() as nl:
        for fam in (socket.AF_INET, socket.AF_INET6):
            body = w.RTMSG.pack(fam, 0, 0, 0, 0, 0, 0, 0, 0)
            try:
                kept = nl.dump(w.RTM_GETROUTE, body, "dump routes for their MTU metrics", attempts=20,
                               keep=_metric_route)
            except NetlinkError as e:
                if fam == socket.AF_INET6 and e.errno in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
                    continue
                raise
            out.update(kept)
    return out


class RouteMtus:
    """The metric routes as last seen, and a socket following them. Open it in the netns to follow
    (a netlink socket stays in the netns it was made in); drain() when the socket is readable."""

    def __init__(self) -> None:
        self.routes: dict = {}
        self.rereads = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            set_rcvbuf(self.sock, RCVBUF)
            attach_filter(self.sock, socket_filter())
            self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
            self.sock.setblocking(False)
            self.routes = read_tables()  # after subscribing: no change falls between the two
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def bounds(self) -> dict:
        return bounds(self.routes.values())

    def drain(self) -> bool:
        """Apply what the socket holds; True when the metric routes changed."""
        before = dict(self.routes)
        lost = False
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                lost = True
                continue
            if not lost:
                self._apply(data)
        if lost:  # events were lost: the tables are the truth (rare: the filter keeps the socket quiet)
            self.rereads += 1
            log.warning("host routing: route MTU events lost; re-reading the routing tables")
            self.routes = read_tables()
        return self.routes != before

    def _apply(self, data: bytes) -> None:
        for mtype, _flags, _seq, body, _next in w.iter_msgs(data):
            if mtype in (w.RTM_NEWROUTE, w.RTM_DELROUTE):
                p = parse(body)
                if p is None:
                    continue
                key, route = p
                if mtype == w.RTM_NEWROUTE and route is not None:
                    self.routes[key] = route
                else:
                    self.routes.pop(key, None)
            elif mtype in (w.RTM_DELLINK, w.RTM_NEWLINK) and len(body) >= w.IFINFOMSG.size:
                # removed or down: the kernel drops the IPv4 routes through it without a message
                _fam, _type, index, flags, _change = w.IFINFOMSG.unpack_from(body)
                if mtype == w.RTM_NEWLINK and flags & w.IFF_UP:
                    continue
                for key in [k for k, r in self.routes.items() if index in r.oifs and k[0] == socket.AF_INET]:
                    del self.routes[key]


def lpm_key(dst) -> bytes:
    """struct mtu_key in hostrouting.bpf.c: prefix length in bits over (version byte, address)."""
    return struct.pack("=IB16s3x", 8 + dst.prefixlen, dst.version, dst.network_address.packed)
