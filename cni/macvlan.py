"""MacVlan mode: the pod gets a macvlan sub-interface of the node's uplink (or of its VLAN
sub-interface), created directly inside the pod's netns, so it sits on the physical L2 network."""
from __future__ import annotations

import errno
import ipaddress
import os
import sys
import zlib

from ipam.inprocess import IN_PROCESS

from . import announce, shim as shims
from .mode import Mode, open_pod_netns, pod_socket
from .netlink import netns
from .netlink.rtnl import RTNL, Link, NetlinkError
from .netlink.wire import MACVLAN_MODES, RTPROT_MOOR_SHIM
from .spec import delegate
from .spec.errors import (INTERFACE_EXISTS, INVALID_CONFIG, KERNEL_REFUSED, NOT_AVAILABLE,
                          TRY_AGAIN_LATER, VLAN_UNSUPPORTED, CNIError)
from .spec.result import Interface, IPConfig, Result, RouteConfig
from .state import Attachment, ShimAddrs
from .steps import Steps

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Optional

_DEFAULT = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


def shim_name(parent: str) -> str:
    """Host shim link name for a parent: stable, unique per parent, at most 15 bytes."""
    return f"mshim{zlib.crc32(parent.encode()):08x}"


class MacvlanPlugin(Mode):
    _parent: Optional[Link] = None  # the parent link, as CHECK found it
    _shim_addrs_made: bool = False  # this ADD allocated the shim's addresses: its rollback undoes them

    def _master(self, code: int = INVALID_CONFIG) -> Link:
        link = self.host.link_get(self.conf.master)
        if link is None:
            raise CNIError(code, f"invalid network config: 'master' {self.conf.master!r} does not exist on this node")
        return link

    def _parent_name(self, master: Link) -> str:
        """The parent's real name: an altname in `master` resolves to the kernel's name, so every
        network on one uplink shares one lock, one shim and one VLAN sub-interface."""
        return f"{master.name}.{self.conf.vlan}" if self.conf.vlan else master.name

    def _ensure_parent(self, master: Link) -> Link:
        """The master, or its VLAN sub-interface created on demand (called under the parent lock)."""
        c = self.conf
        if not c.vlan:
            return master
        name = self._parent_name(master)
        link = self.host.link_get(name)
        if link is not None:
            if link.kind != "vlan" or link.vlan_id != c.vlan or link.parent != master.index:
                raise CNIError(INVALID_CONFIG, f"invalid network config: {name} exists but is not VLAN {c.vlan} of {master.name}")
            return link
        self.store.mark_owned(name, name)  # before creating: an interrupted ADD's undo may remove it
        try:
            self.host.vlan_add(name, master.index, c.vlan, up=True)
        except NetlinkError as e:
            self.store.unmark_owned(name)
            if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise CNIError(VLAN_UNSUPPORTED, f"the kernel cannot create VLAN sub-interface {name}",
                               "8021q is not available (modprobe 8021q, or use a kernel built with VLAN support)") from e
            raise
        link = self.host.link_get(name)
        assert link is not None
        return link

    def _ensure_shim(self, parent: Link) -> Link:
        name = shim_name(parent.name)
        link = self.host.link_get(name)
        if link is None:
            self.store.mark_owned(name, parent.name)
            self.host.macvlan_add(name, parent.index, "bridge", up=True)
            link = self.host.link_get(name)
            assert link is not None
        elif not link.up:
            self.host.link_set(link.index, up=True)
        return link

    def _ensure_shim_addrs(self, parent: Link, shim: Link) -> Optional[ShimAddrs]:
        """The shim's addresses for this network, allocated by the first attachment that needs
        them and put on the shim (called under the parent lock)."""
        rec = self.store.shim_get(self.conf.name, parent.name)
        if rec is None or not rec.addresses:  # none yet, or a pending one an interrupted ADD left
            self._shim_addrs_made = True
            rec = shims.allocate(self.store, self.conf, self.environ, self.env.path, parent.name, shim.name)
        if rec is not None:
            shims.install(self.host, rec, shim)
        return rec

    def _release_shared(self, parent: str, leaving: Optional[Attachment] = None) -> None:
        """Give back this network's shim addresses once none of its attachments uses the parent,
        then remove the shim and the VLAN sub-interface moor created once no attachment at all
        does (called under the parent lock; `leaving`: the attachment going away, not counted).
        Only links moor marked as its own, and only of the kind it made, are ever deleted."""
        rec = self.store.shim_get(self.conf.name, parent)
        owned = [(name, kind) for name, kind in ((shim_name(parent), "macvlan"), (parent, "vlan"))
                 if self.store.owned(name)]
        if rec is None and not owned:
            # nothing moor made on this parent (a plain uplink: the common case): no record needs
            # reading, where counting the users reads every attachment on the node (O(pods) a DEL)
            return
        key = (leaving.network, leaving.container_id, leaving.ifname) if leaving else None
        users = [a for a in self.store.all() if a.parent == parent and (a.network, a.container_id, a.ifname) != key]
        if rec is not None and not any(a.network == self.conf.name for a in users):
            shims.release(self.host, self.store, rec, self.environ, self.env.path, undo=self._shim_addrs_made)
        if users:
            return
        for name, kind in owned:
            link = self.host.link_get(name)
            if link is not None and link.kind == kind:
                self.host.link_del(link.index)
            self.store.unmark_owned(name)

    def _attach(self, att: Attachment, master: Link, steps: Steps) -> tuple[Link, Optional[Link], dict]:
        """Record the attachment and make what it shares with others on the parent: the VLAN
        sub-interface, the shim and the shim's addresses (all under the parent lock, so parallel
        ADDs make each once). Returns the parent, the shim and the shim's source address per family.
        A plugin killed before the record is written leaves them unrecorded: GC (and the DEL of
        that container) release what no attachment uses (_sweep_shared)."""
        att.parent = self._parent_name(master)
        with self.store.lock(att.parent):
            try:
                parent = self._ensure_parent(master)
                shim = self._ensure_shim(parent) if self.conf.host_shim else None
                rec = self._ensure_shim_addrs(parent, shim) if shim is not None else None
                att.shim = shim.name if shim else ""
                steps.point("shared-made")
                self.store.put(att)
            except BaseException:
                self._release_shared(att.parent, att)
                raise
        return parent, shim, shims.sources(rec)

    def _detach(self, att: Attachment) -> None:
        """Forget an attachment: its shim routes (unless another attachment now holds the IP),
        the shared things it was the last user of, then its record (last: a release that fails
        leaves the record, so the runtime's retried DEL releases again). Idempotent."""
        if not att.parent:  # pending (its ADD died before _attach): only the record to forget
            self.store.remove(att.network, att.container_id, att.ifname)
            return
        with self.store.lock(att.parent):
            if att.shim:
                claimed = {ip for a in self.store.all() if (a.network, a.container_id, a.ifname) !=
                           (att.network, att.container_id, att.ifname) for ip in a.ips}
                shim = self.host.link_get(att.shim)
                for cidr in att.ips:
                    if cidr not in claimed and shim is not None:
                        dst = ipaddress.ip_network(ipaddress.ip_interface(cidr).ip)
                        self.host.route_del(dst, oif=shim.index, proto=RTPROT_MOOR_SHIM)
            self._release_shared(att.parent, att)
            self.store.remove(att.network, att.container_id, att.ifname)

    def _shim_routes(self, ips: list[str], shim: Link, srcs: dict) -> None:
        for cidr in ips:
            ip = ipaddress.ip_interface(cidr).ip
            src = srcs.get(ip.version)
            if src is None:
                print(f"moor: the host shim has no IPv{ip.version} address; the node reaches {ip} from "
                      "whatever source the kernel picks", file=sys.stderr)
            # replace: a route written before the shim had an address gains its src in place
            self.host.route_replace(ipaddress.ip_network(ip), oif=shim.index, proto=RTPROT_MOOR_SHIM, src=src)

    # -- ADD ---------------------------------------------------------------------------------
    def add(self, steps: Steps) -> Result:
        env = self.env
        master = self._master()  # validate before changing anything
        nsfd = open_pod_netns(env)
        pod = None
        try:
            with steps:  # undo in reverse while the pod socket and netns fd are still open
                pod = steps.run("open-netns", lambda: pod_socket(nsfd, env.netns))
                return self._add(steps, master, nsfd, pod)
        finally:
            if pod is not None:
                pod.close()
            os.close(nsfd)

    def _add(self, steps: Steps, master: Link, nsfd: int, pod: RTNL) -> Result:
        c, env = self.conf, self.env
        if pod.link_get(env.ifname) is not None:
            raise CNIError(INTERFACE_EXISTS, f"interface {env.ifname} already exists in {env.netns}")

        att = Attachment(network=c.name, container_id=env.container_id, ifname=env.ifname, parent="",
                         netns=env.netns)
        ipam = Result()
        if c.ipam:
            self._record_pending(steps, att)
            ipam = steps.run("ipam", lambda: delegate.add(c.ipam["type"], self.environ, env.path, c.raw, IN_PROCESS),
                             self._ipam_undo)
        mac = self._choose_mac(ipam.ips)
        if c.host_shim is not None and c.host_shim.addresses:
            have = {a.version for a in c.host_shim.addresses}
            for ip in ipam.ips:
                if ip.version not in have:  # undone: the IPAM step's undo gives the pod's IP back
                    raise CNIError(INVALID_CONFIG, f"invalid network config: 'hostShim.addresses' has no IPv"
                                   f"{ip.version} address for the pod's {ip.address}")

        att.mac, att.ips = mac, [str(i.address) for i in ipam.ips]
        parent, shim, srcs = steps.run("parent", lambda: self._attach(att, master, steps), lambda: self._detach(att))

        steps.run("link", lambda: self.host.macvlan_add(env.ifname, parent.index, c.macvlan_mode, mac=mac,
                                                       mtu=c.mtu, netns_fd=nsfd),
                  lambda: self._delete_pod_link(pod))
        link = pod.link_get(env.ifname)
        assert link is not None

        def sysctls() -> None:
            with netns.entered(nsfd):
                netns.write_sysctl(f"net/ipv4/conf/{env.ifname}/arp_notify", "1")
                if any(i.version == 6 for i in ipam.ips):
                    netns.write_sysctl(f"net/ipv6/conf/{env.ifname}/ndisc_notify", "1")
        steps.run("sysctls", sysctls)
        steps.run("addresses", lambda: [pod.addr_add(link.index, i.address) for i in ipam.ips])
        steps.run("up", lambda: self._up(pod, link))
        routes = self._pod_routes(ipam)
        steps.run("routes", lambda: self._install_routes(pod, link, ipam, routes))
        if shim is not None:  # undone by the parent step's _detach, which removes them
            steps.run("shim-routes", lambda: self._shim_routes(att.ips, shim, srcs))
        steps.run("announce", lambda: self._announce(nsfd, link, ipam.ips))

        return self._result(link, ipam, routes)

    def _up(self, pod: RTNL, link: Link) -> None:
        try:
            pod.link_set(link.index, up=True)
        except NetlinkError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            # a fixed IP keeps its MAC: the pod's previous sandbox still holds this MAC (and IP)
            raise CNIError(TRY_AGAIN_LATER, f"MAC {link.mac} is in use by another macvlan on {self.conf.master}",
                           "the pod's previous sandbox still holds this IP and MAC; retry after its DEL") from e

    def _delete_pod_link(self, pod: RTNL) -> None:
        link = pod.link_get(self.env.ifname)
        if link is not None:
            pod.link_del(link.index)

    def _pod_routes(self, ipam: Result) -> list[RouteConfig]:
        gws = {}
        for ip in ipam.ips:
            if ip.gateway is not None:
                gws.setdefault(ip.version, ip.gateway)
        routes = [RouteConfig(dst=r.dst, gw=r.gw if r.gw is not None else gws.get(r.dst.version), extra=r.extra)
                  for r in ipam.routes]
        if self.conf.default_route:
            for ver, gw in gws.items():
                if not any(r.dst == _DEFAULT[ver] for r in routes):
                    routes.append(RouteConfig(dst=_DEFAULT[ver], gw=gw))
        return routes

    def _install_routes(self, pod: RTNL, link: Link, ipam: Result, routes: list[RouteConfig]) -> None:
        """Add the pod's routes. A default route another interface already holds (moor as a
        second network, e.g. under Multus) is kept, as the spec asks, and dropped from our result."""
        nets = [i.address.network for i in ipam.ips]
        for r in list(routes):
            onlink = r.gw is not None and not any(r.gw in n for n in nets if n.version == r.gw.version)
            if not pod.route_add(r.dst, oif=link.index, gateway=r.gw, proto=4, onlink=onlink):
                if r.dst.prefixlen:
                    raise CNIError(KERNEL_REFUSED, f"route {r.dst} already exists in {self.env.netns}")
                print(f"moor: keeping the existing default route in {self.env.netns}", file=sys.stderr)
                routes.remove(r)

    def _announce(self, nsfd: int, link: Link, ips: list[IPConfig]) -> None:
        # IPv4: the kernel sent the gratuitous ARP on link-up (arp_notify). Best effort: a lost
        # announcement must not fail the pod.
        v6 = [ip for ip in ips if ip.version == 6]
        if not v6:
            return
        try:
            with netns.entered(nsfd):
                for ip in v6:
                    announce.unsolicited_na(link.index, link.mac, ip.address.ip)
        except OSError as e:
            print(f"moor: announcing {link.name} failed: {e}", file=sys.stderr)

    def _result(self, link: Link, ipam: Result, routes: list[RouteConfig]) -> Result:
        prev = self.conf.prev_result or Result()
        res = Result(interfaces=list(prev.interfaces), ips=list(prev.ips), routes=list(prev.routes),
                     dns=dict(prev.dns))
        idx = len(res.interfaces)
        res.interfaces.append(Interface(name=self.env.ifname, mac=link.mac, sandbox=self.env.netns,
                                        mtu=link.mtu))
        res.ips += [IPConfig(address=i.address, gateway=i.gateway, interface=idx) for i in ipam.ips]
        res.routes += routes
        res.dns = ipam.dns or self.conf.dns or res.dns
        return res

    # -- DEL ---------------------------------------------------------------------------------
    def delete(self) -> None:
        c, env = self.conf, self.env
        att = self.store.get(c.name, env.container_id, env.ifname)
        if env.netns:
            self._delete_link_in(env.netns, env.ifname, "macvlan")
        if att is not None:
            self._detach(att)
        else:  # a temp file of its record, if a writer was killed before the first rename
            self.store.remove(c.name, env.container_id, env.ifname)
        if (att is None or not att.parent) and (c.vlan or c.host_shim):
            # its ADD may have died making the shared things: no record names them
            master = self.host.link_get(c.master)
            if master is not None:
                self._sweep_parent(self._parent_name(master))
        if c.ipam:  # last: the IP is free only once nothing on the node points at it
            self._ipam("DEL")

    # -- CHECK -------------------------------------------------------------------------------
    def _check_host(self, prev: Result) -> list[str]:
        self._parent = self.host.link_get(self.conf.parent)
        return [] if self._parent is not None else [f"parent link {self.conf.parent} does not exist on the node"]

    def _check_link(self, pod: RTNL, link: Link, prev: Result, idx: Optional[int]) -> list[str]:
        c, parent = self.conf, self._parent
        diffs = []
        if link.kind != "macvlan":
            diffs.append(f"{link.name} is a {link.kind or 'plain'} link, not macvlan")
        elif link.macvlan_mode != MACVLAN_MODES[c.macvlan_mode]:
            diffs.append(f"{link.name} macvlan mode differs from {c.macvlan_mode}")
        if parent is not None and link.parent and link.parent != parent.index:
            diffs.append(f"{link.name} is not a macvlan of {c.parent}")
        if idx is not None and prev.interfaces[idx].mac and prev.interfaces[idx].mac.lower() != link.mac:
            diffs.append(f"{link.name} MAC is {link.mac}, prevResult says {prev.interfaces[idx].mac}")
        if c.mtu and link.mtu != c.mtu:
            diffs.append(f"{link.name} MTU is {link.mtu}, config says {c.mtu}")
        tables = {v: pod.routes(v) for v in (4, 6)}
        for r in prev.routes:
            ok = any(kr.dst == r.dst and (r.gw is None or kr.gateway == r.gw) for kr in tables[r.dst.version])
            if not ok:
                diffs.append(f"route {r.dst}" + (f" via {r.gw}" if r.gw else "") + " missing")
        return diffs

    # -- GC and STATUS -------------------------------------------------------------------------
    def _release(self, att: Attachment) -> None:
        if att.netns:
            self._delete_link_in(att.netns, att.ifname, "macvlan")
        self._detach(att)

    def _sweep_shared(self) -> None:
        """Release the shared things no attachment uses: shim addresses, a shim, a VLAN
        sub-interface that an ADD killed inside _attach made before it recorded its attachment."""
        parents = {r.parent for r in self.store.shims(self.conf.name)} | self.store.owned_parents()
        for parent in sorted(parents):
            try:
                self._sweep_parent(parent)
            except CNIError as e:  # one parent's failure must not stop the rest of the GC
                print(f"moor: GC could not release what moor made on {parent}: {e.msg}", file=sys.stderr)

    def _sweep_parent(self, parent: str) -> None:
        with self.store.lock(parent):  # every ADD records its attachment under this lock
            if not any(a.parent == parent and a.network == self.conf.name for a in self.store.all()):
                self._release_shared(parent)

    def _ipam_gc_keep(self) -> list[dict[str, str]]:
        return shims.gc_keep(self.store, self.conf.name)

    def status(self) -> None:
        self._master(code=NOT_AVAILABLE)
        super().status()
