"""Known-benign background: what the kernel drops on every busy node as namespaces and links come
and go — ICMPv6 multicast (MLD reports to ff02::16, router and neighbour solicitations), IPv6
duplicate address detection (from ::) and IGMP. Summarised as one finding that ranks after every
real cause, whatever its rate, so it never hides the cause asked about."""
from __future__ import annotations

import ipaddress

from .context import Context, Finding, FlowDrop, num, top

KEY, TEXT = "noise", "known-benign background"


def benign(d: FlowDrop) -> bool:
    try:
        dst = ipaddress.ip_address(d.daddr) if d.daddr else None
    except ValueError:
        return False
    if d.proto == 58:  # ICMPv6: MLD, ND, RS to multicast groups; DAD probes come from ::
        return (dst is not None and dst.is_multicast) or d.saddr == "::"
    return d.proto == 2 and dst is not None and dst.is_multicast  # IGMP


def _kind(d: FlowDrop) -> str:
    if d.proto == 2:
        return "IGMP"
    if d.saddr == "::":
        return "IPv6 duplicate address detection"
    if d.daddr == "ff02::16":
        return "MLD reports"
    if d.daddr.startswith("ff02::1:ff"):
        return "neighbour solicitations"
    if d.daddr == "ff02::2":
        return "router solicitations"
    return f"ICMPv6 to {d.daddr}"


def find(ctx: Context) -> None:
    drops = ctx.flows(benign)
    if not drops:
        return
    ctx.use(drops)
    total = sum(d.packets for d in drops)
    kinds: dict[str, int] = {}
    places: dict[str, int] = {}
    for d in drops:
        kinds[_kind(d)] = kinds.get(_kind(d), 0) + d.packets
        w = d.where or ctx.where(d.netns)
        places[w] = places.get(w, 0) + d.packets
    ctx.add(Finding(
        cause=KEY, title="known-benign background drops (ICMPv6 multicast, IPv6 DAD, IGMP)", where="node",
        severity=0, volume=total, scope="flow",
        evidence=[f"{num(total)} packets: {top(kinds, 4)}", f"in {top(places, 4)}",
                  "links and namespaces that come and go send these; the kernel drops what no one listens to"],
        remedy=["nothing to fix: they are listed so that they are not mistaken for a cause"]), drops)
