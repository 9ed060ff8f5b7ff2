"""BGP message framing (RFC 4271 section 4.1) and NLRI prefix encoding."""
from __future__ import annotations

import ipaddress
import struct

from .errors import BAD_MESSAGE_LENGTH, BAD_MESSAGE_TYPE, CONNECTION_NOT_SYNCHRONIZED, MESSAGE_HEADER, BGPError

MARKER = b"\xff" * 16
HEADER = struct.Struct("!16sHB")
HEADER_LEN = HEADER.size  # 19
MAX_LEN = 4096
OPEN, UPDATE, NOTIFICATION, KEEPALIVE, ROUTE_REFRESH = 1, 2, 3, 4, 5
MIN_LEN = {OPEN: 29, UPDATE: 23, NOTIFICATION: 21, KEEPALIVE: 19, ROUTE_REFRESH: 23}

AFI_IPV4, AFI_IPV6 = 1, 2
SAFI_UNICAST = 1
# the families whose NLRI moor decodes as plain prefixes; any other SAFI (labelled, VPN, flowspec...)
# has its own NLRI format and is kept undecoded
UNICAST = frozenset({(AFI_IPV4, SAFI_UNICAST), (AFI_IPV6, SAFI_UNICAST)})
AS_TRANS = 23456


def frame(mtype: int, body: bytes) -> bytes:
    length = HEADER_LEN + len(body)
    if length > MAX_LEN:
        raise ValueError(f"BGP message of {length} bytes exceeds {MAX_LEN}")
    return HEADER.pack(MARKER, length, mtype) + body


def parse_header(data: bytes) -> tuple[int, int]:
    """(length, type) of the message starting at data[0:19]; BGPError if the header is bad."""
    marker, length, mtype = HEADER.unpack_from(data)
    if marker != MARKER:
        raise BGPError(MESSAGE_HEADER, CONNECTION_NOT_SYNCHRONIZED, "marker is not all ones")
    if mtype not in MIN_LEN:
        raise BGPError(MESSAGE_HEADER, BAD_MESSAGE_TYPE, f"unknown message type {mtype}", bytes([mtype]))
    if not MIN_LEN[mtype] <= length <= MAX_LEN or (mtype == KEEPALIVE and length != HEADER_LEN):
        raise BGPError(MESSAGE_HEADER, BAD_MESSAGE_LENGTH, f"bad length {length} for type {mtype}",
                       struct.pack("!H", length))
    return length, mtype


def split(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete message off the front of a receive buffer: [(type, body)]."""
    out = []
    while len(buf) >= HEADER_LEN:
        length, mtype = parse_header(bytes(buf[:HEADER_LEN]))
        if len(buf) < length:
            break
        out.append((mtype, bytes(buf[HEADER_LEN:length])))
        del buf[:length]
    return out


Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network


def encode_prefix(p: Prefix) -> bytes:
    nbytes = (p.prefixlen + 7) // 8
    return bytes([p.prefixlen]) + p.network_address.packed[:nbytes]


def decode_prefixes(data: bytes, afi: int) -> list[Prefix]:
    """NLRI: (length, prefix bytes)*. ValueError on a malformed field (RFC 7606: session reset)."""
    width = 32 if afi == AFI_IPV4 else 128
    out: list[Prefix] = []
    off = 0
    while off < len(data):
        plen = data[off]
        nbytes = (plen + 7) // 8
        if plen > width or off + 1 + nbytes > len(data):
            raise ValueError(f"prefix length {plen} overruns the NLRI field")
        raw = data[off + 1 : off + 1 + nbytes] + b"\0" * (width // 8 - nbytes)
        addr = ipaddress.IPv4Address(raw) if afi == AFI_IPV4 else ipaddress.IPv6Address(raw)
        out.append(ipaddress.ip_network((addr, plen), strict=False))
        off += 1 + nbytes
    return out
