"""AS_PATH (type 2, well-known mandatory): segments of AS_SET (1) or AS_SEQUENCE (2), with 4-byte
ASNs when both sides announced the four-octet AS capability (RFC 6793), else 2-byte. AS 0 is
never valid in it (RFC 7607)."""
from __future__ import annotations

import struct
from dataclasses import dataclass

TYPE, FLAGS = 2, 0x40
AS_SET, AS_SEQUENCE = 1, 2


@dataclass(frozen=True)
class ASPath:
    segments: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (type, asns)

    @classmethod
    def sequence(cls, *asns: int) -> "ASPath":
        return cls(((AS_SEQUENCE, tuple(asns)),) if asns else ())

    def encode(self, four_octet: bool) -> bytes:
        fmt = "!I" if four_octet else "!H"
        out = b""
        for stype, asns in self.segments:
            for i in range(0, len(asns), 255):  # a segment holds at most 255 ASNs
                chunk = asns[i:i + 255]
                out += bytes([stype, len(chunk)]) + b"".join(
                    struct.pack(fmt, a if four_octet or a <= 0xFFFF else 23456) for a in chunk)
        return out


def decode(data: bytes, four_octet: bool) -> ASPath:
    width = 4 if four_octet else 2
    segs = []
    off = 0
    while off < len(data):
        if off + 2 > len(data):
            raise ValueError("truncated AS_PATH segment header")
        stype, count = data[off], data[off + 1]
        end = off + 2 + count * width
        if stype not in (AS_SET, AS_SEQUENCE) or count == 0 or end > len(data):
            raise ValueError("malformed AS_PATH segment")
        asns = struct.unpack(f"!{count}{'I' if four_octet else 'H'}", data[off + 2:end])
        if 0 in asns:  # RFC 7607: AS 0 makes the AS_PATH malformed (treat-as-withdraw)
            raise ValueError("AS_PATH contains AS 0")
        segs.append((stype, tuple(asns)))
        off = end
    return ASPath(tuple(segs))
