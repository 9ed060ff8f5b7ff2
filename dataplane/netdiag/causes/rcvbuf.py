"""Receive buffer too small: a UDP socket overflowed its SO_RCVBUF (the probe per socket and per
flow, the kernel per socket in sock_diag and per namespace in /proc/net/snmp)."""
from __future__ import annotations

from typing import Optional

from ...counters import NetnsCounters
from .context import (Context, Finding, FlowDrop, SocketDrop, hostport, num, pow2, proto_name, rate_text, run_in, top,
                      udp_sum)

KEY, TEXT = "rcvbuf", "receive buffer too small"


def find(ctx: Context) -> None:
    by_sock: dict[tuple, Finding] = {}
    seen_netns = set()
    for s in ctx.ev.socket_drops:
        if not s.drops:
            continue
        n = ctx.by_inode.get(s.netns)
        where = s.where or ctx.where(s.netns)
        if n is not None and not udp_sum(n, "rcvbuf_errors") and udp_sum(n, "in_csum_errors") + \
                udp_sum(n, "mem_errors"):
            continue  # that socket's drops are checksum or memory errors: generic() / host_queue()
        seen_netns.add(s.netns)
        rate = ctx.socket_rate(s)
        proc = f" ({s.process})" if s.process else ""
        buf = f"{num(s.rcvbuf)} B" if s.rcvbuf else "unknown size"
        ev = [f"socket {proto_name(s.proto)} {s.local}{proc} in {where}: {num(s.drops)} datagrams "
              f"dropped ({rate_text(rate, ctx.interval)}), receive buffer {buf} (sk_rcvbuf)"
              + (f", {num(s.rx_queue)} B queued when read" if s.rx_queue else "")]
        if n is not None:
            ev.append(f"Udp RcvbufErrors {num(n.udp.rcvbuf_errors)}, Udp6 RcvbufErrors "
                      f"{num(n.udp6.rcvbuf_errors)} in {n.label}")
        if s.rmem_default is not None:
            ev.append(f"net.core.rmem_default {num(s.rmem_default)}, net.core.rmem_max "
                      f"{num(s.rmem_max or 0)}")
        f = ctx.add(Finding(
            cause=KEY, title=f"receive buffer too small: {s.local} in {where}", where=where, severity=4,
            volume=s.drops, rate=rate, evidence=ev, remedy=_remedy(s, where, rate, n), netns=s.netns), [s])
        by_sock[(s.netns, s.lport)] = f
    # the probe's per-flow view of the same overflows: senders, or sockets closed since
    groups: dict[tuple, list[FlowDrop]] = {}
    for d in ctx.flows(lambda d: "RCVBUF" in d.reason):
        groups.setdefault((d.netns, d.daddr, d.dport), []).append(d)
    for (netns, daddr, dport), drops in groups.items():
        ctx.use(drops)
        senders = {hostport(d.saddr, d.sport): d.packets for d in drops}
        total = sum(d.packets for d in drops)
        f = by_sock.get((netns, dport))
        if f is not None:
            f.evidence.append(f"the probe saw {num(total)} of them, from {top(senders)}")
            lasts = [d.last_seen for d in drops if d.last_seen]
            if lasts and (f.last_seen is None or max(lasts) > f.last_seen):
                f.last_seen = max(lasts)
            continue
        seen_netns.add(netns)
        where = drops[0].where or ctx.where(netns)
        rate = ctx.flows_rate(drops)
        n = ctx.by_inode.get(netns)
        sock = SocketDrop(netns=netns, proto=drops[0].proto, laddr=daddr, lport=dport, rcvbuf=None, drops=total,
                          where=where, rmem_default=n.sysctls.rmem_default if n else None,
                          rmem_max=n.sysctls.rmem_max if n else None)
        ctx.add(Finding(
            cause=KEY, title=f"receive buffer too small: {sock.local} in {where}", where=where,
            severity=4, volume=total, rate=rate, netns=netns,
            evidence=[f"{num(total)} datagrams to {sock.local} dropped: {drops[0].short_reason} "
                      f"({rate_text(rate, ctx.interval)})", f"from {top(senders)}"],
            remedy=_remedy(sock, where, rate, n)), drops)
    for n in ctx.netns:
        v = udp_sum(n, "rcvbuf_errors")
        if not v or n.inode in seen_netns:
            continue
        rate = ctx.rate(n, lambda c: udp_sum(c, "rcvbuf_errors"))
        rd, rm = n.sysctls.rmem_default, n.sysctls.rmem_max
        want = pow2(max(4 * (rd or 212992), 1 << 20))
        rem = ["the sockets that overflowed are closed now or not visible; `netdiag udp --watch` names the "
               "socket while it drops; then raise its SO_RCVBUF"]
        if rd is not None:
            rem.append("for sockets that never set SO_RCVBUF: "
                       f"{run_in(n, f'sysctl -w net.core.rmem_default={want}')} (now {rd})")
        if rm is not None and rm < want:
            rem.append(f"{run_in(n, f'sysctl -w net.core.rmem_max={want}')} (now {rm}): setsockopt(SO_RCVBUF) "
                       "is capped there")
        ctx.add(Finding(
            cause=KEY, title=f"UDP receive buffers overflowed in {n.label}", where=n.label, severity=4,
            volume=v, rate=rate, netns=n.inode,
            evidence=[f"Udp RcvbufErrors {num(n.udp.rcvbuf_errors)}, Udp6 RcvbufErrors "
                      f"{num(n.udp6.rcvbuf_errors)} in {n.label} ({rate_text(rate, ctx.interval)})",
                      f"net.core.rmem_default {rd}, net.core.rmem_max {rm}",
                      "no open socket there shows drops now"],
            remedy=rem))



def _remedy(s: SocketDrop, where: str, rate: Optional[float], n: Optional[NetnsCounters]) -> list[str]:
    cur = s.rcvbuf or 0
    # 4x what overflowed, room for 250 ms of the drop rate at ~2.3 kB truesize per datagram, and
    # never less than 256 KiB: the rate is an average over the sample, and a receiver overflows in
    # bursts (a burst of 32 datagrams of 1 kB overflowed the 64 KiB this used to ask for)
    need = max(4 * cur, cur + (rate or 0) * 0.25 * 2304, 262144)
    want = pow2(need)
    rate_txt = f"drops at the current rate {num(rate)}/s" if rate else (
        "no new drops in the sample" if rate == 0 else "cumulative drops")
    if cur:
        first = (f"raise SO_RCVBUF of {s.local} in {where} from {cur} to ≥ {want} bytes ({rate_txt}; "
                 f"setsockopt(SO_RCVBUF, {want // 2}): the kernel doubles what it is given)")
    else:
        first = (f"raise SO_RCVBUF of {s.local} in {where} to ≥ {want} bytes ({rate_txt}; its current size: "
                 "`ss -uamn` rb)")
    out = [first]
    run = (lambda c: run_in(n, c)) if n is not None else (lambda c: c)
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
