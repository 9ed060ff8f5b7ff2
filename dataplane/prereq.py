"""What routed mode needs of the node, in moord's own network namespace (it runs in the node's):
IP forwarding for the families its pods use, set at start (`node.forwarding`), and a check of what
would silently drop routed traffic (strict reverse-path filtering across several uplinks).

Each sysctl moord changes is one INFO line (`net.ipv4.ip_forward 0 -> 1`); with `node.forwarding:
off` nothing is written and a WARNING names what is missing. A start that fails later puts back
what it changed; a stop does not (the pods and a restarting agent's routes keep forwarding)."""
from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field

from cni.netlink.netns import write_sysctl

log = logging.getLogger("moord.node")

PROC = "/proc/sys"
RTPROT_RA = 9  # a route the kernel learned from a router advertisement
FORWARDING_MODES = ("auto", "on", "off")

# the switch per family: net.ipv4.ip_forward also sets every interface's forwarding (IPv4 checks
# the ingress interface's); IPv6 forwards only with conf.all.forwarding, whatever the interface says
FORWARD = {4: ("net", "ipv4", "ip_forward"), 6: ("net", "ipv6", "conf", "all", "forwarding")}


@dataclass
class NodeConfig:
    forwarding: str = "auto"  # auto: IPv4, and IPv6 once it is in use; on: both at start; off: check only


def name(parts: tuple[str, ...]) -> str:
    """The sysctl's name as sysctl(8) prints it (a dot inside an interface name becomes '/')."""
    return ".".join(p.replace(".", "/") for p in parts)


def read(parts: tuple[str, ...]) -> str | None:
    """The value, or None when the kernel has no such sysctl (IPv6 disabled, an interface gone)."""
    try:
        with open(os.path.join(PROC, *parts)) as f:
            return f.read().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def write(parts: tuple[str, ...], value: str) -> None:
    write_sysctl("/".join(parts), value)


@dataclass
class Change:
    parts: tuple[str, ...]
    old: str
    new: str


@dataclass
class Forwarding:
    """Turns forwarding on per family as the node needs it, once per family and process."""
    mode: str = "auto"
    changes: list[Change] = field(default_factory=list)  # what this process wrote, in order
    handled: dict[int, bool] = field(default_factory=dict)  # family -> forwarding is on
    missing: list[str] = field(default_factory=list)  # sysctls that are not as routed mode needs

    def need(self, version: int, why: str) -> bool:
        """Forwarding for `version` is needed (`why`: what said so, for the log). Returns whether
        it is on. Never raises: a node where it cannot be set is told, not stopped."""
        if version in self.handled:
            return self.handled[version]
        key = FORWARD[version]
        cur = read(key)
        if cur is None:
            log.warning("IPv%d forwarding is needed (%s) but %s does not exist: IPv%d is disabled on this node",
                        version, why, name(key), version, extra={"sysctl": name(key)})
            self.missing.append(name(key))
            self.handled[version] = False
            return False
        if cur != "0":
            self.handled[version] = True
            return True
        if self.mode == "off":
            log.warning("%s is 0: routed pods are unreachable over IPv%d (needed: %s; node.forwarding is off, so "
                        "moord does not set it)", name(key), version, why, extra={"sysctl": name(key), "value": cur})
            self.missing.append(name(key))
            self.handled[version] = False
            return False
        try:
            if version == 6:
                self._keep_router_advertisements()
            self._set(key, cur, "1", f"IPv{version} forwarding: {why}")
        except OSError as e:
            log.warning("cannot set %s to 1: %s; routed pods are unreachable over IPv%d until it is 1",
                        name(key), e.strerror or e, version, extra={"sysctl": name(key)})
            self.missing.append(name(key))
            self.handled[version] = False
            return False
        self.handled[version] = True
        return True

    def _set(self, parts: tuple[str, ...], old: str, new: str, why: str) -> None:
        write(parts, new)
        self.changes.append(Change(parts, old, new))
        log.info("%s %s -> %s (%s)", name(parts), old, new, why, extra={"sysctl": name(parts), "old": old, "new": new})

    def _keep_router_advertisements(self) -> None:
        """conf.all.forwarding=1 makes every interface with accept_ra=1 ignore router
        advertisements, and the kernel removes the default routes RAs gave it at once
        (rt6_purge_dflt_routers spares only accept_ra=2 interfaces): a node whose IPv6 default route
        came from an RA loses it (Calico issue 6751; hybridnet PR 367 sets accept_ra=2 for the same
        reason). Where a route did come from an RA, accept_ra=2 keeps it and keeps accepting RAs
        while forwarding. Nowhere else: on a pod's host veth accept_ra=2 would let the pod announce
        routes to the node."""
        from cni.netlink.rtnl import RTNL
        with RTNL() as nl:
            ra_oifs = {r.oif for r in nl.routes(6) if r.proto == RTPROT_RA and r.oif}
            names = {i: l.name for i in ra_oifs if (l := nl.link_get(index=i)) is not None}
        for ifname in sorted(names.values()):
            key = ("net", "ipv6", "conf", ifname, "accept_ra")
            if read(key) == "1":
                self._set(key, "1", "2", f"{ifname} has routes from router advertisements, which IPv6 "
                                         "forwarding would ignore with accept_ra 1")

    def undo(self) -> None:
        """Put back what this process changed, newest first (a start that failed)."""
        for c in reversed(self.changes):
            try:
                write(c.parts, c.old)
                log.info("%s %s -> %s (undone: the start failed)", name(c.parts), c.new, c.old,
                         extra={"sysctl": name(c.parts), "old": c.new, "new": c.old})
            except OSError as e:
                log.warning("cannot put %s back to %s: %s", name(c.parts), c.old, e.strerror or e)
        self.changes.clear()


