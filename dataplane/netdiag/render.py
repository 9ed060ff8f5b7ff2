"""netdiag's output: plain-text tables for people (no colour, no dependencies: it must work over any
ssh session at 3 a.m.), and JSON documents for scripts."""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import time
from typing import Any, Optional, Sequence

from cni.spec import record

from ..counters import NetnsCounters, counter_delta
from .doctor import Finding
from .evidence import BgpView, Evidence, IpamView, PodView, hostport, proto_name

# ---------------------------------------------------------------------------------------------
# primitives


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    """Columns as wide as their widest cell; numbers right-aligned."""
    cells = [[_cell(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    numeric = [bool(rows) and all(_is_num(r[i]) for r in rows) for i in range(len(headers))]

    def line(vals: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]) for i, v in enumerate(vals)]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(list(headers))] + [line(r) for r in cells])


_NUMBER = re.compile(r"^(-|-?[\d,]+(\.\d+)?( \(\+[\d,.]+/s\))?)$")


def _is_num(v: Any) -> bool:
    """A count (1,982), a count with its rate (1,982 (+120/s)), or "-" (unknown)."""
    if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return True
    return isinstance(v, str) and bool(_NUMBER.match(v))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}"
    return str(v)


def num(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if float(v) == int(v) else f"{v:,.1f}"


def with_rate(total: int, rate: Optional[float]) -> str:
    """"1,982" or "1,982 (+120/s)" when a rate is known and not zero."""
    if rate:
        return f"{total:,} (+{num(rate)}/s)"
    return f"{total:,}"


def section(title: str) -> str:
    return f"\n{title}\n{'-' * len(title)}"


def _jsonable(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: _jsonable(getattr(o, f.name)) for f in dataclasses.fields(o)}
    if record.is_record(o) and not isinstance(o, type):  # cni/ and ipam/ types (reservations)
        return {f.name: _jsonable(getattr(o, f.name)) for f in record.fields(o)}
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network,
                      ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return str(o)
    return o


def to_json(doc: Any, pretty: bool = True) -> str:
    return json.dumps(_jsonable(doc), indent=2 if pretty else None, sort_keys=False)


def relevant(notes: Sequence[str], words: Sequence[str]) -> list[str]:
    """The notes about what a command shows (all of them when words is empty)."""
    return [n for n in notes if not words or any(w in n.lower() for w in words)]


def footer(ev_or_notes: Any, words: Sequence[str] = ()) -> str:
    notes = ev_or_notes.unavailable if isinstance(ev_or_notes, Evidence) else list(ev_or_notes)
    notes = relevant(notes, words)
    lines = [f"  - {n}" for n in notes]
    if isinstance(ev_or_notes, Evidence) and ev_or_notes.snapshot:
        for n in ev_or_notes.snapshot.netns:
            lines += [f"  - {n.label}: {e}" for e in n.errors]
    return ("\nnot visible here:\n" + "\n".join(lines)) if lines else ""


def header(command: str, source: str, ev: Optional[Evidence] = None, watch: Optional[float] = None) -> str:
    parts = [f"netdiag {command}", f"source: {source}"]
    if ev is not None and ev.snapshot is not None:
        parts.append(f"{len(ev.snapshot.netns)} namespace(s)")
        if ev.interval:
            parts.append(f"rates over {ev.interval:.1f} s")
    parts.append(time.strftime("%Y-%m-%d %H:%M:%S"))
    if watch:
        parts.append(f"every {watch:g} s, Ctrl-C quits")
    return " | ".join(parts)


def _prev(ev: Evidence, n: NetnsCounters) -> Optional[NetnsCounters]:
    if ev.previous is None or not n.inode:
        return None
    return ev.previous.find(n.inode)


def _r(ev: Evidence, n: NetnsCounters, get) -> Optional[float]:
    p = _prev(ev, n)
    if p is None or ev.interval <= 0:
        return None
    return max(0, get(n) - get(p)) / ev.interval


def _name(n: NetnsCounters) -> str:
    return n.name + (f" (pod {n.pod})" if n.pod else "")


# ---------------------------------------------------------------------------------------------
# drops


UDP_COLS = [("NoPorts", "no_ports"), ("RcvbufErr", "rcvbuf_errors"), ("InErrors", "in_errors"),
            ("SndbufErr", "sndbuf_errors"), ("CsumErr", "in_csum_errors"), ("MemErr", "mem_errors")]
IP_COLS = [("ReasmFail", "reasm_fails"), ("FragFail", "frag_fails"), ("OutNoRoute", "out_no_routes"),
           ("InDiscard", "in_discards")]


def drops_text(ev: Evidence, source: str, watch: Optional[float] = None) -> str:
    snap = ev.snapshot
    out = [header("drops", source, ev, watch)]
    if snap is None:
        return "\n".join(out)
    out.append(section("UDP and IP drop counters per network namespace (IPv4 + IPv6)"))
    rows = []
    for n in snap.netns:
        row: list[Any] = [_name(n)]
        for _h, a in UDP_COLS:
            row.append(with_rate(getattr(n.udp, a) + getattr(n.udp6, a),
                                 _r(ev, n, lambda c, a=a: getattr(c.udp, a) + getattr(c.udp6, a))))
        for _h, a in IP_COLS:
            row.append(with_rate(getattr(n.ip, a) + getattr(n.ip6, a),
                                 _r(ev, n, lambda c, a=a: getattr(c.ip, a) + getattr(c.ip6, a))))
        rows.append(row)
    out.append(table(["NETNS"] + [h for h, _ in UDP_COLS + IP_COLS], rows))

    qrows = []
    for n in snap.netns:
        p = _prev(ev, n)
        for q in n.qdiscs:
            if not (q.drops or q.qlen or q.overlimits):
                continue
            old = next((x for x in (p.qdiscs if p else []) if x.ifindex == q.ifindex and x.handle == q.handle), None)
            rate = (max(0, q.drops - old.drops) / ev.interval) if old and ev.interval else None
            lim = f"{q.limit:,} {q.limit_unit[:1]}" if q.limit is not None else f"txq {q.txqueuelen}"
            qrows.append([_name(n), q.ifname, f"{q.kind} {q.handle}", q.parent, with_rate(q.drops, rate),
                          q.overlimits, f"{q.qlen}p/{q.backlog}B", lim])
    out.append(section("Queues (qdiscs) with drops or a backlog"))
    out.append(table(["NETNS", "DEV", "QDISC", "PARENT", "DROPS", "OVERLIMITS", "QUEUED", "LIMIT"], qrows)
               if qrows else "  none: no qdisc has dropped a packet")

    lrows = []
    for n in snap.netns:
        for lk in n.links:
            if lk.rx_dropped or lk.tx_dropped or lk.rx_missed_errors or lk.rx_fifo_errors or lk.rx_over_errors:
                lrows.append([_name(n), lk.name, lk.kind or "-", lk.rx_dropped, lk.tx_dropped, lk.rx_missed_errors,
                              lk.rx_fifo_errors + lk.rx_over_errors])
    out.append(section("Links with drops"))
    out.append(table(["NETNS", "DEV", "KIND", "RX_DROP", "TX_DROP", "RX_MISSED", "RX_FIFO/OVER"], lrows)
               if lrows else "  none")

    h = snap.host
    hp = ev.previous.host if ev.previous else None
    out.append(section("Host CPU input backlog (softnet_stat: per host, NOT per namespace)"))
    srows = []
    for s in h.softnet:
        old = next((x for x in (hp.softnet if hp else []) if x.cpu == s.cpu), None)
        rate = (max(0, s.dropped - old.dropped) / ev.interval) if old and ev.interval else None
        srows.append([f"cpu{s.cpu}", s.processed, with_rate(s.dropped, rate), s.time_squeeze, s.flow_limit])
    out.append(table(["CPU", "PROCESSED", "DROPPED", "SQUEEZED", "FLOW_LIMIT"], srows))
    out.append(f"net.core.netdev_max_backlog {h.netdev_max_backlog}, netdev_budget {h.netdev_budget}, "
               f"netdev_budget_usecs {h.netdev_budget_usecs}; net.ipv4.udp_mem {h.udp_mem} pages, in use "
               f"{h.udp_mem_pages}")

    ct = [[_name(n), n.conntrack.count, n.conntrack.max, n.conntrack.drop, n.conntrack.early_drop,
           n.conntrack.insert_failed] for n in snap.netns if n.conntrack]
    if ct:
        out.append(section("Conntrack (per namespace; the max is global)"))
        out.append(table(["NETNS", "COUNT", "MAX", "DROP", "EARLY_DROP", "INSERT_FAILED"], ct))

    if ev.flow_drops:
        out.append(section("Per-flow drops (probe)"))
        frows = sorted(([d.short_reason, d.where or str(d.netns), d.ifname or (d.ifindex or "-"),
                         f"{proto_name(d.proto)} {hostport(d.saddr, d.sport)} > {hostport(d.daddr, d.dport)}",
                         f"0x{d.frag_bytes.upper()}" if d.fragment and d.frag_bytes else ("yes" if d.fragment else ""),
                         d.packets] for d in ev.flow_drops), key=lambda r: -r[-1])
        out.append(table(["REASON", "NETNS", "DEV", "FLOW", "FRAG", "PACKETS"], frows[:50]))
    out.append(footer(ev, ("drop", "fragment")))
    return "\n".join(x for x in out if x)


def rates_doc(ev: Evidence) -> dict:
    """Per netns inode: the counters' growth per second during the sample interval."""
    out: dict = {}
    if not (ev.snapshot and ev.previous and ev.interval > 0):
        return out
    for n in ev.snapshot.netns:
        p = _prev(ev, n)
        if p is None:
            continue
        per = {}
        for part in ("udp", "udp6", "ip", "ip6"):
            d = counter_delta(getattr(p, part), getattr(n, part))
            per[part] = {k: round(v / ev.interval, 3) for k, v in dataclasses.asdict(d).items() if v}
        out[str(n.inode)] = per
    return out


def drops_doc(ev: Evidence, source: str) -> dict:
    return {"command": "drops", "source": source, "interval_s": ev.interval,
            "netns": [_netns_doc(n) for n in (ev.snapshot.netns if ev.snapshot else [])],
            "host": ev.snapshot.host if ev.snapshot else None, "rates": rates_doc(ev),
            "flow_drops": ev.flow_drops, "unavailable": ev.unavailable}


def _netns_doc(n: NetnsCounters, sockets: bool = False) -> dict:
    d = _jsonable(n)
    d["label"] = n.label
    if not sockets:
        d.pop("sockets", None)
    return d


# ---------------------------------------------------------------------------------------------
# udp sockets


def udp_text(ev: Evidence, source: str, watch: Optional[float] = None, all_sockets: bool = False) -> str:
    out = [header("udp", source, ev, watch)]
    snap = ev.snapshot
    if snap is None:
        return "\n".join(out)
    out.append(section("UDP sockets (sk_rcvbuf is twice what setsockopt(SO_RCVBUF) asked for)"))
    rows = []
    prev = {}
    if ev.previous:
        for n in ev.previous.netns:
            for s in n.sockets:
                prev[(n.inode, s.inode)] = s.drops
    for n in snap.netns:
        for s in n.sockets:
            if not all_sockets and not (s.drops or s.rx_queue) and s.state != "UNCONN":
                continue
            old = prev.get((n.inode, s.inode))
            rate = (max(0, s.drops - old) / ev.interval) if old is not None and ev.interval else None
            rows.append([_name(n), s.local, s.remote, s.state, s.rx_queue, s.rcvbuf, with_rate(s.drops, rate),
                         f"{s.pid} {s.comm}" if s.pid else "-"])
    rows.sort(key=lambda r: (-int(str(r[6]).split()[0].replace(",", "")), r[0], r[1]))
    out.append(table(["NETNS", "LOCAL", "REMOTE", "STATE", "RX_QUEUED", "RCVBUF", "DROPS", "PROCESS"], rows)
               if rows else "  no UDP sockets")
    if any(n.socket_source and n.socket_source != "sock_diag" for n in snap.netns):
        out.append("  (some namespaces: /proc/net/udp only, buffer sizes unknown)")
    out.append(section("Receive-buffer sysctls and UDP counters per namespace"))
    srows = [[_name(n), n.sysctls.rmem_default, n.sysctls.rmem_max, n.sysctls.udp_rmem_min,
              n.udp.rcvbuf_errors + n.udp6.rcvbuf_errors, n.udp.in_datagrams + n.udp6.in_datagrams]
             for n in snap.netns]
    out.append(table(["NETNS", "RMEM_DEFAULT", "RMEM_MAX", "UDP_RMEM_MIN", "RCVBUF_ERRORS", "IN_DATAGRAMS"], srows))
    probe = [s for s in ev.socket_drops if not s.process and s.rcvbuf is None]
    if probe:
        out.append(section("Receive-buffer overflows seen by the probe"))
        out.append(table(["WHERE", "LOCAL", "RCVBUF", "DROPS"], [[s.where, s.local, s.rcvbuf, s.drops] for s in probe]))
    out.append(footer(ev, ("socket", "buffer")))
    return "\n".join(x for x in out if x)


def udp_doc(ev: Evidence, source: str) -> dict:
    return {"command": "udp", "source": source, "interval_s": ev.interval,
            "netns": [{"name": n.name, "label": n.label, "inode": n.inode, "pod": n.pod, "sysctls": n.sysctls,
                       "socket_source": n.socket_source,
                       "sockets": [dict(_jsonable(s), local=s.local, remote=s.remote) for s in n.sockets],
                       "errors": n.errors} for n in (ev.snapshot.netns if ev.snapshot else [])],
            "socket_drops": ev.socket_drops, "unavailable": ev.unavailable}


# ---------------------------------------------------------------------------------------------
# sessions


def sessions_text(ev: Evidence, source: str, watch: Optional[float] = None) -> str:
    out = [header("sessions", source, ev, watch)]
    p = ev.pressure
    out.append(section("VPC session pressure (distinct 5-tuples)"))
    if p is None:
        out.append("  not visible from this source (needs the agent's probe)")
    else:
        lim = f"{p.limit:,}" if p.limit else "not configured"
        pct = f" ({100 * p.active / p.limit:.0f}%)" if p.limit else ""
        out.append(f"  active {p.active:,} / limit {lim}{pct}, growth {p.growth_per_min:+.1f}/min, "
                   f"aging {p.aging_s:g} s")
        if p.by_netns:
            out.append(table(["NETNS/POD", "SESSIONS"], sorted(([str(k), v] for k, v in p.by_netns.items()),
                                                              key=lambda r: -r[1])[:20], indent="  "))
        if p.long_lived:
            now = ev.now
            out.append(section("Long-lived sessions (never aged out)"))
            out.append(table(["WHERE", "SESSION", "AGE_S", "IDLE_S", "NO_REPLY_S"],
                             [[s.where or str(s.netns), s.text(), round(now - s.first_seen),
                               round(max(0.0, now - s.last_seen)),
                               round(max(0.0, now - s.last_rx)) if s.last_rx else "never"]
                              for s in p.long_lived]))
    ct = [[_name(n), n.conntrack.count, n.conntrack.max, n.conntrack.drop, n.conntrack.early_drop]
          for n in (ev.snapshot.netns if ev.snapshot else []) if n.conntrack]
    out.append(section("Conntrack (the kernel's own session table; max is global)"))
    out.append(table(["NETNS", "COUNT", "MAX", "DROP", "EARLY_DROP"], ct) if ct else "  nf_conntrack not loaded")
    out.append(footer(ev, ("session",)))
    return "\n".join(x for x in out if x)


def sessions_doc(ev: Evidence, source: str) -> dict:
    return {"command": "sessions", "source": source, "pressure": ev.pressure, "sessions": ev.sessions,
            "conntrack": {n.label: n.conntrack for n in (ev.snapshot.netns if ev.snapshot else []) if n.conntrack},
            "unavailable": ev.unavailable}


# ---------------------------------------------------------------------------------------------
# bgp, ipam, pod


def bgp_text(v: BgpView, source: str) -> str:
    out = [header("bgp", source)]
    if v.peers:
        out.append(section("Peers"))
        now = time.time()
        out.append(table(["PEER", "AS", "STATE", "SINCE_S", "RECEIVED", "STALE", "GR", "HOLD"],
                         [[p.address, p.asn, p.state, round(now - p.since) if p.since else "-", p.received, p.stale,
                           p.graceful_restart, p.hold_time] for p in v.peers]))
    if v.advertised:
        out.append(section(f"Advertised ({len(v.advertised)})"))
        out.append("\n".join(f"  {p}" for p in v.advertised))
    if v.learned:
        out.append(section(f"Learned best paths ({len(v.learned)})"))
        out.append(table(["PREFIX", "NEXT_HOPS", "INSTALLED"],
                         [[r.prefix, ", ".join(r.next_hops), r.installed] for r in v.learned]))
    out.append(section(f"moor's routes in the kernel ({len(v.kernel_routes)})"))
    out.append(table(["PREFIX", "PROTO", "DEV", "NEXT_HOPS"],
                     [[r.prefix, r.proto, r.dev or "-", ", ".join(r.next_hops) or "-"] for r in v.kernel_routes])
               if v.kernel_routes else "  none")
    if v.note:
        out.append(f"\nnote: {v.note}")
    return "\n".join(out)


def ipam_text(v: IpamView, source: str) -> str:
    out = [header("ipam", source), f"store: {v.where}"]
    if v.error:
        out.append(f"error: {v.error}")
    if v.pools:
        out.append(section("Pools"))
        out.append(table(["POOL", "SIZE", "ACTIVE", "HELD", "FREE"],
                         [[p.cidr, p.size, p.active, p.held, max(0, p.size - p.active - p.held)] for p in v.pools]))
    out.append(section(f"Reservations ({len(v.reservations)})"))
    now = time.time()
    rows = []
    for r in v.reservations:
        hold = "-"
        if r.state == "held":
            hold = "forever" if r.hold_until is None else f"{max(0, round(r.hold_until - now))} s"
        rows.append([r.network, r.ip, r.state, r.pod or r.identity or "-", r.container_id[:12] or "-", r.node or "-",
                     hold, r.seq])
    out.append(table(["NETWORK", "IP", "STATE", "POD", "CONTAINER", "NODE", "HOLD_LEFT", "SEQ"], rows)
               if rows else "  none")
    return "\n".join(out)


def pod_text(v: PodView, source: str, findings: Sequence[Finding] = ()) -> str:
    out = [header("pod " + v.pod, source)]
    out.append(section("IPAM"))
    out.append(table(["NETWORK", "IP", "STATE", "CONTAINER", "NODE", "SEQ"],
                     [[r.network, r.ip, r.state, r.container_id[:12] or "-", r.node or "-", r.seq]
                      for r in v.reservations]) if v.reservations else "  no reservation")
    for a in v.attachments:
        out.append(section(f"Attachment {a.network} {a.ifname} (container {a.container_id[:12]}, {a.mode} mode)"))
        out.append(f"  netns {a.netns or '-'} (inode {a.netns_inode or '-'}), IPs {', '.join(a.ips) or '-'}"
                   + (f", host link {a.host_link}" if a.host_link else "") + (f", parent {a.parent}" if a.parent else ""))
        if a.error:
            out.append(f"  ! {a.error}")
        if a.interfaces:
            out.append("  interfaces in the pod:")
            out.append(table(["DEV", "KIND", "MTU", "UP", "RX_PKT", "TX_PKT", "RX_DROP", "TX_DROP"],
                             [[lk.name, lk.kind or "-", lk.mtu, lk.up, lk.rx_packets, lk.tx_packets, lk.rx_dropped,
                               lk.tx_dropped] for lk in a.interfaces], indent="    "))
        for title, items in (("addresses", a.addresses), ("routes in the pod", a.routes),
                             ("neighbours in the pod", a.neighbours), ("host routes to the pod", a.host_routes)):
            if items:
                out.append(f"  {title}:")
                out += [f"    {x}" for x in items]
        if a.host_side:
            out.append("  host side:")
            out.append(table(["DEV", "KIND", "MTU", "UP", "RX_PKT", "TX_PKT", "RX_DROP", "TX_DROP"],
                             [[lk.name, lk.kind or "-", lk.mtu, lk.up, lk.rx_packets, lk.tx_packets, lk.rx_dropped,
                               lk.tx_dropped] for lk in a.host_side], indent="    "))
        c = a.counters
        if c is not None:
            out.append("  counters in the pod's netns:")
            out.append(table([h for h, _ in UDP_COLS + IP_COLS],
                             [[getattr(c.udp, x) + getattr(c.udp6, x) for _, x in UDP_COLS]
                              + [getattr(c.ip, x) + getattr(c.ip6, x) for _, x in IP_COLS]], indent="    "))
            socks = [s for s in c.sockets]
            if socks:
                out.append("  UDP sockets in the pod:")
                out.append(table(["LOCAL", "REMOTE", "RX_QUEUED", "RCVBUF", "DROPS", "PROCESS"],
                                 [[s.local, s.remote, s.rx_queue, s.rcvbuf, s.drops,
                                   f"{s.pid} {s.comm}" if s.pid else "-"] for s in socks], indent="    "))
            qd = [q for q in c.qdiscs if q.drops]
            if qd:
                out.append("  qdisc drops in the pod:")
                out += [f"    {q.ifname} {q.kind} {q.handle}: {q.drops:,} dropped" for q in qd]
    if findings:
        out.append(section("What drops in the pod (netdiag doctor --pod)"))
        for i, f in enumerate(findings, 1):
            out.append(f"  #{i} [{f.cause_text}] {f.title}")
            out += [f"     - {e}" for e in f.evidence[:3]]
            out.append(f"     remedy: {f.remedy[0]}" if f.remedy else "")
    for n in v.notes:
        out.append(f"\nnote: {n}")
    return "\n".join(x for x in out if x)


# ---------------------------------------------------------------------------------------------
# doctor


def doctor_text(findings: list[Finding], ev: Evidence, source: str, watch: Optional[float] = None,
                limit: int = 0) -> str:
    out = [header("doctor", source, ev, watch)]
    shown = findings[:limit] if limit else findings
    if not findings:
        names = ", ".join(n.label for n in ev.snapshot.netns) if ev.snapshot else "-"
        out.append(f"\nno drops found in what was read ({names})")
    marked = False
    for i, f in enumerate(shown, 1):
        if f.cause == "noise":  # known-benign background: one line, never a cause
            out.append(f"\nbackground (benign, not a cause): {f.volume:,} packets; {f.evidence[0]}")
            continue
        if f.elsewhere and not marked:
            marked = True
            out.append("\n--- elsewhere on this node (not in the namespaces asked about) ---")
        rate = f", now {num(f.rate)}/s" if f.rate else (", not growing" if f.rate == 0 else "")
        out.append(f"\n#{i} [{f.cause_text}] {f.title}" + (" (elsewhere)" if f.elsewhere else ""))
        out.append(f"   severity {f.severity}/5, {f.volume:,} {f.unit}{rate}, score {f.score:g}")
        out.append("   evidence:")
        out += [f"     - {e}" for e in f.evidence]
        out.append("   remedy:")
        out += [f"     - {r}" for r in f.remedy]
    if limit and len(findings) > limit:
        out.append(f"\n(+{len(findings) - limit} more findings: --all shows them)")
    out.append(footer(ev, ("drop", "fragment", "session", "buffer", "socket")))
    return "\n".join(x for x in out if x)


def doctor_doc(findings: list[Finding], ev: Evidence, source: str) -> dict:
    return {"command": "doctor", "source": source, "interval_s": ev.interval, "scoped": ev.scoped,
            "since_s": ev.since,
            "namespaces": [{"name": n.name, "label": n.label, "inode": n.inode, "pod": n.pod, "errors": n.errors}
                           for n in (ev.snapshot.netns if ev.snapshot else [])],
            "findings": [dict(_jsonable(f), rank=i, cause_text=f.cause_text) for i, f in enumerate(findings, 1)],
            "unavailable": ev.unavailable}


# ---------------------------------------------------------------------------------------------
# status


def status_text(doc: dict) -> str:
    out = [f"netdiag status | {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    out.append(section("Versions"))
    out += [f"  {k}: {v}" for k, v in doc["versions"].items()]
    a = doc["agent"]
    out.append(section("Agent (moord)"))
    if not a["reachable"]:
        out.append(f"  not reachable: {a['error']}")
    else:
        out.append(f"  {a['socket']}: {'healthy' if a['ok'] else 'DEGRADED'}, up since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(a['started']))}"
                   + (", restarted (graceful restart)" if a["restarted"] else "")
                   + (f", version {a['version']}" if a.get("version") else ""))
        out += [f"  [{'ok' if c['ok'] else '--'}] {c['name']}: {c['detail']}" for c in a["components"]]
        if a["peers"]:
            out.append("  BGP peers:")
            out.append(table(["PEER", "ASN", "STATE", "SINCE", "RECEIVED", "STALE", "GR"],
                             [[p["address"], p["asn"], p["state"],
                               time.strftime("%H:%M:%S", time.localtime(p["since"])) if p["since"] else "-",
                               p["received"], p["stale"], "yes" if p["graceful_restart"] else "no"]
                              for p in a["peers"]], indent="    "))
    i = doc["ipam"]
    out.append(section("IPAM store"))
    out.append(f"  {i['where'] or '-'}: " + (f"error: {i['error']}" if i["error"] else
                                             f"{i['reservations']} reservations, {i['active']} active, "
                                             f"{i['corrupt']} corrupt"))
    out.append(section("What the doctor can see"))
    out += [f"  - {x}" for x in doc["sees"]]
    if doc["cannot"]:
        out.append("  cannot see:")
        out += [f"  - {x}" for x in doc["cannot"]]
    return "\n".join(out)
