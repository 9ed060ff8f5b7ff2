"""Kernel packet drops with their reasons, per network namespace, device and flow, and UDP sockets
whose receive buffer overflowed — counted in the kernel by eBPF (bcc), read by snapshot().

Sources
  * skb:kfree_skb (every kfree_skb_reason() that is not a normal consume), attached raw by default
    (its arguments skb, reason, rx_sk at the positions the BTF typedef btf_trace_kfree_skb gives;
    cheaper: no perf record is built per event), or as the classic tracepoint (attach="tracepoint",
    and when BTF lacks the typedef), whose record is read at the offsets of its tracefs format file.
    The skb behind it is read at offsets from the running kernel's BTF. Counted per DropKey in a
    bounded hash map (max_flows entries); a drop that finds the map full is added to an overflow
    counter instead (overflow()), so nothing is lost silently and old keys are never evicted.
  * raw tracepoint udp_fail_queue_rcv_skb (its argument positions from the BTF typedef
    btf_trace_udp_fail_queue_rcv_skb; the classic record carries no socket): the socket that could
    not queue a datagram, with its sk_rcvbuf, namespace, local address and port. Only rc == -ENOMEM
    is counted there (the datagram did not fit in sk_rcvbuf: drop reason SOCKET_RCVBUFF); -ENOBUFS
    is the protocol's global memory limit (udp_mem, reason PROTO_MEM), which a bigger SO_RCVBUF does
    not cure: it shows in the drop counts with that reason.

Attribution (DropKey.netns / ifindex)
  * skb->dev gives the device and its namespace (dev->nd_net.net->ns.inum). Without a device, or
    when the device's namespace disagrees with the socket's (skb->dev shares a union with the
    rbtree links of skbs in a TCP out-of-order queue, so it is not always a device), the namespace
    of the socket is used (the tracepoint's rx_sk, else skb->sk) and ifindex is 0 — except for an
    skb its socket is still sending (destructor sock_wfree, __sock_wfree or tcp_wfree, addresses from
    /proc/kallsyms, and no rx_sk): the device is real then, e.g. a pod's packet that eBPF host
    routing sent out of the node's uplink (no ip_rcv() orphaned it on the way). With neither
    (e.g. the fragments queued inside a reassembled datagram, freed with it), both are 0.
  * Flow fields come from the packet itself: skb->head + skb->network_header, checked against
    skb->protocol and the version nibble; IPv4 options and IPv6 extension headers (hop-by-hop,
    routing, destination options, AH, fragment) are walked. Non-first fragments have no ports.
    frag_bytes is bytes 2-3 after the IPv4 header, or after the IPv6 fragment header (the first
    bytes of the fragment's payload, the analogue for IPv6), for first and later fragments alike.
  * bytes is the IP length of the packet (IPv4 total length, IPv6 payload length + 40), else skb->len.

Time (DropStat and RcvbufStat .first_seen / .last_seen, unix seconds)
  * Each flow aggregate and socket entry keeps the kernel time of its first and of its last drop,
    its first written once (with the entry), its last moved forward only, so first_seen <=
    last_seen. The stamp is jiffies (bpf_jiffies64(), inlined by the verifier to one load: one
    store per drop and no helper call), turned into unix seconds through CLOCK_MONOTONIC, which
    jiffies follow tick for tick (probe/kclock.py); `time_error_s` says how far a stamp may be off
    (two ticks: 8 ms at HZ=250). Not bpf_ktime_get_ns() (CLOCK_MONOTONIC) nor
    bpf_ktime_get_boot_ns() (CLOCK_BOOTTIME): both are helper calls, which cost ~45 ns a drop on
    the bench machine, a fifth of the program. BOOTTIME would have kept ages right across a
    suspend of the machine; jiffies, like MONOTONIC, stand still then, so an age spanning a
    suspend is short by its length (nodes seldom suspend). Without a known HZ (no kernel config,
    no /proc/timer_list) the probe stamps CLOCK_BOOTTIME ns instead, and says so in `limitations`.
  * snapshot() converts with the offset between the kernel clock and time.time() read right after
    the maps: an age (time.time() - last_seen) is right to the stamp's resolution; the absolute
    time follows the wall clock as it is now (a clock step moves every stamp with it).

What is not counted
  * SKB_CONSUMED: normal frees. On 6.x kernels kfree_skb_reason(skb, SKB_CONSUMED) fires
    skb:consume_skb, not skb:kfree_skb, so this is only a guard for kernels that still route it here.
  * Reasons named in `ignore` (none by default). NOT_SPECIFIED is kept: it is what every plain
    kfree_skb() reports — real drops on paths without a reason yet, next to frees that are not
    losses (seen here: ICMPv6 MLD reports and router solicitations a host does not act on, and the
    fragments of a reassembled datagram freed after the datagram itself was counted); hiding it
    would hide drops, so consumers filter it (by reason, or netns 0) where they want.

Names of reasons come from the running kernel's BTF enum skb_drop_reason (prefix SKB_DROP_REASON_
removed: "NO_SOCKET"), or, without that enum, from the tracepoint's __print_symbolic table: never
from a number table of our own, since the numbers differ between kernels.
"""
from __future__ import annotations

