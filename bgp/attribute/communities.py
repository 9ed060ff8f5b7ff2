"""COMMUNITIES (type 8, optional transitive, RFC 1997): 32-bit values, written ASN:VALUE."""
from __future__ import annotations

import struct
from dataclasses import dataclass

TYPE, FLAGS = 8, 0xC0


def parse(text: str) -> int:
    """'65000:100' (or a well-known name) to its 32-bit value; ValueError otherwise."""
    names = {"no-export": 0xFFFFFF01, "no-advertise": 0xFFFFFF02, "no-export-subconfed": 0xFFFFFF03}
    if text.lower() in names:
        return names[text.lower()]
    hi, sep, lo = text.partition(":")
    if not sep or not (0 <= int(hi) <= 0xFFFF and 0 <= int(lo) <= 0xFFFF):
        raise ValueError(f"community {text!r} is not ASN:VALUE with 16-bit parts")
    return int(hi) << 16 | int(lo)


@dataclass(frozen=True)
class Communities:
    values: tuple[int, ...]

    def encode(self, four_octet: bool) -> bytes:
        return b"".join(struct.pack("!I", v) for v in self.values)

    def __str__(self) -> str:
        return " ".join(f"{v >> 16}:{v & 0xFFFF}" for v in self.values)


def decode(data: bytes, four_octet: bool) -> Communities:
    if len(data) % 4 or not data:
        raise ValueError("COMMUNITIES length is not a positive multiple of 4")
    return Communities(struct.unpack(f"!{len(data) // 4}I", data))
