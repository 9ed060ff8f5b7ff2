"""NEXT_HOP (type 3, well-known mandatory for IPv4 NLRI): an IPv4 address. Also which addresses can
never be a next hop (RFC 4271 section 6.3, RFC 7606 section 7.3), for NEXT_HOP and MP_REACH alike."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TYPE, FLAGS = 3, 0x40

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host on this network": never a destination
_CLASS_E = ipaddress.ip_network("240.0.0.0/4")  # reserved, includes the limited broadcast
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@dataclass(frozen=True)
class NextHop:
    address: ipaddress.IPv4Address

    def encode(self, four_octet: bool) -> bytes:
        return self.address.packed


def decode(data: bytes, four_octet: bool) -> NextHop:
    """Syntax only; what the address means is judged by `unusable` and by the session, which knows
    its own addresses."""
    if len(data) != 4:
        raise ValueError("NEXT_HOP must be 4 bytes")
    return NextHop(ipaddress.IPv4Address(data))


def unusable(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `addr` can be no router's next hop, or None when it can."""
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:a.b.c.d (an IPv6 route over an IPv4 session) is that IPv4 address
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_multicast:
        return "multicast"
    if addr.version == 4:
        if addr == _BROADCAST:
            return "broadcast"
        if addr in _CLASS_E:
            return "class E (240/4)"
        if addr in _THIS_NETWORK:
            return "in 0/8"
    return None
