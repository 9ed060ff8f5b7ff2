"""A stale session after a route change: a long-lived 5-tuple (it never ages out while packets
keep coming) whose packets are dropped, or that gets no replies while newer flows to the same
peer do: a VPC/NAT session pinned it to a path that a delete-then-add route change left for a moment."""
from __future__ import annotations

from ..evidence import Session
from .context import Context, Finding, dur, hostport, num

KEY, TEXT = "stale-session", "stale session after a route change"
# a request/response service answers within seconds: this long without a reply, while newer flows to
# the same peer get theirs, is a session pinned to a dead path (not the VPC's aging time: a pinned
# session never ages out, the traffic keeps it alive)
SILENT_S = 10.0


def find(ctx: Context) -> None:
    """A long-lived session (it never ages out while packets keep coming) whose packets are
    dropped, or that gets no replies while newer flows to the same peer do. The probe counts a
    request and its reply as one session, so "no replies" needs a source that tells the
    directions apart (Session.last_rx, or separate sessions per direction)."""
    p = ctx.ev.pressure
    if p is None or not p.long_lived:
        return
    now = ctx.ev.now
    sess = ctx.ev.sessions
    replied = _Replies(sess)
    quiet: list = []
    for s in p.long_lived:
        drops = ctx.flows(lambda d: d.tuple5 in (s.tuple5, s.reverse5))
        age = now - s.first_seen
        where = s.where or (ctx.where(s.inode) if s.inode else "")
        head = (f"session {s.text()}" + (f" in {where}" if where else "") +
                f" alive for {dur(age)} (last packet {dur(max(0.0, now - s.last_seen))} ago), "
                f"session aging {p.aging_s:g} s: it never ages out")
        evidence = [head]
        volume, unit = 0, "packets"
        if drops:
            ctx.use(drops)
            volume = sum(d.packets for d in drops)
            reasons = sorted({d.short_reason for d in drops})
            evidence.append(f"its packets dropped: {num(volume)} ({', '.join(reasons)})")
        else:
            answered_at = replied(s)
            if answered_at is _UNKNOWN:
                quiet.append(s)
                continue
            if answered_at is not None and answered_at >= s.last_seen - SILENT_S:
                continue  # it gets replies: long-lived but healthy
            others = [x for x in sess if (x.proto, x.daddr, x.dport) == (s.proto, s.daddr, s.dport)
                      and x.sport != s.sport]
            working = [x for x in others if (r := replied(x)) is not _UNKNOWN and r is not None
                       and r >= x.last_seen - SILENT_S]
            if not working:
                continue  # the peer answers nobody: not this case
            silent = s.last_seen - (answered_at if answered_at is not None else s.first_seen)
            volume, unit = int(max(1.0, silent)), "seconds"
            evidence.append("no reply seen " + (f"for {dur(silent)}" if answered_at else "since it began") +
                            f", while {len(working)} newer flow(s) to {hostport(s.daddr, s.dport)} get replies")
        ctx.add(Finding(
            cause=KEY, title=f"stale session: {s.text()}" + (f" in {where}" if where else ""),
            where=where or "node", severity=5, volume=volume, unit=unit,
            rate=ctx.flows_rate(drops) if drops else None, scope="flow", evidence=evidence,
            netns=drops[0].netns if drops else s.inode, remedy=list(_STALE_REMEDY)), drops)
    if quiet:
        oldest = min(quiet, key=lambda s: s.first_seen)
        ctx.add(Finding(
            cause=KEY, title=f"{len(quiet)} long-lived session(s) never age out (a risk after a "
                                         "route change)",
            where="node", severity=1, volume=len(quiet), unit="sessions", scope="flow",
            evidence=[f"oldest: {oldest.text()}" + (f" in {oldest.where}" if oldest.where else "")
                      + f", alive for {dur(now - oldest.first_seen)}; session aging {p.aging_s:g} s",
                      "no drops seen on them; whether they get replies is not visible from this source (it "
                      "does not tell a session's directions apart; moord's probe does)"],
            remedy=["if one of these services broke after a route change: " + _STALE_REMEDY[0]]
            + list(_STALE_REMEDY[1:])))



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
