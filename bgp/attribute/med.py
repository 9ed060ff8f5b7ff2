"""MULTI_EXIT_DISC (type 4, optional non-transitive)."""
from __future__ import annotations

import struct
from dataclasses import dataclass

TYPE, FLAGS = 4, 0x80


@dataclass(frozen=True)
class MED:
    value: int

    def encode(self, four_octet: bool) -> bytes:
        return struct.pack("!I", self.value)


def decode(data: bytes, four_octet: bool) -> MED:
    if len(data) != 4:
        raise ValueError("MED must be 4 bytes")
    return MED(struct.unpack("!I", data)[0])
