"""Kernel counters behind UDP loss, read without eBPF, per network namespace.

Per network namespace (each read inside that netns by a short-lived worker thread that enters it
with setns(CLONE_NEWNET): setns changes only the calling thread, and the thread leaves again):

- /proc/net/snmp, /proc/net/snmp6: Udp/Udp6 (NoPorts, RcvbufErrors, InErrors, ...), Ip/Ip6
  (reassembly and fragmentation failures, discards, no-route), Icmp destination-unreachables sent;
- qdiscs of every interface (drops, overlimits, backlog, limit) over rtnetlink RTM_GETQDISC with
  TCA_STATS2/TCA_STATS_QUEUE, and link counters (IFLA_STATS64: rx/tx dropped, missed, fifo);
- UDP sockets with their receive buffer (sk_rcvbuf), queued bytes and drops over NETLINK_SOCK_DIAG
  (inet_diag with INET_DIAG_SKMEMINFO), falling back to /proc/net/udp (no buffer size there);
- conntrack count (and the global max) and its per-CPU drop statistics, when nf_conntrack is loaded;
- the socket buffer sysctls of that netns (net.core.rmem_default/rmem_max/..., udp_rmem_min).

Per host (the same in every netns; never attribute these to one namespace):

- /proc/net/softnet_stat: per-CPU backlog drops (2nd column; net.core.netdev_max_backlog) and
  time_squeeze (3rd: the receive softirq ran out of budget);
- net.core.netdev_max_backlog / netdev_budget / netdev_budget_usecs, net.ipv4.udp_mem and the
  UDP memory in use (/proc/net/sockstat).

Reading /proc/net inside a worker thread must go through /proc/thread-self/net: /proc/self/net
shows the namespace of the process's main thread, not the thread that entered another one.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Optional, TypeVar

from cni.netlink import wire as w
from cni.netlink.netns import run_in
from cni.netlink.rtnl import RTNL

T = TypeVar("T")

PROC_NET = "/proc/thread-self/net"
NETNS_RUN_DIR = "/run/netns"

# ---------------------------------------------------------------------------------------------
# dataclasses


@dataclass
class UdpCounters:
    """Udp: or Udp6 lines of /proc/net/snmp(6), cumulative since the netns was created."""
    in_datagrams: int = 0
    no_ports: int = 0  # datagrams to a port nobody listens on (an ICMP port unreachable went back)
    in_errors: int = 0  # includes rcvbuf_errors, in_csum_errors and mem_errors
    out_datagrams: int = 0
    rcvbuf_errors: int = 0  # the socket's receive buffer (sk_rcvbuf) was full
    sndbuf_errors: int = 0  # send failed: socket send buffer full, or the qdisc refused (ENOBUFS)
    in_csum_errors: int = 0
    ignored_multi: int = 0
    mem_errors: int = 0  # the host-wide UDP memory limit (net.ipv4.udp_mem) was reached


@dataclass
class IpCounters:
    """Ip: or Ip6 counters of /proc/net/snmp(6) that explain loss."""
    in_receives: int = 0
    in_hdr_errors: int = 0
    in_addr_errors: int = 0
    in_discards: int = 0
    in_delivers: int = 0
    out_requests: int = 0
    out_discards: int = 0
    out_no_routes: int = 0
    reasm_timeout: int = 0
    reasm_reqds: int = 0
    reasm_oks: int = 0
    reasm_fails: int = 0  # datagrams whose fragments never all arrived (or were invalid)
    frag_oks: int = 0
    frag_fails: int = 0  # datagrams that needed fragmenting but could not be (DF set)
    frag_creates: int = 0
    out_dest_unreachs: int = 0  # ICMP(v6) destination unreachable sent (port unreachable among them)


@dataclass
class QdiscStats:
    ifindex: int
    ifname: str
    kind: str
    handle: str  # "8001:"
    parent: str  # "root", "ingress" or "1:1"
    root: bool
    packets: int = 0
    bytes: int = 0
    drops: int = 0
    overlimits: int = 0
    requeues: int = 0
    qlen: int = 0  # packets queued now
    backlog: int = 0  # bytes queued now
    limit: Optional[int] = None  # the qdisc's own limit, when its kind has one we can read
    limit_unit: str = ""  # "packets" or "bytes"
    txqueuelen: int = 0  # the link's txqueuelen (the limit of pfifo_fast and of fifos without one)


@dataclass
class LinkStats:
    index: int
    name: str
    kind: str = ""
    mtu: int = 0
    txqueuelen: int = 0
    up: bool = False
    rx_packets: int = 0
    tx_packets: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_errors: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0  # veth: the peer's backlog refused it
    rx_over_errors: int = 0
    rx_fifo_errors: int = 0  # NIC receive ring overflow (ethtool -G)
    rx_missed_errors: int = 0
    tx_fifo_errors: int = 0
    rx_nohandler: int = 0


@dataclass
class UdpSocket:
    family: int  # 4 or 6
    laddr: str
    lport: int
    raddr: str
    rport: int
    state: str  # "UNCONN" or "ESTAB"
    inode: int
    uid: int = 0
    rx_queue: int = 0  # bytes waiting to be read (sk_rmem_alloc)
    tx_queue: int = 0
    rcvbuf: Optional[int] = None  # sk_rcvbuf in bytes (twice what setsockopt(SO_RCVBUF) asked); None: unknown
    sndbuf: Optional[int] = None
    drops: int = 0  # sk_drops: datagrams the socket dropped (receive buffer full, mostly)
    pid: int = 0  # a process holding it, when found
    comm: str = ""

    @property
    def local(self) -> str:
        return f"[{self.laddr}]:{self.lport}" if ":" in self.laddr else f"{self.laddr}:{self.lport}"

    @property
    def remote(self) -> str:
        if not self.rport:
            return "*"
        return f"[{self.raddr}]:{self.rport}" if ":" in self.raddr else f"{self.raddr}:{self.rport}"


@dataclass
class Conntrack:
    count: int
    max: int  # global (net.netfilter.nf_conntrack_max); the table-full check uses it per netns
    drop: int = 0  # new connections dropped: table full (per-CPU sum, /proc/net/stat/nf_conntrack)
    early_drop: int = 0  # entries evicted to make room
    insert_failed: int = 0  # lost insertion races (parallel UDP packets of one new flow, e.g. DNS)
    invalid: int = 0


@dataclass
class NetSysctls:
    """Socket-buffer sysctls as seen inside the netns (per netns on recent kernels); None: absent."""
    rmem_default: Optional[int] = None
    rmem_max: Optional[int] = None
    wmem_default: Optional[int] = None
    wmem_max: Optional[int] = None
    udp_rmem_min: Optional[int] = None


@dataclass
class NetnsCounters:
    name: str  # "host", the /run/netns name, or the path
    path: str
    inode: int
    pod: str = ""  # namespace/name when the netns is a pod's (filled in by netdiag)
    udp: UdpCounters = field(default_factory=UdpCounters)
    udp6: UdpCounters = field(default_factory=UdpCounters)
    ip: IpCounters = field(default_factory=IpCounters)
    ip6: IpCounters = field(default_factory=IpCounters)
    qdiscs: list[QdiscStats] = field(default_factory=list)
    links: list[LinkStats] = field(default_factory=list)
    sockets: list[UdpSocket] = field(default_factory=list)
    conntrack: Optional[Conntrack] = None
    sysctls: NetSysctls = field(default_factory=NetSysctls)
    socket_source: str = ""  # "sock_diag" or "/proc/net/udp" (no buffer sizes)
    cookie: int = 0  # the netns cookie (SO_NETNS_COOKIE): what the session probe keys sessions by
    errors: list[str] = field(default_factory=list)  # what could not be read here, and why

    @property
    def label(self) -> str:
        """How a person names it: the pod when known, else the netns."""
        if self.pod:
            return f"pod {self.pod}"
        return "host netns" if self.name == "host" else f"netns {self.name}"

    def link_name(self, index: int) -> str:
        return next((lk.name for lk in self.links if lk.index == index), f"if{index}")


@dataclass
class SoftnetStat:
    cpu: int
    processed: int
    dropped: int  # the CPU's input backlog was full (net.core.netdev_max_backlog)
    time_squeeze: int  # the receive softirq ran out of budget with work left
    received_rps: int = 0
    flow_limit: int = 0


@dataclass
class HostCounters:
    """Per host, not per network namespace."""
    softnet: list[SoftnetStat] = field(default_factory=list)
    netdev_max_backlog: Optional[int] = None
    netdev_budget: Optional[int] = None
    netdev_budget_usecs: Optional[int] = None
    udp_mem: Optional[tuple] = None  # pages: (min, pressure, max)
    udp_mem_pages: Optional[int] = None  # UDP memory in use now, pages
    page_size: int = 4096

    @property
    def backlog_drops(self) -> int:
        return sum(s.dropped for s in self.softnet)

    @property
    def time_squeeze(self) -> int:
        return sum(s.time_squeeze for s in self.softnet)


@dataclass
class Snapshot:
    taken: float  # time.monotonic()
    wall: float  # time.time()
    host: HostCounters
    netns: list[NetnsCounters]

    def find(self, inode: int) -> Optional[NetnsCounters]:
        return next((n for n in self.netns if n.inode == inode), None)


# ---------------------------------------------------------------------------------------------
# /proc parsers (pure)

_UDP_NAMES = {"InDatagrams": "in_datagrams", "NoPorts": "no_ports", "InErrors": "in_errors",
              "OutDatagrams": "out_datagrams", "RcvbufErrors": "rcvbuf_errors", "SndbufErrors": "sndbuf_errors",
              "InCsumErrors": "in_csum_errors", "IgnoredMulti": "ignored_multi", "MemErrors": "mem_errors"}
_IP_NAMES = {"InReceives": "in_receives", "InHdrErrors": "in_hdr_errors", "InAddrErrors": "in_addr_errors",
             "InDiscards": "in_discards", "InDelivers": "in_delivers", "OutRequests": "out_requests",
             "OutDiscards": "out_discards", "OutNoRoutes": "out_no_routes", "ReasmTimeout": "reasm_timeout",
             "ReasmReqds": "reasm_reqds", "ReasmOKs": "reasm_oks", "ReasmFails": "reasm_fails",
             "FragOKs": "frag_oks", "FragFails": "frag_fails", "FragCreates": "frag_creates"}


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp: pairs of lines "Proto: Name Name..." / "Proto: value value..."."""
    out: dict[str, dict[str, int]] = {}
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    for head, vals in zip(lines[0::2], lines[1::2]):
        if not head or head[0] != vals[0]:
            continue
        proto = head[0].rstrip(":")
        try:
            out[proto] = {k: int(v) for k, v in zip(head[1:], vals[1:])}
        except ValueError:
            continue
    return out


