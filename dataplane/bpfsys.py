"""The bpf(2) system call, and eBPF maps reached through their file descriptors alone.

Used where moord holds programs and maps that another process compiled (bpfload.py): no bcc in
this process, only the fds, their sizes read from the kernel (BPF_OBJ_GET_INFO_BY_FD), and the
four map commands. Layouts are union bpf_attr's (include/uapi/linux/bpf.h).
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

NR_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, OBJ_GET_INFO_BY_FD = 1, 2, 3, 15
ANY = 0  # BPF_ANY: create or replace
# per-CPU map types: a value is one slot per possible CPU, each rounded up to 8 bytes
PERCPU_TYPES = {5, 6, 10}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
_ELEM = struct.Struct("=IIQQQ")  # map_fd, pad, key, value, flags
_INFO = struct.Struct("=IIQ")  # bpf_fd, info_len, info
_MAP_INFO = struct.Struct("=IIIIII16s")  # type, id, key_size, value_size, max_entries, map_flags, name

_libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd: int, attr: bytes) -> int:
    """One bpf(cmd, attr) call; OSError with the kernel's errno when it fails."""
    nr = NR_BPF.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, "bpf syscall number unknown for this architecture")
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def possible_cpus() -> int:
    """How many CPUs per-CPU maps allocate for (/sys/devices/system/cpu/possible: '0-3,8-11')."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            n = 0
            for part in f.read().strip().split(","):
                lo, _, hi = part.partition("-")
                n += int(hi or lo) - int(lo) + 1
            return max(1, n)
    except (OSError, ValueError):
        return os.cpu_count() or 1


@dataclass
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def map_info(fd: int) -> MapInfo:
    out = ctypes.create_string_buffer(_MAP_INFO.size)
    bpf(OBJ_GET_INFO_BY_FD, _INFO.pack(fd, _MAP_INFO.size, ctypes.addressof(out)).ljust(64, b"\0"))
    t, mid, ks, vs, n, _flags, name = _MAP_INFO.unpack(out.raw)
    return MapInfo(t, mid, ks, vs, n, name.rstrip(b"\0").decode(errors="replace"))


class Map:
    """A map by its fd (owned: close() closes it). Keys and values are bytes of the map's sizes;
    a per-CPU map's value is `value_size` (rounded to 8) times the possible CPUs."""

    def __init__(self, fd: int):
        self.fd = fd
        self.info = map_info(fd)
        self.percpu = self.info.type in PERCPU_TYPES
        self.ncpu = possible_cpus() if self.percpu else 1
        self.slot = (self.info.value_size + 7) & ~7 if self.percpu else self.info.value_size

    def _elem(self, cmd: int, key: bytes, value: ctypes.Array | None, flags: int = 0) -> None:
        if len(key) != self.info.key_size:
            raise ValueError(f"map {self.info.name}: key of {len(key)} bytes, the map's are {self.info.key_size}")
        k = ctypes.create_string_buffer(key, len(key))
        bpf(cmd, _ELEM.pack(self.fd, 0, ctypes.addressof(k), ctypes.addressof(value) if value is not None else 0,
                            flags).ljust(64, b"\0"))

    def update(self, key: bytes, value: bytes) -> None:
        if len(value) != self.slot * self.ncpu:
            raise ValueError(f"map {self.info.name}: value of {len(value)} bytes, the map's are "
                             f"{self.slot * self.ncpu}")
        self._elem(MAP_UPDATE_ELEM, key, ctypes.create_string_buffer(value, len(value)), ANY)

    def lookup(self, key: bytes) -> bytes | None:
        out = ctypes.create_string_buffer(self.slot * self.ncpu)
        try:
            self._elem(MAP_LOOKUP_ELEM, key, out)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return out.raw

    def delete(self, key: bytes) -> bool:
        """False when the key was not there."""
        try:
            self._elem(MAP_DELETE_ELEM, key, None)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def percpu_u64_sum(self, key: bytes) -> int:
        """A per-CPU u64 value summed over CPUs (0 when absent)."""
        raw = self.lookup(key)
        if raw is None:
            return 0
        return sum(struct.unpack_from("=Q", raw, i * self.slot)[0] for i in range(self.ncpu))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
