"""VPC session pressure: distinct 5-tuple sessions per pod (network namespace) and per node, with
first/last-seen times, counted in the kernel in bounded maps, and the arithmetic that turns them
into pressure against a VPC's session limit (`pressure`).

Why here and how (the numbers are in bench/session_cost.py): a program that hashes the 5-tuple of
every packet into a map costs several percent of a small-packet flood. moor counts where sessions are
born and refreshed instead: cgroup_skb programs on the root cgroup v2 see only packets of local
sockets (any pod netns, and the host), and a packet first checks a 4-entry cache of the flows its
socket used recently (socket-local storage: no hashing), then a small per-CPU set-associative cache
of recently written flows; the session map is read or written only when a flow is in neither, that
is when it is new or the time its packet's direction refreshes (last_seen for a sent packet, last_rx
for a received one) is older than `granularity_s`. Only stable UAPI contexts are read
(__sk_buff, bpf_sock and the packet headers), never kernel-struct offsets, so it is correct whatever
kernel headers are installed.

What counts as a session: a (netns, protocol, local address/port, remote address/port) tuple of a
UDP or TCP socket, as the packet on the wire carries it (so the source address the kernel chose for
an unbound socket, and a destination rewritten by a socket-LB program, are what is counted).
Sent and received packets both count, and a request and its reply are one session; besides its last
packet either way (last_seen) a session keeps its last RECEIVED packet (last_rx), so a session that
keeps sending but gets nothing back (a VPC/NAT session pinned to a dead path) shows even when its
peer is on another node. Not counted:
traffic that does not belong to a local socket (routed/forwarded packets, VMs on the node, packets
dropped before a socket owns them, SYNs arriving at a listener: the server counts the session from
its SYN-ACK), non-first IPv4 fragments, IPv6 packets whose ports sit behind extension headers, and
protocols other than UDP/TCP. On kernels whose cgroup_skb programs cannot call
bpf_get_netns_cookie (it came in 2025; start() asks the verifier), the netns is remembered per socket
from its creation instead: sockets that existed before start() are attributed to netns cookie 0, and
TCP request/timewait sockets are not counted.

Times are CLOCK_MONOTONIC in the kernel (coarse, a few ms), read only when the map is written, and
unix seconds in SessionStat; last_seen and last_rx may each lag the flow's last packet (of either
direction, resp. received) by up to two granularities (each CPU refreshes on its own). The caches
keep one stamp per direction, so a flow with packets both ways costs at most two map writes per
granularity where it cost one; the per-packet check in front of them is the same either way.

Memory: the session map allocates entries as they are used (~160 bytes each, at most max_sessions);
every UDP/TCP socket that sends or receives gets ~280 bytes of socket-local storage (freed with the
socket); the per-CPU caches take 128 KiB a CPU (16 MiB at most for the node).
"""
from __future__ import annotations

import ctypes
import errno
import functools
import importlib
import math
import os
import tempfile
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cni.netlink.netns import run_in
from dataplane.probe.errors import ProbeUnavailable
from dataplane.probe.kclock import kernel_hz
from dataplane.bpfsys import bpf, possible_cpus
from dataplane.probe.kheaders import compile_bpf

SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h, Linux 5.14+

_BPF_SRC = Path(__file__).with_name("sessions.bpf.c")

# bpf(2) commands, program and attach types (include/uapi/linux/bpf.h; stable ABI numbers)
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_DETACH = 9
_BPF_LINK_CREATE = 28
_PROG_CGROUP_SKB = 8
_PROG_CGROUP_SOCK = 9
_ATTACH_INGRESS = 0
_ATTACH_EGRESS = 1
_ATTACH_SOCK_CREATE = 2
_F_ALLOW_MULTI = 2
_HELPER_GET_NETNS_COOKIE = 122

# counters[] slots in sessions.bpf.c
_C_REFUSED, _C_REFUSED_TRIES, _C_NEW = 0, 1, 2



