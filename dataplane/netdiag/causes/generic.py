"""Other drops: every per-flow drop no specific cause explained (by kernel reason), and the
counters without a cause of their own (checksum errors, send failures, no route, conntrack
insert races, link drops)."""
from __future__ import annotations

from .context import Context, Finding, FlowDrop, hostport, ip_sum, num, proto_name, rate_text, run_in, top, udp_sum

KEY, TEXT = "generic", "other drops"


def find(ctx: Context) -> None:
    groups: dict[tuple, list[FlowDrop]] = {}
    for d in ctx.flows(lambda d: True):
        groups.setdefault((d.netns, d.reason), []).append(d)
    for (netns, reason), drops in groups.items():
        ctx.use(drops)
        total = sum(d.packets for d in drops)
        where = drops[0].where or ctx.where(netns)
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
        rate = ctx.flows_rate(drops)
        ctx.add(Finding(
            cause=KEY, title=f"{short} drops in {where}", where=where, severity=sev, volume=total,
            rate=rate, scope="flow", netns=netns,
            evidence=[f"{num(total)} packets dropped: {short} ({rate_text(rate, ctx.interval)})",
                      f"top flows: {top(flows)}"], remedy=rem), drops)
    queued = {f.where for f in ctx.out if f.cause == "host-queue"}
    for n in ctx.netns:
        checks = [
            ("in_csum_errors", 3, f"UDP checksum errors in {n.label}",
             ["corrupted in flight or a checksum-offload bug: test with `ethtool -K DEV rx off tx off`; "
              "check the middleboxes on the path"]),
            ("sndbuf_errors", 3, f"UDP sends failed in {n.label} (send buffer or ENOBUFS)",
             [f"raise SO_SNDBUF or {run_in(n, 'sysctl -w net.core.wmem_default=...')} (now "
              f"{n.sysctls.wmem_default}); check the interface queues (`netdiag drops`)"]),
        ]
        for attr, sev, title, rem in checks:
            v = udp_sum(n, attr)
            if not v or (attr == "sndbuf_errors" and n.label in queued):
                continue
            rate = ctx.rate(n, lambda c, a=attr: udp_sum(c, a))
            ctx.add(Finding(cause=KEY, title=title, where=n.label, netns=n.inode, severity=sev, volume=v, rate=rate,
                             evidence=[f"Udp {attr} {num(getattr(n.udp, attr))}, Udp6 "
                                       f"{num(getattr(n.udp6, attr))} ({rate_text(rate, ctx.interval)})"],
                             remedy=rem))
        v = ip_sum(n, "out_no_routes")
        if v:
            rate = ctx.rate(n, lambda c: ip_sum(c, "out_no_routes"))
            ctx.add(Finding(
                cause=KEY, title=f"packets without a route in {n.label}", where=n.label, netns=n.inode, severity=2,
                volume=v, rate=rate,
                evidence=[f"OutNoRoutes {num(n.ip.out_no_routes)} (IPv6 {num(n.ip6.out_no_routes)}) "
                          f"({rate_text(rate, ctx.interval)})"],
                remedy=["a destination had no route: check `ip route` in " + n.label + "; route changes done "
                        "as delete-then-add leave such gaps (moor replaces routes make-before-break)"]))
        ct = n.conntrack
        if ct is not None and ct.insert_failed:
            ctx.add(Finding(
                cause=KEY, title=f"conntrack insert races in {n.label}", where=n.label, netns=n.inode, severity=3,
                volume=ct.insert_failed,
                evidence=[f"conntrack insert_failed {num(ct.insert_failed)}: the first packets of one new "
                          "UDP flow sent in parallel (e.g. DNS A+AAAA) raced and one was dropped"],
                remedy=["resolver option single-request-reopen / use TCP for DNS; or keep such traffic "
                        "out of conntrack"]))
        for lk in n.links:
            if lk.rx_dropped and lk.name != "lo":
                rate = ctx.rate(n, lambda c, i=lk.index: next((x.rx_dropped for x in c.links if x.index == i), 0))
                ctx.add(Finding(
                    cause=KEY, title=f"{lk.name} in {n.label} dropped received packets", where=n.label, netns=n.inode,
                    severity=1, volume=lk.rx_dropped, rate=rate,
                    evidence=[f"{lk.name} rx_dropped {num(lk.rx_dropped)} ({rate_text(rate, ctx.interval)}): "
                              "often harmless (unknown protocols, VLANs not configured)"],
                    remedy=[f"{run_in(n, f'ip -s -s link show {lk.name}')}; moord's probe gives the reason"]))
            if lk.tx_dropped and lk.kind != "veth":
                ctx.add(Finding(
                    cause=KEY, title=f"{lk.name} in {n.label} dropped packets on transmit", where=n.label, netns=n.inode,
                    severity=2, volume=lk.tx_dropped,
                    evidence=[f"{lk.name} tx_dropped {num(lk.tx_dropped)}"],
                    remedy=[f"{run_in(n, f'ip -s -s link show {lk.name}')}; check its carrier and queue"]))
