"""Host backlog or queue too small: qdisc drops, NIC ring overflow, a veth whose peer could not
take packets, the host's UDP memory, the per-CPU input backlog (softnet)."""
from __future__ import annotations

from ...counters import NetnsCounters, QdiscStats
from .context import Context, Finding, FlowDrop, hostport, num, pow2, proto_name, rate_text, run_in, top, udp_sum

KEY, TEXT = "host-queue", "host backlog or queue too small"


def find(ctx: Context) -> None:
    queue_findings: dict[tuple, Finding] = {}
    for n in ctx.netns:
        by_if: dict[int, list[QdiscStats]] = {}
        for q in n.qdiscs:
            by_if.setdefault(q.ifindex, []).append(q)
        for ifindex, qs in by_if.items():
            root = next((q for q in qs if q.root), None)
            if root is None or not root.drops:
                continue
            rate = ctx.qdisc_rate(n, root)
            lim = f"limit {num(root.limit)} {root.limit_unit}" if root.limit is not None else "limit unknown"
            ev = [f"qdisc {root.kind} {root.handle} (root) on {root.ifname} in {n.label}: {num(root.drops)} "
                  f"dropped of {num(root.packets + root.drops)} ({rate_text(rate, ctx.interval)}), "
                  f"overlimits {num(root.overlimits)}, {root.qlen} packets / {num(root.backlog)} B queued "
                  f"when read, {lim}, txqueuelen {root.txqueuelen}"]
            for q in qs:
                if not q.root and q.drops and q.parent != "ingress":
                    ev.append(f"  child qdisc {q.kind} {q.handle} (parent {q.parent}): {num(q.drops)} dropped")
            sb = udp_sum(n, "sndbuf_errors")
            if sb:
                ev.append(f"Udp SndbufErrors {num(sb)} in {n.label}: senders got ENOBUFS from the queue "
                          "(sendto() still reports success unless IP_RECVERR is set)")
            f = ctx.add(Finding(
                cause=KEY, title=f"queue drops on {root.ifname} in {n.label} (qdisc {root.kind})",
                where=n.label, severity=4, volume=root.drops, rate=rate, evidence=ev, netns=n.inode,
                remedy=_qdisc_remedy(n, root, [q for q in qs if not q.root and q.drops])))
            queue_findings[(n.inode, ifindex)] = f
        for lk in n.links:
            ring = lk.rx_missed_errors + lk.rx_fifo_errors + lk.rx_over_errors
            if ring:
                rate = ctx.rate(n, lambda c, i=lk.index: next(
                    (x.rx_missed_errors + x.rx_fifo_errors + x.rx_over_errors for x in c.links if x.index == i), 0))
                ctx.add(Finding(
                    cause=KEY, title=f"receive ring overflow on {lk.name} in {n.label}", where=n.label,
                    severity=4, volume=ring, rate=rate, netns=n.inode,
                    evidence=[f"{lk.name}: rx_missed {num(lk.rx_missed_errors)}, rx_fifo "
                              f"{num(lk.rx_fifo_errors)}, rx_over {num(lk.rx_over_errors)} "
                              f"({rate_text(rate, ctx.interval)})"],
                    remedy=[f"enlarge the NIC receive ring: {run_in(n, f'ethtool -G {lk.name} rx <max>')} "
                            f"({run_in(n, f'ethtool -g {lk.name}')} shows the maximum); spread interrupts over "
                            "more queues/CPUs (ethtool -L)"]))
            if lk.tx_dropped and lk.kind == "veth":
                rate = ctx.rate(n, lambda c, i=lk.index: next((x.tx_dropped for x in c.links if x.index == i), 0))
                ctx.add(Finding(
                    cause=KEY, title=f"veth {lk.name} in {n.label} could not hand packets to its peer",
                    where=n.label, severity=3, volume=lk.tx_dropped, rate=rate, netns=n.inode,
                    evidence=[f"{lk.name} tx_dropped {num(lk.tx_dropped)} ({rate_text(rate, ctx.interval)}): "
                              "the peer's CPU backlog was full (or the peer was down)"],
                    remedy=["raise net.core.netdev_max_backlog (host-wide); check the peer end is up"]))
        mem = udp_sum(n, "mem_errors")
        if mem:
            h = ctx.ev.snapshot.host
            rate = ctx.rate(n, lambda c: udp_sum(c, "mem_errors"))
            um = h.udp_mem or (0, 0, 0)
            ctx.add(Finding(
                cause=KEY, title=f"the host's UDP memory limit (net.ipv4.udp_mem) was hit in {n.label}",
                where=n.label, severity=4, volume=mem, rate=rate, netns=n.inode,
                evidence=[f"Udp MemErrors {num(n.udp.mem_errors)}, Udp6 MemErrors {num(n.udp6.mem_errors)} "
                          f"({rate_text(rate, ctx.interval)})",
                          f"net.ipv4.udp_mem {um} pages; UDP uses {h.udp_mem_pages} pages now "
                          f"({h.page_size} B each): a host-wide limit over every namespace"],
                remedy=[f"sysctl -w net.ipv4.udp_mem='{um[0] * 2} {um[1] * 2} {um[2] * 2}' (host-wide; now "
                        f"'{' '.join(map(str, um))}' pages)",
                        "and find the sockets holding memory: `netdiag udp` (large rx queues)"]))
    # the probe's queue drops
    groups: dict[tuple, list[FlowDrop]] = {}
    for d in ctx.flows(lambda d: any(k in d.reason for k in ("QDISC", "CPU_BACKLOG", "FULL_RING",
                                                               "TC_EGRESS", "DEV_READY"))):
        groups.setdefault((d.netns, d.ifindex, d.reason), []).append(d)
    for (netns, ifindex, reason), drops in groups.items():
        ctx.use(drops)
        total = sum(d.packets for d in drops)
        flows = {f"{proto_name(d.proto)} {hostport(d.saddr, d.sport)} → {hostport(d.daddr, d.dport)}": d.packets
                 for d in drops}
        f = queue_findings.get((netns, ifindex))
        if f is not None:
            f.evidence.append(f"the probe saw {num(total)} of them ({drops[0].short_reason}), top flows: "
                              f"{top(flows)}")
            continue
        where = drops[0].where or ctx.where(netns)
        ifname = drops[0].ifname or (f"if{ifindex}" if ifindex else "")
        backlog = "CPU_BACKLOG" in reason
        rate = ctx.flows_rate(drops)
        n = ctx.by_inode.get(netns)
        h = ctx.ev.snapshot.host if ctx.ev.snapshot else None
        ctx.add(Finding(
            cause=KEY, title=(f"CPU input backlog full for traffic into {where}" if backlog
                              else f"queue drops on {ifname or '?'} in {where}"),
            where=where, severity=4, volume=total, rate=rate, scope="host" if backlog else "netns", netns=netns,
            evidence=[f"{num(total)} packets dropped: {drops[0].short_reason}"
                      + (f" on {ifname}" if ifname else "") + f" ({rate_text(rate, ctx.interval)})",
                      f"top flows: {top(flows)}"],
            remedy=([f"sysctl -w net.core.netdev_max_backlog={pow2(4 * (h.netdev_max_backlog or 1000))} "
                     f"(now {h.netdev_max_backlog if h else '?'})"] if backlog else
                    [f"raise the queue of {ifname}: "
                     + (run_in(n, f"ip link set dev {ifname} txqueuelen 10000") if n else
                        f"ip link set dev {ifname} txqueuelen 10000") + ", or the qdisc's limit"])), drops)
    # the host's CPU backlog (per host: every namespace's packets go through it)
    if ctx.ev.snapshot is not None:
        h = ctx.ev.snapshot.host
        if h.backlog_drops and not any(f.title.startswith("CPU input backlog") for f in ctx.out):
            rate = ctx.host_rate(lambda x: x.backlog_drops)
            per = {f"cpu{s.cpu}": s.dropped for s in h.softnet if s.dropped}
            ev = [f"softnet backlog drops {num(h.backlog_drops)} ({rate_text(rate, ctx.interval)}): "
                  f"{top(per, 8)}; net.core.netdev_max_backlog {h.netdev_max_backlog}",
                  "per host, not per network namespace: these drops can hit any namespace's packets "
                  "(/proc/net/softnet_stat, since boot)"]
            rem = [f"sysctl -w net.core.netdev_max_backlog={pow2(4 * (h.netdev_max_backlog or 1000))} "
                   f"(now {h.netdev_max_backlog})"]
            if h.time_squeeze:
                ev.append(f"time_squeeze {num(h.time_squeeze)}: the receive softirq ran out of budget")
                rem.append(f"sysctl -w net.core.netdev_budget={2 * (h.netdev_budget or 300)} (now "
                           f"{h.netdev_budget}) and net.core.netdev_budget_usecs="
                           f"{2 * (h.netdev_budget_usecs or 2000)} (now {h.netdev_budget_usecs})")
            if per and max(per.values()) > 0.8 * h.backlog_drops and len(h.softnet) > 1:
                cpu = max(per, key=per.get)
                rem.append(f"{cpu} takes most of them: spread receive processing over CPUs (more NIC queues, "
                           "RPS: /sys/class/net/DEV/queues/rx-*/rps_cpus)")
            ctx.add(Finding(cause=KEY, title="CPU input backlog overflow on this host (softnet)",
                             where="host", severity=4, volume=h.backlog_drops, rate=rate, evidence=ev,
                             remedy=rem, scope="host"))



