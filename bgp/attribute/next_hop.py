"""NEXT_HOP (type 3, well-known mandatory for IPv4 NLRI): an IPv4 address."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TYPE, FLAGS = 3, 0x40


@dataclass(frozen=True)
class NextHop:
    address: ipaddress.IPv4Address

    def encode(self, four_octet: bool) -> bytes:
        return self.address.packed


def decode(data: bytes, four_octet: bool) -> NextHop:
    if len(data) != 4:
        raise ValueError("NEXT_HOP must be 4 bytes")
    addr = ipaddress.IPv4Address(data)
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
        raise ValueError(f"NEXT_HOP {addr} is not a usable address")
    return NextHop(addr)