def parse_snmp6(text: str) -> dict[str, int]:
    """/proc/net/snmp6: one "Name value" per line (Udp6NoPorts 3)."""
    out: dict[str, int] = {}
    for ln in text.splitlines():
        parts = ln.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def _fill(cls: type[T], values: dict[str, int], names: dict[str, str], prefix: str = "") -> T:
    return cls(**{attr: values.get(prefix + kname, 0) for kname, attr in names.items()})


def udp_ip_counters(snmp: str, snmp6: str) -> tuple[UdpCounters, UdpCounters, IpCounters, IpCounters]:
    s = parse_snmp(snmp)
    s6 = parse_snmp6(snmp6)
    udp = _fill(UdpCounters, s.get("Udp", {}), _UDP_NAMES)
    udp6 = _fill(UdpCounters, s6, _UDP_NAMES, "Udp6")
    ip = _fill(IpCounters, s.get("Ip", {}), _IP_NAMES)
    ip.out_dest_unreachs = s.get("Icmp", {}).get("OutDestUnreachs", 0)
    ip6 = _fill(IpCounters, s6, _IP_NAMES, "Ip6")
    ip6.out_dest_unreachs = s6.get("Icmp6OutDestUnreachs", 0)
    return udp, udp6, ip, ip6


def parse_softnet(text: str) -> list[SoftnetStat]:
    """/proc/net/softnet_stat: one line per online CPU, hex columns: processed, dropped,
    time_squeeze, ..., received_rps (10th), flow_limit_count (11th), cpu id (13th, newer kernels)."""
    out = []
    for i, ln in enumerate(text.splitlines()):
        cols = ln.split()
        if len(cols) < 3:
            continue
        v = [int(c, 16) for c in cols]
        out.append(SoftnetStat(cpu=v[12] if len(v) > 12 else i, processed=v[0], dropped=v[1],
                               time_squeeze=v[2], received_rps=v[9] if len(v) > 9 else 0,
                               flow_limit=v[10] if len(v) > 10 else 0))
    return out


