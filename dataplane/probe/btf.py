"""A small reader of the kernel's raw BTF (/sys/kernel/btf/vmlinux), enough to take struct member
offsets and enum names from the *running* kernel, whatever headers are installed.

Layout (include/uapi/linux/btf.h): a `struct btf_header` (magic 0xEB9F, version, flags, hdr_len,
type_off, type_len, str_off, str_len; the offsets count from the end of the header), then the type
section (records `struct btf_type {name_off, info, size|type}` each followed by a kind-specific
tail) and the string section (NUL-terminated names). Type ids start at 1, in record order.

Parsing is lazy: load() reads the file and walks the type section once to learn where each record
starts (its kind and name); members and enum values are decoded only for the types asked about.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Union

BTF_MAGIC = 0xEB9F

# kinds (BTF_KIND_*)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)

KIND_NAMES = {INT: "int", PTR: "ptr", ARRAY: "array", STRUCT: "struct", UNION: "union", ENUM: "enum",
              FWD: "fwd", TYPEDEF: "typedef", VOLATILE: "volatile", CONST: "const", RESTRICT: "restrict",
              FUNC: "func", FUNC_PROTO: "func_proto", VAR: "var", DATASEC: "datasec", FLOAT: "float",
              DECL_TAG: "decl_tag", TYPE_TAG: "type_tag", ENUM64: "enum64"}

# bytes after the 12-byte btf_type: a fixed tail, and a per-vlen record
_TAIL = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_VLEN = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class BtfError(ValueError):
    """Malformed BTF, or a name / member path that the BTF does not have."""


@dataclass(frozen=True)
class Member:
    """Where a (possibly nested) member sits in its outermost struct."""
    name: str
    bit_offset: int          # from the start of the outermost struct
    bitfield_size: int       # 0 unless a bitfield
    type_id: int
    size: int                # bytes of the member's (resolved) type; 0 when it has none (e.g. flex array)

    @property
    def offset(self) -> int:
        return self.bit_offset // 8


class Btf:
    def __init__(self, data: bytes, little_endian: Optional[bool] = None):
        if len(data) < 24:
            raise BtfError("BTF blob shorter than its header")
        if little_endian is None:
            if struct.unpack_from("<H", data, 0)[0] == BTF_MAGIC:
                little_endian = True
            elif struct.unpack_from(">H", data, 0)[0] == BTF_MAGIC:
                little_endian = False
            else:
                raise BtfError("not BTF (bad magic)")
        self._e = "<" if little_endian else ">"
        e = self._e
        _magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(e + "HBBIIIII", data, 0)
        if version != 1:
            raise BtfError(f"unsupported BTF version {version}")
        self._data = data
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        if self._types_end > len(data) or self._str_end > len(data):
            raise BtfError("BTF sections run past the end of the blob")
        self._index()
        self._found: dict[tuple[str, tuple[int, ...]], tuple[int, ...]] = {}

    @classmethod
    def load(cls, path: str = "/sys/kernel/btf/vmlinux") -> "Btf":
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BtfError(f"cannot read BTF at {path}: {e.strerror or e}") from e
        return cls(data)

    # -- the one pass over the type section -----------------------------------------------------

    def _index(self) -> None:
        data, e = self._data, self._e
        unpack = struct.Struct(e + "II").unpack_from
        tail, per = _TAIL, _PER_VLEN
        offs: list[int] = [0]       # type id 0 is void
        infos: list[int] = [0]
        names: list[int] = [0]
        pos, end = self._types_start, self._types_end
        append_o, append_i, append_n = offs.append, infos.append, names.append
        while pos < end:
            name_off, info = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            append_o(pos)
            append_i(info)
            append_n(name_off)
            pos += 12 + tail.get(kind, 0) + (info & 0xFFFF) * per.get(kind, 0)
            if kind not in KIND_NAMES:
                raise BtfError(f"unknown BTF kind {kind} at byte {pos}")
        if pos != end:
            raise BtfError("type section does not end on a record boundary")
        self._offs, self._infos, self._names = offs, infos, names

    def __len__(self) -> int:
        """Number of types, void (id 0) excluded."""
        return len(self._offs) - 1

    # -- raw accessors --------------------------------------------------------------------------

    def kind(self, tid: int) -> int:
        return (self._infos[tid] >> 24) & 0x1F

    def vlen(self, tid: int) -> int:
        return self._infos[tid] & 0xFFFF

    def kind_flag(self, tid: int) -> bool:
        return bool(self._infos[tid] >> 31)

    def str_at(self, off: int) -> str:
        start = self._str_start + off
        if not self._str_start <= start < self._str_end:
            raise BtfError(f"string offset {off} outside the string section")
        stop = self._data.index(b"\0", start, self._str_end)
        return self._data[start:stop].decode()

    def name(self, tid: int) -> str:
        return self.str_at(self._names[tid]) if tid else ""

    def _size_or_type(self, tid: int) -> int:
        return struct.unpack_from(self._e + "I", self._data, self._offs[tid] + 8)[0]

    def find(self, name: str, kinds: tuple[int, ...]) -> list[int]:
        """Ids of the types called `name` whose kind is in `kinds`."""
        # the name's offset in the string section, then the types with that name offset (list.index
        # scans in C: a few ms, where a dict of every name would cost ~50 ms to build); names may
        # occur more than once when the section is not deduplicated, so every occurrence is tried
        cached = self._found.get((name, kinds))
        if cached is not None:
            return list(cached)
        needle = name.encode() + b"\0"
        names = self._names
        out: list[int] = []
        data, pos = self._data, self._str_start
        while True:
            pos = data.find(needle, pos, self._str_end)
            if pos < 0:
                break
            if pos == self._str_start or data[pos - 1] == 0:
                off, tid = pos - self._str_start, 0
                while True:
                    try:
                        tid = names.index(off, tid + 1)
                    except ValueError:
                        break
                    if self.kind(tid) in kinds:
                        out.append(tid)
            pos += 1
        out.sort()
        self._found[(name, kinds)] = tuple(out)
        return out

    def resolve(self, tid: int) -> int:
        """Skip typedefs and modifiers (const, volatile, restrict, type tags)."""
        for _ in range(64):
            if tid == 0 or self.kind(tid) not in _MODIFIERS:
                return tid
            tid = self._size_or_type(tid)
        raise BtfError("type chain too long (a loop?)")

    def size(self, tid: int) -> int:
        """Bytes of a type (0 for void, functions and forward declarations)."""
        tid = self.resolve(tid)
        if tid == 0:
            return 0
        k = self.kind(tid)
        if k in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return self._size_or_type(tid)
        if k == PTR:
            return 8 if self._ptr_size() == 8 else 4
        if k == ARRAY:
            elem, _index, nelems = struct.unpack_from(self._e + "III", self._data, self._offs[tid] + 12)
            return nelems * self.size(elem)
        return 0

    def _ptr_size(self) -> int:
        # BTF does not record it; a kernel with "long" of 8 bytes has 8-byte pointers
        cached = getattr(self, "_psize", None)
        if cached is None:
            longs = [t for t in self.find("long int", (INT,)) + self.find("long unsigned int", (INT,))]
            cached = self._size_or_type(longs[0]) if longs else 8
            self._psize = cached
        return cached

    def members(self, tid: int) -> list[tuple[str, int, int, int]]:
        """(name, member type id, bit offset, bitfield size) of a struct or union."""
        tid = self.resolve(tid)
        if self.kind(tid) not in (STRUCT, UNION):
            raise BtfError(f"type {tid} ({self.name(tid) or 'anonymous'}) is not a struct or union")
        out = []
        kflag = self.kind_flag(tid)
        base = self._offs[tid] + 12
        unpack = struct.Struct(self._e + "III").unpack_from
        for i in range(self.vlen(tid)):
            name_off, mtype, moff = unpack(self._data, base + 12 * i)
            if kflag:
                out.append((self.str_at(name_off), mtype, moff & 0xFFFFFF, moff >> 24))
            else:
                out.append((self.str_at(name_off), mtype, moff, 0))
        return out

    # -- the API the probe uses ---------------------------------------------------------------

    def struct_id(self, name: str) -> int:
        """The id of a struct (or union) by name, preferring a full definition over an empty one."""
        ids = self.find(name, (STRUCT, UNION))
        if not ids:
            raise BtfError(f"no struct or union named {name!r} in BTF")
        full = [t for t in ids if self.vlen(t)]
        return (full or ids)[0]

    def member(self, struct_name: Union[str, int], path: str) -> Member:
        """A member by dotted path ("__sk_common.skc_net.net"); members of anonymous structs and
        unions are found as if they were members of the enclosing struct, as in C."""
        tid = struct_name if isinstance(struct_name, int) else self.struct_id(struct_name)
        bit = 0
        mtype = tid
        bfsize = 0
        parts = path.split(".") if path else []
        if not parts:
            raise BtfError("empty member path")
        for part in parts:
            found = self._lookup(mtype, part)
            if found is None:
                raise BtfError(f"{self._describe(tid)} has no member {path!r} (no {part!r} in {self._describe(mtype)})")
            moff, mtype, bfsize = found
            bit += moff
        return Member(name=path, bit_offset=bit, bitfield_size=bfsize, type_id=mtype, size=self.size(mtype))

    def _lookup(self, tid: int, name: str, depth: int = 0) -> Optional[tuple[int, int, int]]:
        if depth > 32:
            raise BtfError("anonymous members nested too deep")
        for mname, mtype, moff, bfsize in self.members(tid):
            if mname == name:
                return moff, mtype, bfsize
        for mname, mtype, moff, _bfsize in self.members(tid):
            if not mname and self.kind(self.resolve(mtype)) in (STRUCT, UNION):
                sub = self._lookup(mtype, name, depth + 1)
                if sub is not None:
                    return moff + sub[0], sub[1], sub[2]
        return None

    def _describe(self, tid: int) -> str:
        tid = self.resolve(tid)
        return f"{KIND_NAMES.get(self.kind(tid), '?')} {self.name(tid) or '<anonymous>'}"

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a member (dotted path) from the start of the struct."""
        m = self.member(struct_name, path)
        if m.bitfield_size or m.bit_offset % 8:
            raise BtfError(f"{struct_name}.{path} is a bitfield (bit {m.bit_offset}, {m.bitfield_size} bits)")
        return m.offset

    def enum(self, name: str) -> dict[int, str]:
        """Values of an enum (ENUM or ENUM64) by its name: {value: enumerator name}."""
        ids = self.find(name, (ENUM, ENUM64))
        if not ids:
            raise BtfError(f"no enum named {name!r} in BTF")
        tid = max(ids, key=self.vlen)
        signed = self.kind_flag(tid)
        out: dict[int, str] = {}
        base = self._offs[tid] + 12
        if self.kind(tid) == ENUM:
            unpack = struct.Struct(self._e + ("Ii" if signed else "II")).unpack_from
            for i in range(self.vlen(tid)):
                name_off, val = unpack(self._data, base + 8 * i)
                out[val] = self.str_at(name_off)
        else:
            unpack = struct.Struct(self._e + "III").unpack_from
            for i in range(self.vlen(tid)):
                name_off, lo, hi = unpack(self._data, base + 12 * i)
                val = (hi << 32) | lo
                if signed and val >= 1 << 63:
                    val -= 1 << 64
                out[val] = self.str_at(name_off)
        return out

    def func_proto_params(self, tid: int) -> list[tuple[str, int]]:
        """(name, type id) of the parameters of a FUNC_PROTO (typedefs and pointers followed to it)."""
        for _ in range(8):
            tid = self.resolve(tid)
            if self.kind(tid) == PTR:
                tid = self._size_or_type(tid)
            else:
                break
        if self.kind(tid) != FUNC_PROTO:
            raise BtfError(f"type {tid} is not a function prototype")
        unpack = struct.Struct(self._e + "II").unpack_from
        base = self._offs[tid] + 12
        return [(self.str_at(n), t) for n, t in (unpack(self._data, base + 8 * i) for i in range(self.vlen(tid)))]

    def type_name(self, tid: int) -> str:
        """A C-ish spelling of a type, for messages and checks ("struct sock *")."""
        k = self.kind(tid) if tid else 0
        if tid == 0:
            return "void"
        if k == PTR:
            return self.type_name(self._size_or_type(tid)) + " *"
        if k in (CONST, VOLATILE, RESTRICT, TYPE_TAG):
            return self.type_name(self._size_or_type(tid))
        if k in (STRUCT, UNION, ENUM, ENUM64, FWD):
            kw = {STRUCT: "struct", UNION: "union", ENUM: "enum", ENUM64: "enum"}.get(k)
            if k == FWD:
                kw = "union" if self.kind_flag(tid) else "struct"
            return f"{kw} {self.name(tid)}"
        return self.name(tid)
