"""ROUTE-REFRESH (RFC 2918): ask the peer to send its routes of one family again."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ROUTE_REFRESH_MESSAGE, BGPError
from ..wire import ROUTE_REFRESH, frame


@dataclass
class RouteRefresh:
    afi: int
    safi: int

    def encode(self) -> bytes:
        return frame(ROUTE_REFRESH, struct.pack("!HBB", self.afi, 0, self.safi))


def decode(body: bytes) -> RouteRefresh:
    if len(body) != 4:
        raise BGPError(ROUTE_REFRESH_MESSAGE, 1, "ROUTE-REFRESH must be 4 bytes", body)
    afi, _res, safi = struct.unpack("!HBB", body)
    return RouteRefresh(afi, safi)