# ---------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class Flow:
    """One session as the pod sees it: saddr/sport are the local (pod or host) side, daddr/dport the
    remote peer, whichever side started it."""
    netns_cookie: int
    proto: int            # socket.IPPROTO_UDP / IPPROTO_TCP
    saddr: str
    sport: int
    daddr: str
    dport: int


@dataclass
class SessionStat:
    flow: Flow
    first_seen: float     # unix seconds
    last_seen: float      # unix seconds of the last packet either way, refreshed at most once per granularity_s
    # unix seconds of the last packet RECEIVED on it (same clock and granularity as last_seen); None
    # when none was received since the probe started, or when the probe does not count received
    # packets (ingress=False)
    last_rx: Optional[float] = None


@dataclass
class Pressure:
    active: int                         # sessions seen within aging_s
    limit: int                          # the VPC's session limit; 0 = not configured
    by_netns: dict[int, int]            # netns cookie -> active sessions
    growth_per_min: float               # active sessions per minute (least-squares over history)
    long_lived: list[SessionStat]       # active, and continuously refreshed for long (oldest first)
    aging_s: float
    long_lived_after_s: float = 0.0

    @property
    def utilization(self) -> Optional[float]:
        """active / limit, or None without a limit."""
        return self.active / self.limit if self.limit > 0 else None

    @property
    def minutes_to_limit(self) -> Optional[float]:
        """At the current growth, minutes until the limit is reached (0 when already there); None
        without a limit or when the count is not growing."""
        if self.limit <= 0:
            return None
        if self.active >= self.limit:
            return 0.0
        if self.growth_per_min <= 0:
            return None
        return (self.limit - self.active) / self.growth_per_min


def pressure(stats: list[SessionStat], now: float, aging_s: float, limit: int,
             history: list[tuple[float, int]] | None = None, *,
             long_lived_after_s: float | None = None) -> Pressure:
    """Session pressure at `now` (unix seconds) under a VPC that ages idle sessions after `aging_s`.

    active: sessions whose last_seen is within aging_s of now (a last_seen after now, from clock
    steps, counts as active). long_lived: active sessions whose first_seen is at least
    `long_lived_after_s` (default 2 x aging_s) before now: they have been refreshed within every
    aging window since, so the VPC never aged them out (the 4-tuple that keeps a stale path).
    growth_per_min: the least-squares slope of the (time, active) samples in `history` plus the
    current one, per minute; 0.0 with fewer than two distinct sample times. Samples after `now`
    are ignored; a sample at exactly `now` replaces the current one.
    """
    if not (isinstance(aging_s, (int, float)) and math.isfinite(aging_s) and aging_s > 0):
        raise ValueError(f"aging_s must be a positive number of seconds, not {aging_s!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer (0 = none), not {limit!r}")
    if not math.isfinite(now):
        raise ValueError(f"now must be finite, not {now!r}")
    after = 2.0 * aging_s if long_lived_after_s is None else float(long_lived_after_s)
    if not (math.isfinite(after) and after >= 0):
        raise ValueError(f"long_lived_after_s must be >= 0, not {long_lived_after_s!r}")

    active: list[SessionStat] = [s for s in stats if now - s.last_seen <= aging_s]
    by_netns: dict[int, int] = {}
    for s in active:
        by_netns[s.flow.netns_cookie] = by_netns.get(s.flow.netns_cookie, 0) + 1
    long_lived = sorted((s for s in active if now - s.first_seen >= after),
                        key=lambda s: (s.first_seen, s.flow.netns_cookie, s.flow.saddr, s.flow.sport,
                                       s.flow.daddr, s.flow.dport, s.flow.proto))

    samples = {float(t): float(n) for t, n in (history or []) if math.isfinite(t) and t <= now}
    samples.setdefault(float(now), float(len(active)))
    return Pressure(active=len(active), limit=limit, by_netns=by_netns,
                    growth_per_min=_slope(sorted(samples.items())) * 60.0,
                    long_lived=long_lived, aging_s=float(aging_s), long_lived_after_s=after)


