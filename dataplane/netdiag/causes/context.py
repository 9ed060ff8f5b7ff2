"""What every cause module shares: the Finding, the run's context (the evidence, rates, which
per-flow drops a finding has already explained, the namespaces in scope) and text helpers."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from ...counters import NetnsCounters, QdiscStats
from ..evidence import Evidence, FlowDrop, SocketDrop, hostport, proto_name

__all__ = ["Context", "Evidence", "Finding", "FlowDrop", "SocketDrop", "dur", "hostport", "ip_sum", "num", "pow2",
           "proto_name", "rate_text", "run_in", "top", "udp_sum"]


@dataclass
class Finding:
    cause: str  # a key of causes.CAUSES
    title: str
    where: str  # "pod a/web-0", "netns X", "host", "node"
    severity: int  # 0 (known-benign noise), 1 .. 5 (a service is broken)
    volume: int  # packets dropped (or sessions, or seconds: see unit)
    unit: str = "packets"
    rate: Optional[float] = None  # per second during the sample interval; None: not sampled
    evidence: list[str] = field(default_factory=list)
    remedy: list[str] = field(default_factory=list)
    scope: str = "netns"  # "netns" (inside one namespace), "host" (host-wide), "flow"
    netns: int = 0  # the namespace it is about (inode), when it is about one
    first_seen: Optional[float] = None  # unix time of the first and last drop the probe saw, when known
    last_seen: Optional[float] = None
    elsewhere: bool = False  # the user named namespaces (or a pod) and this is about another one
    score: float = 0.0

    @property
    def cause_text(self) -> str:
        from . import CAUSES
        return CAUSES.get(self.cause, self.cause)


class Context:
    """The doctor's working state for one diagnosis; the cause modules read the evidence through it
    and add findings to it."""

    def __init__(self, ev: Evidence):
        self.ev = ev
        self.out: list[Finding] = []
        self.interval = ev.interval
        self.netns = ev.snapshot.netns if ev.snapshot else []
        self.prev = {n.inode: n for n in (ev.previous.netns if ev.previous else []) if n.inode}
        self.used: set[int] = set()  # ids of flow drops a finding has explained
        self.by_inode = {n.inode: n for n in self.netns if n.inode}

    # -- rates ----------------------------------------------------------------------------
    def rate(self, n: NetnsCounters, get: Callable[[NetnsCounters], int]) -> Optional[float]:
        p = self.prev.get(n.inode)
        if p is None or self.interval <= 0:
            return None
        return max(0, get(n) - get(p)) / self.interval

    def host_rate(self, get: Callable) -> Optional[float]:
        if not (self.ev.previous and self.interval > 0):
            return None
        return max(0, get(self.ev.snapshot.host) - get(self.ev.previous.host)) / self.interval

    def qdisc_rate(self, n: NetnsCounters, q: QdiscStats) -> Optional[float]:
        p = self.prev.get(n.inode)
        if p is None or self.interval <= 0:
            return None
        old = next((x for x in p.qdiscs if x.ifindex == q.ifindex and x.handle == q.handle), None)
        return max(0, q.drops - (old.drops if old else 0)) / self.interval if old else None

    def socket_rate(self, s: SocketDrop) -> Optional[float]:
        prev = self.ev.previous_socket_drops
        if prev is None or self.interval <= 0:
            return None
        old = next((x for x in prev if (x.netns, x.laddr, x.lport) == (s.netns, s.laddr, s.lport)), None)
        return max(0, s.drops - (old.drops if old else 0)) / self.interval

    def flows_rate(self, drops: list[FlowDrop]) -> Optional[float]:
        prev = self.ev.previous_flow_drops
        if prev is None or self.interval <= 0:
            return None
        old = {(d.reason, d.netns, d.tuple5, d.frag_bytes, d.ifindex): d.packets for d in prev}
        grown = sum(max(0, d.packets - old.get((d.reason, d.netns, d.tuple5, d.frag_bytes, d.ifindex), 0))
                    for d in drops)
        return grown / self.interval

    # -- findings -------------------------------------------------------------------------
    def add(self, f: Finding, drops: Optional[list] = None) -> Finding:
        """Record a finding; `drops` (flow or socket drops it explains) give its first/last seen."""
        if drops:
            firsts = [d.first_seen for d in drops if getattr(d, "first_seen", 0)]
            lasts = [d.last_seen for d in drops if getattr(d, "last_seen", 0)]
            if lasts:
                f.first_seen, f.last_seen = min(firsts or lasts), max(lasts)
                f.evidence.append(self.seen_text(f.first_seen, f.last_seen))
        self.out.append(f)
        return f

    def seen_text(self, first: float, last: float) -> str:
        now = self.ev.now
        return f"first drop {dur(max(0.0, now - first))} ago, last drop {dur(max(0.0, now - last))} ago"

    def where(self, netns: int, fallback: str = "") -> str:
        n = self.by_inode.get(netns)
        return n.label if n else (fallback or (f"netns {netns}" if netns else "host"))

    def flows(self, pred: Callable[[FlowDrop], bool]) -> list[FlowDrop]:
        return [d for d in self.ev.flow_drops if id(d) not in self.used and pred(d)]

    def use(self, drops: list[FlowDrop]) -> None:
        self.used.update(id(d) for d in drops)


# ---------------------------------------------------------------------------------------------
# text helpers


def pow2(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def num(n: float) -> str:
    return f"{n:,.0f}" if n == int(n) else f"{n:,.1f}"


def rate_text(rate: Optional[float], interval: float) -> str:
    if rate is None:
        return "cumulative count; run with --interval to see whether it still grows"
    if rate > 0:
        return f"now {num(rate)}/s over the last {interval:.1f} s"
    return f"none new during the last {interval:.1f} s: history"


def run_in(n: NetnsCounters, cmd: str) -> str:
    """A command line for a netns: prefixed with `ip netns exec` unless it is the host's."""
    if not n.path or n.name == "host":
        return cmd
    if n.path.startswith("/run/netns/"):
        return f"ip netns exec {n.name} {cmd}"
    return f"nsenter --net={n.path} {cmd}"


def udp_sum(n: NetnsCounters, attr: str) -> int:
    return getattr(n.udp, attr) + getattr(n.udp6, attr)


def ip_sum(n: NetnsCounters, attr: str) -> int:
    return getattr(n.ip, attr) + getattr(n.ip6, attr)


def top(items: dict, k: int = 3) -> str:
    best = sorted(items.items(), key=lambda kv: -kv[1])[:k]
    more = f", +{len(items) - k} more" if len(items) > k else ""
    return ", ".join(f"{key} ({num(v)})" for key, v in best) + more


def dur(s: float) -> str:
    s = int(s)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} days"
