"""netdiag's view through moord's API: what only the agent sees (the eBPF probe's drops and
sessions, BGP peers and routes, IPAM reservations). Kernel counters and pods come from the kernel
source (cli.CombinedSource puts the two together)."""
from __future__ import annotations

import ipaddress

from dataplane.api import moor_pb2 as pb
from dataplane.api.client import AgentClient

from .evidence import BgpPeerInfo, BgpView, IpamView, PoolUsage, RouteInfo, reservation


class AgentSource:
    name = "agent"

    def __init__(self, socket_path: str, timeout: float = 5.0):
        self.client = AgentClient(socket_path, timeout)
        self.health = self.client.health()  # fails here, not halfway through a report
        # drops() then rcvbuf(), sessions() then pressure(): each pair is one reply, one sample
        self._last_drops: pb.DropsReply | None = None
        self._last_sessions: pb.SessionsReply | None = None
        self._notes: list[str] = []

    def drops(self) -> list:
        r = self.client.call("Drops")
        self._last_drops = r
        if r.unavailable:
            self._note(f"moord's drop probe is not running: {r.unavailable}")
        return list(r.drops)

    def rcvbuf(self) -> list:
        r = self._last_drops or self.client.call("Drops")
        self._last_drops = None
        return list(r.rcvbuf)

    def sessions(self) -> list:
        r = self.client.sessions(full=True)
        self._last_sessions = r
        if r.unavailable:
            self._note(f"moord's session probe is not running: {r.unavailable}")
        return list(r.sessions)

    def pressure(self):
        r = self._last_sessions or self.client.sessions()
        self._last_sessions = None
        return None if r.unavailable else r

    def bgp(self) -> BgpView:
        peers = self.client.call("BgpPeers").peers
        routes = self.client.call("BgpRoutes")
        return BgpView(peers=[BgpPeerInfo(address=p.address, asn=p.asn, state=p.state, since=p.since,
                                          received=p.received, stale=p.stale, graceful_restart=p.graceful_restart,
                                          hold_time=p.hold_time) for p in peers],
                       advertised=list(routes.advertised),
                       learned=[RouteInfo(prefix=r.prefix, next_hops=list(r.next_hops), installed=r.installed)
                                for r in routes.learned])

    def ipam(self, node: str = "") -> IpamView:
        """Every page of the agent's reservations (`node`: that node's); each page's pool usage
        counts its own rows, summed here."""
        view = IpamView(where="moord")
        usage: dict[str, PoolUsage] = {}
        for r in self.client.ipam_pages(node=node):
            view.reservations += [reservation(x) for x in r.reservations]
            for p in r.pools:
                u = usage.setdefault(p.cidr, PoolUsage(cidr=p.cidr, size=p.size))
                u.active, u.held = u.active + p.active, u.held + p.held
            view.error = view.error or r.error
        view.pools = list(usage.values())
        view.reservations.sort(key=_by_address)  # etcd's pages come in key order
        return view

    def _note(self, text: str) -> None:
        if text not in self._notes:
            self._notes.append(text)

    def unavailable(self) -> list[str]:
        # asked before the data: the agent's health says which probe is off and why
        what = {"probe": "per-flow drops, socket buffer drops and sessions", "probe.drops":
                "per-flow drops and socket buffer drops", "probe.sessions": "sessions"}
        out = [f"{what[c.name]}: moord's {c.name} is not running ({c.detail})" for c in self.health.components
               if c.name in what and (not c.ok or "disabled" in c.detail)]
        out += [f"moord's {c.name}: {c.detail}" for c in self.health.components
                if not c.ok and not c.name.startswith("probe") and c.name != "bgp"]
        return out + [n for n in self._notes
                      if not any(c.detail and n.endswith(c.detail) for c in self.health.components)]


def _by_address(r) -> tuple:
    try:
        a = ipaddress.ip_address(r.ip)
        return (a.version, int(a))
    except ValueError:
        return (9, 0)
