"""What the doctor and the views read: netdiag's own plain dataclasses, adapters from the probe's
and the agent's types (duck-typed: nothing here imports them), and the `Source` protocol a data
source implements (the kernel directly: kernel.KernelSource; the agent over gRPC: AgentSource).

The probe's types, for reference (dataplane/probe/drops.py, dataplane/probe/sessions.py):
    DropKey(reason, netns, ifindex, proto, saddr, daddr, sport, dport, fragment, frag_bytes)
    DropStat(key, packets, bytes, first_seen, last_seen)
    RcvbufStat(netns, proto, laddr, lport, rcvbuf, drops, first_seen, last_seen)
    Flow(netns_cookie, proto, saddr, sport, daddr, dport)
    SessionStat(flow, first_seen, last_seen)
    Pressure(active, limit, by_netns, growth_per_min, long_lived, aging_s)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from ..counters import NetnsCounters, Snapshot, UdpSocket

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite"}


def proto_name(p: int) -> str:
    return PROTO_NAMES.get(p, str(p))


def hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# ---------------------------------------------------------------------------------------------
# per-flow and per-socket evidence (the probe's, or the kernel's socket table)


@dataclass
class FlowDrop:
    """Packets of one flow dropped by the kernel for one reason (the probe's DropStat)."""
    reason: str  # SKB_DROP_REASON_* name from the running kernel
    netns: int  # netns inode
    ifindex: int
    proto: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    fragment: bool = False
    frag_bytes: str = ""  # hex of bytes 2-3 after the IP header, for fragments ("0daf")
    packets: int = 0
    bytes: int = 0
    where: str = ""  # "pod a/web-0", "netns X": filled from the netns inode when known
    ifname: str = ""
    first_seen: float = 0.0  # unix time of the first and the last drop (the probe's); 0: unknown
    last_seen: float = 0.0

    @property
    def short_reason(self) -> str:
        return self.reason.removeprefix("SKB_DROP_REASON_")

    @property
    def tuple5(self) -> tuple:
        return (self.proto, self.saddr, self.sport, self.daddr, self.dport)


@dataclass
class SocketDrop:
    """A socket that dropped datagrams (the probe's RcvbufStat, or the kernel's sk_drops)."""
    netns: int
    proto: int
    laddr: str
    lport: int
    rcvbuf: Optional[int]  # sk_rcvbuf, bytes; None: unknown
    drops: int
    where: str = ""
    process: str = ""  # "1234 python3"
    rx_queue: int = 0  # bytes queued when read
    rmem_default: Optional[int] = None  # the netns's net.core.rmem_default / rmem_max, when known
    rmem_max: Optional[int] = None
    first_seen: float = 0.0  # unix time of the first and the last drop (the probe's); 0: unknown
    last_seen: float = 0.0

    @property
    def local(self) -> str:
        return hostport(self.laddr, self.lport)


@dataclass
class Session:
    """One 5-tuple session as the probe tracks it for VPC session pressure."""
    netns: int  # netns cookie (the probe's), or inode
    proto: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    first_seen: float
    last_seen: float  # the last packet either way (a request and its reply are one session)
    where: str = ""
    last_rx: Optional[float] = None  # the last packet received on it, when the source tells directions
    inode: int = 0  # the netns inode, when its cookie matched a namespace netdiag read

    @property
    def tuple5(self) -> tuple:
        return (self.proto, self.saddr, self.sport, self.daddr, self.dport)

    @property
    def reverse5(self) -> tuple:
        return (self.proto, self.daddr, self.dport, self.saddr, self.sport)

    def text(self) -> str:
        return f"{proto_name(self.proto)} {hostport(self.saddr, self.sport)} → {hostport(self.daddr, self.dport)}"


@dataclass
class SessionPressure:
    active: int
    limit: int  # the VPC/NAT session limit configured for the probe; 0: not configured
    by_netns: dict = field(default_factory=dict)  # netns cookie/inode (or pod name) -> active sessions
    growth_per_min: float = 0.0
    long_lived: list[Session] = field(default_factory=list)
    aging_s: float = 0.0  # how long the VPC keeps an idle UDP session


# ---------------------------------------------------------------------------------------------
# adapters from the probe's / agent's objects (anything with the same attribute names)


def _name(names: dict, netns: int) -> str:
    return names.get(netns, f"netns {netns}" if netns else "")


def flow_drop(stat: Any, names: Optional[dict] = None) -> FlowDrop:
    """From a DropStat (key + packets + bytes), or a flat object with the same fields (the gRPC Drop)."""
    k = getattr(stat, "key", stat)
    netns = int(getattr(k, "netns", 0) or 0)
    pod = getattr(stat, "pod", "") or getattr(k, "pod", "")
    return FlowDrop(reason=str(k.reason), netns=netns, ifindex=int(getattr(k, "ifindex", 0) or 0),
                    proto=int(k.proto), saddr=str(k.saddr), daddr=str(k.daddr), sport=int(k.sport),
                    dport=int(k.dport), fragment=bool(getattr(k, "fragment", False)),
                    frag_bytes=str(getattr(k, "frag_bytes", "") or "").lower().removeprefix("0x"),
                    packets=int(stat.packets), bytes=int(getattr(stat, "bytes", 0) or 0),
                    where=f"pod {pod}" if pod else _name(names or {}, netns),
                    first_seen=float(getattr(stat, "first_seen", 0) or 0),
                    last_seen=float(getattr(stat, "last_seen", 0) or 0))


def socket_drop(stat: Any, names: Optional[dict] = None) -> SocketDrop:
    """From a RcvbufStat, a gRPC RcvbufOverflow, or a SocketDrop."""
    if isinstance(stat, SocketDrop):
        return stat
    netns = int(getattr(stat, "netns", 0) or 0)
    pod = getattr(stat, "pod", "")
    rcvbuf = getattr(stat, "rcvbuf", None)
    return SocketDrop(netns=netns, proto=int(getattr(stat, "proto", 17) or 17), laddr=str(stat.laddr),
                      lport=int(stat.lport), rcvbuf=int(rcvbuf) if rcvbuf else None, drops=int(stat.drops),
                      where=f"pod {pod}" if pod else _name(names or {}, netns),
                      first_seen=float(getattr(stat, "first_seen", 0) or 0),
                      last_seen=float(getattr(stat, "last_seen", 0) or 0))


def session(stat: Any, names: Optional[dict] = None) -> Session:
    """From a SessionStat (flow + first_seen + last_seen), or a flat gRPC Session."""
    f = getattr(stat, "flow", stat)
    netns = int(getattr(f, "netns_cookie", 0) or getattr(f, "netns", 0) or 0)
    pod = getattr(stat, "pod", "")
    rx = getattr(stat, "last_rx", None) or getattr(stat, "last_received", None)
    return Session(netns=netns, proto=int(f.proto), saddr=str(f.saddr), sport=int(f.sport), daddr=str(f.daddr),
                   dport=int(f.dport), first_seen=float(stat.first_seen), last_seen=float(stat.last_seen),
                   where=f"pod {pod}" if pod else _name(names or {}, netns),
                   last_rx=float(rx) if rx else None)


def pressure(p: Any, names: Optional[dict] = None) -> Optional[SessionPressure]:
    """From the probe's Pressure (or a gRPC SessionsReply: by_netns is a list there)."""
    if p is None:
        return None
    if isinstance(p, SessionPressure):
        return p
    by = getattr(p, "by_netns", {}) or {}
    if not isinstance(by, dict):  # repeated NetnsSessions
        by = {(getattr(x, "pod", "") or getattr(x, "netns_cookie", 0)): int(x.active) for x in by}
    return SessionPressure(active=int(p.active), limit=int(p.limit or 0), by_netns=dict(by),
                           growth_per_min=float(getattr(p, "growth_per_min", 0.0) or 0.0),
                           long_lived=[session(s, names) for s in (getattr(p, "long_lived", None) or [])],
                           aging_s=float(getattr(p, "aging_s", 0.0) or 0.0))


def kernel_socket_drops(snap: Snapshot) -> list[SocketDrop]:
    """Sockets of the kernel's tables that dropped datagrams (sk_drops > 0)."""
    out = []
    for n in snap.netns:
        for s in n.sockets:
            if s.drops:
                out.append(_from_socket(n, s))
    return out


def _from_socket(n: NetnsCounters, s: UdpSocket) -> SocketDrop:
    return SocketDrop(netns=n.inode, proto=17, laddr=s.laddr, lport=s.lport, rcvbuf=s.rcvbuf, drops=s.drops,
                      where=n.label, process=f"{s.pid} {s.comm}" if s.pid else "", rx_queue=s.rx_queue,
                      rmem_default=n.sysctls.rmem_default, rmem_max=n.sysctls.rmem_max)


# ---------------------------------------------------------------------------------------------
# views of the other commands


@dataclass
class BgpPeerInfo:
    address: str
    asn: int = 0
    state: str = ""
    since: float = 0.0
    received: int = 0
    stale: int = 0
    graceful_restart: bool = False
    hold_time: int = 0


@dataclass
class RouteInfo:
    prefix: str
    next_hops: list[str] = field(default_factory=list)
    installed: bool = False
    proto: str = ""  # for kernel routes: "moor" (pod routes), "moor-shim", "moor-bgp"
    dev: str = ""


@dataclass
class BgpView:
    peers: list[BgpPeerInfo] = field(default_factory=list)
    advertised: list[str] = field(default_factory=list)
    learned: list[RouteInfo] = field(default_factory=list)
    kernel_routes: list[RouteInfo] = field(default_factory=list)  # moor's routes in the kernel FIB
    note: str = ""


@dataclass
class ReservationInfo:
    network: str
    ip: str
    state: str
    pod: str = ""
    identity: str = ""
    container_id: str = ""
    node: str = ""
    pool: str = ""
    seq: int = 0
    netns: str = ""
    ifname: str = ""
    hold_until: Optional[float] = None


def reservation(r: Any, network: str = "") -> ReservationInfo:
    """From ipam.reservation.Reservation or the gRPC Reservation (key instead of identity)."""
    return ReservationInfo(network=network or str(getattr(r, "network", "")), ip=str(r.ip), state=str(r.state),
                           pod=str(getattr(r, "pod", "") or ""),
                           identity=str(getattr(r, "identity", "") or getattr(r, "key", "") or ""),
                           container_id=str(getattr(r, "container_id", "") or ""),
                           node=str(getattr(r, "node", "") or ""), pool=str(getattr(r, "pool", "") or ""),
                           seq=int(getattr(r, "seq", 0) or 0), netns=str(getattr(r, "netns", "") or ""),
                           ifname=str(getattr(r, "ifname", "") or ""), hold_until=getattr(r, "hold_until", None))


@dataclass
class PoolUsage:
    cidr: str
    size: int
    active: int = 0
    held: int = 0


@dataclass
class IpamView:
    reservations: list[ReservationInfo] = field(default_factory=list)
    pools: list[PoolUsage] = field(default_factory=list)
    where: str = ""  # the database read
    error: str = ""


@dataclass
class PodAttachment:
    network: str
    container_id: str
    ifname: str
    netns: str  # path
    netns_inode: int = 0
    mode: str = ""  # "bgp" (veth, routed) or "macvlan"
    ips: list[str] = field(default_factory=list)
    host_link: str = ""
    parent: str = ""
    interfaces: list = field(default_factory=list)  # counters.LinkStats inside the pod
    addresses: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    neighbours: list[str] = field(default_factory=list)
    host_side: list = field(default_factory=list)  # counters.LinkStats of the host end / parent
    host_routes: list[str] = field(default_factory=list)
    counters: Optional[NetnsCounters] = None
    error: str = ""


@dataclass
class PodView:
    pod: str
    reservations: list[ReservationInfo] = field(default_factory=list)
    attachments: list[PodAttachment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# the data source


class Source(Protocol):
    """What the CLI asks a data source. Lists hold the probe's objects (DropStat, RcvbufStat,
    SessionStat) or netdiag's own (FlowDrop, SocketDrop, Session): the adapters above take both."""

    name: str  # "kernel", "agent", "agent+kernel"

    def counters(self) -> Snapshot: ...  # kernel counters per netns + per host

    def drops(self) -> list: ...  # per-flow drops with reasons (DropStat); [] when not visible

    def rcvbuf(self) -> list: ...  # sockets that overflowed (RcvbufStat / SocketDrop)

    def sessions(self) -> list: ...  # every tracked session (SessionStat); [] when not visible

    def pressure(self) -> Any: ...  # Pressure, or None when not visible

    def bgp(self) -> BgpView: ...

    def ipam(self, node: str = "") -> IpamView: ...  # node: only that node's reservations

    def pod(self, namespace: str, name: str) -> PodView: ...  # LookupError naming it when unknown

    def unavailable(self) -> list[str]: ...  # what this source cannot see, in words


# ---------------------------------------------------------------------------------------------
# everything the doctor reads


@dataclass
class Evidence:
    snapshot: Optional[Snapshot] = None  # kernel counters now
    previous: Optional[Snapshot] = None  # an earlier snapshot: its differences are the rates
    flow_drops: list[FlowDrop] = field(default_factory=list)
    socket_drops: list[SocketDrop] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    pressure: Optional[SessionPressure] = None
    unavailable: list[str] = field(default_factory=list)
    scoped: bool = False  # the user named the namespaces (or a pod): their own findings rank first
    now: float = field(default_factory=time.time)
    since: Optional[float] = None  # --since: only drops the probe saw within this many seconds count
    previous_flow_drops: Optional[list[FlowDrop]] = None
    previous_socket_drops: Optional[list[SocketDrop]] = None

    @property
    def interval(self) -> float:
        if self.snapshot and self.previous:
            return max(0.0, self.snapshot.taken - self.previous.taken)
        return 0.0

    def names(self) -> dict[int, str]:
        """netns inode -> how to call it."""
        return {n.inode: n.label for n in (self.snapshot.netns if self.snapshot else []) if n.inode}

    def scope_inodes(self) -> set[int]:
        """The namespaces the user asked about (scoped: the snapshot holds just those)."""
        return {n.inode for n in (self.snapshot.netns if self.snapshot else []) if n.inode} if self.scoped else set()

    def by_cookie(self) -> dict[int, NetnsCounters]:
        """netns cookie (the session probe's key) -> the namespace netdiag read, where it knows it."""
        return {n.cookie: n for n in (self.snapshot.netns if self.snapshot else []) if n.cookie}

    def scope_labels(self) -> set[str]:
        return {n.label for n in (self.snapshot.netns if self.snapshot else [])} if self.scoped else set()


def gather(source: Source, previous: Optional[Evidence] = None, scoped: bool = False,
           since: Optional[float] = None) -> Evidence:
    """Ask the source for everything; `previous` (an earlier gather) gives rates; `since` keeps
    only the per-flow and per-socket drops the probe last saw within that many seconds (drops
    without a timestamp, and the kernel's cumulative counters, are kept: their rate over the sample
    interval tells whether they are current)."""
    snap = source.counters()
    ev = Evidence(snapshot=snap, scoped=scoped, unavailable=list(source.unavailable()), since=since)
    names = ev.names()
    recent = (lambda d: not d.last_seen or d.last_seen >= ev.now - since) if since is not None else (lambda d: True)
    ev.flow_drops = [d for d in (flow_drop(x, names) for x in source.drops()) if recent(d)]
    for d in ev.flow_drops:
        n = snap.find(d.netns)
        if n is not None and d.ifindex and not d.ifname:
            d.ifname = n.link_name(d.ifindex)
    ev.socket_drops = [d for d in (socket_drop(x, names) for x in source.rcvbuf()) if recent(d)]
    _complete_sockets(ev.socket_drops, snap)
    ev.sessions = [session(s, names) for s in source.sessions()]
    ev.pressure = pressure(source.pressure(), names)
    _name_sessions(ev)
    if previous is not None:
        ev.previous = previous.snapshot
        ev.previous_flow_drops = previous.flow_drops
        ev.previous_socket_drops = previous.socket_drops
    return ev


def _name_sessions(ev: Evidence) -> None:
    """Sessions are keyed by netns cookie: name them after the namespace netdiag read there."""
    cookies = ev.by_cookie()
    lists = [ev.sessions] + ([ev.pressure.long_lived] if ev.pressure else [])
    for s in (x for lst in lists for x in lst):
        n = cookies.get(s.netns)
        if n is not None:
            s.inode = n.inode
            if not s.where or s.where.startswith("netns "):
                s.where = n.label


def _complete_sockets(drops: list[SocketDrop], snap: Snapshot) -> None:
    """Fill what the probe does not report (the process, the netns's rmem sysctls) from the
    kernel's socket table of the same netns and port."""
    for d in drops:
        n = snap.find(d.netns)
        if n is None:
            continue
        if d.rmem_default is None:
            d.rmem_default, d.rmem_max = n.sysctls.rmem_default, n.sysctls.rmem_max
        if not d.where:
            d.where = n.label
        s = next((s for s in n.sockets if s.lport == d.lport and s.laddr == d.laddr), None)
        if s is not None:
            if not d.process and s.pid:
                d.process = f"{s.pid} {s.comm}"
            if d.rcvbuf is None:
                d.rcvbuf = s.rcvbuf
