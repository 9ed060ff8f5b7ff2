"""MP_REACH_NLRI (type 14, optional non-transitive, RFC 4760): routes of another family (IPv6),
with their next hop (global, optionally followed by a link-local address). Only unicast IPv4/IPv6
is decoded; any other AFI/SAFI keeps its value as raw bytes, never read as plain prefixes."""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..errors import FamilyError
from ..wire import AFI_IPV4, AFI_IPV6, UNICAST, Prefix, decode_prefixes, encode_prefix

TYPE, FLAGS = 14, 0x80


@dataclass(frozen=True)
class MPReach:
    afi: int
    safi: int
    next_hops: tuple  # IP addresses; () for a family moor does not decode
    nlri: tuple[Prefix, ...]
    raw: bytes = b""  # the whole value, for a family moor does not decode

    def encode(self, four_octet: bool) -> bytes:
        if self.raw:
            return self.raw
        nh = b"".join(a.packed for a in self.next_hops)
        return (struct.pack("!HBB", self.afi, self.safi, len(nh)) + nh + b"\0"
                + b"".join(encode_prefix(p) for p in self.nlri))


def decode(data: bytes, four_octet: bool) -> MPReach:
    """ValueError when even the family is unreadable (session reset); FamilyError when the family
    is known but its next hop or NLRI is malformed (AFI/SAFI disable, RFC 7606 7.11)."""
    if len(data) < 3:
        raise ValueError("MP_REACH_NLRI too short for its AFI/SAFI")
    afi, safi = struct.unpack_from("!HB", data)
    if (afi, safi) not in UNICAST:
        return MPReach(afi, safi, (), (), raw=data)
    if len(data) < 5:
        raise FamilyError(afi, safi, "MP_REACH_NLRI too short")
    nhlen = data[3]
    if 4 + nhlen + 1 > len(data):
        raise FamilyError(afi, safi, "MP_REACH_NLRI next hop overruns the attribute")
    raw = data[4:4 + nhlen]
    if afi == AFI_IPV6 and nhlen in (16, 32):
        hops = tuple(ipaddress.IPv6Address(raw[i:i + 16]) for i in range(0, nhlen, 16))
    elif afi == AFI_IPV4 and nhlen == 4:
        hops = (ipaddress.IPv4Address(raw),)
    elif afi == AFI_IPV4 and nhlen in (16, 32):  # RFC 8950: IPv4 routes with an IPv6 next hop
        hops = tuple(ipaddress.IPv6Address(raw[i:i + 16]) for i in range(0, nhlen, 16))
    else:
        raise FamilyError(afi, safi, f"MP_REACH_NLRI next hop of {nhlen} bytes for AFI {afi}")
    try:
        nlri = decode_prefixes(data[4 + nhlen + 1:], afi)
    except ValueError as e:  # RFC 7606 5.3: no treat-as-withdraw without the NLRI
        raise FamilyError(afi, safi, f"MP_REACH_NLRI: {e}") from e
    return MPReach(afi, safi, hops, tuple(nlri))
