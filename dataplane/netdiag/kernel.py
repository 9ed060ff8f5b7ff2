"""netdiag's data source without the agent: the kernel itself (counters per netns, netlink), the CNI
plugin's attachment records and the IPAM database, read-only. It says what it cannot see."""
from __future__ import annotations

import ipaddress
import os
from typing import Any, Iterable, Optional

from .. import counters as kc
from ..counters import Snapshot
from .evidence import (BgpView, IpamView, PodAttachment, PodView, PoolUsage, ReservationInfo, RouteInfo,
                       kernel_socket_drops, reservation)

DEFAULT_CNI_STATE_DIR = "/var/lib/moor"  # cni.config.DEFAULT_STATE_DIR (the network config's stateDir)
DEFAULT_IPAM_DIR = "/var/lib/moor/ipam"  # ipam.config.DEFAULT_DATA_DIR (the ipam config's dataDir)

ROUTE_PROTOS = {1: "redirect", 2: "kernel", 3: "boot", 4: "static", 109: "moor", 110: "moor-shim",
                111: "moor-bgp", 186: "bgp", 188: "ospf"}
MOOR_PROTOS = (109, 110, 111)
NUD = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE", 0x20: "FAILED",
       0x40: "NOARP", 0x80: "PERMANENT"}

UNSEEN_DROPS = ("per-flow drops and their kernel drop reasons need the agent's eBPF probe (moord); "
                "showing kernel counters only")
UNSEEN_SESSIONS = ("VPC sessions (5-tuples per pod, long-lived and stale sessions after a route change) need the "
                   "agent's probe (moord); conntrack counts are shown where nf_conntrack is loaded")
UNSEEN_FRAGMENTS = ("which fragments are dropped (the bytes after the IP header a middlebox matches on) needs the "
                    "probe; the kernel counts reassembly failures only")
UNSEEN_BGP = "BGP peers and the routes they exchange need the agent (moord); showing moor's routes in the kernel"


class NotFound(LookupError):
    """Something the user named does not exist; str() says what and where it was looked for."""


def resolve_netns(names: list[str]) -> list[tuple[str, Optional[str]]]:
    """(name, path) for each --netns value: "host" (this process's netns), a path, or a name in
    /run/netns; NotFound naming the first unknown one."""
    out: list[tuple[str, Optional[str]]] = []
    for name in names:
        if name in ("host", "self"):
            out.append(("host", None))
            continue
        path = name if name.startswith("/") else os.path.join(kc.NETNS_RUN_DIR, name)
        if not os.path.exists(path):
            known = ", ".join(n for n, _ in kc.named_netns()) or "none"
            raise NotFound(f"network namespace {name!r} not found ({path} does not exist; named namespaces: {known})")
        try:
            os.close(_open_check(path))
        except ValueError as e:
            raise NotFound(str(e)) from None
        except OSError as e:
            raise NotFound(f"cannot open {path}: {e.strerror or e}") from None
        out.append((name if not name.startswith("/") else path, path))
    return out


def _open_check(path: str) -> int:
    from cni.netlink import netns as nsmod
    return nsmod.open_netns(path)


