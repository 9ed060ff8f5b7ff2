"""netdiag doctor: from the evidence to ranked findings, each with its cause, the numbers behind
it and a concrete remedy. The causes live in causes/, one module each:

    rcvbuf            a socket's receive buffer is too small
    host-queue        the host's backlog or a queue is too small: softnet backlog, qdisc, NIC
                      ring, the host's UDP memory
    session-limit     a session table (the VPC's 5-tuple table, or conntrack) near or over its limit
    fragment-pattern  fragments dropped by a middlebox matching a byte pattern after the IP header
    stale-session     a long-lived 5-tuple kept a stale path after a route change
    no-listener       datagrams to a port nobody listens on
    generic           every other drop the counters or the probe show
    noise             known-benign background (ICMPv6 multicast, IPv6 DAD, IGMP)

Rank, built for a busy node where something always drops somewhere:
1. when the user named namespaces (or a pod), findings about them first, then host-wide ones, then
   the rest, marked `elsewhere`;
2. severity (1-5): a cause that breaks a service (fragment pattern, receive buffer, session table,
   stale session) outranks background drop reasons of severity <= 2 whatever their rate;
3. within one severity: volume and recency, severity x (1 + log10(1 + volume)) x 1.25 while it
   is still happening (drops during the sample, or the probe's last drop within 10 s).
Known-benign background comes last, always.
"""
from __future__ import annotations

import math

from .causes import CAUSES, REGISTRY, Context, Finding
from .evidence import Evidence

RECENT_S = 10.0  # a drop the probe saw this recently is ongoing

__all__ = ["CAUSES", "Finding", "diagnose", "score"]


def ongoing(f: Finding, ev: Evidence) -> bool:
    if f.rate is not None and f.rate > 0:
        return True
    return f.last_seen is not None and ev.now - f.last_seen <= max(RECENT_S, ev.interval + 1.0)


def score(f: Finding, ev: Evidence | None = None) -> float:
    s = f.severity * (1.0 + math.log10(1 + max(0, f.volume)))
    if ev is not None and ongoing(f, ev):
        s *= 1.25
    return round(s, 3)


def diagnose(ev: Evidence) -> list[Finding]:
    """Every finding, best first."""
    ctx = Context(ev)
    for cause in REGISTRY:
        cause.find(ctx)
    inodes, labels = ev.scope_inodes(), ev.scope_labels()

    def group(f: Finding) -> int:
        if not ev.scoped or (f.netns and f.netns in inodes) or f.where in labels:
            return 0
        if f.scope == "host":
            return 1  # host-wide (the CPU backlog, the node's session table): it may hit them too
        return 2  # another namespace, or one the probe could not name
    groups = {}
    for f in ctx.out:
        f.score = score(f, ev)
        groups[id(f)] = group(f)
        f.elsewhere = groups[id(f)] == 2 and f.cause != "noise"  # the background is its own line
    ctx.out.sort(key=lambda f: (f.cause == "noise", groups[id(f)], -f.severity, -f.score, -f.volume, f.title))
    return ctx.out