import errno
import importlib.util
import ipaddress
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from .btf import Btf, BtfError
from .errors import ProbeUnavailable
from .kclock import JiffiesClock
from .kheaders import compile_bpf, run_stats

BPF_SOURCE = Path(__file__).with_name("drops.bpf.c")
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
MAX_FLOWS = 65536
MAX_SOCKS = 16384
IGNORE_SLOTS = 1024
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD


@dataclass(frozen=True)
class DropKey:
    reason: str
    netns: int          # inode of the network namespace (net->ns.inum), 0 when unknown
    ifindex: int        # 0 when unknown
    proto: int          # IP protocol, 0 if not IP
    saddr: str
    daddr: str
    sport: int
    dport: int
    fragment: bool
    frag_bytes: str     # hex of the 2 bytes at offsets 2-3 after the IP header (IPv6: after the
                        # fragment header), for fragments (non-first fragments included), else ''


@dataclass
class DropStat:
    key: DropKey
    packets: int
    bytes: int          # IP packet length (total length) when parsed as IP, else skb->len
    first_seen: float = 0.0   # unix seconds of the first drop counted in this aggregate (0: unknown)
    last_seen: float = 0.0    # unix seconds of the last one


@dataclass(frozen=True)
class RcvbufStat:
    netns: int
    proto: int
    laddr: str
    lport: int
    rcvbuf: int         # the socket's sk_rcvbuf in bytes (as SO_RCVBUF reads it), at the last drop
    drops: int
    first_seen: float = 0.0   # unix seconds of the socket's first receive-buffer drop (0: unknown)
    last_seen: float = 0.0    # and of its last one


TX_DESTRUCTORS = ("sock_wfree", "__sock_wfree", "tcp_wfree")


def tx_destructors(path: str = "/proc/kallsyms") -> list[int]:
    """Addresses of the skb destructors of a socket sending (hex, as the C compares them), from
    kallsyms; [] when hidden (kptr_restrict shows zeros) or absent."""
    found: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in TX_DESTRUCTORS and parts[2] not in found:
                    found[parts[2]] = int(parts[0], 16)
    except OSError:
        return []
    return [a for a in found.values() if a]


def boottime_to_unix() -> Callable[[int], float]:
    """A function from CLOCK_BOOTTIME nanoseconds (the probe's stamps) to unix seconds, using the
    offset between the two clocks now (the boot-time clock read on both sides of time.time())."""
    b0 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    wall = time.time()
    b1 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    boot_now = (b0 + b1) // 2

    def to_unix(ns: int) -> float:
        return wall - (boot_now - ns) / 1e9 if ns else 0.0
    return to_unix


