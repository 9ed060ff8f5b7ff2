"""netdiag doctor: from the evidence to ranked findings, each with its cause, the numbers behind
it and a concrete remedy.

Causes (the known UDP loss cases of the design notes, and the rest):
    rcvbuf            a socket's receive buffer is too small
    host-queue        the host's backlog or a queue is too small: softnet backlog, qdisc, NIC
                      ring, the host's UDP memory
    session-limit     a session table (the VPC's 5-tuple table, or conntrack) near or over its limit
    fragment-pattern  fragments dropped by a middlebox matching a byte pattern after the IP header
    stale-session     a long-lived 5-tuple kept a stale path after a route change
    no-listener       datagrams to a port nobody listens on
    generic           every other drop the counters or the probe show

Rank: severity (1-5) × (1 + log10(1 + volume)), × 1.5 when the drops are still growing during the
sample interval and × 0.8 when they are not (history only). When the user named the namespaces,
the findings inside them come before host-wide ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..counters import NetnsCounters, QdiscStats
from .evidence import Evidence, FlowDrop, Session, SocketDrop, hostport, proto_name

CAUSES = {
    "rcvbuf": "receive buffer too small",
    "host-queue": "host backlog or queue too small",
    "session-limit": "session table near or over its limit",
    "fragment-pattern": "fragments dropped by a middlebox byte pattern",
    "stale-session": "stale session after a route change",
    "no-listener": "no listener",
    "generic": "other drops",
}


@dataclass
class Finding:
    cause: str  # a key of CAUSES
    title: str
    where: str  # "pod a/web-0", "netns X", "host"
    severity: int  # 1 (noise) .. 5 (a service is broken)
    volume: int  # packets dropped (or sessions, or seconds: see unit)
    unit: str = "packets"
    rate: Optional[float] = None  # per second during the sample interval; None: not sampled
    evidence: list[str] = field(default_factory=list)
    remedy: list[str] = field(default_factory=list)
    scope: str = "netns"  # "netns" (inside one namespace), "host" (host-wide), "flow"
    score: float = 0.0

    @property
    def cause_text(self) -> str:
        return CAUSES.get(self.cause, self.cause)


def score(f: Finding) -> float:
    s = f.severity * (1.0 + math.log10(1 + max(0, f.volume)))
    if f.rate is not None:
        s *= 1.5 if f.rate > 0 else 0.8
    return round(s, 3)


def diagnose(ev: Evidence) -> list[Finding]:
    """Every finding, best first."""
    d = _Doctor(ev)
    d.run()
    for f in d.out:
        f.score = score(f)
    d.out.sort(key=lambda f: (not (ev.scoped and f.scope != "host"), -f.score, -f.severity, -f.volume, f.title))
    return d.out


# ---------------------------------------------------------------------------------------------
# helpers


def _pow2(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def _num(n: float) -> str:
    return f"{n:,.0f}" if n == int(n) else f"{n:,.1f}"


def _rate_text(rate: Optional[float], interval: float) -> str:
    if rate is None:
        return "cumulative count; run with --interval to see whether it still grows"
    if rate > 0:
        return f"now {_num(rate)}/s over the last {interval:.1f} s"
    return f"none new during the last {interval:.1f} s: history"


def _in(n: NetnsCounters, cmd: str) -> str:
    """A command line for a netns: prefixed with `ip netns exec` unless it is the host's."""
    if not n.path or n.name == "host":
        return cmd
    if n.path.startswith("/run/netns/"):
        return f"ip netns exec {n.name} {cmd}"
    return f"nsenter --net={n.path} {cmd}"


def _udp_sum(n: NetnsCounters, attr: str) -> int:
    return getattr(n.udp, attr) + getattr(n.udp6, attr)


def _ip_sum(n: NetnsCounters, attr: str) -> int:
    return getattr(n.ip, attr) + getattr(n.ip6, attr)


def _top(items: dict, k: int = 3) -> str:
    best = sorted(items.items(), key=lambda kv: -kv[1])[:k]
    more = f", +{len(items) - k} more" if len(items) > k else ""
    return ", ".join(f"{key} ({_num(v)})" for key, v in best) + more