class KernelSource:
    """Reads the kernel directly. netns: names/paths to read (None: this netns, every named one and
    every pod netns of the CNI records)."""

    name = "kernel"

    def __init__(self, netns: Optional[list[str]] = None, cni_state_dir: str = DEFAULT_CNI_STATE_DIR,
                 ipam_dir: str = DEFAULT_IPAM_DIR, ipam_config: Optional[str] = None):
        self.cni_state_dir = cni_state_dir
        self.ipam_dir = ipam_dir
        self.ipam_config = ipam_config
        self.scoped = bool(netns)
        self._targets = resolve_netns(netns) if netns else None
        self._last: Optional[Snapshot] = None

    # -- what to read ------------------------------------------------------------------------
    def targets(self) -> list[tuple[str, Optional[str]]]:
        if self._targets is not None:
            return self._targets
        me = kc.netns_inode(kc.self_netns_path())
        out: list[tuple[str, Optional[str]]] = []
        seen = {me}
        host_name = "host"
        try:
            if me != os.stat("/proc/1/ns/net").st_ino:
                host_name = "self"
        except OSError:
            pass
        named = []
        for name, path in kc.named_netns():
            try:
                ino = kc.netns_inode(path)
            except OSError:
                continue
            if ino == me:
                host_name = name  # netdiag runs inside a named netns (ip netns exec)
                continue
            if ino not in seen:
                seen.add(ino)
                named.append((name, path))
        out.append((host_name, None))
        out.extend(named)
        for a in self._attachments():
            try:
                ino = kc.netns_inode(a.netns) if a.netns else 0
            except OSError:
                continue
            if ino and ino not in seen:
                seen.add(ino)
                out.append((a.netns, a.netns))
        return out

    # -- Source ----------------------------------------------------------------------------------
    def counters(self) -> Snapshot:
        snap = kc.snapshot(self.targets())
        pods = self.pod_index()
        for n in snap.netns:
            n.pod = pods.get(n.inode, "")
        self._last = snap
        return snap

    def drops(self) -> list:
        return []

    def rcvbuf(self) -> list:
        return kernel_socket_drops(self._last or self.counters())

    def sessions(self) -> list:
        return []

    def pressure(self) -> Any:
        return None

    def unavailable(self) -> list[str]:
        return [UNSEEN_DROPS, UNSEEN_SESSIONS, UNSEEN_FRAGMENTS, UNSEEN_BGP]

    def bgp(self) -> BgpView:
        view = BgpView(note=UNSEEN_BGP + " (proto 109: pod routes the agent advertises, 110: host-shim routes, "
                            "111: routes it learned over BGP and installed)")
        try:
            from cni.netlink.rtnl import RTNL
            links = {lk.index: lk.name for lk in kc.read_links()}
            with RTNL() as nl:
                for v in (4, 6):
                    for r in nl.routes(v):
                        if r.proto in MOOR_PROTOS:
                            hops = [str(g) for g in r.multipath] or ([str(r.gateway)] if r.gateway else [])
                            view.kernel_routes.append(RouteInfo(prefix=str(r.dst), next_hops=hops, installed=True,
                                                                proto=ROUTE_PROTOS[r.proto],
                                                                dev=links.get(r.oif, "")))
        except OSError as e:
            view.note += f"; cannot read routes: {e}"
        view.kernel_routes.sort(key=lambda r: (r.proto, r.prefix))
        return view

    def ipam(self, node: str = "") -> IpamView:
        if self.ipam_config:
            return read_ipam_config(self.ipam_config, node)
        return read_ipam_dir(self.ipam_dir, node=node)

    def pod(self, namespace: str, name: str) -> PodView:
        key = f"{namespace}/{name}"
        ipam = self.ipam()
        res = [r for r in ipam.reservations if r.pod == key or r.identity == f"pod:{key}"]
        cids = {r.container_id for r in res if r.container_id}
        ips = {r.ip for r in res}
        atts = [a for a in self._attachments()
                if a.container_id in cids or {ip.split("/")[0] for ip in a.ips} & ips]
        if not res and not atts:
            why = f" ({ipam.error})" if ipam.error else ""
            raise NotFound(f"pod {key} not found: no IPAM reservation for it in {ipam.where or self.ipam_dir}{why} "
                           f"and no CNI attachment record in {self.cni_state_dir} (--ipam-dir, --cni-state-dir)")
        view = PodView(pod=key, reservations=res)
        if not atts:
            states = ", ".join(f"{r.ip} {r.state}" + (f" on {r.node}" if r.node else "") for r in res)
            view.notes.append(f"no CNI attachment of it on this node ({states})")
        for a in atts:
            view.attachments.append(self._detail(a, key))
        return view

    # -- pods ------------------------------------------------------------------------------------
    def _attachments(self) -> list:
        from cni.state import Store
        return Store(self.cni_state_dir).all()

    def pod_index(self) -> dict[int, str]:
        """netns inode -> pod namespace/name (or "container <id>" without an IPAM record)."""
        out: dict[int, str] = {}
        ipam = self.ipam()
        by_cid = {r.container_id: r.pod for r in ipam.reservations if r.container_id and r.pod}
        by_ip = {r.ip: r.pod for r in ipam.reservations if r.pod and r.state == "active"}
        for a in self._attachments():
            pod = by_cid.get(a.container_id) or next((by_ip[i.split("/")[0]] for i in a.ips
                                                      if i.split("/")[0] in by_ip), "")
            _put_inode(out, a.netns, pod or f"container {a.container_id[:12]}")
        for r in ipam.reservations:
            if r.state == "active" and r.netns and r.pod:
                _put_inode(out, r.netns, r.pod)
        return out

    def _detail(self, a: Any, key: str) -> PodAttachment:
        pa = PodAttachment(network=a.network, container_id=a.container_id, ifname=a.ifname, netns=a.netns,
                           mode="bgp" if a.host_link else "macvlan", ips=list(a.ips), host_link=a.host_link,
                           parent=a.parent)
        if not a.netns or not os.path.exists(a.netns):
            pa.error = f"its netns {a.netns or '(none recorded)'} is gone"
        else:
            try:
                pa.netns_inode = kc.netns_inode(a.netns)
                links, addrs, routes, neigh = kc.in_netns(a.netns, _inside)
                pa.interfaces = links
                pa.addresses = addrs
                pa.routes = routes
                pa.neighbours = neigh
                pa.counters = kc.read_netns(a.netns, a.netns)
                pa.counters.pod = key
            except (OSError, ValueError) as e:
                pa.error = f"cannot read its netns {a.netns}: {e}"
        try:
            host_links = kc.read_links()
            names = {lk.index: lk.name for lk in host_links}
            want = {x for x in (a.host_link, a.parent, getattr(a, "shim", "")) if x}
            pa.host_side = [lk for lk in host_links if lk.name in want]
            pod_ips = {ipaddress.ip_interface(i).ip for i in a.ips}
            from cni.netlink.rtnl import RTNL
            with RTNL() as nl:
                for v in (4, 6):
                    for r in nl.routes(v):
                        if r.dst.prefixlen == r.dst.max_prefixlen and r.dst.network_address in pod_ips:
                            pa.host_routes.append(format_route(r, names))
        except (OSError, ValueError) as e:
            pa.error = (pa.error + "; " if pa.error else "") + f"cannot read the host side: {e}"
        return pa