def short_reason(name: str) -> str:
    for prefix in ("SKB_DROP_REASON_", "SKB_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def tracefs_event_dir(category: str, event: str) -> Optional[Path]:
    for base in TRACEFS_DIRS:
        d = Path(base) / "events" / category / event
        if (d / "format").exists():
            return d
    return None


@dataclass(frozen=True)
class TpField:
    ctype: str
    offset: int
    size: int


def parse_format(text: str) -> tuple[dict[str, TpField], dict[int, str]]:
    """The fields of a tracefs format file and the first __print_symbolic table in its print fmt."""
    fields: dict[str, TpField] = {}
    for m in re.finditer(r"field:([^;]*?)\s*([A-Za-z_][A-Za-z0-9_]*)(\[[^\]]*\])?;\s*offset:(\d+);\s*size:(\d+);", text):
        fields[m.group(2)] = TpField(m.group(1).strip(), int(m.group(4)), int(m.group(5)))
    symbols: dict[int, str] = {}
    sym = re.search(r"__print_symbolic\([^,]*,(.*?)\)\s*(?:,|$)", text, re.S)
    if sym:
        for m in re.finditer(r"\{\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*,\s*\"([^\"]*)\"\s*\}", sym.group(1)):
            symbols[int(m.group(1), 0)] = m.group(2)
    return fields, symbols


class DropProbe:
    """Drop reasons and UDP receive-buffer overflow, counted in the kernel.

    start() compiles and attaches (ProbeUnavailable with the reason when it cannot), snapshot()
    returns the counts since start, close() detaches. `limitations` lists what runs in a reduced
    form (e.g. no receive-buffer tracking on a kernel without the raw tracepoint).
    """

    def __init__(self, btf_path: str = "/sys/kernel/btf/vmlinux", ignore: Iterable[str] = (),
                 max_flows: int = MAX_FLOWS, max_socks: int = MAX_SOCKS, attach: str = "auto"):
        if attach not in ("auto", "raw", "tracepoint"):
            raise ValueError(f"attach must be auto, raw or tracepoint, not {attach!r}")
        self.attach = attach
        self.attached_as = ""
        self.btf_path = btf_path
        self.ignore = {short_reason(r) for r in ignore}
        self.max_flows = max_flows
        self.max_socks = max_socks
        self.limitations: list[str] = []
        self._bpf = None
        self._reasons: dict[int, str] = {}
        self._clock: Optional[JiffiesClock] = None

    # -- set-up -------------------------------------------------------------------------------

    def _offsets(self, btf: Btf) -> dict[str, int]:
        """Every kernel-struct offset the BPF C reads, checked for the width the C reads there,
        and the windows (first to last field of one struct) that the C reads in one go."""
        want = {
            # define: (struct, member path, size the C reads; 0 = a pointer)
            "SKB_PROTOCOL": ("sk_buff", "protocol", 2),
            "SKB_HEAD": ("sk_buff", "head", 0),
            "SKB_NETWORK_HEADER": ("sk_buff", "network_header", 2),
            "SKB_LEN": ("sk_buff", "len", 4),
            "SKB_DEV": ("sk_buff", "dev", 0),
            "SKB_SK": ("sk_buff", "sk", 0),
            "DEV_IFINDEX": ("net_device", "ifindex", 4),
            "DEV_NET": ("net_device", "nd_net.net", 0),
            "NET_INUM": ("net", "ns.inum", 4),
            "SK_NET": ("sock", "__sk_common.skc_net.net", 0),
            "SK_FAMILY": ("sock", "__sk_common.skc_family", 2),
            "SK_NUM": ("sock", "__sk_common.skc_num", 2),
            "SK_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr", 4),
            "SK_RCVBUF": ("sock", "sk_rcvbuf", 4),
        }
        optional = {
            "SK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr", 16),
            "SK_PROTOCOL": ("sock", "sk_protocol", 2),
            "SKB_DESTRUCTOR": ("sk_buff", "destructor", 8),  # a function pointer: its size checked
        }
        out: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for table, required in ((want, True), (optional, False)):
            for define, (struct_name, path, size) in table.items():
                try:
                    m = btf.member(struct_name, path)
                    if m.bitfield_size or m.bit_offset % 8:
                        raise BtfError(f"{struct_name}.{path} is a bitfield here")
                    if not size and not btf.type_name(m.type_id).endswith("*"):
                        raise BtfError(f"{struct_name}.{path} is not a pointer here ({btf.type_name(m.type_id)})")
                    expect = size or 8
                    if m.size != expect:
                        raise BtfError(f"{struct_name}.{path} is {m.size} bytes here, the probe reads {expect}")
                except BtfError as e:
                    if required:
                        raise ProbeUnavailable(f"kernel BTF does not fit the drop probe: {e}") from e
                    self.limitations.append(f"{define}: {e}")
                    continue
                out[define] = m.offset
                sizes[define] = m.size

        def window(name: str, members: list[str], limit: Optional[int]) -> None:
            present = [d for d in members if d in out]
            start = min(out[d] for d in present) & ~7
            length = (max(out[d] + sizes[d] for d in present) - start + 7) & ~7
            if limit is not None and length > limit:
                raise ProbeUnavailable(f"kernel layout: the fields the probe reads from {name} span "
                                       f"{length} bytes (more than {limit})")
            out[f"{name}_WIN_START"], out[f"{name}_WIN_LEN"] = start, length

        window("SKB", [d for d in out if d.startswith("SKB_")], 256)
        window("DEV", ["DEV_IFINDEX", "DEV_NET"], None)      # the C reads them apart beyond 128 bytes
        window("SKC", ["SK_NET", "SK_FAMILY", "SK_NUM", "SK_RCV_SADDR", "SK_V6_RCV_SADDR"], 256)
        return out

    def _udp_fail_args(self, btf: Btf) -> Optional[tuple[int, int]]:
        """Positions of (rc, sk) among the raw tracepoint's arguments, from its BTF typedef."""
        ids = btf.find("btf_trace_udp_fail_queue_rcv_skb", (8,))  # BTF_KIND_TYPEDEF
        if not ids:
            return None
        params = [btf.type_name(t) for _n, t in btf.func_proto_params(ids[0])][1:]  # [0] is void *__data
        try:
            return params.index("int"), params.index("struct sock *")
        except ValueError:
            return None

    def _reason_names(self, btf: Optional[Btf], symbols: dict[int, str]) -> dict[int, str]:
        if btf is not None:
            try:
                values = btf.enum("skb_drop_reason")
            except BtfError:
                values = {}
            names = {v: short_reason(n) for v, n in values.items()
                     if not n.endswith("_SUBSYS_MASK")}
            if names:
                return names
        return {v: short_reason(n) for v, n in symbols.items()}

    def _kfree_skb_raw_args(self, btf: Btf) -> Optional[dict[str, int]]:
        """Positions of skb, reason and rx_sk among trace_kfree_skb()'s arguments (BTF typedef
        btf_trace_kfree_skb), or None when this kernel's BTF does not describe them."""
        ids = btf.find("btf_trace_kfree_skb", (8,))  # BTF_KIND_TYPEDEF
        if not ids:
            return None
        try:
            params = [btf.type_name(t) for _n, t in btf.func_proto_params(ids[0])][1:]
        except BtfError:
            return None
        if "struct sk_buff *" not in params or "enum skb_drop_reason" not in params:
            return None
        out = {"KFS_SKB_ARG": params.index("struct sk_buff *"),
               "KFS_REASON_ARG": params.index("enum skb_drop_reason")}
        if "struct sock *" in params:
            out["KFS_RX_SK_ARG"] = params.index("struct sock *")
        return out

    def _tracepoint_defines(self, fields: dict[str, TpField]) -> dict[str, int]:
        """Offsets in the skb:kfree_skb record, from its format file."""
        for name, size in (("skbaddr", 8), ("protocol", 2), ("reason", 4)):
            f = fields.get(name)
            if f is None:
                raise ProbeUnavailable(f"tracepoint skb:kfree_skb has no field {name!r} "
                                       "(drop reasons need Linux 5.17 or later)")
            if f.size != size:
                raise ProbeUnavailable(f"tracepoint skb:kfree_skb field {name!r} is {f.size} bytes, expected {size}")
        out = {"TP_SKBADDR": fields["skbaddr"].offset, "TP_PROTOCOL": fields["protocol"].offset,
               "TP_REASON": fields["reason"].offset}
        rx = fields.get("rx_sk")
        if rx is not None and rx.size == 8:
            out["TP_RX_SK"] = rx.offset
        return out

    def start(self) -> "DropProbe":
        if self._bpf is not None:
            return self
        self.limitations = []
        if importlib.util.find_spec("bcc") is None:
            raise ProbeUnavailable("bcc is not installed (Debian's python3-bpfcc)")
        if os.geteuid() != 0:
            raise ProbeUnavailable("loading eBPF programs needs root (CAP_BPF and CAP_PERFMON)")
        try:
            btf = Btf.load(self.btf_path)
        except BtfError as e:
            raise ProbeUnavailable(f"no kernel BTF: {e}") from e
        tp_dir = tracefs_event_dir("skb", "kfree_skb")
        fields, symbols = parse_format((tp_dir / "format").read_text()) if tp_dir else ({}, {})
        self._reasons = self._reason_names(btf, symbols)
        if not self._reasons:
            raise ProbeUnavailable("no enum skb_drop_reason in BTF and no kfree_skb format: "
                                   "this kernel has no drop reasons (Linux 5.17 or later has)")
        by_name = {n: v for v, n in self._reasons.items()}

        defines: dict[str, int] = {
            "REASON_CONSUMED": by_name.get("CONSUMED", 0xFFFFFFFF),
            "ERR_NOMEM": errno.ENOMEM,
            "AF_INET_": socket.AF_INET,
            "AF_INET6_": socket.AF_INET6,
            "ETH_P_IP_": ETH_P_IP,
            "ETH_P_IPV6_": ETH_P_IPV6,
            "MAX_FLOWS": self.max_flows,
            "MAX_SOCKS": self.max_socks,
            "IGNORE_SLOTS": IGNORE_SLOTS,
        }
        defines.update(self._offsets(btf))
        raw = self._kfree_skb_raw_args(btf) if self.attach in ("auto", "raw") else None
        if raw is not None:
            defines.update(raw)
            defines["KFS_RAW"] = 1
            self.attached_as = "raw_tracepoint"
        elif self.attach == "raw":
            raise ProbeUnavailable("no BTF typedef btf_trace_kfree_skb(skb, ..., reason): cannot attach raw")
        else:
            if tp_dir is None:
                raise ProbeUnavailable("tracepoint skb:kfree_skb not found (is tracefs mounted at /sys/kernel/tracing?)")
            defines.update(self._tracepoint_defines(fields))
            self.attached_as = "tracepoint"
        if "SKB_DESTRUCTOR" in defines:
            dtors = tx_destructors()
            if dtors:
                for i in range(3):
                    defines[f"TX_DTOR_{i + 1}"] = f"0x{dtors[i % len(dtors)]:x}ULL"  # type: ignore[assignment]
            else:
                self.limitations.append("no addresses of sock_wfree/tcp_wfree in /proc/kallsyms: a drop of a "
                                        "packet still owned by its sender in another netns (eBPF host routing) "
                                        "is attributed to the sender's netns")
        udp_args = self._udp_fail_args(btf)
        if udp_args is None:
            self.limitations.append("no raw tracepoint udp_fail_queue_rcv_skb(rc, sk) in BTF: "
                                    "no per-socket receive-buffer counts")
        defines["UDPF_RC_ARG"], defines["UDPF_SK_ARG"] = udp_args or (0, 1)
        if self.ignore:
            defines["HAVE_IGNORE"] = 1
        self._clock = JiffiesClock.calibrate()
        if self._clock is not None:
            defines["STAMP_JIFFIES"] = 1
        else:
            self.limitations.append("kernel HZ unknown (no kernel config, no /proc/timer_list): drop times "
                                    "from bpf_ktime_get_boot_ns(), a helper call per drop")
        cflags = [f"-D{k}={v}" for k, v in defines.items()] + ["-Wno-unused-function"]

        bpf = compile_bpf(cflags, src_file=str(BPF_SOURCE))
        try:
            ignored = bpf[b"ignored"]
            for name in self.ignore:
                v = by_name.get(name)
                if v is not None and 0 <= v < IGNORE_SLOTS:
                    ignored[ignored.Key(v)] = ignored.Leaf(1)
            try:
                if self.attached_as == "raw_tracepoint":
                    bpf.attach_raw_tracepoint(tp=b"kfree_skb", fn_name=b"on_kfree_skb")
                else:
                    bpf.attach_tracepoint(tp=b"skb:kfree_skb", fn_name=b"on_kfree_skb")
            except Exception as e:
                raise ProbeUnavailable(f"cannot attach to skb:kfree_skb ({self.attached_as}): {e}") from e
            if udp_args is not None:
                try:
                    bpf.attach_raw_tracepoint(tp=b"udp_fail_queue_rcv_skb", fn_name=b"on_udp_fail_queue_rcv_skb")
                except Exception as e:
                    self.limitations.append(f"raw tracepoint udp_fail_queue_rcv_skb: {e}")
        except BaseException:
            bpf.cleanup()
            raise
        self._bpf = bpf
        return self

    # -- reading ------------------------------------------------------------------------------

    @property
    def time_error_s(self) -> float:
        """How far first_seen / last_seen may be from the drop's true time (the stamp's resolution)."""
        return self._clock.error_s if self._clock is not None else 1e-6

    def reasons(self) -> dict[int, str]:
        """Drop-reason numbers of the running kernel and their names ("NO_SOCKET")."""
        if not self._reasons:
            try:
                btf: Optional[Btf] = Btf.load(self.btf_path)
            except BtfError:
                btf = None
            tp_dir = tracefs_event_dir("skb", "kfree_skb")
            symbols = parse_format((tp_dir / "format").read_text())[1] if tp_dir else {}
            self._reasons = self._reason_names(btf, symbols)
        return dict(self._reasons)

    def reason_name(self, value: int) -> str:
        name = self._reasons.get(value)
        if name is not None:
            return name
        if value >> 16:  # a subsystem's reason (SKB_DROP_REASON_SUBSYS_MASK)
            return f"SUBSYS_{value >> 16}_{value & 0xFFFF}"
        return f"REASON_{value}"

    @staticmethod
    def _addr(family: int, raw: bytes) -> str:
        if family == 4:
            return str(ipaddress.IPv4Address(bytes(raw[:4])))
        if family == 6:
            return str(ipaddress.IPv6Address(bytes(raw[:16])))
        return ""

    def snapshot(self) -> tuple[list[DropStat], list[RcvbufStat]]:
        """Counts since start(): drops per key, and receive-buffer overflows per socket address,
        each with the unix time of its first and last drop."""
        if self._bpf is None:
            raise RuntimeError("DropProbe.snapshot() before start()")
        flows = self._bpf[b"drops"].items()
        rcv = self._bpf[b"rcvbuf_drops"].items()
        # after the reads, so every stamp is in the past
        to_unix = self._clock.converter() if self._clock is not None else boottime_to_unix()
        drops: list[DropStat] = []
        for k, v in flows:
            fam = k.family
            key = DropKey(
                reason=self.reason_name(k.reason),
                netns=k.netns,
                ifindex=k.ifindex,
                proto=k.proto if fam else 0,
                saddr=self._addr(fam, bytes(k.saddr)),
                daddr=self._addr(fam, bytes(k.daddr)),
                sport=k.sport,
                dport=k.dport,
                fragment=bool(k.fragment),
                frag_bytes=bytes(k.fbytes).hex() if k.fragment and k.has_fbytes else "",
            )
            drops.append(DropStat(key=key, packets=v.packets, bytes=v.bytes,
                                  first_seen=to_unix(v.first), last_seen=to_unix(v.last)))
        socks: list[RcvbufStat] = []
        for k, v in rcv:
            socks.append(RcvbufStat(netns=k.netns, proto=k.proto, laddr=self._addr(k.family, bytes(k.laddr)),
                                    lport=k.lport, rcvbuf=v.rcvbuf, drops=v.drops,
                                    first_seen=to_unix(v.first), last_seen=to_unix(v.last)))
        return drops, socks

    def overflow(self) -> tuple[int, int, int]:
        """(packets, bytes, socket drops): the drops counted only here because the flow map was full
        (max_flows keys), and the receive-buffer drops not counted per socket because the socket
        map was full (max_socks)."""
        if self._bpf is None:
            return 0, 0, 0
        pk = by = 0
        for per_cpu in self._bpf[b"drops_overflow"].getvalue(0):
            pk += per_cpu.packets
            by += per_cpu.bytes
        socks = sum(self._bpf[b"rcvbuf_overflow"].getvalue(0))
        return pk, by, socks

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """{program: (runs, total ns)} of the loaded programs, from their fdinfo; the kernel counts
        these only while sysctl kernel.bpf_stats_enabled=1 (zero otherwise)."""
        out: dict[str, tuple[int, int]] = {}
        if self._bpf is None:
            return out
        for name, fn in self._bpf.funcs.items():
            out[name.decode() if isinstance(name, bytes) else name] = run_stats(fn.fd)
        return out

    def close(self) -> None:
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            bpf.cleanup()

    @property
    def running(self) -> bool:
        return self._bpf is not None

    def __enter__(self) -> "DropProbe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