def _slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in points) / var


# ---------------------------------------------------------------------------------------------
# netns cookies (the key the kernel programs attribute sessions to)


def _socket_cookie() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def my_netns_cookie() -> int:
    """The netns cookie of the calling thread's network namespace (Linux 5.14+)."""
    return _socket_cookie()


def netns_cookie(netns_path: str) -> int:
    """The netns cookie of the namespace at `netns_path` (/run/netns/x, /proc/PID/ns/net): a
    short-lived thread enters it (cni.netlink.netns.run_in), asks a socket opened there
    (SO_NETNS_COOKIE), and ends, so the caller's own namespace never changes. ValueError when the
    path is not a network namespace."""
    return run_in(netns_path, _socket_cookie)


# ---------------------------------------------------------------------------------------------
# kernel plumbing


def _skb_can_get_netns_cookie() -> bool:
    """Whether cgroup_skb programs may call bpf_get_netns_cookie(skb) (2025 kernels): load a
    four-instruction program and let the verifier say."""
    insns = b"".join([
        struct.pack("<BBhi", 0x85, 0, 0, _HELPER_GET_NETNS_COOKIE),  # call get_netns_cookie(r1=ctx)
        struct.pack("<BBhi", 0xb7, 0, 0, 1),                         # r0 = 1
        struct.pack("<BBhi", 0x95, 0, 0, 0),                         # exit
    ])
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQIIQI", _PROG_CGROUP_SKB, len(insns) // 8, ctypes.addressof(ibuf),
                       ctypes.addressof(lic), 0, 0, 0, 0).ljust(128, b"\0")
    try:
        fd = bpf(_BPF_PROG_LOAD, attr)
    except OSError:
        return False
    os.close(fd)
    return True


# the kernel's HZ: CONFIG_HZ when the config is readable, else measured from /proc/timer_list
_kernel_hz = kernel_hz


_L2_BUDGET = 16 << 20    # bytes for the per-CPU flow caches of the whole node
_L2_SET = 2 * 64         # two struct l2ent


def _l2_bits(ncpu: int) -> int:
    """log2 of the sets per CPU of the per-CPU flow cache (2 flows a set): 1024 sets (128 KiB a
    CPU) unless that passes the node's 16 MiB budget (beyond 128 possible CPUs), never below 64."""
    fit = _L2_BUDGET // (_L2_SET * max(1, ncpu))
    return max(6, min(10, fit.bit_length() - 1))


def _cgroup2_root() -> Optional[str]:
    """The mount point of the cgroup v2 hierarchy, preferring one that shows its root ('/')."""
    best = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] != "cgroup2":
                continue
            parts = left.split()
            root, mnt = parts[3], parts[4].replace("\\040", " ")
            if root == "/":
                return mnt
            best = best or mnt
    return best


def _open_cgroup2_root() -> tuple[int, str]:
    """An fd of the cgroup v2 root and how it was reached. In a mount namespace without the
    hierarchy mounted (`ip netns exec` mounts a fresh /sys), mount it on a private directory just
    long enough to open it: the fd keeps the cgroup, and the mount goes at once."""
    path = _cgroup2_root()
    if path is not None:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), path
    libc = ctypes.CDLL(None, use_errno=True)
    tmp = tempfile.mkdtemp(prefix="moor-cgroup2-")
    try:
        if libc.mount(b"cgroup2", tmp.encode(), b"cgroup2", 0, None) != 0:
            err = ctypes.get_errno()
            raise ProbeUnavailable(f"no cgroup v2 hierarchy is mounted and mounting one failed: {os.strerror(err)}")
        try:
            return os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), "cgroup2 (mounted privately)"
        finally:
            libc.umount2(tmp.encode(), 2)  # MNT_DETACH
    finally:
        os.rmdir(tmp)


@dataclass
class _Attachment:
    prog_fd: int
    target_fd: int
    attach_type: int
    link_fd: int = -1     # a bpf link: closing it (or the process dying) detaches


