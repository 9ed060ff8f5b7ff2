"""What the agent knows, read by its API and its metrics: BGP peers and routes, IPAM reservations,
and the probe's drops and sessions attributed to pods. One place, so `netdiag` over the API and a
Prometheus scrape never disagree."""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from bgp.session import ESTABLISHED
from bgp.wire import key_str

log = logging.getLogger("moord.view")


@dataclass
class ProbeConfig:
    enabled: bool = True
    session_limit: int = 0  # the VPC's session table limit for this node (0: unknown)
    session_aging_s: float = 300.0  # how long the VPC keeps an idle UDP session
    max_sessions: int = 262144  # the session map's size


@dataclass
class Component:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class PeerView:
    address: str
    asn: int
    state: str
    since: float
    received: int
    stale: int
    graceful_restart: bool
    hold_time: int


@dataclass
class PodRef:
    pod: str  # namespace/name
    netns: str  # path


@dataclass
class AgentView:
    speaker: object = None
    fib: object = None
    watch: object = None  # dataplane.routewatch.RouteWatch: its loss and re-read counters
    restarted: bool = False
    forwarding: bool = False
    started: float = field(default_factory=time.time)
    ipam_config: str = ""  # the CNI network config file moor-ipam uses
    probe_conf: ProbeConfig = field(default_factory=ProbeConfig)
    drops: object = None  # dataplane.probe.drops.DropProbe, when loaded
    sessions: object = None  # dataplane.probe.sessions.SessionProbe, when loaded
    components: dict = field(default_factory=dict)  # name -> Component
    serving: bool = False  # start-up done and not yet stopping (run() sets it)
    cni_socket: str = ""  # the CNI socket moord serves ("": off)
    cni: object = None  # dataplane.cniserver.CNIServer, once started
    state_since: dict = field(default_factory=dict)  # peer -> unix time of its last state change
    session_history: list = field(default_factory=list)  # (time, active) for the growth rate
    _pods: tuple = (0.0, {}, {})  # (read at, netns inode -> PodRef, netns cookie -> PodRef)
    _history_lock: threading.Lock = field(default_factory=threading.Lock)

    # -- BGP -----------------------------------------------------------------------------------
    def peer_state(self, peer: str, state: str) -> None:
        self.state_since[peer] = time.time()

    def peers(self) -> list[PeerView]:
        out = []
        if self.speaker is None:
            return out
        rib = self.speaker.rib_in
        received: dict[str, int] = {}
        for by in list(rib.paths.values()):
            for peer in list(by):
                received[peer] = received.get(peer, 0) + 1
        for addr, s in self.speaker.sessions.items():
            out.append(PeerView(addr, s.peer.asn, s.state, self.state_since.get(addr, self.started),
                                received.get(addr, 0), len(rib.stale.get(addr, ())),
                                s.state == ESTABLISHED and s.peer_gr() is not None, s.hold))
        return out

    def advertised(self) -> list[str]:
        return sorted(key_str(p) for p in list(self.speaker.rib_out)) if self.speaker is not None else []

    def learned(self) -> list[tuple[str, tuple[str, ...], bool]]:
        if self.speaker is None:
            return []
        installed = self.fib.installed if self.fib is not None else {}
        return [(str(p), hops, p in installed) for p, hops in sorted(list(self.speaker.rib_in.best.items()),
                                                                      key=lambda kv: (kv[0].version, kv[0]))]

    # -- IPAM ----------------------------------------------------------------------------------
    def _ipam_conf(self):
        """The network's IPAM config, or a Snapshot saying why there is none (ipam.read)."""
        from ipam.read import Snapshot, read_netconf
        if not self.ipam_config:
            return Snapshot(error="no ipam.config in moord's config: reservations are not visible")
        try:
            return read_netconf(self.ipam_config)[1]
        except ValueError as e:
            return Snapshot(where=self.ipam_config, error=str(e))

    def ipam_page(self, token: str = "", size: int = 1000, node: str = "") -> tuple[list, list, str, str]:
        """(reservations, [(pool cidr, usable size, active, held)] of this page only, error, next
        token ("" when done)): one page read-only through ipam.read, so a reply stays small
        however big the network; a locked or broken store is reported, never fatal."""
        from ipam.read import Snapshot, page
        conf = self._ipam_conf()
        if isinstance(conf, Snapshot):
            return [], [], conf.error, ""
        snap, nxt = page(conf, token, size, node)
        # corrupt records are rows like any other (state "corrupt"): in use, shown, never fatal
        return snap.reservations, [(p.cidr, p.size, p.active, p.held) for p in snap.pools], snap.error, nxt

    def ipam_usage(self) -> tuple[list[tuple[str, int, int, int]], str]:
        """Pool usage of the whole network (metrics), summed page by page: never all rows at once."""
        from ipam.read import Snapshot, add_usage, pages
        conf = self._ipam_conf()
        if isinstance(conf, Snapshot):
            return [], conf.error
        total: list = []
        err = ""
        for snap in pages(conf):
            total, err = add_usage(total, snap.pools), err or snap.error
        return [(p.cidr, p.size, p.active, p.held) for p in total], err

    def pods(self) -> tuple[dict, dict]:
        """netns inode -> PodRef and netns cookie -> PodRef of this node's pods, from its IPAM
        reservations (cached 5 s): only the node's own (named as moor-ipam names it), a page at a
        time, so a node of a big network reads its pods, not the network."""
        at, by_ino, by_cookie = self._pods
        if time.monotonic() - at < 5:
            return by_ino, by_cookie
        by_ino, by_cookie = {}, {}
        cookie = None
        if self.sessions is not None:
            from .probe.sessions import netns_cookie as cookie
        from ipam.read import Snapshot, pages
        conf = self._ipam_conf()
        if not isinstance(conf, Snapshot):
            from ipam.collect import explicit_node_name, node_name
            # etcd holds the cluster: this node's, by the name moor-ipam gives it; the embedded
            # store is this node's already, filtered only by a name set on purpose (a guessed one
            # that differed from the plugin's would empty the map)
            me = node_name(os.environ, conf) if conf.etcd_endpoints else explicit_node_name(os.environ, conf)
            for snap in pages(conf, node=me):
                for r in snap.reservations:
                    if not r.netns or not r.pod:
                        continue
                    ref = PodRef(r.pod, r.netns)
                    try:
                        by_ino[os.stat(r.netns).st_ino] = ref
                        if cookie is not None:
                            by_cookie[cookie(r.netns)] = ref
                    except OSError:
                        continue  # the pod's netns is gone
        self._pods = (time.monotonic(), by_ino, by_cookie)
        return by_ino, by_cookie

    # -- probe ---------------------------------------------------------------------------------
    def drop_snapshot(self) -> tuple[list, list, str]:
        if self.drops is None:
            c = self.components.get("probe.drops")
            return [], [], c.detail if c else "the probe is disabled in moord's config"
        stats, rcv = self.drops.snapshot()
        return stats, rcv, ""

    def session_snapshot(self):
        """(Pressure, sessions, dropped, unavailable)."""
        if self.sessions is None:
            c = self.components.get("probe.sessions")
            return None, [], 0, c.detail if c else "the probe is disabled in moord's config"
        from .probe.sessions import pressure
        stats = self.sessions.snapshot()
        with self._history_lock:  # the API and a scrape may sample at once, each in a thread
            now = time.time()
            pr = pressure(stats, now, self.probe_conf.session_aging_s, self.probe_conf.session_limit,
                          list(self.session_history))
            self.session_history.append((now, pr.active))
            del self.session_history[:-120]
        return pr, stats, self.sessions.dropped(), ""

    def readiness(self) -> tuple[bool, list[Component]]:
        """Ready: start-up done, and the CNI socket listening when one is configured. BGP is not a
        condition: a node with no peer up still sets up pods, which are announced once one is."""
        if not self.cni_socket:
            cni = Component("cni", True, "cni.socket is off: the plugin works in its own process")
        else:
            up = self.cni is not None and self.cni.is_serving()
            cni = Component("cni", up, f"unix:{self.cni_socket} {'listening' if up else 'not listening'}")
        start = Component("start-up", self.serving, "done" if self.serving else "not done (or stopping)")
        comps = [start, cni] + self.health()
        return start.ok and cni.ok, comps

    def health(self) -> list[Component]:
        out = list(self.components.values())
        if self.speaker is not None:
            up = sum(s.state == ESTABLISHED for s in self.speaker.sessions.values())
            out.insert(0, Component("bgp", up == len(self.speaker.sessions) or not self.speaker.sessions,
                                    f"{up}/{len(self.speaker.sessions)} peers Established"))
        return out
