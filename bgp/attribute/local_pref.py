"""LOCAL_PREF (type 5, well-known, iBGP only)."""
from __future__ import annotations

import struct
from dataclasses import dataclass

TYPE, FLAGS = 5, 0x40


@dataclass(frozen=True)
class LocalPref:
    value: int

    def encode(self, four_octet: bool) -> bytes:
        return struct.pack("!I", self.value)


def decode(data: bytes, four_octet: bool) -> LocalPref:
    if len(data) != 4:
        raise ValueError("LOCAL_PREF must be 4 bytes")
    return LocalPref(struct.unpack("!I", data)[0])
