"""UPDATE (RFC 4271 section 4.3, MP-BGP RFC 4760, error handling RFC 7606), packed: many NLRI
share one attribute set, split only where the 4096-byte limit forces it."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .. import attribute
from ..attribute import as_path, mp_reach, mp_unreach, next_hop, origin
from ..errors import INVALID_NETWORK_FIELD, MALFORMED_ATTRIBUTE_LIST, UPDATE_MESSAGE, BGPError
from ..wire import AFI_IPV4, HEADER_LEN, MAX_LEN, SAFI_UNICAST, UPDATE, Prefix, decode_prefixes, encode_prefix, frame


@dataclass
class Update:
    withdrawn: list[Prefix] = field(default_factory=list)  # IPv4, in the classic field
    attributes: dict = field(default_factory=dict)  # type code -> attribute
    nlri: list[Prefix] = field(default_factory=list)  # IPv4, in the classic field
    treat_as_withdraw: bool = False
    # families whose MP attribute was malformed past its AFI/SAFI: AFI/SAFI disable (RFC 7606 7.11)
    broken: list[tuple[int, int]] = field(default_factory=list)

    @property
    def announced(self) -> list[Prefix]:
        mp = self.attributes.get(mp_reach.TYPE)
        return [] if self.treat_as_withdraw else list(self.nlri) + (list(mp.nlri) if mp else [])

    @property
    def withdrawn_all(self) -> list[Prefix]:
        mp = self.attributes.get(mp_unreach.TYPE)
        out = list(self.withdrawn) + (list(mp.withdrawn) if mp else [])
        if self.treat_as_withdraw:  # RFC 7606: the UPDATE's announcements count as withdrawals
            reach = self.attributes.get(mp_reach.TYPE)
            out += list(self.nlri) + (list(reach.nlri) if reach else [])
        return out

    def end_of_rib(self) -> tuple[int, int] | None:
        """(afi, safi) if this is an End-of-RIB marker (RFC 4724 section 2)."""
        if not self.withdrawn and not self.nlri and not self.attributes and not self.broken:
            return (AFI_IPV4, SAFI_UNICAST)
        mp = self.attributes.get(mp_unreach.TYPE)
        if (mp is not None and not mp.withdrawn and not mp.raw and len(self.attributes) == 1 and not self.nlri
                and not self.withdrawn and not self.broken):
            return (mp.afi, mp.safi)
        return None


def decode(body: bytes, four_octet: bool) -> Update:
    if len(body) < 4:
        raise BGPError(UPDATE_MESSAGE, MALFORMED_ATTRIBUTE_LIST, "UPDATE too short")
    (wlen,) = struct.unpack_from("!H", body)
    if 2 + wlen + 2 > len(body):
        raise BGPError(UPDATE_MESSAGE, MALFORMED_ATTRIBUTE_LIST, "withdrawn routes overrun the UPDATE")
    (alen,) = struct.unpack_from("!H", body, 2 + wlen)
    astart = 2 + wlen + 2
    if astart + alen > len(body):
        raise BGPError(UPDATE_MESSAGE, MALFORMED_ATTRIBUTE_LIST, "path attributes overrun the UPDATE")
    try:
        withdrawn = decode_prefixes(body[2:2 + wlen], AFI_IPV4)
        nlri = decode_prefixes(body[astart + alen:], AFI_IPV4)
    except ValueError as e:
        raise BGPError(UPDATE_MESSAGE, INVALID_NETWORK_FIELD, str(e)) from e
    attrs, withdraw, broken = attribute.decode(body[astart:astart + alen], four_octet)
    upd = Update(withdrawn=withdrawn, attributes=attrs, nlri=nlri, treat_as_withdraw=withdraw, broken=broken)
    if upd.nlri or mp_reach.TYPE in attrs:
        required = {origin.TYPE, as_path.TYPE} | ({next_hop.TYPE} if upd.nlri else set())
        if not required <= set(attrs):
            upd.treat_as_withdraw = True  # RFC 7606 section 3(d): missing well-known mandatory
    return upd


def encode_updates(attrs: list, nlri: list, four_octet: bool, withdrawn: list = ()) -> list[bytes]:
    """IPv4 routes in as few UPDATEs as fit 4096 bytes, all sharing `attrs` (which carry NEXT_HOP).
    Prefixes are ipaddress networks or wire.Key (whose NLRI is a slice)."""
    abytes = attribute.encode(attrs, four_octet) if nlri else b""
    room = MAX_LEN - HEADER_LEN - 4
    out = [frame(UPDATE, struct.pack("!H", len(chunk)) + chunk + b"\0\0")
           for chunk in _pack(map(encode_prefix, withdrawn), room)]
    head = b"\0\0" + struct.pack("!H", len(abytes)) + abytes
    out += [frame(UPDATE, head + chunk) for chunk in _pack(map(encode_prefix, nlri), room - len(abytes))]
    return out


def _pack(encoded, room: int) -> list[bytes]:
    """Consecutive encoded prefixes joined into chunks of at most `room` bytes (linear time); only
    one chunk's pieces are held at a time, never one bytes object per prefix of the whole table."""
    chunks, cur, size = [], [], 0
    for e in encoded:
        if size + len(e) > room:
            chunks.append(b"".join(cur))
            cur, size = [], 0
        cur.append(e)
        size += len(e)
    if cur:
        chunks.append(b"".join(cur))
    return chunks


def encode_mp(afi: int, safi: int, attrs: list, next_hops: tuple, nlri: list[Prefix], four_octet: bool,
              withdrawn: list[Prefix] = ()) -> list[bytes]:
    """Routes of another family (IPv6) in MP_REACH/MP_UNREACH, packed to the size limit."""
    out = []
    base = attribute.encode(attrs, four_octet)
    room = MAX_LEN - HEADER_LEN - 4 - 64  # the MP attribute's own header and next hops

    def batches(prefixes: list[Prefix], budget: int):
        batch, size = [], 0
        for p in prefixes:
            e = len(encode_prefix(p))
            if batch and size + e > budget:
                yield batch
                batch, size = [], 0
            batch.append(p)
            size += e
        if batch:
            yield batch
    for b in batches(list(withdrawn), room):
        a = attribute.encode([mp_unreach.MPUnreach(afi, safi, tuple(b))], four_octet)
        out.append(frame(UPDATE, b"\0\0" + struct.pack("!H", len(a)) + a))
    for b in batches(list(nlri), room - len(base)):
        a = base + attribute.encode([mp_reach.MPReach(afi, safi, tuple(next_hops), tuple(b))], four_octet)
        out.append(frame(UPDATE, b"\0\0" + struct.pack("!H", len(a)) + a))
    return out


def end_of_rib(afi: int, safi: int, four_octet: bool = True) -> bytes:
    if afi == AFI_IPV4 and safi == SAFI_UNICAST:
        return frame(UPDATE, b"\0\0\0\0")
    a = attribute.encode([mp_unreach.MPUnreach(afi, safi)], four_octet)
    return frame(UPDATE, b"\0\0" + struct.pack("!H", len(a)) + a)