class _Doctor:
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

    def add(self, f: Finding) -> Finding:
        self.out.append(f)
        return f

    def where(self, netns: int, fallback: str = "") -> str:
        n = self.by_inode.get(netns)
        return n.label if n else (fallback or (f"netns {netns}" if netns else "host"))

    def flows(self, pred: Callable[[FlowDrop], bool]) -> list[FlowDrop]:
        return [d for d in self.ev.flow_drops if id(d) not in self.used and pred(d)]

    def use(self, drops: list[FlowDrop]) -> None:
        self.used.update(id(d) for d in drops)

    # -- the cases --------------------------------------------------------------------------
    def run(self) -> None:
        self.fragments()
        self.stale_sessions()
        self.session_limit()
        self.rcvbuf()
        self.host_queue()
        self.no_listener()
        self.generic()

    def no_listener(self) -> None:
        probe_netns = set()
        groups: dict[tuple, list[FlowDrop]] = {}
        for d in self.flows(lambda d: d.reason.endswith("NO_SOCKET")):
            groups.setdefault((d.netns, d.proto, d.daddr, d.dport), []).append(d)
        for (netns, proto, daddr, dport), drops in groups.items():
            self.use(drops)
            probe_netns.add(netns)
            where = drops[0].where or self.where(netns)
            senders: dict[str, int] = {}
            for d in drops:
                senders[hostport(d.saddr, d.sport)] = senders.get(hostport(d.saddr, d.sport), 0) + d.packets
            total = sum(d.packets for d in drops)
            rate = self.flows_rate(drops)
            port = f"{proto_name(proto)} {hostport(daddr, dport)}"
            self.add(Finding(
                cause="no-listener", title=f"nothing listens on {port} in {where}", where=where, severity=2,
                volume=total, rate=rate, scope="flow",
                evidence=[f"{_num(total)} datagrams to {port} dropped: {drops[0].short_reason} "
                          f"({_rate_text(rate, self.interval)})",
                          f"from {len(senders)} sender(s): {_top(senders)}"],
                remedy=[f"start the service that should receive {port} in {where}, or bind it to that "
                        f"port and address; else correct the senders' destination ({_top(senders, 2)})"]))
        for n in self.netns:
            v = _udp_sum(n, "no_ports")
            if not v or n.inode in probe_netns:
                continue
            rate = self.rate(n, lambda c: _udp_sum(c, "no_ports"))
            listening = sorted({s.local for s in n.sockets if s.state == "UNCONN"})
            lst = ", ".join(listening[:6]) + (" ..." if len(listening) > 6 else "") if listening else "none"
            ev = [f"Udp NoPorts {_num(n.udp.no_ports)}, Udp6 NoPorts {_num(n.udp6.no_ports)} in {n.label} "
                  f"({_rate_text(rate, self.interval)})",
                  f"ICMP destination unreachable sent: {_num(_ip_sum(n, 'out_dest_unreachs'))}",
                  f"UDP sockets listening in {n.label}: {lst}"]
            self.add(Finding(
                cause="no-listener", title=f"UDP datagrams to ports nobody listens on in {n.label}",
                where=n.label, severity=2, volume=v, rate=rate, evidence=ev,
                remedy=[f"start the service the senders expect in {n.label}, or bind it to the port and "
                        f"address they use (listening now: {lst}); or correct the senders' destination",
                        "which port: " + _in(n, "tcpdump -ni any 'icmp[icmptype] == icmp-unreach and "
                                               "icmp[icmpcode] == 3'") +
                        " shows the port-unreachables (they quote the port); moord's probe names port and "
                        "sender per flow"]))

    def rcvbuf(self) -> None:
        by_sock: dict[tuple, Finding] = {}
        seen_netns = set()
        for s in self.ev.socket_drops:
            if not s.drops:
                continue
            n = self.by_inode.get(s.netns)
            where = s.where or self.where(s.netns)
            if n is not None and not _udp_sum(n, "rcvbuf_errors") and _udp_sum(n, "in_csum_errors") + \
                    _udp_sum(n, "mem_errors"):
                continue  # that socket's drops are checksum or memory errors: generic() / host_queue()
            seen_netns.add(s.netns)
            rate = self.socket_rate(s)
            proc = f" ({s.process})" if s.process else ""
            buf = f"{_num(s.rcvbuf)} B" if s.rcvbuf else "unknown size"
            ev = [f"socket {proto_name(s.proto)} {s.local}{proc} in {where}: {_num(s.drops)} datagrams "
                  f"dropped ({_rate_text(rate, self.interval)}), receive buffer {buf} (sk_rcvbuf)"
                  + (f", {_num(s.rx_queue)} B queued when read" if s.rx_queue else "")]
            if n is not None:
                ev.append(f"Udp RcvbufErrors {_num(n.udp.rcvbuf_errors)}, Udp6 RcvbufErrors "
                          f"{_num(n.udp6.rcvbuf_errors)} in {n.label}")
            if s.rmem_default is not None:
                ev.append(f"net.core.rmem_default {_num(s.rmem_default)}, net.core.rmem_max "
                          f"{_num(s.rmem_max or 0)}")
            f = self.add(Finding(
                cause="rcvbuf", title=f"receive buffer too small: {s.local} in {where}", where=where, severity=4,
                volume=s.drops, rate=rate, evidence=ev, remedy=self._rcvbuf_remedy(s, where, rate, n)))
            by_sock[(s.netns, s.lport)] = f
        # the probe's per-flow view of the same overflows: senders, or sockets closed since
        groups: dict[tuple, list[FlowDrop]] = {}
        for d in self.flows(lambda d: "RCVBUF" in d.reason):
            groups.setdefault((d.netns, d.daddr, d.dport), []).append(d)
        for (netns, daddr, dport), drops in groups.items():
            self.use(drops)
            senders = {hostport(d.saddr, d.sport): d.packets for d in drops}
            total = sum(d.packets for d in drops)
            f = by_sock.get((netns, dport))
            if f is not None:
                f.evidence.append(f"the probe saw {_num(total)} of them, from {_top(senders)}")
                continue
            seen_netns.add(netns)
            where = drops[0].where or self.where(netns)
            rate = self.flows_rate(drops)
            n = self.by_inode.get(netns)
            sock = SocketDrop(netns=netns, proto=drops[0].proto, laddr=daddr, lport=dport, rcvbuf=None, drops=total,
                              where=where, rmem_default=n.sysctls.rmem_default if n else None,
                              rmem_max=n.sysctls.rmem_max if n else None)
            self.add(Finding(
                cause="rcvbuf", title=f"receive buffer too small: {sock.local} in {where}", where=where,
                severity=4, volume=total, rate=rate,
                evidence=[f"{_num(total)} datagrams to {sock.local} dropped: {drops[0].short_reason} "
                          f"({_rate_text(rate, self.interval)})", f"from {_top(senders)}"],
                remedy=self._rcvbuf_remedy(sock, where, rate, n)))
        for n in self.netns:
            v = _udp_sum(n, "rcvbuf_errors")
            if not v or n.inode in seen_netns:
                continue
            rate = self.rate(n, lambda c: _udp_sum(c, "rcvbuf_errors"))
            rd, rm = n.sysctls.rmem_default, n.sysctls.rmem_max
            want = _pow2(max(4 * (rd or 212992), 1 << 20))
            rem = ["the sockets that overflowed are closed now or not visible; `netdiag udp --watch` names the "
                   "socket while it drops; then raise its SO_RCVBUF"]
            if rd is not None:
                rem.append("for sockets that never set SO_RCVBUF: "
                           f"{_in(n, f'sysctl -w net.core.rmem_default={want}')} (now {rd})")
            if rm is not None and rm < want:
                rem.append(f"{_in(n, f'sysctl -w net.core.rmem_max={want}')} (now {rm}): setsockopt(SO_RCVBUF) "
                           "is capped there")
            self.add(Finding(
                cause="rcvbuf", title=f"UDP receive buffers overflowed in {n.label}", where=n.label, severity=4,
                volume=v, rate=rate,
                evidence=[f"Udp RcvbufErrors {_num(n.udp.rcvbuf_errors)}, Udp6 RcvbufErrors "
                          f"{_num(n.udp6.rcvbuf_errors)} in {n.label} ({_rate_text(rate, self.interval)})",
                          f"net.core.rmem_default {rd}, net.core.rmem_max {rm}",
                          "no open socket there shows drops now"],
                remedy=rem))

    def _rcvbuf_remedy(self, s: SocketDrop, where: str, rate: Optional[float],
                       n: Optional[NetnsCounters]) -> list[str]:
        cur = s.rcvbuf or 0
        # 4x what overflowed, and room for 100 ms of the drop rate at ~2.3 kB truesize per datagram
        need = max(4 * cur, cur + (rate or 0) * 0.1 * 2304, 65536)
        want = _pow2(need)
        rate_txt = f"drops at the current rate {_num(rate)}/s" if rate else (
            "no new drops in the sample" if rate == 0 else "cumulative drops")
        if cur:
            first = (f"raise SO_RCVBUF of {s.local} in {where} from {cur} to ≥ {want} bytes ({rate_txt}; "
                     f"setsockopt(SO_RCVBUF, {want // 2}): the kernel doubles what it is given)")
        else:
            first = (f"raise SO_RCVBUF of {s.local} in {where} to ≥ {want} bytes ({rate_txt}; its current size: "
                     "`ss -uamn` rb)")
        out = [first]
        run = (lambda c: _in(n, c)) if n is not None else (lambda c: c)
        if s.rmem_max is not None and want // 2 > s.rmem_max:
            out.append(f"{run(f'sysctl -w net.core.rmem_max={want}')} (now {s.rmem_max}): setsockopt(SO_RCVBUF) "
                       "is capped there")
        if s.rmem_default is not None and cur and cur == s.rmem_default:
            out.append(f"or, since the socket keeps the default size: "
                       f"{run(f'sysctl -w net.core.rmem_default={want}')} (now {s.rmem_default})")
        elif s.rmem_default is not None and cur and cur < s.rmem_default:
            out.append(f"the application sets this small buffer itself (net.core.rmem_default is "
                       f"{s.rmem_default}): change its SO_RCVBUF setting, not the sysctl")
        out.append("and read faster: a receiver that stalls (GC, a lock, one thread for all work) overflows any "
                   "buffer under a burst")
        return out

    def host_queue(self) -> None:
        queue_findings: dict[tuple, Finding] = {}
        for n in self.netns:
            by_if: dict[int, list[QdiscStats]] = {}
            for q in n.qdiscs:
                by_if.setdefault(q.ifindex, []).append(q)
            for ifindex, qs in by_if.items():
                root = next((q for q in qs if q.root), None)
                if root is None or not root.drops:
                    continue
                rate = self.qdisc_rate(n, root)
                lim = f"limit {_num(root.limit)} {root.limit_unit}" if root.limit is not None else "limit unknown"
                ev = [f"qdisc {root.kind} {root.handle} (root) on {root.ifname} in {n.label}: {_num(root.drops)} "
                      f"dropped of {_num(root.packets + root.drops)} ({_rate_text(rate, self.interval)}), "
                      f"overlimits {_num(root.overlimits)}, {root.qlen} packets / {_num(root.backlog)} B queued "
                      f"when read, {lim}, txqueuelen {root.txqueuelen}"]
                for q in qs:
                    if not q.root and q.drops and q.parent != "ingress":
                        ev.append(f"  child qdisc {q.kind} {q.handle} (parent {q.parent}): {_num(q.drops)} dropped")
                sb = _udp_sum(n, "sndbuf_errors")
                if sb:
                    ev.append(f"Udp SndbufErrors {_num(sb)} in {n.label}: senders got ENOBUFS from the queue "
                              "(sendto() still reports success unless IP_RECVERR is set)")
                f = self.add(Finding(
                    cause="host-queue", title=f"queue drops on {root.ifname} in {n.label} (qdisc {root.kind})",
                    where=n.label, severity=4, volume=root.drops, rate=rate, evidence=ev,
                    remedy=self._qdisc_remedy(n, root, [q for q in qs if not q.root and q.drops])))
                queue_findings[(n.inode, ifindex)] = f
            for lk in n.links:
                ring = lk.rx_missed_errors + lk.rx_fifo_errors + lk.rx_over_errors
                if ring:
                    rate = self.rate(n, lambda c, i=lk.index: next(
                        (x.rx_missed_errors + x.rx_fifo_errors + x.rx_over_errors for x in c.links if x.index == i), 0))
                    self.add(Finding(
                        cause="host-queue", title=f"receive ring overflow on {lk.name} in {n.label}", where=n.label,
                        severity=4, volume=ring, rate=rate,
                        evidence=[f"{lk.name}: rx_missed {_num(lk.rx_missed_errors)}, rx_fifo "
                                  f"{_num(lk.rx_fifo_errors)}, rx_over {_num(lk.rx_over_errors)} "
                                  f"({_rate_text(rate, self.interval)})"],
                        remedy=[f"enlarge the NIC receive ring: {_in(n, f'ethtool -G {lk.name} rx <max>')} "
                                f"({_in(n, f'ethtool -g {lk.name}')} shows the maximum); spread interrupts over "
                                "more queues/CPUs (ethtool -L)"]))
                if lk.tx_dropped and lk.kind == "veth":
                    rate = self.rate(n, lambda c, i=lk.index: next((x.tx_dropped for x in c.links if x.index == i), 0))
                    self.add(Finding(
                        cause="host-queue", title=f"veth {lk.name} in {n.label} could not hand packets to its peer",
                        where=n.label, severity=3, volume=lk.tx_dropped, rate=rate,
                        evidence=[f"{lk.name} tx_dropped {_num(lk.tx_dropped)} ({_rate_text(rate, self.interval)}): "
                                  "the peer's CPU backlog was full (or the peer was down)"],
                        remedy=["raise net.core.netdev_max_backlog (host-wide); check the peer end is up"]))
            mem = _udp_sum(n, "mem_errors")
            if mem:
                h = self.ev.snapshot.host
                rate = self.rate(n, lambda c: _udp_sum(c, "mem_errors"))
                um = h.udp_mem or (0, 0, 0)
                self.add(Finding(
                    cause="host-queue", title=f"the host's UDP memory limit (net.ipv4.udp_mem) was hit in {n.label}",
                    where=n.label, severity=4, volume=mem, rate=rate,
                    evidence=[f"Udp MemErrors {_num(n.udp.mem_errors)}, Udp6 MemErrors {_num(n.udp6.mem_errors)} "
                              f"({_rate_text(rate, self.interval)})",
                              f"net.ipv4.udp_mem {um} pages; UDP uses {h.udp_mem_pages} pages now "
                              f"({h.page_size} B each): a host-wide limit over every namespace"],
                    remedy=[f"sysctl -w net.ipv4.udp_mem='{um[0] * 2} {um[1] * 2} {um[2] * 2}' (host-wide; now "
                            f"'{' '.join(map(str, um))}' pages)",
                            "and find the sockets holding memory: `netdiag udp` (large rx queues)"]))
        # the probe's queue drops
        groups: dict[tuple, list[FlowDrop]] = {}
        for d in self.flows(lambda d: any(k in d.reason for k in ("QDISC", "CPU_BACKLOG", "FULL_RING",
                                                                   "TC_EGRESS", "DEV_READY"))):
            groups.setdefault((d.netns, d.ifindex, d.reason), []).append(d)
        for (netns, ifindex, reason), drops in groups.items():
            self.use(drops)
            total = sum(d.packets for d in drops)
            flows = {f"{proto_name(d.proto)} {hostport(d.saddr, d.sport)} → {hostport(d.daddr, d.dport)}": d.packets
                     for d in drops}
            f = queue_findings.get((netns, ifindex))
            if f is not None:
                f.evidence.append(f"the probe saw {_num(total)} of them ({drops[0].short_reason}), top flows: "
                                  f"{_top(flows)}")
                continue
            where = drops[0].where or self.where(netns)
            ifname = drops[0].ifname or (f"if{ifindex}" if ifindex else "")
            backlog = "CPU_BACKLOG" in reason
            rate = self.flows_rate(drops)
            n = self.by_inode.get(netns)
            h = self.ev.snapshot.host if self.ev.snapshot else None
            self.add(Finding(
                cause="host-queue", title=(f"CPU input backlog full for traffic into {where}" if backlog
                                           else f"queue drops on {ifname or '?'} in {where}"),
                where=where, severity=4, volume=total, rate=rate, scope="host" if backlog else "netns",
                evidence=[f"{_num(total)} packets dropped: {drops[0].short_reason}"
                          + (f" on {ifname}" if ifname else "") + f" ({_rate_text(rate, self.interval)})",
                          f"top flows: {_top(flows)}"],
                remedy=([f"sysctl -w net.core.netdev_max_backlog={_pow2(4 * (h.netdev_max_backlog or 1000))} "
                         f"(now {h.netdev_max_backlog if h else '?'})"] if backlog else
                        [f"raise the queue of {ifname}: "
                         + (_in(n, f"ip link set dev {ifname} txqueuelen 10000") if n else
                            f"ip link set dev {ifname} txqueuelen 10000") + ", or the qdisc's limit"])))
        # the host's CPU backlog (per host: every namespace's packets go through it)
        if self.ev.snapshot is not None:
            h = self.ev.snapshot.host
            if h.backlog_drops and not any(f.title.startswith("CPU input backlog") for f in self.out):
                rate = self.host_rate(lambda x: x.backlog_drops)
                per = {f"cpu{s.cpu}": s.dropped for s in h.softnet if s.dropped}
                ev = [f"softnet backlog drops {_num(h.backlog_drops)} ({_rate_text(rate, self.interval)}): "
                      f"{_top(per, 8)}; net.core.netdev_max_backlog {h.netdev_max_backlog}",
                      "per host, not per network namespace: these drops can hit any namespace's packets "
                      "(/proc/net/softnet_stat, since boot)"]
                rem = [f"sysctl -w net.core.netdev_max_backlog={_pow2(4 * (h.netdev_max_backlog or 1000))} "
                       f"(now {h.netdev_max_backlog})"]
                if h.time_squeeze:
                    ev.append(f"time_squeeze {_num(h.time_squeeze)}: the receive softirq ran out of budget")
                    rem.append(f"sysctl -w net.core.netdev_budget={2 * (h.netdev_budget or 300)} (now "
                               f"{h.netdev_budget}) and net.core.netdev_budget_usecs="
                               f"{2 * (h.netdev_budget_usecs or 2000)} (now {h.netdev_budget_usecs})")
                if per and max(per.values()) > 0.8 * h.backlog_drops and len(h.softnet) > 1:
                    cpu = max(per, key=per.get)
                    rem.append(f"{cpu} takes most of them: spread receive processing over CPUs (more NIC queues, "
                               "RPS: /sys/class/net/DEV/queues/rx-*/rps_cpus)")
                self.add(Finding(cause="host-queue", title="CPU input backlog overflow on this host (softnet)",
                                 where="host", severity=4, volume=h.backlog_drops, rate=rate, evidence=ev,
                                 remedy=rem, scope="host"))

    def _qdisc_remedy(self, n: NetnsCounters, q: QdiscStats, children: list[QdiscStats]) -> list[str]:
        cur = q.limit or 0
        dev = q.ifname
        pre = []
        for c in children:  # a tiny queue behind a shaper or a class: the first limit to raise
            if c.kind in ("pfifo", "bfifo", "pfifo_head_drop") and c.limit is not None and c.parent != "ingress":
                want = max(4 * c.limit, 1000) if c.kind != "bfifo" else max(4 * c.limit, 1 << 20)
                pre.append(f"raise the limit of the {c.kind} under {c.parent} on {dev}: "
                           f"{_in(n, f'tc qdisc replace dev {dev} parent {c.parent} {c.kind} limit {want}')} "
                           f"(now {c.limit} {c.limit_unit})")
        if q.kind in ("pfifo", "bfifo", "pfifo_head_drop"):
            want = max(4 * cur, q.txqueuelen or 1000) if q.kind != "bfifo" else max(4 * cur, 1 << 20)
            out = [f"raise the queue limit of {dev}: {_in(n, f'tc qdisc replace dev {dev} root {q.kind} limit {want}')} "
                   f"(now {cur} {q.limit_unit})"]
        elif q.kind == "tbf":
            out = [f"the shaper on {dev} drops what exceeds its rate and queue: raise its limit (now {cur} B) or "
                   f"its rate ({_in(n, f'tc qdisc change dev {dev} root tbf ...')}), or remove it: "
                   f"{_in(n, f'tc qdisc del dev {dev} root')}"]
        elif q.kind in ("fq_codel", "fq", "codel", "pie", "fq_pie", "sfq"):
            out = [f"raise the limit of {q.kind} on {dev} (now {cur} packets): "
                   f"{_in(n, f'tc qdisc change dev {dev} root {q.kind} limit {max(4 * cur, 10240)}')}; an AQM "
                   "also drops on purpose under sustained overload: then the link is too slow for the load"]
        else:
            want = max(4 * (q.txqueuelen or 1000), 10000)
            out = [f"raise the transmit queue of {dev}: {_in(n, f'ip link set dev {dev} txqueuelen {want}')} "
                   f"(now {q.txqueuelen})"]
        out.append("or smooth the senders' bursts (pacing: SO_MAX_PACING_RATE with fq, fewer datagrams per burst)")
        return pre + out

    def session_limit(self) -> None:
        p = self.ev.pressure
        if p is not None and p.limit > 0 and p.active >= 0.8 * p.limit:
            pct = 100.0 * p.active / p.limit
            sev = 5 if p.active >= p.limit else (4 if pct >= 90 else 3)
            ev = [f"{_num(p.active)} active sessions vs limit {_num(p.limit)} ({pct:.0f}%)"]
            if p.growth_per_min > 0 and p.active < p.limit:
                ev.append(f"growing {p.growth_per_min:+.0f}/min: full in about "
                          f"{(p.limit - p.active) / p.growth_per_min:.0f} min")
            elif p.growth_per_min:
                ev.append(f"change {p.growth_per_min:+.0f}/min")
            top = {}
            for key, v in p.by_netns.items():
                name = key if isinstance(key, str) else self.where(key, f"netns cookie {key}")
                top[name] = v
            if top:
                ev.append(f"most sessions: {_top(top)}")
            if p.long_lived:
                ev.append(f"{len(p.long_lived)} session(s) older than the aging time never age out "
                          f"(aging {p.aging_s:g} s)")
            rem = [f"raise the VPC session limit or shorten UDP session aging (now {p.aging_s:g} s): "
                   f"{_num(p.active)} active vs limit {_num(p.limit)}"]
            if top:
                rem.append(f"reduce distinct 5-tuples where they come from ({_top(top, 2)}): reuse source "
                           "ports / connected sockets per peer instead of a new port per request")
            self.add(Finding(cause="session-limit",
                             title=("VPC session table over its limit" if p.active >= p.limit
                                    else "VPC session table near its limit"),
                             where="node", severity=sev, volume=p.active, unit="sessions", evidence=ev, remedy=rem,
                             scope="host"))
        for n in self.netns:
            ct = n.conntrack
            if ct is None or not ct.max:
                continue
            lost = ct.drop + ct.early_drop
            if ct.count < 0.8 * ct.max and not lost:
                continue
            rate = self.rate(n, lambda c: (c.conntrack.drop + c.conntrack.early_drop) if c.conntrack else 0)
            sev = 5 if (ct.drop or ct.count >= ct.max) else (4 if ct.early_drop else 3)
            self.add(Finding(
                cause="session-limit", title=f"conntrack table {'full' if ct.drop else 'near its limit'} in {n.label}",
                where=n.label, severity=sev, volume=lost or ct.count, unit="packets" if lost else "sessions",
                rate=rate,
                evidence=[f"nf_conntrack_count {_num(ct.count)} vs nf_conntrack_max {_num(ct.max)} "
                          f"({100 * ct.count / ct.max:.0f}%)",
                          f"new flows dropped {_num(ct.drop)}, entries evicted early {_num(ct.early_drop)} "
                          f"({_rate_text(rate, self.interval)})"],
                remedy=[f"sysctl -w net.netfilter.nf_conntrack_max={_pow2(2 * ct.max)} (now {ct.max}; {ct.count} in use)",
                        "shorten net.netfilter.nf_conntrack_udp_timeout / nf_conntrack_udp_timeout_stream",
                        "moor itself needs no conntrack: find what loads it (the node's packet-filter ruleset, kube-proxy)"]))

    def fragments(self) -> None:
        frags = self.flows(lambda d: d.fragment)
        if frags:
            total = sum(d.packets for d in frags)
            by_pat: dict[str, list[FlowDrop]] = {}
            for d in frags:
                if d.frag_bytes:
                    by_pat.setdefault(d.frag_bytes, []).append(d)
            for pat, drops in sorted(by_pat.items(), key=lambda kv: -sum(d.packets for d in kv[1])):
                pkts = sum(d.packets for d in drops)
                flows = {(d.saddr, d.daddr, d.sport, d.dport, d.proto) for d in drops}
                # non-first fragments carry no ports, so datagrams of several sockets look like one
                # flow: then several dropped fragments sharing the bytes make the pattern
                portless = all(not d.sport and not d.dport for d in drops)
                if not (len(flows) >= 2 or (portless and pkts >= 3)) or pkts < 0.5 * total:
                    continue
                self.use(drops)
                val = int(pat, 16)
                pairs = {(d.saddr, d.daddr) for d in drops}
                ports = sorted({d.dport for d in drops if d.dport})
                places: dict[str, int] = {}
                for d in drops:
                    w = d.where or self.where(d.netns)
                    key = f"{d.short_reason}" + (f" on {d.ifname}" if d.ifname else "") + (f" in {w}" if w else "")
                    places[key] = places.get(key, 0) + d.packets
                rate = self.flows_rate(drops)
                where = max(places, key=places.get)
                ev = [f"{_num(pkts)} dropped fragments in {len(flows)} flows ({len(pairs)} address pairs"
                      + (f", destination ports {', '.join(map(str, ports[:6]))}" if ports else "")
                      + f") all carry 0x{pat.upper()} ({val}) in bytes 2-3 after the IP header "
                      f"({_rate_text(rate, self.interval)})",
                      f"{_num(total - pkts)} other dropped fragments do not",
                      f"dropped at: {_top(places)}"]
                if ports and all(d.dport == val for d in drops if d.dport):
                    ev.append(f"{val} is also these flows' UDP destination port (bytes 2-3 of a first fragment): a "
                              "port filter fits too; non-first fragments with the same bytes point at a payload "
                              "pattern")
                self.add(Finding(
                    cause="fragment-pattern",
                    title=f"fragments with bytes 0x{pat.upper()} after the IP header are dropped", where=where,
                    severity=5, volume=pkts, rate=rate, scope="flow", evidence=ev,
                    remedy=[f"the fragments with bytes 0x{pat.upper()} after the IP header are dropped at {where}: "
                            "avoid fragmentation (lower the MTU/PMTU toward that path, or the application's "
                            "payload size so each datagram fits one packet) or fix the middlebox that drops "
                            "them (gateway/firewall firmware)",
                            "prove it: send fragmented datagrams with and without those bytes at offset 2 of a "
                            "fragment and compare what arrives"]))
            rest = self.flows(lambda d: d.fragment)
            if rest:
                self.use(rest)
                n = sum(d.packets for d in rest)
                pats = {(f"0x{d.frag_bytes.upper()}" if d.frag_bytes else "?"): d.packets for d in rest}
                self.add(Finding(
                    cause="generic", title="fragments dropped (no common byte pattern)",
                    where=rest[0].where or self.where(rest[0].netns), severity=3, volume=n,
                    rate=self.flows_rate(rest), scope="flow",
                    evidence=[f"{_num(n)} fragments of {len({d.tuple5 for d in rest})} flows dropped: "
                              f"{', '.join(sorted({d.short_reason for d in rest}))}",
                              f"bytes 2-3 after the IP header: {_top(pats, 5)}"],
                    remedy=["avoid fragmentation: lower the MTU/PMTU or the datagram size"]))
        for n in self.netns:
            v = _ip_sum(n, "reasm_fails")
            if v:
                rate = self.rate(n, lambda c: _ip_sum(c, "reasm_fails"))
                self.add(Finding(
                    cause="generic", title=f"IP fragments lost before reassembly in {n.label}", where=n.label,
                    severity=3, volume=v, rate=rate,
                    evidence=[f"ReasmFails {_num(n.ip.reasm_fails)} (IPv6 {_num(n.ip6.reasm_fails)}), ReasmTimeout "
                              f"{_num(_ip_sum(n, 'reasm_timeout'))} of {_num(_ip_sum(n, 'reasm_reqds'))} fragments "
                              f"received, {_num(_ip_sum(n, 'reasm_oks'))} datagrams reassembled "
                              f"({_rate_text(rate, self.interval)})"],
                    remedy=["some fragments of these datagrams never arrived: avoid fragmentation (lower the "
                            "MTU/PMTU or the application's datagram size)",
                            "whether a middlebox drops fragments by content (e.g. bytes 0x0DAF after the IP "
                            "header): moord's probe records those bytes for every dropped fragment"]))
            v = _ip_sum(n, "frag_fails")
            if v:
                rate = self.rate(n, lambda c: _ip_sum(c, "frag_fails"))
                self.add(Finding(
                    cause="generic", title=f"datagrams too big to send in {n.label} (fragmentation not allowed)",
                    where=n.label, severity=2, volume=v, rate=rate,
                    evidence=[f"FragFails {_num(n.ip.frag_fails)} (IPv6 {_num(n.ip6.frag_fails)}) "
                              f"({_rate_text(rate, self.interval)})"],
                    remedy=["datagrams larger than the path MTU with DF set (or IPv6): send smaller datagrams or "
                            "raise the MTU along the path"]))

    def stale_sessions(self) -> None:
        """A long-lived session (it never ages out while packets keep coming) whose packets are
        dropped, or that gets no replies while newer flows to the same peer do. The probe counts a
        request and its reply as one session, so "no replies" needs a source that tells the
        directions apart (Session.last_rx, or separate sessions per direction)."""
        p = self.ev.pressure
        if p is None or not p.long_lived:
            return
        now = self.ev.now
        sess = self.ev.sessions
        replied = _Replies(sess)
        quiet: list = []
        for s in p.long_lived:
            drops = self.flows(lambda d: d.tuple5 in (s.tuple5, s.reverse5))
            age = now - s.first_seen
            where = s.where or self.where(s.netns, "")
            head = (f"session {s.text()}" + (f" in {where}" if where else "") +
                    f" alive for {_dur(age)} (last packet {_dur(max(0.0, now - s.last_seen))} ago), "
                    f"session aging {p.aging_s:g} s: it never ages out")
            evidence = [head]
            volume, unit = 0, "packets"
            if drops:
                self.use(drops)
                volume = sum(d.packets for d in drops)
                reasons = sorted({d.short_reason for d in drops})
                evidence.append(f"its packets dropped: {_num(volume)} ({', '.join(reasons)})")
            else:
                answered_at = replied(s)
                if answered_at is _UNKNOWN:
                    quiet.append(s)
                    continue
                if answered_at is not None and answered_at >= s.last_seen - max(p.aging_s, 30.0):
                    continue  # it gets replies: long-lived but healthy
                others = [x for x in sess if (x.proto, x.daddr, x.dport) == (s.proto, s.daddr, s.dport)
                          and x.sport != s.sport]
                working = [x for x in others if (r := replied(x)) is not _UNKNOWN and r is not None
                           and r >= x.last_seen - 30]
                if not working:
                    continue  # the peer answers nobody: not this case
                silent = s.last_seen - (answered_at if answered_at is not None else s.first_seen)
                volume, unit = int(max(1.0, silent)), "seconds"
                evidence.append("no reply seen " + (f"for {_dur(silent)}" if answered_at else "since it began") +
                                f", while {len(working)} newer flow(s) to {hostport(s.daddr, s.dport)} get replies")
            self.add(Finding(
                cause="stale-session", title=f"stale session: {s.text()}" + (f" in {where}" if where else ""),
                where=where or "node", severity=5, volume=volume, unit=unit,
                rate=self.flows_rate(drops) if drops else None, scope="flow", evidence=evidence,
                remedy=list(_STALE_REMEDY)))
        if quiet:
            oldest = min(quiet, key=lambda s: s.first_seen)
            self.add(Finding(
                cause="stale-session", title=f"{len(quiet)} long-lived session(s) never age out (a risk after a "
                                             "route change)",
                where="node", severity=1, volume=len(quiet), unit="sessions", scope="flow",
                evidence=[f"oldest: {oldest.text()}" + (f" in {oldest.where}" if oldest.where else "")
                          + f", alive for {_dur(now - oldest.first_seen)}; session aging {p.aging_s:g} s",
                          "no drops seen on them; whether they get replies is not visible (the probe counts a "
                          "request and its reply as one session)"],
                remedy=["if one of these services broke after a route change: " + _STALE_REMEDY[0]]
                + list(_STALE_REMEDY[1:])))

    def generic(self) -> None:
        groups: dict[tuple, list[FlowDrop]] = {}
        for d in self.flows(lambda d: True):
            groups.setdefault((d.netns, d.reason), []).append(d)
        for (netns, reason), drops in groups.items():
            self.use(drops)
            total = sum(d.packets for d in drops)
            where = drops[0].where or self.where(netns)
            short = drops[0].short_reason
            flows = {f"{proto_name(d.proto)} {hostport(d.saddr, d.sport)} → {hostport(d.daddr, d.dport)}": d.packets
                     for d in drops}
            if "NETFILTER" in reason:
                sev, rem = 3, [f"a packet-filter rule dropped them: moor writes none; "
                               f"the packet-filter ruleset in {where} shows whose"]
            elif "NOROUTE" in reason or "NO_ROUTE" in reason:
                sev, rem = 3, ["no route for them: a route is missing (a route change done as delete-then-add "
                               "leaves a gap); `ip route get <dst>` in " + where]
            else:
                sev, rem = 2, [f"kernel drop reason {short}: see the kernel's include/net/dropreason-core.h for "
                               "where it is raised"]
            rate = self.flows_rate(drops)
            self.add(Finding(
                cause="generic", title=f"{short} drops in {where}", where=where, severity=sev, volume=total,
                rate=rate, scope="flow",
                evidence=[f"{_num(total)} packets dropped: {short} ({_rate_text(rate, self.interval)})",
                          f"top flows: {_top(flows)}"], remedy=rem))
        queued = {f.where for f in self.out if f.cause == "host-queue"}
        for n in self.netns:
            checks = [
                ("in_csum_errors", 3, f"UDP checksum errors in {n.label}",
                 ["corrupted in flight or a checksum-offload bug: test with `ethtool -K DEV rx off tx off`; "
                  "check the middleboxes on the path"]),
                ("sndbuf_errors", 3, f"UDP sends failed in {n.label} (send buffer or ENOBUFS)",
                 [f"raise SO_SNDBUF or {_in(n, 'sysctl -w net.core.wmem_default=...')} (now "
                  f"{n.sysctls.wmem_default}); check the interface queues (`netdiag drops`)"]),
            ]
            for attr, sev, title, rem in checks:
                v = _udp_sum(n, attr)
                if not v or (attr == "sndbuf_errors" and n.label in queued):
                    continue
                rate = self.rate(n, lambda c, a=attr: _udp_sum(c, a))
                self.add(Finding(cause="generic", title=title, where=n.label, severity=sev, volume=v, rate=rate,
                                 evidence=[f"Udp {attr} {_num(getattr(n.udp, attr))}, Udp6 "
                                           f"{_num(getattr(n.udp6, attr))} ({_rate_text(rate, self.interval)})"],
                                 remedy=rem))
            v = _ip_sum(n, "out_no_routes")
            if v:
                rate = self.rate(n, lambda c: _ip_sum(c, "out_no_routes"))
                self.add(Finding(
                    cause="generic", title=f"packets without a route in {n.label}", where=n.label, severity=2,
                    volume=v, rate=rate,
                    evidence=[f"OutNoRoutes {_num(n.ip.out_no_routes)} (IPv6 {_num(n.ip6.out_no_routes)}) "
                              f"({_rate_text(rate, self.interval)})"],
                    remedy=["a destination had no route: check `ip route` in " + n.label + "; route changes done "
                            "as delete-then-add leave such gaps (moor replaces routes make-before-break)"]))
            ct = n.conntrack
            if ct is not None and ct.insert_failed:
                self.add(Finding(
                    cause="generic", title=f"conntrack insert races in {n.label}", where=n.label, severity=3,
                    volume=ct.insert_failed,
                    evidence=[f"conntrack insert_failed {_num(ct.insert_failed)}: the first packets of one new "
                              "UDP flow sent in parallel (e.g. DNS A+AAAA) raced and one was dropped"],
                    remedy=["resolver option single-request-reopen / use TCP for DNS; or keep such traffic "
                            "out of conntrack"]))
            for lk in n.links:
                if lk.rx_dropped and lk.name != "lo":
                    rate = self.rate(n, lambda c, i=lk.index: next((x.rx_dropped for x in c.links if x.index == i), 0))
                    self.add(Finding(
                        cause="generic", title=f"{lk.name} in {n.label} dropped received packets", where=n.label,
                        severity=1, volume=lk.rx_dropped, rate=rate,
                        evidence=[f"{lk.name} rx_dropped {_num(lk.rx_dropped)} ({_rate_text(rate, self.interval)}): "
                                  "often harmless (unknown protocols, VLANs not configured)"],
                        remedy=[f"{_in(n, f'ip -s -s link show {lk.name}')}; moord's probe gives the reason"]))
                if lk.tx_dropped and lk.kind != "veth":
                    self.add(Finding(
                        cause="generic", title=f"{lk.name} in {n.label} dropped packets on transmit", where=n.label,
                        severity=2, volume=lk.tx_dropped,
                        evidence=[f"{lk.name} tx_dropped {_num(lk.tx_dropped)}"],
                        remedy=[f"{_in(n, f'ip -s -s link show {lk.name}')}; check its carrier and queue"]))


_STALE_REMEDY = (
    "restart/rebind the socket or change the source port to get a fresh session (the VPC keeps the old path "
    "as long as packets keep coming)",
    "make route changes make-before-break (replace, never delete-then-add) so no session is ever pinned to a "
    "transient path")
_UNKNOWN = object()


class _Replies:
    """When each session last received a packet: its last_rx, else the last packet of the session
    in the opposite direction (sources that keep one session per direction); None when none was
    seen, _UNKNOWN when the source cannot tell (the probe counts a request and its reply as one)."""

    def __init__(self, sess: list[Session]):
        self.last: dict[tuple, float] = {}
        for x in sess:
            self.last[x.tuple5] = max(self.last.get(x.tuple5, 0.0), x.last_seen)
        self.directional = any(x.last_rx is not None for x in sess) or any(x.reverse5 in self.last for x in sess)

    def __call__(self, s: Session) -> object:
        if s.last_rx is not None:
            return s.last_rx
        if s.reverse5 in self.last:
            return self.last[s.reverse5]
        return None if self.directional else _UNKNOWN


def _dur(s: float) -> str:
    s = int(s)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} days"