def _put_inode(out: dict, path: str, label: str) -> None:
    if not path:
        return
    try:
        out.setdefault(kc.netns_inode(path), label)
    except OSError:
        pass


def _inside() -> tuple[list, list[str], list[str], list[str]]:
    """Links, addresses, routes and neighbours of the current netns, as text for people."""
    from cni.netlink.rtnl import RTNL
    links = kc.read_links()
    names = {lk.index: lk.name for lk in links}
    with RTNL() as nl:
        addrs = [f"{ip} dev {lk.name}" for lk in links for ip in nl.addrs(lk.index)]
        routes = [format_route(r, names) for v in (4, 6) for r in nl.routes(v)]
    return links, addrs, routes, neighbours(names)


def format_route(r: Any, names: dict) -> str:
    dst = "default" if r.dst.prefixlen == 0 else str(r.dst)
    parts = [dst]
    if r.multipath:
        parts.append("nexthops " + " ".join(f"via {g}" for g in r.multipath))
    elif r.gateway is not None:
        parts.append(f"via {r.gateway}")
    if r.oif:
        parts.append(f"dev {names.get(r.oif, r.oif)}")
    parts.append(f"proto {ROUTE_PROTOS.get(r.proto, r.proto)}")
    if r.priority:
        parts.append(f"metric {r.priority}")
    return " ".join(parts)


def neighbours(names: dict) -> list[str]:
    from cni.netlink import wire as w
    out = []
    for m in kc.netlink_dump(0, kc.RTM_GETNEIGH, w.NDMSG.pack(0, 0, 0, 0, 0), "dump neighbours"):
        if m.type != kc.RTM_NEWNEIGH or len(m.body) < w.NDMSG.size:
            continue
        _fam, idx, state, _fl, _typ = w.NDMSG.unpack_from(m.body)
        a = w.parse_attrs(m.body[w.NDMSG.size:])
        if w.NDA_DST not in a:
            continue
        mac = ":".join(f"{b:02x}" for b in a.get(w.NDA_LLADDR, b""))
        st = "|".join(v for k, v in NUD.items() if state & k) or str(state)
        out.append(f"{ipaddress.ip_address(a[w.NDA_DST])} dev {names.get(idx, idx)}"
                   + (f" lladdr {mac}" if mac else "") + f" {st}")
    return out


# ---------------------------------------------------------------------------------------------
# IPAM, read-only


def _ipam_view(snaps: Iterable) -> IpamView:
    """Pages of ipam.read snapshots as one view: their reservations, their pool usage summed."""
    view = IpamView()
    errors: list[str] = []
    usage: dict[tuple[str, str], PoolUsage] = {}
    for snap in snaps:
        view.where = view.where or snap.where
        if snap.error:
            errors.append(snap.error)
        view.reservations += [reservation(r, snap.network) for r in snap.reservations]
        for p in snap.pools:  # each page counts its own rows
            u = usage.setdefault((snap.network, p.cidr), PoolUsage(cidr=p.cidr, size=p.size))
            u.active, u.held = u.active + p.active, u.held + p.held
    view.error = "; ".join(errors)
    view.pools = list(usage.values())
    view.reservations.sort(key=_ip_key)
    return view


def read_ipam_dir(data_dir: str, network: str = "", node: str = "") -> IpamView:
    """Every reservation in the embedded store of `data_dir` (`node`: that node's), read-only and
    a page at a time (ipam.read): netdiag never takes the write lock the plugin needs."""
    from ipam.read import pages_dir
    return _ipam_view(pages_dir(data_dir, network or None, node))


def read_ipam_config(config: str, node: str = "") -> IpamView:
    """The reservations of the network a moor-ipam config file names (`node`: that node's), from
    its store (the embedded one read-only, or etcd) a page at a time, with the usage of its pools."""
    from ipam.read import Snapshot, pages, read_netconf
    try:
        _doc, conf = read_netconf(config)
    except ValueError as e:
        return _ipam_view([Snapshot(where=config, error=str(e))])
    return _ipam_view(pages(conf, node=node))


def _ip_key(r: ReservationInfo) -> tuple:
    try:
        ip = ipaddress.ip_address(r.ip)
        return (r.network, ip.version, int(ip))
    except ValueError:
        return (r.network, 9, 0)

