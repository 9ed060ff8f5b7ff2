"""Tell the L2 network a (possibly re-created) fixed IP now lives at this MAC: gratuitous ARP and
unsolicited neighbour advertisements. Switch and neighbour caches otherwise keep the old MAC of a
fixed IP for minutes to hours and black-hole the new pod. Call inside the pod's netns."""
from __future__ import annotations

import ipaddress
import socket
import struct

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def _mac(mac: str) -> bytes:
    return bytes(int(p, 16) for p in mac.split(":"))


def arp_frames(mac: str, ip: ipaddress.IPv4Address) -> list[bytes]:
    """A gratuitous ARP request and reply (sender = target = ip); some switches only learn from one."""
    m, a = _mac(mac), ip.packed
    frames = []
    for oper, tha in ((1, b"\0" * 6), (2, BROADCAST)):
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, oper, m, a, tha, a)
        frames.append(BROADCAST + m + struct.pack("!H", ETH_P_ARP) + arp)
    return frames


def gratuitous_arp(ifname: str, mac: str, ip: ipaddress.IPv4Address) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        for frame in arp_frames(mac, ip):
            s.send(frame)


def na_message(mac: str, ip: ipaddress.IPv6Address) -> bytes:
    """ICMPv6 neighbour advertisement, Override set, with the target link-layer address option.
    The kernel fills in the checksum on raw ICMPv6 sockets."""
    return struct.pack("!BBHI16sBB6s", 136, 0, 0, 0x20000000, ip.packed, 2, 1, _mac(mac))


def unsolicited_na(ifindex: int, mac: str, ip: ipaddress.IPv6Address) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        s.bind((str(ip), 0, 0, ifindex if ip.is_link_local else 0))
        s.sendto(na_message(mac, ip), ("ff02::1", 0, 0, ifindex))
