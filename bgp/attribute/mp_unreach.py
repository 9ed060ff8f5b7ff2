"""MP_UNREACH_NLRI (type 15, optional non-transitive, RFC 4760): withdrawn routes of another
family; empty, it is the End-of-RIB marker of that family (RFC 4724). Only unicast IPv4/IPv6 is
decoded; any other AFI/SAFI keeps its withdrawn routes as raw bytes."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FamilyError
from ..wire import UNICAST, Prefix, decode_prefixes, encode_prefix

TYPE, FLAGS = 15, 0x80


@dataclass(frozen=True)
class MPUnreach:
    afi: int
    safi: int
    withdrawn: tuple[Prefix, ...] = ()
    raw: bytes = b""  # the withdrawn routes of a family moor does not decode

    def encode(self, four_octet: bool) -> bytes:
        body = self.raw or b"".join(encode_prefix(p) for p in self.withdrawn)
        return struct.pack("!HB", self.afi, self.safi) + body


def decode(data: bytes, four_octet: bool) -> MPUnreach:
    if len(data) < 3:
        raise ValueError("MP_UNREACH_NLRI too short")
    afi, safi = struct.unpack_from("!HB", data)
    if (afi, safi) not in UNICAST:
        return MPUnreach(afi, safi, raw=data[3:])
    try:
        return MPUnreach(afi, safi, tuple(decode_prefixes(data[3:], afi)))
    except ValueError as e:  # RFC 7606 5.3: AFI/SAFI disable (or session reset)
        raise FamilyError(afi, safi, f"MP_UNREACH_NLRI: {e}") from e
