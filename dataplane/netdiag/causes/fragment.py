"""Fragments dropped by a middlebox byte pattern: dropped fragments of several flows that share
bytes 2-3 after the IP header (the gateway of the design notes dropped 0x0DAF); fragments
dropped without a pattern and reassembly failures are reported as generic."""
from __future__ import annotations

from .context import Context, Finding, FlowDrop, ip_sum, num, rate_text, top

KEY, TEXT = "fragment-pattern", "fragments dropped by a middlebox byte pattern"


def _victim(d: FlowDrop) -> bool:
    """A fragment the receiver dropped because the rest of its datagram never came (reassembly
    timed out, or too many datagrams were pending): the other half of a loss upstream."""
    return "REASM" in d.reason or "FRAG_TOO_FAR" in d.reason


def find(ctx: Context) -> None:
    frags = ctx.flows(lambda d: d.fragment)
    patterns: list[Finding] = []
    if frags:
        victims = [d for d in frags if _victim(d)]
        lost = [d for d in frags if not _victim(d)]  # dropped in flight: where a pattern would bite
        # a pattern among what was dropped in flight (the middlebox in view); else among what expired
        # at a receiver (the middlebox out of view dropped the fragments that would have completed
        # these): each set on its own, so one's count does not dilute the other's pattern
        for group in (lost, victims):
            _patterns(ctx, group, victims if group is lost else [], patterns)
            if patterns:
                break
        rest = ctx.flows(lambda d: d.fragment)
        if rest:
            ctx.use(rest)
            n = sum(d.packets for d in rest)
            pats = {(f"0x{d.frag_bytes.upper()}" if d.frag_bytes else "?"): d.packets for d in rest}
            ctx.add(Finding(
                cause="generic", title="fragments dropped (no common byte pattern)",
                where=rest[0].where or ctx.where(rest[0].netns), severity=3, volume=n,
                rate=ctx.flows_rate(rest), scope="flow", netns=rest[0].netns,
                evidence=[f"{num(n)} fragments of {len({d.tuple5 for d in rest})} flows dropped: "
                          f"{', '.join(sorted({d.short_reason for d in rest}))}",
                          f"bytes 2-3 after the IP header: {top(pats, 5)}"],
                remedy=["avoid fragmentation: lower the MTU/PMTU or the datagram size"]), rest)
    for n in ctx.netns:
        v = ip_sum(n, "reasm_fails")
        if v and patterns:  # the receivers' side of the pattern's loss, not a cause of its own
            patterns[0].evidence.append(f"ReasmFails {num(v)} in {n.label}: datagrams whose dropped fragment "
                                        "never came")
        elif v:
            rate = ctx.rate(n, lambda c: ip_sum(c, "reasm_fails"))
            ctx.add(Finding(
                cause="generic", title=f"IP fragments lost before reassembly in {n.label}", where=n.label,
                severity=3, volume=v, rate=rate, netns=n.inode,
                evidence=[f"ReasmFails {num(n.ip.reasm_fails)} (IPv6 {num(n.ip6.reasm_fails)}), ReasmTimeout "
                          f"{num(ip_sum(n, 'reasm_timeout'))} of {num(ip_sum(n, 'reasm_reqds'))} fragments "
                          f"received, {num(ip_sum(n, 'reasm_oks'))} datagrams reassembled "
                          f"({rate_text(rate, ctx.interval)})"],
                remedy=["some fragments of these datagrams never arrived: avoid fragmentation (lower the "
                        "MTU/PMTU or the application's datagram size)",
                        "whether a middlebox drops fragments by content (e.g. bytes 0x0DAF after the IP "
                        "header): moord's probe records those bytes for every dropped fragment"]))
        v = ip_sum(n, "frag_fails")
        if v:
            rate = ctx.rate(n, lambda c: ip_sum(c, "frag_fails"))
            ctx.add(Finding(
                cause="generic", title=f"datagrams too big to send in {n.label} (fragmentation not allowed)",
                where=n.label, severity=2, volume=v, rate=rate, netns=n.inode,
                evidence=[f"FragFails {num(n.ip.frag_fails)} (IPv6 {num(n.ip6.frag_fails)}) "
                          f"({rate_text(rate, ctx.interval)})"],
                remedy=["datagrams larger than the path MTU with DF set (or IPv6): send smaller datagrams or "
                        "raise the MTU along the path"]))


def _patterns(ctx: Context, drops_in: list[FlowDrop], victims: list[FlowDrop], out: list[Finding]) -> None:
    """Findings for the byte patterns that explain most of `drops_in` across several flows."""
    total = sum(d.packets for d in drops_in)
    by_pat: dict[str, list[FlowDrop]] = {}
    for d in drops_in:
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
        ctx.use(drops)
        val = int(pat, 16)
        pairs = {(d.saddr, d.daddr) for d in drops}
        ports = sorted({d.dport for d in drops if d.dport})
        places: dict[str, int] = {}
        netns_pkts: dict[int, int] = {}
        for d in drops:
            w = d.where or ctx.where(d.netns)
            key = f"{d.short_reason}" + (f" on {d.ifname}" if d.ifname else "") + (f" in {w}" if w else "")
            places[key] = places.get(key, 0) + d.packets
            netns_pkts[d.netns] = netns_pkts.get(d.netns, 0) + d.packets
        rate = ctx.flows_rate(drops)
        at = max(netns_pkts, key=netns_pkts.get)
        where = next((d.where for d in drops if d.netns == at and d.where), "") or ctx.where(at)
        ev = [f"{num(pkts)} dropped fragments in {len(flows)} flows ({len(pairs)} address pairs"
              + (f", destination ports {', '.join(map(str, ports[:6]))}" if ports else "")
              + f") all carry 0x{pat.upper()} ({val}) in bytes 2-3 after the IP header "
              f"({rate_text(rate, ctx.interval)})",
              f"{num(total - pkts)} other fragments dropped in flight do not",
              f"dropped at: {top(places)}"]
        theirs = [d for d in victims if (d.saddr, d.daddr) in pairs]
        if theirs:  # the same datagrams' other fragments, expired at the receiver
            ctx.use(theirs)
            ev.append(f"{num(sum(d.packets for d in theirs))} other fragments of these datagrams expired at "
                      f"the receiver ({', '.join(sorted({d.short_reason for d in theirs}))}): the rest of "
                      "each datagram never arrived")
        if ports and all(d.dport == val for d in drops if d.dport):
            ev.append(f"{val} is also these flows' UDP destination port (bytes 2-3 of a first fragment): a "
                      "port filter fits too; non-first fragments with the same bytes point at a payload "
                      "pattern")
        out.append(ctx.add(Finding(
            cause=KEY,
            title=f"fragments with bytes 0x{pat.upper()} after the IP header are dropped", where=where,
            severity=5, volume=pkts, rate=rate, scope="flow", evidence=ev, netns=at,
            remedy=[f"the fragments with bytes 0x{pat.upper()} after the IP header are dropped in {where}: "
                    "avoid fragmentation (lower the MTU/PMTU toward that path, or the application's "
                    "payload size so each datagram fits one packet) or fix the middlebox that drops "
                    "them (gateway/firewall firmware)",
                    "prove it: send fragmented datagrams with and without those bytes at offset 2 of a "
                    "fragment and compare what arrives"]), drops))
