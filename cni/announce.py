"""Tell the L2 network a (possibly re-created) fixed IP now lives at this MAC. Switch and
neighbour caches otherwise keep the old MAC of a fixed IP for minutes to hours and black-hole the
new pod. Call inside the pod's netns.

IPv4: the plugin sets arp_notify before bringing the link up with its addresses, so the kernel
sends the gratuitous ARP itself on NETDEV_UP. Sending one from user space needs an AF_PACKET
socket, whose close waits for an RCU grace period (13-25 ms measured here, more than a whole Go
ADD). IPv6: an unsolicited neighbour advertisement from a raw ICMPv6 socket, which is cheap.
"""
from __future__ import annotations

import ipaddress
import _socket as socket  # the C module: socket.py imports enum and selectors (~2.5 ms)
import struct


def _mac(mac: str) -> bytes:
    return bytes(int(p, 16) for p in mac.split(":"))


def na_message(mac: str, ip: ipaddress.IPv6Address) -> bytes:
    """ICMPv6 neighbour advertisement, Override set, with the target link-layer address option.
    The kernel fills in the checksum on raw ICMPv6 sockets."""
    return struct.pack("!BBHI16sBB6s", 136, 0, 0, 0x20000000, ip.packed, 2, 1, _mac(mac))


def unsolicited_na(ifindex: int, mac: str, ip: ipaddress.IPv6Address) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        s.bind((str(ip), 0, 0, ifindex if ip.is_link_local else 0))
        s.sendto(na_message(mac, ip), ("ff02::1", 0, 0, ifindex))
    finally:
        s.close()
