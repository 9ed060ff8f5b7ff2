"""MP_REACH_NLRI (type 14, optional non-transitive, RFC 4760): routes of another family (IPv6),
with their next hop (global, optionally followed by a link-local address)."""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..wire import AFI_IPV4, AFI_IPV6, Prefix, decode_prefixes, encode_prefix

TYPE, FLAGS = 14, 0x80


@dataclass(frozen=True)
class MPReach:
    afi: int
    safi: int
    next_hops: tuple  # IP addresses
    nlri: tuple[Prefix, ...]

    def encode(self, four_octet: bool) -> bytes:
        nh = b"".join(a.packed for a in self.next_hops)
        return (struct.pack("!HBB", self.afi, self.safi, len(nh)) + nh + b"\0"
                + b"".join(encode_prefix(p) for p in self.nlri))


def decode(data: bytes, four_octet: bool) -> MPReach:
    if len(data) < 5:
        raise ValueError("MP_REACH_NLRI too short")
    afi, safi, nhlen = struct.unpack_from("!HBB", data)
    if 4 + nhlen + 1 > len(data):
        raise ValueError("MP_REACH_NLRI next hop overruns the attribute")
    raw = data[4:4 + nhlen]
    if afi == AFI_IPV6 and nhlen in (16, 32):
        hops = tuple(ipaddress.IPv6Address(raw[i:i + 16]) for i in range(0, nhlen, 16))
    elif afi == AFI_IPV4 and nhlen == 4:
        hops = (ipaddress.IPv4Address(raw),)
    elif afi == AFI_IPV4 and nhlen in (16, 32):  # RFC 8950: IPv4 routes with an IPv6 next hop
        hops = tuple(ipaddress.IPv6Address(raw[i:i + 16]) for i in range(0, nhlen, 16))
    else:
        raise ValueError(f"MP_REACH_NLRI next hop of {nhlen} bytes for AFI {afi}")
    nlri = decode_prefixes(data[4 + nhlen + 1:], afi)
    return MPReach(afi, safi, hops, tuple(nlri))
