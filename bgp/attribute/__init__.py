"""Path attributes, one per module, and the attribute list's encoding with RFC 7606 error
handling: a malformed attribute withdraws the UPDATE's routes (treat-as-withdraw) or is dropped
(attribute-discard); a malformed MP attribute of a known family disables that family (AFI/SAFI
disable); only an error that hides where the NLRI are ends the session."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import (MALFORMED_ATTRIBUTE_LIST, OPTIONAL_ATTRIBUTE_ERROR, UNRECOGNIZED_WELL_KNOWN, UPDATE_MESSAGE,
                      BGPError, FamilyError)
from . import as_path, communities, local_pref, med, mp_reach, mp_unreach, next_hop, origin

OPTIONAL, TRANSITIVE, PARTIAL, EXTENDED = 0x80, 0x40, 0x20, 0x10
MODULES = {m.TYPE: m for m in (origin, as_path, next_hop, med, local_pref, communities, mp_reach, mp_unreach)}
ATOMIC_AGGREGATE, AGGREGATOR = 6, 7  # not modelled: kept as Raw when well-formed
MP_TYPES = {mp_reach.TYPE, mp_unreach.TYPE}


@dataclass(frozen=True)
class Raw:
    """An attribute moor does not interpret: kept, and passed on if optional transitive."""
    type: int
    flags: int
    value: bytes

    def encode(self, four_octet: bool) -> bytes:
        return self.value


_BY_CLASS = {origin.Origin: origin, as_path.ASPath: as_path, next_hop.NextHop: next_hop, med.MED: med,
             local_pref.LocalPref: local_pref, communities.Communities: communities,
             mp_reach.MPReach: mp_reach, mp_unreach.MPUnreach: mp_unreach}


def _type_of(attr) -> tuple[int, int]:
    if isinstance(attr, Raw):
        return attr.type, attr.flags & (OPTIONAL | TRANSITIVE | PARTIAL)
    mod = _BY_CLASS[type(attr)]
    return mod.TYPE, mod.FLAGS


def encode(attrs: list, four_octet: bool) -> bytes:
    out = b""
    for a in attrs:
        atype, flags = _type_of(a)
        value = a.encode(four_octet)
        if len(value) > 255:
            out += struct.pack("!BBH", flags | EXTENDED, atype, len(value)) + value
        else:
            out += struct.pack("!BBB", flags, atype, len(value)) + value
    return out


def decode(data: bytes, four_octet: bool) -> tuple[dict, bool, list[tuple[int, int]]]:
    """Attributes by type code, whether the UPDATE must be treated as withdraw, and the families
    whose MP attribute was malformed past its AFI/SAFI (AFI/SAFI disable, RFC 7606 section 2).
    Raises BGPError only where RFC 7606 keeps the session reset."""
    attrs: dict = {}
    withdraw = False
    broken: list[tuple[int, int]] = []
    seen: set[int] = set()  # every type met, decoded or not: a repeated MP attribute is found either way
    off = 0
    while off < len(data):
        if off + 3 > len(data):
            withdraw = True  # a truncated attribute header: the list is unusable
            break
        flags, atype = data[off], data[off + 1]
        if flags & EXTENDED:
            if off + 4 > len(data):
                withdraw = True
                break
            (length,) = struct.unpack_from("!H", data, off + 2)
            start = off + 4
        else:
            length, start = data[off + 2], off + 3
        if start + length > len(data):
            if any(t in MP_TYPES for t in seen) or atype in MP_TYPES:
                raise BGPError(UPDATE_MESSAGE, MALFORMED_ATTRIBUTE_LIST, "attribute overruns the list")
            withdraw = True
            break
        value = data[start:start + length]
        off = start + length
        if atype in seen:
            if atype in MP_TYPES:  # the NLRI cannot be known: RFC 7606 section 3(g)
                raise BGPError(UPDATE_MESSAGE, MALFORMED_ATTRIBUTE_LIST, f"attribute {atype} repeated")
            continue  # other repeats: keep the first
        seen.add(atype)
        if (atype == AGGREGATOR and len(value) != (8 if four_octet else 6)) or (atype == ATOMIC_AGGREGATE and value):
            continue  # malformed AGGREGATOR / ATOMIC_AGGREGATE: attribute-discard (RFC 7606 7.6, 7.7)
        mod = MODULES.get(atype)
        if mod is None:
            if not flags & OPTIONAL:
                if atype == ATOMIC_AGGREGATE:
                    attrs[atype] = Raw(atype, flags, value)
                    continue
                raise BGPError(UPDATE_MESSAGE, UNRECOGNIZED_WELL_KNOWN, f"unrecognised well-known attribute {atype}",
                               data[off - length - (4 if flags & EXTENDED else 3):off])
            if flags & TRANSITIVE:  # passed on, marked partial (RFC 4271 section 5)
                attrs[atype] = Raw(atype, flags | PARTIAL, value)
            continue  # unknown optional non-transitive: ignored
        want_optional = bool(mod.FLAGS & OPTIONAL)
        if bool(flags & OPTIONAL) != want_optional or bool(flags & TRANSITIVE) != bool(mod.FLAGS & TRANSITIVE):
            # RFC 7606 3(c): treat-as-withdraw. An MP attribute is still parsed, to know what to
            # withdraw; withdrawals (MP_UNREACH) stay withdrawals
            withdraw = withdraw or atype != mp_unreach.TYPE
            if atype not in MP_TYPES:
                continue
        try:
            attrs[atype] = mod.decode(value, four_octet)
        except FamilyError as e:
            broken.append((e.afi, e.safi))
        except ValueError as e:
            if atype in MP_TYPES:
                raise BGPError(UPDATE_MESSAGE, OPTIONAL_ATTRIBUTE_ERROR, str(e)) from e
            withdraw = True
    return attrs, withdraw, broken


__all__ = ["Raw", "encode", "decode"]
