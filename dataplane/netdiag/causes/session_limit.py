"""A session table near or over its limit: the VPC's 5-tuple table (the session probe's active
sessions against probe.sessionLimit), or a conntrack table on the node."""
from __future__ import annotations

from .context import Context, Finding, num, pow2, rate_text, top

KEY, TEXT = "session-limit", "session table near or over its limit"


def find(ctx: Context) -> None:
    p = ctx.ev.pressure
    if p is not None and p.limit > 0 and p.active >= 0.8 * p.limit:
        pct = 100.0 * p.active / p.limit
        sev = 5 if p.active >= p.limit else (4 if pct >= 90 else 3)
        ev = [f"{num(p.active)} active sessions vs limit {num(p.limit)} ({pct:.0f}%)"]
        if p.growth_per_min > 0 and p.active < p.limit:
            ev.append(f"growing {p.growth_per_min:+.0f}/min: full in about "
                      f"{(p.limit - p.active) / p.growth_per_min:.0f} min")
        elif p.growth_per_min:
            ev.append(f"change {p.growth_per_min:+.0f}/min")
        busiest: dict[str, int] = {}
        cookies = ctx.ev.by_cookie()
        labels = {n.label: n for n in ctx.netns}
        mine: dict[int, int] = {}  # inode -> sessions, of the namespaces netdiag read
        for key, v in p.by_netns.items():
            n = cookies.get(key) if isinstance(key, int) else labels.get(f"pod {key}") or labels.get(key)
            name = n.label if n is not None else (f"pod {key}" if isinstance(key, str) else f"netns cookie {key}")
            busiest[name] = v
            if n is not None:
                mine[n.inode] = mine.get(n.inode, 0) + v
        if busiest:
            ev.append(f"most sessions: {top(busiest)}")
        if p.long_lived:
            ev.append(f"{len(p.long_lived)} session(s) older than the aging time never age out "
                      f"(aging {p.aging_s:g} s)")
        rem = [f"raise the VPC session limit or shorten UDP session aging (now {p.aging_s:g} s): "
               f"{num(p.active)} active vs limit {num(p.limit)}"]
        if busiest:
            rem.append(f"reduce distinct 5-tuples where they come from ({top(busiest, 2)}): reuse source "
                       "ports / connected sockets per peer instead of a new port per request")
        ctx.add(Finding(cause=KEY,
                         title=("VPC session table over its limit" if p.active >= p.limit
                                else "VPC session table near its limit"),
                         where="node", severity=sev, volume=p.active, unit="sessions", evidence=ev, remedy=rem,
                         scope="host",
                         # about the namespace that holds most of the sessions netdiag can name: asked
                         # about it (--netns, --pod), this is about it
                         netns=max(mine, key=mine.get) if mine else 0))
    for n in ctx.netns:
        ct = n.conntrack
        if ct is None or not ct.max:
            continue
        lost = ct.drop + ct.early_drop
        if ct.count < 0.8 * ct.max and not lost:
            continue
        rate = ctx.rate(n, lambda c: (c.conntrack.drop + c.conntrack.early_drop) if c.conntrack else 0)
        sev = 5 if (ct.drop or ct.count >= ct.max) else (4 if ct.early_drop else 3)
        ctx.add(Finding(
            cause=KEY, title=f"conntrack table {'full' if ct.drop else 'near its limit'} in {n.label}",
            where=n.label, severity=sev, volume=lost or ct.count, unit="packets" if lost else "sessions",
            rate=rate, netns=n.inode,
            evidence=[f"nf_conntrack_count {num(ct.count)} vs nf_conntrack_max {num(ct.max)} "
                      f"({100 * ct.count / ct.max:.0f}%)",
                      f"new flows dropped {num(ct.drop)}, entries evicted early {num(ct.early_drop)} "
                      f"({rate_text(rate, ctx.interval)})"],
            remedy=[f"sysctl -w net.netfilter.nf_conntrack_max={pow2(2 * ct.max)} (now {ct.max}; {ct.count} in use)",
                    "shorten net.netfilter.nf_conntrack_udp_timeout / nf_conntrack_udp_timeout_stream",
                    "moor itself needs no conntrack: find what loads it (the node's packet-filter ruleset, kube-proxy)"]))
