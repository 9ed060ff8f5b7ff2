"""ORIGIN (type 1, well-known mandatory): IGP 0, EGP 1, INCOMPLETE 2."""
from __future__ import annotations

from dataclasses import dataclass

TYPE, FLAGS = 1, 0x40
IGP, EGP, INCOMPLETE = 0, 1, 2


@dataclass(frozen=True)
class Origin:
    value: int = IGP

    def encode(self, four_octet: bool) -> bytes:
        return bytes([self.value])


def decode(data: bytes, four_octet: bool) -> Origin:
    if len(data) != 1 or data[0] > INCOMPLETE:
        raise ValueError(f"bad ORIGIN {data.hex()}")
    return Origin(data[0])