def _qdisc_remedy(n: NetnsCounters, q: QdiscStats, children: list[QdiscStats]) -> list[str]:
    cur = q.limit or 0
    dev = q.ifname
    pre = []
    for c in children:  # a tiny queue behind a shaper or a class: the first limit to raise
        if c.kind in ("pfifo", "bfifo", "pfifo_head_drop") and c.limit is not None and c.parent != "ingress":
            want = max(4 * c.limit, 1000) if c.kind != "bfifo" else max(4 * c.limit, 1 << 20)
            pre.append(f"raise the limit of the {c.kind} under {c.parent} on {dev}: "
                       f"{run_in(n, f'tc qdisc replace dev {dev} parent {c.parent} {c.kind} limit {want}')} "
                       f"(now {c.limit} {c.limit_unit})")
    if q.kind in ("pfifo", "bfifo", "pfifo_head_drop"):
        want = max(4 * cur, q.txqueuelen or 1000) if q.kind != "bfifo" else max(4 * cur, 1 << 20)
        out = [f"raise the queue limit of {dev}: {run_in(n, f'tc qdisc replace dev {dev} root {q.kind} limit {want}')} "
               f"(now {cur} {q.limit_unit})"]
    elif q.kind == "tbf":
        out = [f"the shaper on {dev} drops what exceeds its rate and queue: raise its limit (now {cur} B) or "
               f"its rate ({run_in(n, f'tc qdisc change dev {dev} root tbf ...')}), or remove it: "
               f"{run_in(n, f'tc qdisc del dev {dev} root')}"]
    elif q.kind in ("fq_codel", "fq", "codel", "pie", "fq_pie", "sfq"):
        out = [f"raise the limit of {q.kind} on {dev} (now {cur} packets): "
               f"{run_in(n, f'tc qdisc change dev {dev} root {q.kind} limit {max(4 * cur, 10240)}')}; an AQM "
               "also drops on purpose under sustained overload: then the link is too slow for the load"]
    else:
        want = max(4 * (q.txqueuelen or 1000), 10000)
        out = [f"raise the transmit queue of {dev}: {run_in(n, f'ip link set dev {dev} txqueuelen {want}')} "
               f"(now {q.txqueuelen})"]
    out.append("or smooth the senders' bursts (pacing: SO_MAX_PACING_RATE with fq, fewer datagrams per burst)")
    return pre + out
