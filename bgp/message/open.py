"""OPEN (RFC 4271 section 4.2) with capabilities in optional parameter 2 (RFC 5492)."""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from .. import capability
from ..errors import (BAD_BGP_IDENTIFIER, OPEN_MESSAGE, UNACCEPTABLE_HOLD_TIME, UNSUPPORTED_OPTIONAL_PARAMETER,
                      UNSUPPORTED_VERSION, BGPError)
from ..wire import AS_TRANS, OPEN, frame

_FIXED = struct.Struct("!BHH4sB")
CAPABILITIES_PARAM = 2


@dataclass
class Open:
    asn: int  # the real AS; 2-byte field carries AS_TRANS above 65535 (RFC 6793)
    hold_time: int
    router_id: str
    capabilities: list = field(default_factory=list)

    def encode(self) -> bytes:
        caps = list(self.capabilities)
        if not any(isinstance(c, capability.FourOctetAS) for c in caps):
            caps.append(capability.FourOctetAS(self.asn))
        param = b"".join(capability.encode(c) for c in caps)
        params = bytes([CAPABILITIES_PARAM, len(param)]) + param if param else b""
        my_as = self.asn if self.asn <= 0xFFFF else AS_TRANS
        body = _FIXED.pack(4, my_as, self.hold_time, ipaddress.IPv4Address(self.router_id).packed, len(params))
        return frame(OPEN, body + params)

    def find(self, kind: type):
        return next((c for c in self.capabilities if isinstance(c, kind)), None)

    @property
    def four_octet(self) -> bool:
        return self.find(capability.FourOctetAS) is not None


def decode(body: bytes) -> Open:
    if len(body) < _FIXED.size:
        raise BGPError(OPEN_MESSAGE, 0, "OPEN too short")
    version, my_as, hold, rid, plen = _FIXED.unpack_from(body)
    if version != 4:
        raise BGPError(OPEN_MESSAGE, UNSUPPORTED_VERSION, f"BGP version {version}", struct.pack("!H", 4))
    if hold in (1, 2):
        raise BGPError(OPEN_MESSAGE, UNACCEPTABLE_HOLD_TIME, f"hold time {hold}")
    if rid == b"\0\0\0\0":
        raise BGPError(OPEN_MESSAGE, BAD_BGP_IDENTIFIER, "BGP identifier 0.0.0.0")
    params = body[_FIXED.size:]
    if len(params) != plen:
        raise BGPError(OPEN_MESSAGE, 0, "optional parameters length mismatch")
    caps = []
    off = 0
    while off < len(params):
        if off + 2 > len(params):
            raise BGPError(OPEN_MESSAGE, 0, "truncated optional parameter")
        ptype, pl = params[off], params[off + 1]
        value = params[off + 2: off + 2 + pl]
        if len(value) != pl:
            raise BGPError(OPEN_MESSAGE, 0, "truncated optional parameter")
        if ptype != CAPABILITIES_PARAM:
            raise BGPError(OPEN_MESSAGE, UNSUPPORTED_OPTIONAL_PARAMETER, f"optional parameter {ptype}")
        i = 0
        while i < len(value):
            if i + 2 > len(value) or i + 2 + value[i + 1] > len(value):
                raise BGPError(OPEN_MESSAGE, 0, "truncated capability")
            code, cl = value[i], value[i + 1]
            try:
                caps.append(capability.decode(code, value[i + 2: i + 2 + cl]))
            except ValueError as e:
                raise BGPError(OPEN_MESSAGE, 0, f"capability {code}: {e}") from e
            i += 2 + cl
        off += 2 + pl
    four = next((c for c in caps if isinstance(c, capability.FourOctetAS)), None)
    asn = four.asn if four else my_as
    return Open(asn=asn, hold_time=hold, router_id=str(ipaddress.IPv4Address(rid)), capabilities=caps)