def _attach(prog_fd: int, target_fd: int, attach_type: int) -> _Attachment:
    attr = struct.pack("<IIII", prog_fd, target_fd, attach_type, 0).ljust(64, b"\0")
    try:
        return _Attachment(prog_fd, target_fd, attach_type, link_fd=bpf(_BPF_LINK_CREATE, attr))
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    # kernels before bpf links for cgroups (5.7): a plain multi-attachment, detached in close()
    attr = struct.pack("<IIII", target_fd, prog_fd, attach_type, _F_ALLOW_MULTI).ljust(64, b"\0")
    bpf(_BPF_PROG_ATTACH, attr)
    return _Attachment(prog_fd, target_fd, attach_type)


def _detach(a: _Attachment) -> None:
    if a.link_fd >= 0:
        os.close(a.link_fd)
        a.link_fd = -1
        return
    attr = struct.pack("<IIII", a.target_fd, a.prog_fd, a.attach_type, 0).ljust(64, b"\0")
    try:
        bpf(_BPF_PROG_DETACH, attr)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise


# ---------------------------------------------------------------------------------------------
# the probe


class _Key(ctypes.Structure):
    _fields_ = [("netns", ctypes.c_uint64), ("laddr", ctypes.c_uint32 * 4), ("raddr", ctypes.c_uint32 * 4),
                ("lport", ctypes.c_uint16), ("rport", ctypes.c_uint16), ("proto", ctypes.c_uint8),
                ("family", ctypes.c_uint8), ("pad", ctypes.c_uint16)]


class _Val(ctypes.Structure):   # struct sval
    _fields_ = [("first", ctypes.c_uint64), ("last", ctypes.c_uint64), ("last_rx", ctypes.c_uint64)]


_KEY = struct.Struct("=Q16s16sHHBBH")   # struct skey, as _Key


@functools.lru_cache(maxsize=65536)   # sessions share few addresses
def _addr(family: int, raw: bytes) -> str:
    """An address from the key's 16 bytes (network order; IPv4 in the first 4)."""
    return socket.inet_ntop(socket.AF_INET, raw[:4]) if family == 4 else socket.inet_ntop(socket.AF_INET6, raw)


