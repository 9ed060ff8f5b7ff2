"""OPEN capabilities (RFC 5492): multiprotocol (4760), route refresh (2918), graceful restart
(4724), four-octet AS (6793). Unknown capabilities are kept as raw bytes and ignored."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

MULTIPROTOCOL, ROUTE_REFRESH, GRACEFUL_RESTART, FOUR_OCTET_AS = 1, 2, 64, 65


@dataclass(frozen=True)
class Multiprotocol:
    afi: int
    safi: int


@dataclass(frozen=True)
class RouteRefresh:
    pass


@dataclass(frozen=True)
class GracefulRestart:
    restart_time: int  # seconds, 12 bits
    restarting: bool = False  # R bit: set only after a real restart
    families: tuple[tuple[int, int, bool], ...] = ()  # (afi, safi, forwarding state preserved)


@dataclass(frozen=True)
class FourOctetAS:
    asn: int


@dataclass(frozen=True)
class Unknown:
    code: int
    value: bytes = field(default=b"")


Capability = Multiprotocol | RouteRefresh | GracefulRestart | FourOctetAS | Unknown


def encode(cap: Capability) -> bytes:
    if isinstance(cap, Multiprotocol):
        code, value = MULTIPROTOCOL, struct.pack("!HBB", cap.afi, 0, cap.safi)
    elif isinstance(cap, RouteRefresh):
        code, value = ROUTE_REFRESH, b""
    elif isinstance(cap, GracefulRestart):
        flags = (0x8 if cap.restarting else 0) << 12
        value = struct.pack("!H", flags | (cap.restart_time & 0xFFF))
        value += b"".join(struct.pack("!HBB", afi, safi, 0x80 if fwd else 0) for afi, safi, fwd in cap.families)
        code = GRACEFUL_RESTART
    elif isinstance(cap, FourOctetAS):
        code, value = FOUR_OCTET_AS, struct.pack("!I", cap.asn)
    else:
        code, value = cap.code, cap.value
    return bytes([code, len(value)]) + value


def decode(code: int, value: bytes) -> Capability:
    """One capability; ValueError when its value has the wrong shape."""
    if code == MULTIPROTOCOL:
        if len(value) != 4:
            raise ValueError("multiprotocol capability must be 4 bytes")
        afi, _res, safi = struct.unpack("!HBB", value)
        return Multiprotocol(afi, safi)
    if code == ROUTE_REFRESH:
        return RouteRefresh()
    if code == GRACEFUL_RESTART:
        if len(value) < 2 or (len(value) - 2) % 4:
            raise ValueError("graceful restart capability has a bad length")
        (word,) = struct.unpack("!H", value[:2])
        fams = tuple((afi, safi, bool(fl & 0x80)) for afi, safi, fl in
                     (struct.unpack("!HBB", value[i:i + 4]) for i in range(2, len(value), 4)))
        return GracefulRestart(restart_time=word & 0xFFF, restarting=bool(word >> 15), families=fams)
    if code == FOUR_OCTET_AS:
        if len(value) != 4:
            raise ValueError("four-octet AS capability must be 4 bytes")
        return FourOctetAS(struct.unpack("!I", value)[0])
    return Unknown(code, value)