def parse_conntrack_stat(text: str) -> dict[str, int]:
    """/proc/net/stat/nf_conntrack: a header, then one hex line per CPU; summed over CPUs."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return {}
    head = lines[0]
    out = dict.fromkeys(head, 0)
    for row in lines[1:]:
        for k, v in zip(head, row):
            try:
                out[k] += int(v, 16)
            except ValueError:
                pass
    return out


def _hex_addr(s: str) -> str:
    """An address of /proc/net/udp(6): 32-bit words in host byte order."""
    raw = bytes.fromhex(s)
    words = b"".join(struct.pack("=I", struct.unpack(">I", raw[i:i + 4])[0]) for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def parse_proc_udp(text: str, family: int) -> list[UdpSocket]:
    """/proc/net/udp(6): addresses, queues, uid, inode and the drops column (no buffer size)."""
    out = []
    for ln in text.splitlines()[1:]:
        c = ln.split()
        if len(c) < 13:
            continue
        la, lp = c[1].split(":")
        ra, rp = c[2].split(":")
        tx, rx = c[4].split(":")
        out.append(UdpSocket(family=family, laddr=_hex_addr(la), lport=int(lp, 16), raddr=_hex_addr(ra),
                             rport=int(rp, 16), state="ESTAB" if int(c[3], 16) == 1 else "UNCONN",
                             inode=int(c[9]), uid=int(c[7]), rx_queue=int(rx, 16), tx_queue=int(tx, 16),
                             drops=int(c[12])))
    return out


# ---------------------------------------------------------------------------------------------
# netlink (stdlib, as cni/netlink does: no pyroute2 import on this path)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
RTM_NEWQDISC, RTM_GETQDISC = 36, 38
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
IFLA_TXQLEN, IFLA_STATS64 = 13, 23
TCA_KIND, TCA_OPTIONS, TCA_STATS2 = 1, 2, 7
TCA_STATS_BASIC, TCA_STATS_QUEUE, TCA_STATS_PKT64 = 1, 3, 8
TC_H_ROOT, TC_H_INGRESS = 0xFFFFFFFF, 0xFFFFFFF1
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
GNET_BASIC = struct.Struct("=QI")  # bytes, packets
GNET_QUEUE = struct.Struct("=IIIII")  # qlen, backlog, drops, requeues, overlimits
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI")  # family, protocol, ext, states (+ sockid)
INET_DIAG_SKMEMINFO = 7
SK_MEMINFO_RMEM_ALLOC, SK_MEMINFO_RCVBUF, SK_MEMINFO_SNDBUF, SK_MEMINFO_DROPS = 0, 1, 3, 8
_STATS64_FIELDS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors", "rx_dropped",
                   "tx_dropped", None, None, None, "rx_over_errors", None, None, "rx_fifo_errors",
                   "rx_missed_errors", None, None, "tx_fifo_errors", None, None, None, None, "rx_nohandler")


def netlink_dump(protocol: int, mtype: int, body: bytes, what: str, attempts: int = 3) -> list[w.Message]:
    """One dump request on a fresh netlink socket of `protocol`, in the calling thread's netns
    (cni.netlink's RTNL: one netlink transport for the whole project), read again when a change
    interrupted it."""
    with RTNL(protocol, timeout=5.0) as nl:
        return nl.dump(mtype, body, what, attempts)


def _tc_handle(h: int) -> str:
    if h == TC_H_ROOT:
        return "root"
    if h == TC_H_INGRESS:
        return "ingress"
    major, minor = h >> 16, h & 0xFFFF
    return f"{major:x}:{minor:x}" if minor else f"{major:x}:"


def _qdisc_limit(kind: str, opts: bytes) -> tuple[Optional[int], str]:
    """The queue limit in a qdisc's TCA_OPTIONS, for the kinds whose layout is stable."""
    try:
        if kind in ("pfifo", "pfifo_head_drop", "bfifo") and len(opts) >= 4:
            return struct.unpack_from("=I", opts)[0], "bytes" if kind == "bfifo" else "packets"
        if kind == "tbf":
            a = w.parse_attrs(opts)
            if 1 in a and len(a[1]) >= 32:  # TCA_TBF_PARMS: tc_tbf_qopt (rate, peakrate: 12 B each, limit)
                return struct.unpack_from("=I", a[1], 24)[0], "bytes"
        if kind == "fq_codel":
            a = w.parse_attrs(opts)
            if 2 in a:  # TCA_FQ_CODEL_LIMIT
                return w.u32(a[2]), "packets"
        if kind == "fq":
            a = w.parse_attrs(opts)
            if 1 in a:  # TCA_FQ_PLIMIT
                return w.u32(a[1]), "packets"
        if kind in ("codel", "pie"):
            a = w.parse_attrs(opts)
            if 2 in a:  # TCA_CODEL_LIMIT, TCA_PIE_LIMIT
                return w.u32(a[2]), "packets"
        if kind == "fq_pie":
            a = w.parse_attrs(opts)
            if 1 in a:  # TCA_FQ_PIE_LIMIT
                return w.u32(a[1]), "packets"
        if kind == "sfq" and len(opts) >= 12:  # tc_sfq_qopt: quantum, perturb_period, limit
            return struct.unpack_from("=I", opts, 8)[0], "packets"
    except struct.error:
        pass
    return None, ""


def read_links() -> list[LinkStats]:
    out = []
    for m in netlink_dump(0, w.RTM_GETLINK, w.IFINFOMSG.pack(0, 0, 0, 0, 0), "dump links"):
        if m.type != w.RTM_NEWLINK:
            continue
        _fam, _type, index, flags, _chg = w.IFINFOMSG.unpack_from(m.body)
        a = w.parse_attrs(m.body[w.IFINFOMSG.size:])
        lk = LinkStats(index=index, name=w.cstr(a.get(w.IFLA_IFNAME, b"")), up=bool(flags & w.IFF_UP))
        if w.IFLA_MTU in a:
            lk.mtu = w.u32(a[w.IFLA_MTU])
        if IFLA_TXQLEN in a:
            lk.txqueuelen = w.u32(a[IFLA_TXQLEN])
        if w.IFLA_LINKINFO in a:
            lk.kind = w.cstr(w.parse_attrs(a[w.IFLA_LINKINFO]).get(w.IFLA_INFO_KIND, b""))
        st = a.get(IFLA_STATS64, b"")
        n = len(st) // 8
        vals = struct.unpack_from(f"={n}Q", st) if n else ()
        for i, name in enumerate(_STATS64_FIELDS):
            if name and i < len(vals):
                setattr(lk, name, vals[i])
        out.append(lk)
    return out


def read_qdiscs(links: list[LinkStats]) -> list[QdiscStats]:
    by_index = {lk.index: lk for lk in links}
    out = []
    for m in netlink_dump(0, RTM_GETQDISC, TCMSG.pack(0, 0, 0, 0, 0), "dump qdiscs"):
        if m.type != RTM_NEWQDISC or len(m.body) < TCMSG.size:
            continue
        _fam, ifindex, handle, parent, _info = TCMSG.unpack_from(m.body)
        a = w.parse_attrs(m.body[TCMSG.size:])
        kind = w.cstr(a.get(TCA_KIND, b""))
        lk = by_index.get(ifindex)
        q = QdiscStats(ifindex=ifindex, ifname=lk.name if lk else f"if{ifindex}", kind=kind,
                       handle=_tc_handle(handle), parent=_tc_handle(parent), root=parent == TC_H_ROOT,
                       txqueuelen=lk.txqueuelen if lk else 0)
        st = w.parse_attrs(a.get(TCA_STATS2, b""))
        if len(st.get(TCA_STATS_BASIC, b"")) >= GNET_BASIC.size:
            q.bytes, q.packets = GNET_BASIC.unpack_from(st[TCA_STATS_BASIC])
        if len(st.get(TCA_STATS_PKT64, b"")) >= 8:
            q.packets = struct.unpack_from("=Q", st[TCA_STATS_PKT64])[0]
        if len(st.get(TCA_STATS_QUEUE, b"")) >= GNET_QUEUE.size:
            q.qlen, q.backlog, q.drops, q.requeues, q.overlimits = GNET_QUEUE.unpack_from(st[TCA_STATS_QUEUE])
        q.limit, q.limit_unit = _qdisc_limit(kind, a.get(TCA_OPTIONS, b""))
        if q.limit is None and kind == "pfifo_fast":
            q.limit, q.limit_unit = q.txqueuelen, "packets"
        out.append(q)
    return out


def read_udp_sockets_diag() -> list[UdpSocket]:
    """Every UDP socket of the netns with its skmeminfo, over NETLINK_SOCK_DIAG (as `ss -uamn`)."""
    out = []
    for fam, ver in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        req = INET_DIAG_REQ_V2.pack(fam, socket.IPPROTO_UDP, 1 << (INET_DIAG_SKMEMINFO - 1), 0xFFFFFFFF) + b"\0" * 48
        for m in netlink_dump(NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, req, "sock_diag UDP"):
            if m.type != SOCK_DIAG_BY_FAMILY or len(m.body) < 72:
                continue
            family, state = m.body[0], m.body[1]
            sport, dport = struct.unpack_from(">HH", m.body, 4)
            alen = 4 if family == socket.AF_INET else 16
            src, dst = m.body[8:8 + alen], m.body[24:24 + alen]
            _exp, rq, wq, uid, inode = struct.unpack_from("=IIIII", m.body, 52)
            sk = UdpSocket(family=ver, laddr=str(ipaddress.ip_address(src)), lport=sport,
                           raddr=str(ipaddress.ip_address(dst)), rport=dport,
                           state="ESTAB" if state == 1 else "UNCONN", inode=inode, uid=uid, rx_queue=rq,
                           tx_queue=wq)
            a = w.parse_attrs(m.body[72:])
            mem = a.get(INET_DIAG_SKMEMINFO, b"")
            if len(mem) >= 4 * (SK_MEMINFO_DROPS + 1):
                v = struct.unpack_from(f"={len(mem) // 4}I", mem)
                sk.rcvbuf, sk.sndbuf, sk.drops = v[SK_MEMINFO_RCVBUF], v[SK_MEMINFO_SNDBUF], v[SK_MEMINFO_DROPS]
                sk.rx_queue = v[SK_MEMINFO_RMEM_ALLOC]
            out.append(sk)
    return out


# ---------------------------------------------------------------------------------------------
# reading one netns


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _read_int(path: str) -> Optional[int]:
    text = _read(path)
    try:
        return int(text.split()[0]) if text else None
    except (ValueError, IndexError):
        return None


def in_netns(path: Optional[str], fn: Callable[[], T]) -> T:
    """Run fn inside the netns at `path` (None: here), in a worker thread (cni.netlink.netns.run_in),
    so no other thread of this process ever changes namespace."""
    return fn() if path is None else run_in(path, fn)


SO_NETNS_COOKIE = 71  # Linux 5.14


def _cookie_here() -> int:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            return struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    except OSError:
        return 0  # an older kernel: sessions are then matched to namespaces by the pod's name only


def _collect_here(c: NetnsCounters) -> NetnsCounters:
    """Everything per-netns, read in the calling thread's current netns."""
    c.cookie = _cookie_here()
    snmp, snmp6 = _read(f"{PROC_NET}/snmp"), _read(f"{PROC_NET}/snmp6")
    if snmp is None:
        c.errors.append("cannot read /proc/net/snmp")
    c.udp, c.udp6, c.ip, c.ip6 = udp_ip_counters(snmp or "", snmp6 or "")
    try:
        c.links = read_links()
        c.qdiscs = read_qdiscs(c.links)
    except OSError as e:
        c.errors.append(f"rtnetlink links/qdiscs: {e}")
    try:
        c.sockets = read_udp_sockets_diag()
        c.socket_source = "sock_diag"
    except OSError as e:
        c.socket_source = "/proc/net/udp"
        c.errors.append(f"NETLINK_SOCK_DIAG for UDP unavailable ({e}); socket buffer sizes unknown")
        for name, fam in (("udp", 4), ("udp6", 6)):
            text = _read(f"{PROC_NET}/{name}")
            if text:
                c.sockets.extend(parse_proc_udp(text, fam))
    count = _read_int("/proc/sys/net/netfilter/nf_conntrack_count")
    if count is not None:
        st = parse_conntrack_stat(_read(f"{PROC_NET}/stat/nf_conntrack") or "")
        c.conntrack = Conntrack(count=count, max=_read_int("/proc/sys/net/netfilter/nf_conntrack_max") or 0,
                                drop=st.get("drop", 0), early_drop=st.get("early_drop", 0),
                                insert_failed=st.get("insert_failed", 0), invalid=st.get("invalid", 0))
    c.sysctls = NetSysctls(rmem_default=_read_int("/proc/sys/net/core/rmem_default"),
                           rmem_max=_read_int("/proc/sys/net/core/rmem_max"),
                           wmem_default=_read_int("/proc/sys/net/core/wmem_default"),
                           wmem_max=_read_int("/proc/sys/net/core/wmem_max"),
                           udp_rmem_min=_read_int("/proc/sys/net/ipv4/udp_rmem_min"))
    return c


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def self_netns_path() -> str:
    return "/proc/thread-self/ns/net"


def read_netns(path: Optional[str], name: str = "") -> NetnsCounters:
    """The counters of one netns (path None: the caller's own). FileNotFoundError when the netns
    is gone, ValueError when the path is not a netns."""
    ipath = path or self_netns_path()
    c = NetnsCounters(name=name or (path or "host"), path=path or "", inode=netns_inode(ipath))
    return in_netns(path, lambda: _collect_here(c))


def read_host() -> HostCounters:
    h = HostCounters(softnet=parse_softnet(_read("/proc/net/softnet_stat") or ""),
                     netdev_max_backlog=_read_int("/proc/sys/net/core/netdev_max_backlog"),
                     netdev_budget=_read_int("/proc/sys/net/core/netdev_budget"),
                     netdev_budget_usecs=_read_int("/proc/sys/net/core/netdev_budget_usecs"),
                     page_size=os.sysconf("SC_PAGE_SIZE"))
    mem = _read("/proc/sys/net/ipv4/udp_mem")
    if mem:
        try:
            h.udp_mem = tuple(int(x) for x in mem.split())
        except ValueError:
            pass
    for ln in (_read("/proc/net/sockstat") or "").splitlines():
        parts = ln.split()
        if parts[:1] == ["UDP:"] and "mem" in parts:
            h.udp_mem_pages = int(parts[parts.index("mem") + 1])
    return h


def named_netns() -> list[tuple[str, str]]:
    """(name, path) of every named netns (/run/netns), sorted."""
    try:
        names = sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []
    return [(n, os.path.join(NETNS_RUN_DIR, n)) for n in names]


def socket_owners(inodes: set[int]) -> dict[int, tuple[int, str]]:
    """pid and command of a process holding each socket inode (a scan of /proc/*/fd)."""
    want = {f"socket:[{i}]": i for i in inodes}
    out: dict[int, tuple[int, str]] = {}
    if not want:
        return out
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            ino = want.get(target)
            if ino is not None and ino not in out:
                comm = (_read(f"/proc/{pid}/comm") or "").strip()
                out[ino] = (int(pid), comm)
        if len(out) == len(want):
            break
    return out


def snapshot(targets: list[tuple[str, Optional[str]]], owners: bool = True) -> Snapshot:
    """Counters of each (name, path) target (path None: this process's netns), plus the host's.
    A netns that vanished meanwhile is reported in the errors of an empty entry."""
    out = []
    for name, path in targets:
        try:
            out.append(read_netns(path, name))
        except (OSError, ValueError) as e:
            err = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if isinstance(e, OSError) and e.errno == errno.EPERM:
                err = "permission denied (netdiag needs root to enter network namespaces)"
            out.append(NetnsCounters(name=name, path=path or "", inode=0, errors=[f"cannot read: {err}"]))
    if owners:
        busy = {s.inode for n in out for s in n.sockets if s.inode and (s.drops or s.rx_queue)}
        found = socket_owners(busy)
        for n in out:
            for s in n.sockets:
                if s.inode in found:
                    s.pid, s.comm = found[s.inode]
    return Snapshot(taken=time.monotonic(), wall=time.time(), host=read_host(), netns=out)


# ---------------------------------------------------------------------------------------------
# differences between two snapshots


def counter_delta(prev: T, cur: T) -> T:
    """cur - prev for every int field of a counters dataclass (0 where a counter went back, as
    after a reset); non-int fields are cur's."""
    vals = {}
    for f in fields(cur):  # type: ignore[arg-type]
        a, b = getattr(prev, f.name, None), getattr(cur, f.name)
        if isinstance(b, int) and not isinstance(b, bool) and isinstance(a, int):
            vals[f.name] = max(0, b - a)
        else:
            vals[f.name] = b
    return type(cur)(**vals)
