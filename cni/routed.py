"""Routed ("bgp") mode: a veth pair per pod, the pod's IP as /32 (/128), a default route via a
link-local gateway (169.254.1.1, fe80::1) pinned by a permanent neighbour entry to the host end's
MAC, and on the node `IP/32 dev <host veth> proto moor`: the route the agent advertises over BGP.
No bridge, no NAT, no packet-filter rule."""
from __future__ import annotations

import hashlib
import ipaddress
import os

from . import delegate
from .errors import CHECK_FAILED, INTERFACE_EXISTS, INVALID_CONFIG, CNIError
from .mode import Mode, open_pod_netns, pod_socket
from .netlink import netns
from .netlink.rtnl import RTNL, Link
from .netlink.wire import RTPROT_MOOR
from .result import Interface, IPConfig, Result, RouteConfig
from .state import Attachment
from .steps import Steps

GATEWAY = {4: ipaddress.ip_address("169.254.1.1"), 6: ipaddress.ip_address("fe80::1")}
DEFAULT = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    """The host end's name: stable for the attachment, 15 bytes, recognisably moor's."""
    digest = hashlib.sha1(f"{network}/{container_id}/{ifname}".encode()).hexdigest()
    return "moor" + digest[:11]


def _host(ip) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface((ip, ip.max_prefixlen))