def ipv6_in_config(peers: list, blocks: list, next_hop6: str) -> str:
    """Why the config says IPv6 is in use ('' when it does not): an IPv6 peer or block, or an IPv6
    next hop for routes announced over IPv4 sessions."""
    for i, p in enumerate(peers):
        if ipaddress.ip_address(p.address).version == 6:
            return f"bgp.peers[{i}] {p.address} is IPv6"
    for i, b in enumerate(blocks):
        if b.version == 6:
            return f"bgp.advertise.blocks[{i}] {b} is IPv6"
    if next_hop6:
        return "bgp.nextHopIPv6 is set"
    return ""


def uplinks(peers: list) -> dict[str, list[str]]:
    """Interface name -> IPv4 peers reached through it: the route the kernel's lookup matches for
    each peer (one request per peer; a dump of the table would read every pod route too, 100,000
    of them on a big node). A multipath match names no single interface and is left out."""
    from cni.netlink.rtnl import RTNL
    out: dict[str, list[str]] = {}
    with RTNL() as nl:
        for p in peers:
            ip = ipaddress.ip_address(p.address)
            if ip.version != 4:
                continue
            best = nl.route_match(ip)
            if best is not None and best.oif and (link := nl.link_get(index=best.oif)) is not None:
                out.setdefault(link.name, []).append(p.address)
    return out


def check_rp_filter(peers: list) -> list[str]:
    """WARNING per uplink with strict reverse-path filtering when the peers are reached through
    more than one interface. A fabric with two ToRs may deliver a packet for a pod through one
    while the node's best route back to the sender leaves through the other (a session down on
    that side, different path preferences): rp_filter 1 drops it, 2 (loose) still drops spoofed
    sources no route covers. With one uplink strict filtering costs nothing, so nothing is said.
    The kernel uses the larger of conf.all and the interface's value. Returns the sysctls named."""
    ups = uplinks(peers)
    if len(ups) < 2:
        return []
    all_v = read(("net", "ipv4", "conf", "all", "rp_filter")) or "0"
    where = "; ".join(f"{i}: {', '.join(a)}" for i, a in sorted(ups.items()))
    named = []
    for ifname in sorted(ups):
        dev_v = read(("net", "ipv4", "conf", ifname, "rp_filter")) or "0"
        if max(int(all_v), int(dev_v)) == 1:
            key = name(("net", "ipv4", "conf", ifname, "rp_filter"))
            log.warning("%s is strict (all %s, %s %s) and the BGP peers are reached through %d interfaces (%s): "
                        "a packet for a pod that arrives on %s while the route back to its source leaves by another "
                        "uplink is dropped; 2 (loose) avoids that", key, all_v, ifname, dev_v, len(ups),
                        where, ifname, extra={"sysctl": key, "value": "1"})
            named.append(key)
    return named
