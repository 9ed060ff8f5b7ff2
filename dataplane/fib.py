"""Routes learned over BGP, installed in the kernel (bgp.installLearned): one route per prefix with
protocol moor-bgp (111), ECMP over every equally good next hop, always changed with replace
(make-before-break). A restarted agent adopts the routes its predecessor left and removes the ones
its peers no longer send only after they resynchronised (End-of-RIB, or a bounded wait)."""
from __future__ import annotations

import ipaddress
import logging

from cni.netlink import wire as w
from cni.netlink.rtnl import RTNL, NetlinkError

log = logging.getLogger("moord.fib")

# above the kernel's defaults (IPv4 0, IPv6 1024): a route the node itself holds for the same
# prefix, such as a pod that just moved here (proto moor, default metric), always wins
LEARNED_METRIC = 4096


class Fib:
    def __init__(self, proto: int = w.RTPROT_MOOR_BGP, metric: int = LEARNED_METRIC):
        self.proto, self.metric = proto, metric
        self.nl = RTNL()
        self.installed: dict = {}  # prefix -> next hops as installed
        self.adopted: set = set()  # left by the previous agent, not yet confirmed by a peer
        self.failed = 0  # routes the kernel refused (an unreachable next hop); logged each time

    def adopt(self) -> int:
        """Take over the routes a previous agent installed (they kept forwarding while it restarted)."""
        for v in (4, 6):
            for r in self.nl.routes(v):
                if r.proto == self.proto and r.priority == self.metric:
                    hops = r.multipath or ((r.gateway,) if r.gateway is not None else ())
                    self.installed[r.dst] = tuple(sorted(str(h) for h in hops))
        self.adopted = set(self.installed)
        return len(self.adopted)

    def set(self, prefix, hops: tuple[str, ...]) -> None:
        """The best next hops for a prefix changed; () removes the route."""
        self.adopted.discard(prefix)
        try:
            if hops:
                gws = [g for g in map(ipaddress.ip_address, hops) if g.version == prefix.version]
                if not gws:
                    return self._remove(prefix)
                if len(gws) == 1:
                    self.nl.route_replace(prefix, gateway=gws[0], proto=self.proto, priority=self.metric)
                else:
                    self.nl.route_replace_multipath(prefix, gws, self.proto, priority=self.metric)
                self.installed[prefix] = tuple(sorted(str(g) for g in gws))
            else:
                self._remove(prefix)
        except NetlinkError as e:
            self.failed += 1
            log.warning("route %s via %s: %s", prefix, ",".join(hops), e)

    def _remove(self, prefix) -> None:
        if self.installed.pop(prefix, None) is not None:
            self.nl.route_del(prefix, proto=self.proto, priority=self.metric)

    def sweep_adopted(self) -> int:
        """After the peers resynchronised: what the previous agent installed and no peer sends any
        more goes."""
        gone = list(self.adopted)
        for p in gone:
            self._remove(p)
        self.adopted.clear()
        return len(gone)

    def flush(self) -> None:
        """A clean shutdown: no control plane will keep these routes right, so none stay."""
        for p in list(self.installed):
            try:
                self._remove(p)
            except NetlinkError as e:
                log.warning("route %s: %s", p, e)
        self.adopted.clear()

    def close(self) -> None:
        self.nl.close()
