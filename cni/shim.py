"""The host shim's own addresses. The node reaches its macvlan pods through the shim; its packets
must carry a source address on the pods' subnet, so a pod answers on L2 straight to the shim
instead of through its gateway (which, on a real network, need not route the node's uplink
address back into the segment). One address per IP family, per network and parent: from the
network's IPAM under a fixed per-node identity, or from `hostShim.addresses`. Callers hold the
parent lock (cni/macvlan.py)."""
from __future__ import annotations

import ipaddress
import zlib

from ipam.inprocess import IN_PROCESS, UNDO_ENV

from .config import NetConf
from .netlink.rtnl import RTNL, Link
from .spec import delegate
from .spec.names import valid_id
from .spec.netconf import GC_KEYS
from .state import ShimAddrs, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, Union

    IPAddr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

IPAM_IFNAME = "shim"
# the reference IPAM plugins require CNI_NETNS for ADD; the shim lives in the node's own netns
IPAM_NETNS = "/proc/self/ns/net"
# keys of the pod's config that speak for the pod (its requested IPs, its prevResult), not the shim
_POD_KEYS = ("runtimeConfig", "args", "prevResult", "capabilities", *GC_KEYS)


def ipam_id(parent: str) -> str:
    """The CNI_CONTAINERID IPAM knows a parent's shim by: stable, so every ADD finds it again."""
    name = f"moor-shim-{parent}"
    # a parent name libcni would refuse in an ID: its hash
    return name if valid_id(name) else f"moor-shim-{zlib.crc32(parent.encode()):08x}"


def ipam_env(environ: Mapping[str, str], rec: ShimAddrs, undo: bool = False) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in ("CNI_ARGS", UNDO_ENV)}
    env.update(CNI_CONTAINERID=rec.ipam_id, CNI_IFNAME=IPAM_IFNAME, CNI_NETNS=IPAM_NETNS)
    if undo:  # moor-ipam puts back exactly what the ADD replaced; other plugins ignore it
        env[UNDO_ENV] = "1"
    return env


def allocate(store: Store, conf: NetConf, environ: Mapping[str, str], path: list[str], parent: str,
             shim: str) -> ShimAddrs | None:
    """Addresses for the shim, recorded; None when there is nowhere to take them from (no IPAM
    and no hostShim.addresses: the pod has no IP to route to either)."""
    assert conf.host_shim is not None
    if conf.host_shim.addresses:
        rec = ShimAddrs(network=conf.name, parent=parent, shim=shim,
                        addresses=[str(a) for a in conf.host_shim.addresses])
        store.shim_put(rec)
        return rec
    if not conf.ipam:
        return None
    rec = ShimAddrs(network=conf.name, parent=parent, shim=shim, ipam_id=ipam_id(parent),
                    ipam_conf={k: v for k, v in conf.raw.items() if k not in _POD_KEYS})
    store.shim_put(rec)  # first: an allocation whose record was lost would never be given back
    kind = rec.ipam_conf["ipam"]["type"]
    # a record lost after an earlier ADD (or never written) may have left an allocation under this
    # identity: give it back first, since host-local refuses a second ADD of one ID
    delegate.run(kind, "DEL", ipam_env(environ, rec), path, rec.ipam_conf, IN_PROCESS)
    res = delegate.add(kind, ipam_env(environ, rec), path, rec.ipam_conf, IN_PROCESS)
    firsts: dict[int, str] = {}
    for ip in res.ips:  # one per family: a second range of one family is not needed on the shim
        firsts.setdefault(ip.version, str(ip.address))
    rec.addresses = list(firsts.values())
    store.shim_put(rec)
    return rec


def _on_link(cidr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    # a host-length address: the node gets no route to the whole pod subnet through the shim,
    # only the per-pod /32 (/128) routes, so nothing but its own pods' traffic changes path
    ip = ipaddress.ip_interface(cidr).ip
    return ipaddress.ip_interface((ip, ip.max_prefixlen))


def install(host: RTNL, rec: ShimAddrs, shim: Link) -> None:
    """Put the addresses on the shim (again: idempotent, mends one removed by hand)."""
    for cidr in rec.addresses:
        host.addr_add(shim.index, _on_link(cidr))


def sources(rec: ShimAddrs | None) -> dict[int, IPAddr]:
    """The source address of the shim routes, per IP family."""
    if rec is None:
        return {}
    return {ipaddress.ip_interface(a).version: ipaddress.ip_interface(a).ip for a in rec.addresses}


def release(host: RTNL, store: Store, rec: ShimAddrs, environ: Mapping[str, str], path: list[str],
            undo: bool = False) -> None:
    """Take the addresses off the shim, give them back to IPAM, forget the record (in that order:
    an address is free only once nothing on the node uses it; a failure keeps the record, so the
    next release tries again)."""
    link = host.link_get(rec.shim)
    if link is not None:
        for cidr in rec.addresses:
            host.addr_del(link.index, _on_link(cidr))
    if rec.ipam_conf:
        delegate.run(rec.ipam_conf["ipam"]["type"], "DEL", ipam_env(environ, rec, undo), path, rec.ipam_conf, IN_PROCESS)
    store.shim_remove(rec.network, rec.parent)


def gc_keep(store: Store, network: str) -> list[dict[str, str]]:
    """The shim identities an IPAM GC must count as live (the runtime's list has no such container)."""
    return [{"containerID": r.ipam_id, "ifname": IPAM_IFNAME} for r in store.shims(network) if r.ipam_conf]
