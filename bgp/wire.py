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


# A prefix as the speaker keeps its adj-RIB-out, and the route watch its view: plain bytes, one byte
# of IP version (4 or 6), then the prefix in NLRI encoding (RFC 4271 4.3: its length in bits, then
# only the significant bytes). An IPv4 /32 is a 6-byte object of 39 bytes where an ipaddress network
# with its address costs ~450, so 100,000 pod routes fit in a few MB; bytes hash and compare in C,
# the garbage collector does not track them, and the NLRI to send is a slice. ipaddress objects are
# made only where one is shown (key_network, key_str).
Key = bytes


def key_of(prefix: "Prefix | str | Key") -> Key:
    """The key of a prefix given as an ipaddress network, a string or already a key."""
    if type(prefix) is bytes:
        return prefix
    p = prefix if isinstance(prefix, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else ipaddress.ip_network(prefix)
    return bytes((p.version, p.prefixlen)) + p.network_address.packed[:(p.prefixlen + 7) // 8]


def key_network(key: Key) -> Prefix:
    width = 4 if key[0] == 4 else 16
    addr = int.from_bytes(key[2:].ljust(width, b"\0"), "big")
    return (ipaddress.IPv4Network if width == 4 else ipaddress.IPv6Network)((addr, key[1]))


def key_str(key: Key) -> str:
    return str(key_network(key))


def encode_prefix(p: Prefix | Key) -> bytes:
    if type(p) is bytes:  # a Key: its NLRI follows the version byte
        return p[1:]
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
