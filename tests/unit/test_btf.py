"""The BTF reader: parser logic on a small hand-built blob (every kind, both byte orders), and the
running kernel's /sys/kernel/btf/vmlinux when the machine has it."""
from __future__ import annotations

import os
import re
import struct

import pytest

from dataplane.probe import btf as B
from dataplane.probe.btf import Btf, BtfError

VMLINUX = "/sys/kernel/btf/vmlinux"


class Builder:
    """Writes raw BTF: a header, the type records, the string section."""

    def __init__(self, endian: str = "<"):
        self.e = endian
        self.types: list[bytes] = []
        self.strings = bytearray(b"\0")

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, kind: int, name: str = "", vlen: int = 0, size_or_type: int = 0,
            kind_flag: bool = False, tail: bytes = b"") -> int:
        info = (int(kind_flag) << 31) | (kind << 24) | vlen
        self.types.append(struct.pack(self.e + "III", self.s(name), info, size_or_type) + tail)
        return len(self.types)  # the new type's id

    def int_(self, name: str, size: int, signed: bool = True) -> int:
        enc = 1 if signed else 0
        return self.add(B.INT, name, 0, size, tail=struct.pack(self.e + "I", (enc << 24) | (size * 8)))

    def composite(self, kind: int, name: str, size: int, members: list[tuple[str, int, int, int]],
                  kind_flag: bool = False) -> int:
        tail = b""
        for mname, mtype, bit, bits in members:
            off = (bits << 24) | bit if kind_flag else bit
            tail += struct.pack(self.e + "III", self.s(mname), mtype, off)
        return self.add(kind, name, len(members), size, kind_flag, tail)

    def blob(self) -> bytes:
        types = b"".join(self.types)
        hdr = struct.pack(self.e + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return hdr + types + bytes(self.strings)


def build(endian: str = "<") -> tuple[bytes, dict[str, int]]:
    b = Builder(endian)
    ids: dict[str, int] = {}
    ids["int"] = b.int_("int", 4)
    ids["ushort"] = b.int_("unsigned short", 2, signed=False)
    ids["long"] = b.int_("long int", 8)
    ids["u16"] = b.add(B.TYPEDEF, "u16", size_or_type=ids["ushort"])
    ids["inner"] = b.composite(B.STRUCT, "inner", 8, [("a", ids["int"], 0, 0), ("b", ids["u16"], 32, 0)])
    ids["anon_union"] = b.composite(B.UNION, "", 4, [("x", ids["int"], 0, 0), ("y", ids["u16"], 0, 0)])
    ids["anon_struct"] = b.composite(B.STRUCT, "", 4, [("deep", ids["int"], 0, 0)])
    ids["outer_fwd_ptr"] = b.add(B.PTR, size_or_type=0)          # patched below: void * for now
    ids["outer"] = b.composite(B.STRUCT, "outer", 32, [
        ("first", ids["int"], 0, 3),              # int first:3
        ("flags", ids["int"], 3, 5),              # int flags:5
        ("nested", ids["inner"], 64, 0),
        ("", ids["anon_union"], 128, 0),
        ("", ids["anon_struct"], 160, 0),
        ("ptr", ids["outer_fwd_ptr"], 192, 0),
    ], kind_flag=True)
    ids["color"] = b.add(B.ENUM, "color", 3, 4, kind_flag=True, tail=b"".join(
        struct.pack(b.e + "Ii", b.s(n), v) for n, v in (("RED", 0), ("GREEN", 1), ("NONE", -1))))
    big = [("SMALL", 2), ("HUGE", 1 << 40)]
    ids["big"] = b.add(B.ENUM64, "big", len(big), 8, tail=b"".join(
        struct.pack(b.e + "III", b.s(n), v & 0xFFFFFFFF, v >> 32) for n, v in big))
    ids["const"] = b.add(B.CONST, size_or_type=ids["outer"])
    ids["volatile"] = b.add(B.VOLATILE, size_or_type=ids["const"])
    ids["outer_t"] = b.add(B.TYPEDEF, "outer_t", size_or_type=ids["volatile"])
    ids["fwd"] = b.add(B.FWD, "fwd_only")
    ids["proto"] = b.add(B.FUNC_PROTO, "", 2, ids["int"], tail=struct.pack(
        b.e + "IIII", b.s("a"), ids["int"], b.s("p"), ids["outer_fwd_ptr"]))
    ids["func"] = b.add(B.FUNC, "f", 0, ids["proto"])
    ids["array"] = b.add(B.ARRAY, tail=struct.pack(b.e + "III", ids["int"], ids["int"], 4))
    ids["var"] = b.add(B.VAR, "v", 0, ids["int"], tail=struct.pack(b.e + "I", 1))
    ids["datasec"] = b.add(B.DATASEC, ".data", 1, 4, tail=struct.pack(b.e + "III", ids["var"], 0, 4))
    ids["float"] = b.add(B.FLOAT, "double", 0, 8)
    ids["decl_tag"] = b.add(B.DECL_TAG, "tag", 0, ids["outer"], tail=struct.pack(b.e + "i", -1))
    ids["type_tag"] = b.add(B.TYPE_TAG, "user", 0, ids["int"])
    ids["restrict"] = b.add(B.RESTRICT, size_or_type=ids["outer_fwd_ptr"])
    ids["empty_twin"] = b.composite(B.STRUCT, "inner", 0, [])   # a second, empty "inner"
    ids["ptr_proto"] = b.add(B.PTR, size_or_type=ids["proto"])
    ids["btf_trace"] = b.add(B.TYPEDEF, "btf_trace_thing", size_or_type=ids["ptr_proto"])
    blob = bytearray(b.blob())
    # make "ptr" point at struct outer (a self-reference, as in linked lists)
    rec = 24 + sum(len(t) for t in b.types[:ids["outer_fwd_ptr"] - 1])
    struct.pack_into(b.e + "I", blob, rec + 8, ids["outer"])
    return bytes(blob), ids


@pytest.fixture(params=["<", ">"], ids=["little-endian", "big-endian"])
def tiny(request) -> tuple[Btf, dict[str, int]]:
    blob, ids = build(request.param)
    return Btf(blob), ids


def test_every_kind_is_walked(tiny):
    btf, ids = tiny
    assert len(btf) == max(ids.values())
    assert btf.kind(ids["decl_tag"]) == B.DECL_TAG
    assert btf.name(ids["float"]) == "double"


def test_nested_and_anonymous_member_paths(tiny):
    btf, _ = tiny
    assert btf.offset("outer", "nested") == 8
    assert btf.offset("outer", "nested.a") == 8
    assert btf.offset("outer", "nested.b") == 12
    assert btf.offset("outer", "x") == 16          # through the anonymous union
    assert btf.offset("outer", "y") == 16
    assert btf.offset("outer", "deep") == 20       # through the anonymous struct
    assert btf.offset("outer", "ptr") == 24
    m = btf.member("outer", "nested.b")
    assert m.size == 2 and btf.type_name(m.type_id) == "u16"
    assert btf.member("outer", "ptr").size == 8


def test_bitfields_have_bit_offsets_and_no_byte_offset(tiny):
    btf, _ = tiny
    m = btf.member("outer", "flags")
    assert (m.bit_offset, m.bitfield_size) == (3, 5)
    with pytest.raises(BtfError, match="bitfield"):
        btf.offset("outer", "first")


def test_missing_names_are_errors(tiny):
    btf, _ = tiny
    with pytest.raises(BtfError, match="no member"):
        btf.offset("outer", "nested.nope")
    with pytest.raises(BtfError, match="no struct"):
        btf.offset("fwd_only", "x")                # a forward declaration has no members
    with pytest.raises(BtfError, match="no struct"):
        btf.offset("nothing", "x")
    with pytest.raises(BtfError):
        btf.offset("outer", "nested.a.deeper")     # an int has no members
    with pytest.raises(BtfError, match="no enum"):
        btf.enum("inner")


def test_the_full_definition_wins_over_an_empty_one(tiny):
    btf, ids = tiny
    assert btf.struct_id("inner") == ids["inner"]
    assert btf.find("inner", (B.STRUCT,)) == [ids["inner"], ids["empty_twin"]]


def test_enums_signed_and_64_bit(tiny):
    btf, _ = tiny
    assert btf.enum("color") == {0: "RED", 1: "GREEN", -1: "NONE"}
    assert btf.enum("big") == {2: "SMALL", 1 << 40: "HUGE"}


def test_sizes_through_typedefs_and_modifiers(tiny):
    btf, ids = tiny
    assert btf.size(ids["outer_t"]) == 32
    assert btf.resolve(ids["outer_t"]) == ids["outer"]
    assert btf.size(ids["array"]) == 16
    assert btf.size(ids["u16"]) == 2
    assert btf.size(ids["fwd"]) == 0
    assert btf.member(ids["outer_t"], "deep").offset == 20
    assert btf.type_name(ids["restrict"]) == "struct outer *"


def test_function_prototype_parameters(tiny):
    btf, ids = tiny
    params = btf.func_proto_params(ids["btf_trace"])
    assert [(n, btf.type_name(t)) for n, t in params] == [("a", "int"), ("p", "struct outer *")]


def test_malformed_blobs_are_rejected():
    blob, _ = build()
    with pytest.raises(BtfError, match="magic"):
        Btf(b"\0\0" + blob[2:])
    with pytest.raises(BtfError):
        Btf(blob[:30])
    with pytest.raises(BtfError):
        Btf(blob[:10])
    bad = bytearray(blob)
    struct.pack_into("<I", bad, 24 + 4, 31 << 24)  # kind 31 does not exist
    with pytest.raises(BtfError, match="kind"):
        Btf(bytes(bad))
    with pytest.raises(BtfError, match="cannot read"):
        Btf.load("/nonexistent/vmlinux")


# -- the running kernel -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def kernel() -> Btf:
    if not os.path.exists(VMLINUX):
        pytest.skip(f"{VMLINUX} not present (kernel without CONFIG_DEBUG_INFO_BTF)")
    return Btf.load()


def test_kernel_offsets_the_probe_needs(kernel):
    for struct_name, path in (("sk_buff", "head"), ("sk_buff", "network_header"), ("sk_buff", "dev"),
                              ("net_device", "ifindex"), ("net_device", "nd_net.net"),
                              ("sock", "__sk_common.skc_net"), ("net", "ns.inum"), ("sock", "sk_rcvbuf")):
        off = kernel.offset(struct_name, path)
        assert 0 <= off < kernel.size(kernel.struct_id(struct_name))
    # a path through a named nested struct agrees with that struct's own offsets
    assert kernel.offset("sock", "__sk_common.skc_net") == \
        kernel.offset("sock", "__sk_common") + kernel.offset("sock_common", "skc_net")
    # anonymous members are found as in C: sk_buff.dev lives in unions inside sk_buff
    assert kernel.offset("sk_buff", "dev") > 0
    assert kernel.member("sk_buff", "network_header").size == 2
    assert kernel.type_name(kernel.member("sk_buff", "dev").type_id) == "struct net_device *"


def test_kernel_drop_reasons_agree_with_the_tracepoint(kernel):
    reasons = kernel.enum("skb_drop_reason")
    assert reasons[min(v for v, n in reasons.items() if n == "SKB_DROP_REASON_NOT_SPECIFIED")] \
        == "SKB_DROP_REASON_NOT_SPECIFIED"
    fmt = next((p for p in ("/sys/kernel/tracing/events/skb/kfree_skb/format",
                            "/sys/kernel/debug/tracing/events/skb/kfree_skb/format") if os.path.exists(p)), None)
    if fmt is None:
        pytest.skip("tracefs is not mounted: no kfree_skb format to compare with")
    table = dict(re.findall(r'\{ (\d+), "([A-Z0-9_]+)" \}', open(fmt).read()))
    assert table, "no __print_symbolic table in the kfree_skb format"
    for value, name in table.items():
        assert reasons[int(value)] == "SKB_DROP_REASON_" + name
