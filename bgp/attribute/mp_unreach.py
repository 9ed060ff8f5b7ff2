"""MP_UNREACH_NLRI (type 15, optional non-transitive, RFC 4760): withdrawn routes of another
family; empty, it is the End-of-RIB marker of that family (RFC 4724)."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..wire import Prefix, decode_prefixes, encode_prefix

TYPE, FLAGS = 15, 0x80


@dataclass(frozen=True)
class MPUnreach:
    afi: int
    safi: int
    withdrawn: tuple[Prefix, ...] = ()

    def encode(self, four_octet: bool) -> bytes:
        return struct.pack("!HB", self.afi, self.safi) + b"".join(encode_prefix(p) for p in self.withdrawn)


def decode(data: bytes, four_octet: bool) -> MPUnreach:
    if len(data) < 3:
        raise ValueError("MP_UNREACH_NLRI too short")
    afi, safi = struct.unpack_from("!HB", data)
    return MPUnreach(afi, safi, tuple(decode_prefixes(data[3:], afi)))
