"""No listener: datagrams to a port nobody listens on (the probe names port and senders; the
counters only count them per namespace)."""
from __future__ import annotations

from .context import Context, Finding, FlowDrop, hostport, ip_sum, num, proto_name, rate_text, run_in, top, udp_sum

KEY, TEXT = "no-listener", "no listener"


def find(ctx: Context) -> None:
    probe_netns = set()
    groups: dict[tuple, list[FlowDrop]] = {}
    for d in ctx.flows(lambda d: d.reason.endswith("NO_SOCKET")):
        groups.setdefault((d.netns, d.proto, d.daddr, d.dport), []).append(d)
    for (netns, proto, daddr, dport), drops in groups.items():
        ctx.use(drops)
        probe_netns.add(netns)
        where = drops[0].where or ctx.where(netns)
        senders: dict[str, int] = {}
        for d in drops:
            senders[hostport(d.saddr, d.sport)] = senders.get(hostport(d.saddr, d.sport), 0) + d.packets
        total = sum(d.packets for d in drops)
        rate = ctx.flows_rate(drops)
        port = f"{proto_name(proto)} {hostport(daddr, dport)}"
        ctx.add(Finding(
            cause=KEY, title=f"nothing listens on {port} in {where}", where=where, severity=2,
            volume=total, rate=rate, scope="flow", netns=netns,
            evidence=[f"{num(total)} datagrams to {port} dropped: {drops[0].short_reason} "
                      f"({rate_text(rate, ctx.interval)})",
                      f"from {len(senders)} sender(s): {top(senders)}"],
            remedy=[f"start the service that should receive {port} in {where}, or bind it to that "
                    f"port and address; else correct the senders' destination ({top(senders, 2)})"]), drops)
    for n in ctx.netns:
        v = udp_sum(n, "no_ports")
        if not v or n.inode in probe_netns:
            continue
        rate = ctx.rate(n, lambda c: udp_sum(c, "no_ports"))
        listening = sorted({s.local for s in n.sockets if s.state == "UNCONN"})
        lst = ", ".join(listening[:6]) + (" ..." if len(listening) > 6 else "") if listening else "none"
        ev = [f"Udp NoPorts {num(n.udp.no_ports)}, Udp6 NoPorts {num(n.udp6.no_ports)} in {n.label} "
              f"({rate_text(rate, ctx.interval)})",
              f"ICMP destination unreachable sent: {num(ip_sum(n, 'out_dest_unreachs'))}",
              f"UDP sockets listening in {n.label}: {lst}"]
        ctx.add(Finding(
            cause=KEY, title=f"UDP datagrams to ports nobody listens on in {n.label}",
            where=n.label, severity=2, volume=v, rate=rate, evidence=ev, netns=n.inode,
            remedy=[f"start the service the senders expect in {n.label}, or bind it to the port and "
                    f"address they use (listening now: {lst}); or correct the senders' destination",
                    "which port: " + run_in(n, "tcpdump -ni any 'icmp[icmptype] == icmp-unreach and "
                                           "icmp[icmpcode] == 3'") +
                    " shows the port-unreachables (they quote the port); moord's probe names port and "
                    "sender per flow"]))