class RoutedPlugin(Mode):
    def _host_name(self) -> str:
        return host_veth_name(self.conf.name, self.env.container_id, self.env.ifname)

    # -- ADD ---------------------------------------------------------------------------------
    def add(self, steps: Steps) -> Result:
        env = self.env
        if not self.conf.ipam:
            raise CNIError(INVALID_CONFIG, "invalid network config: mode 'bgp' needs 'ipam'")
        nsfd = open_pod_netns(env)
        pod = None
        try:
            with steps:
                pod = steps.run("open-netns", lambda: pod_socket(nsfd, env.netns))
                return self._add(steps, nsfd, pod)
        finally:
            if pod is not None:
                pod.close()
            os.close(nsfd)

    def _add(self, steps: Steps, nsfd: int, pod: RTNL) -> Result:
        c, env = self.conf, self.env
        if pod.link_get(env.ifname) is not None:
            raise CNIError(INTERFACE_EXISTS, f"interface {env.ifname} already exists in {env.netns}")
        hname = self._host_name()
        ipam = steps.run("ipam", lambda: delegate.add(c.ipam["type"], self.environ, env.path, c.raw),
                         lambda: self._ipam("DEL"))
        ips = [i.address.ip for i in ipam.ips]
        mac = self._choose_mac(ipam.ips)
        att = Attachment(network=c.name, container_id=env.container_id, ifname=env.ifname, parent="",
                         mac=mac, netns=env.netns, ips=[str(_host(ip)) for ip in ips], host_link=hname)
        steps.run("record", lambda: self.store.put(att),
                  lambda: self.store.remove(c.name, env.container_id, env.ifname))
        steps.run("veth", lambda: self.host.veth_add(hname, env.ifname, nsfd, mtu=c.mtu, peer_mac=mac),
                  lambda: self._delete_host_veth(hname))
        host = self.host.link_get(hname)
        link = pod.link_get(env.ifname)
        assert host is not None and link is not None

        def host_side() -> None:
            for fam in ("ipv4", "ipv6"):
                netns.write_sysctl(f"net/{fam}/conf/{hname}/forwarding", "1")
            self.host.link_set(host.index, up=True)
        steps.run("host-side", host_side)
        steps.run("addresses", lambda: [pod.addr_add(link.index, _host(ip)) for ip in ips])
        steps.run("up", lambda: pod.link_set(link.index, up=True))
        routes = self._pod_routes(ips)
        steps.run("pod-routes", lambda: self._install_pod_routes(pod, link, host, ips))
        # last: the agent advertises this route the moment it appears, so the pod must be ready
        steps.run("host-routes", lambda: [self.host.route_replace(_host(ip).network, oif=host.index, proto=RTPROT_MOOR)
                                          for ip in ips])
        res = Result(dns=ipam.dns or c.dns)
        prev = c.prev_result or Result()
        res.interfaces = list(prev.interfaces)
        res.ips, res.routes = list(prev.ips), list(prev.routes)
        idx = len(res.interfaces)
        res.interfaces += [Interface(name=hname, mac=host.mac),
                           Interface(name=env.ifname, mac=link.mac, sandbox=env.netns, mtu=link.mtu)]
        res.ips += [IPConfig(address=_host(ip), gateway=GATEWAY[ip.version], interface=idx + 1) for ip in ips]
        res.routes += routes
        return res

    def _pod_routes(self, ips: list) -> list[RouteConfig]:
        return [RouteConfig(dst=DEFAULT[v], gw=GATEWAY[v]) for v in sorted({ip.version for ip in ips})]

    def _install_pod_routes(self, pod: RTNL, link: Link, host: Link, ips: list) -> None:
        for v in sorted({ip.version for ip in ips}):
            # the gateway exists only as a permanent neighbour: no ARP/NDP, no proxy on the host
            pod.neigh_replace(link.index, GATEWAY[v], host.mac)
            pod.route_replace(DEFAULT[v], oif=link.index, gateway=GATEWAY[v], proto=4, onlink=True)

    def _delete_host_veth(self, name: str) -> None:
        link = self.host.link_get(name)
        if link is not None and link.kind == "veth":
            # the routes first, one by one: the kernel flushes a deleted link's IPv4 routes without
            # an RTM_DELROUTE, and the agent withdraws on that event
            for v in (4, 6):
                for r in self.host.routes(v):
                    if r.oif == link.index and r.proto == RTPROT_MOOR:
                        self.host.route_del(r.dst, oif=link.index, proto=RTPROT_MOOR)
            self.host.link_del(link.index)  # takes the pod end along

    # -- DEL ---------------------------------------------------------------------------------
    def delete(self) -> None:
        c, env = self.conf, self.env
        att = self.store.get(c.name, env.container_id, env.ifname)
        self._delete_host_veth(att.host_link if att and att.host_link else self._host_name())
        self.store.remove(c.name, env.container_id, env.ifname)
        if c.ipam:  # last: the IP is free only once no route on the node points at it
            self._ipam("DEL")

    def _release(self, att: Attachment) -> None:
        self._delete_host_veth(att.host_link or host_veth_name(att.network, att.container_id, att.ifname))
        self.store.remove(att.network, att.container_id, att.ifname)

    # -- CHECK -------------------------------------------------------------------------------
    def check(self) -> None:
        c, env = self.conf, self.env
        prev = c.prev_result
        if prev is None:
            raise CNIError(INVALID_CONFIG, "invalid network config: CHECK needs 'prevResult'")
        diffs: list[str] = []
        hname = self._host_name()
        host = self.host.link_get(hname)
        if host is None or host.kind != "veth":
            diffs.append(f"host veth {hname} does not exist")
        nsfd = open_pod_netns(env)
        try:
            pod = pod_socket(nsfd, env.netns)
        finally:
            os.close(nsfd)
        try:
            link = pod.link_get(env.ifname)
            if link is None or link.kind != "veth":
                diffs.append(f"veth {env.ifname} does not exist in {env.netns}")
            else:
                if not link.up:
                    diffs.append(f"{env.ifname} is down")
                have = set(pod.addrs(link.index))
                idx = next((n for n, i in enumerate(prev.interfaces) if i.name == env.ifname and i.sandbox), None)
                for ip in prev.ips:
                    if ip.interface == idx and ip.address not in have:
                        diffs.append(f"address {ip.address} missing from {env.ifname}")
                for v in sorted({ip.version for ip in prev.ips}):
                    if not any(r.dst == DEFAULT[v] and r.gateway == GATEWAY[v] for r in pod.routes(v)):
                        diffs.append(f"default route via {GATEWAY[v]} missing")
        finally:
            pod.close()
        if host is not None:
            for ip in prev.ips:
                dst = ipaddress.ip_network(ip.address.ip)
                if not any(r.dst == dst and r.oif == host.index and r.proto == RTPROT_MOOR
                           for r in self.host.routes(ip.version)):
                    diffs.append(f"host route {dst} dev {hname} proto moor missing")
        try:
            self._ipam("CHECK")
        except CNIError as e:
            diffs.append(f"IPAM: {e.msg}")
        if diffs:
            raise CNIError(CHECK_FAILED, f"CHECK failed for {env.ifname}: " + "; ".join(diffs))