class SessionProbe:
    """Counts VPC sessions on this node. start() loads and attaches (raises ProbeUnavailable with
    the reason), snapshot() reads them, dropped() says how many sessions the full map refused,
    close() detaches (also on process exit: the attachments are bpf links owned by this process).

    max_sessions bounds the kernel map (entries are allocated on use, ~150 bytes each);
    granularity_s is how stale last_seen and last_rx may be (one map write per flow and direction per
    granularity);
    retention_s: snapshot() deletes sessions idle longer than this, so the bounded map keeps room
    for new ones; keep it above the longest VPC aging window you ask `pressure` about.
    ingress=False counts sent packets only: sessions whose peer never gets a packet back (a UDP
    receiver that never answers) are then missed, received packets cost nothing, and last_rx is
    unknown (None).
    cgroup_path: the cgroup v2 directory to attach to (default: the hierarchy's root, all sockets).
    """

    def __init__(self, max_sessions: int = 262144, *, granularity_s: float = 1.0,
                 retention_s: float = 3600.0, ingress: bool = True,
                 cgroup_path: Optional[str] = None) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if not granularity_s > 0 or not retention_s > 0:
            raise ValueError("granularity_s and retention_s must be > 0")
        self.max_sessions = int(max_sessions)
        self.granularity_s = float(granularity_s)
        self.retention_s = float(retention_s)
        self.ingress = bool(ingress)
        self.cgroup_path = cgroup_path
        self.netns_from_skb: Optional[bool] = None   # how netns cookies are found (see .bpf.c)
        self.hz: Optional[int] = None                 # kernel HZ, for the per-packet clock (jiffies)
        self._bpf = None
        self._cg_fd = -1
        self._attached: list[_Attachment] = []
        self._lock = threading.Lock()

    # -- life cycle

    def start(self) -> None:
        if self._bpf is not None:
            return
        if os.geteuid() != 0:
            raise ProbeUnavailable("the session probe needs root (CAP_BPF, CAP_NET_ADMIN) to load eBPF")
        try:
            importlib.import_module("bcc")
        except ImportError as e:
            raise ProbeUnavailable(f"bcc (python3-bpfcc) is not importable: {e}") from e
        try:
            self._start()
        except ProbeUnavailable:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise ProbeUnavailable(f"session probe could not load: {e}") from e

    def _start(self) -> None:
        from bcc import BPF

        self.netns_from_skb = _skb_can_get_netns_cookie()
        self.hz = _kernel_hz()
        cflags = [f"-DMAX_SESSIONS={self.max_sessions}",
                  f"-DREFUSED_MAX={min(16384, max(1024, self.max_sessions // 16))}",
                  f"-DGRAN_NS={int(self.granularity_s * 1e9)}ULL",
                  f"-DL2_BITS={_l2_bits(possible_cpus())}"]
        if self.hz:
            cflags.append(f"-DGRAN_J={max(1, math.ceil(self.granularity_s * self.hz))}ULL")
        if self.netns_from_skb:
            cflags.append("-DSKB_NETNS_COOKIE")
        self._bpf = compile_bpf(cflags, text=_BPF_SRC.read_text())
        progs = [("sess_egress", BPF.CGROUP_SKB, _ATTACH_EGRESS)]
        if self.ingress:
            progs.append(("sess_ingress", BPF.CGROUP_SKB, _ATTACH_INGRESS))
        if not self.netns_from_skb:
            progs.insert(0, ("sess_sock_create", BPF.CGROUP_SOCK, _ATTACH_SOCK_CREATE))
        loaded = [(self._bpf.load_func(name.encode(), ptype, attach_type=atype), atype)
                  for name, ptype, atype in progs]
        if self.cgroup_path:
            self._cg_fd = os.open(self.cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            self._cg_fd, self.cgroup_path = _open_cgroup2_root()
        for fn, atype in loaded:
            self._attached.append(_attach(fn.fd, self._cg_fd, atype))

    def close(self) -> None:
        with self._lock:
            errs = []
            for a in reversed(self._attached):
                try:
                    _detach(a)
                except OSError as e:
                    errs.append(e)
            self._attached.clear()
            if self._cg_fd >= 0:
                os.close(self._cg_fd)
                self._cg_fd = -1
            if self._bpf is not None:
                self._bpf.cleanup()
                self._bpf = None
            if errs:
                raise errs[0]

    def prog_fds(self) -> dict[str, int]:
        """The attached programs' fds by function name (for run-time statistics in bench/)."""
        if self._bpf is None:
            return {}
        return {fn.name.decode(): fn.fd for fn in self._bpf.funcs.values()}

    def __enter__(self) -> "SessionProbe":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading

    def _table(self, name: str):
        if self._bpf is None:
            raise RuntimeError("SessionProbe is not started")
        return self._bpf[name.encode()]

    def _entries(self) -> list[tuple[bytes, int, int, int]]:
        """All sessions as (raw key, first ns, last ns, last_rx ns or 0), read in batches
        (BPF_MAP_LOOKUP_BATCH), or by walking the keys on kernels without batch lookups for hash maps."""
        from bcc import libbcc

        fd = self._table("sessions").map_fd
        ksz, vsz = ctypes.sizeof(_Key), ctypes.sizeof(_Val)
        out: list[tuple[bytes, int, int, int]] = []
        chunk = 4096
        keys, vals = (_Key * chunk)(), (_Val * chunk)()
        in_b, out_b, cnt = ctypes.c_uint32(0), ctypes.c_uint32(0), ctypes.c_uint32(0)
        first = True
        while True:
            cnt.value = chunk
            res = libbcc.lib.bpf_lookup_batch(fd, None if first else ctypes.byref(in_b),
                                              ctypes.byref(out_b), ctypes.byref(keys), ctypes.byref(vals),
                                              ctypes.byref(cnt))
            err = ctypes.get_errno()
            n = cnt.value
            kraw = ctypes.string_at(keys, n * ksz)
            for i, (f, la, rx) in enumerate(struct.iter_unpack("=QQQ", ctypes.string_at(vals, n * vsz))):
                out.append((kraw[i * ksz:(i + 1) * ksz], f, la, rx))
            if res != 0:
                if err == errno.ENOENT:
                    return out
                if first and err in (errno.EINVAL, errno.EOPNOTSUPP, 524):  # 524: ENOTSUPP
                    return self._entries_walk()
                if err == errno.ENOSPC:   # one bucket holds more than the chunk: grow and go on
                    chunk *= 2
                    keys, vals = (_Key * chunk)(), (_Val * chunk)()
                    continue
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
            in_b.value = out_b.value
            first = False

    def _entries_walk(self) -> list[tuple[bytes, int, int, int]]:
        return [(bytes(k), v.first, v.last, v.last_rx) for k, v in self._table("sessions").items()]

    def _delete(self, keys: list[bytes]) -> None:
        from bcc import libbcc

        fd = self._table("sessions").map_fd
        for i in range(0, len(keys), 4096):
            part = keys[i:i + 4096]
            arr = (_Key * len(part)).from_buffer_copy(b"".join(part))
            cnt = ctypes.c_uint32(len(part))
            if libbcc.lib.bpf_delete_batch(fd, ctypes.byref(arr), ctypes.byref(cnt)) != 0:
                for j in range(len(part)):  # a key deleted meanwhile stops the batch: one by one
                    libbcc.lib.bpf_delete_elem(fd, ctypes.byref(arr, j * ctypes.sizeof(_Key)))

    def snapshot(self) -> list[SessionStat]:
        """The sessions in the map, each with first/last seen and last received (last_rx; None
        when nothing was received) as unix seconds. Sessions idle for longer than retention_s are
        deleted from the map (and not returned)."""
        with self._lock:
            entries = self._entries()
            mono_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            wall = time.time()
            stale_ns = int(self.retention_s * 1e9)
            out, old = [], []
            for raw, first, last, rx in entries:
                last = max(last, rx)   # the kernel writes both together; racing CPUs may reorder them
                if mono_ns - last > stale_ns:
                    old.append(raw)
                    continue
                netns, laddr, raddr, lport, rport, proto, fam, _ = _KEY.unpack(raw)
                flow = Flow(netns_cookie=netns, proto=proto, saddr=_addr(fam, laddr), sport=lport,
                            daddr=_addr(fam, raddr), dport=rport)
                out.append(SessionStat(flow=flow, first_seen=wall - (mono_ns - first) / 1e9,
                                       last_seen=wall - (mono_ns - last) / 1e9,
                                       last_rx=wall - (mono_ns - rx) / 1e9 if rx and self.ingress else None))
            if old:
                self._delete(old)
            return out

    def _counter(self, slot: int) -> int:
        t = self._table("counters")
        return int(sum(t[ctypes.c_int(slot)]))

    def dropped(self) -> int:
        """Sessions not recorded because the map was full. Each is counted once while it is among
        the last min(16384, max(1024, max_sessions / 16)) refused ones, so under a long overflow
        a session still refused may be counted again."""
        return self._counter(_C_REFUSED)

    def counters(self) -> dict[str, int]:
        """Raw kernel counters: sessions inserted, refused distinct sessions, refused inserts."""
        return {"new": self._counter(_C_NEW), "refused": self._counter(_C_REFUSED),
                "refused_inserts": self._counter(_C_REFUSED_TRIES)}


__all__ = ["Flow", "SessionStat", "SessionProbe", "Pressure", "pressure", "netns_cookie", "my_netns_cookie",
           "ProbeUnavailable"]
