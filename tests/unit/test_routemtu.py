"""Route MTU bounds for host routing (dataplane/routemtu.py) without privileges: route messages
built byte by byte, parsed; the bounds the trie gets; IPv4 metric routes gone with their link.
The kernel side (the socket filter, the events, the program) is tests/ebpf/test_hostrouting.py."""
from __future__ import annotations

import ipaddress
import socket

from cni.netlink import wire as w
from dataplane import routemtu as rm


def route_msg(dst: str, mtu: int = 0, oif: int = 3, table: int = w.RT_TABLE_MAIN, flags: int = 0) -> bytes:
    net = ipaddress.ip_network(dst)
    fam = socket.AF_INET if net.version == 4 else socket.AF_INET6
    body = w.RTMSG.pack(fam, net.prefixlen, 0, 0, min(table, 252), 4, 0, w.RTN_UNICAST, flags)
    body += w.attr_u32(w.RTA_TABLE, table) + w.attr(w.RTA_DST, net.network_address.packed)
    if mtu:  # RTAX_ADVMSS first: the MTU is found among other metrics
        body += w.attr_nested(rm.RTA_METRICS, w.attr_u32(8, 1200), w.attr_u32(rm.RTAX_MTU, mtu))
    return body + w.attr_u32(w.RTA_OIF, oif)


def net(s: str):
    return ipaddress.ip_network(s)


def test_a_route_with_an_mtu_metric_is_parsed_with_its_table_and_device():
    key, r = rm.parse(route_msg("198.51.100.0/26", 1280, oif=7, table=100))
    assert key[:2] == (socket.AF_INET, 100) and r == rm.MetricRoute(net("198.51.100.0/26"), 1280, (7,))
    key6, r6 = rm.parse(route_msg("2001:db8:2::/64", 1400))
    assert key6[0] == socket.AF_INET6 and r6.mtu == 1400 and r6.dst == net("2001:db8:2::/64")


def test_a_route_without_an_mtu_metric_and_a_cached_exception_are_not_bounds():
    assert rm.parse(route_msg("198.51.100.0/26"))[1] is None
    assert rm.parse(route_msg("198.51.100.7/32", 1280, flags=rm.RTM_F_CLONED)) is None


def test_each_prefix_is_bounded_by_the_smallest_metric_covering_it():
    routes = [rm.MetricRoute(net("198.51.100.0/24"), 1400, (3,)), rm.MetricRoute(net("198.51.100.0/26"), 9000, (3,)),
              rm.MetricRoute(net("198.51.100.128/25"), 1280, (3,)), rm.MetricRoute(net("2001:db8::/32"), 1300, (3,)),
              rm.MetricRoute(net("198.51.100.0/26"), 1500, (4,))]  # the same prefix in another table
    assert rm.bounds(routes) == {net("198.51.100.0/24"): 1400, net("198.51.100.0/26"): 1400,
                                 net("198.51.100.128/25"): 1280, net("2001:db8::/32"): 1300}


def test_the_trie_key_puts_the_version_before_the_address():
    k = rm.lpm_key(net("198.51.100.0/26"))
    assert len(k) == 24 and k[:4] == (8 + 26).to_bytes(4, "little") and k[4] == 4 and k[5:9] == bytes([198, 51, 100, 0])


class Events(rm.RouteMtus):
    """The view without a socket: _apply fed by hand."""

    def __init__(self) -> None:
        self.routes = {}


def test_a_link_removed_or_down_takes_its_ipv4_metric_routes_and_a_replace_without_metric_drops_one():
    e = Events()
    for dst, oif in (("198.51.100.0/26", 3), ("198.51.100.64/26", 4), ("2001:db8:2::/64", 3)):
        e._apply(w.pack_msg(w.RTM_NEWROUTE, 0, 0, route_msg(dst, 1280, oif=oif)))
    e._apply(w.pack_msg(w.RTM_DELLINK, 0, 0, w.IFINFOMSG.pack(0, 0, 3, 0, 0)))
    # IPv6 announces its own removals: its route stays until its message
    assert sorted(str(r.dst) for r in e.routes.values()) == ["198.51.100.64/26", "2001:db8:2::/64"]
    e._apply(w.pack_msg(w.RTM_NEWROUTE, w.NLM_F_REPLACE, 0, route_msg("198.51.100.64/26", oif=4)))
    e._apply(w.pack_msg(w.RTM_DELROUTE, 0, 0, route_msg("2001:db8:2::/64", 1280)))
    assert e.routes == {}
