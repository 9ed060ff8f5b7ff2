"""Routed ("bgp") mode: a veth pair per pod, the pod's IP as /32 (/128), a default route via a
link-local gateway (169.254.1.1, fe80::1) pinned by a permanent neighbour entry to the host end's
MAC, and on the node `IP/32 dev <host veth> proto moor`: the route the agent advertises over BGP.
No bridge, no NAT, no packet-filter rule.

"device": "veth" (the default), "auto" or "netkit". The pair is a netkit pair in L3 mode (no MAC or
ARP, so the pod's default route is simply `dev eth0`) where the kernel has netkit (Linux 6.7+,
CONFIG_NETKIT) and "device" is "auto" or "netkit". veth is the default because moord's eBPF host
routing (tc, parsing an Ethernet header) forwards veth pods only: a netkit pair without its own
BPF program passes packets through the same per-CPU backlog as a veth. "auto" falls back to veth
where rtnetlink knows no such kind (EOPNOTSUPP); "netkit" fails then, naming the field."""
from __future__ import annotations

import errno
import ipaddress
import os
import sys

from ipam.inprocess import IN_PROCESS

from .mode import Mode, open_pod_netns, pod_socket
from .netlink import netns
from .netlink.rtnl import RTNL, Link, NetlinkError
from .netlink.wire import RTPROT_MOOR
from .spec import delegate
from .spec.errors import INTERFACE_EXISTS, INVALID_CONFIG, UNSUPPORTED_FIELD, CNIError
from .spec.result import Interface, IPConfig, Result, RouteConfig
from .state import Attachment
from .steps import Steps

PAIR_KINDS = ("veth", "netkit")
ADDR_GEN_RANDOM = "3"  # IN6_ADDR_GEN_MODE_RANDOM: a random link-local (see _pod_addresses)
GATEWAY = {4: ipaddress.ip_address("169.254.1.1"), 6: ipaddress.ip_address("fe80::1")}
DEFAULT = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    """The host end's name: stable for the attachment, 15 bytes, recognisably moor's."""
    try:  # the C module itself: `import hashlib` loads OpenSSL first (~3 ms of start-up)
        from _sha1 import sha1
    except ImportError:
        from hashlib import sha1
    digest = sha1(f"{network}/{container_id}/{ifname}".encode()).hexdigest()
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
        att = Attachment(network=c.name, container_id=env.container_id, ifname=env.ifname, parent="",
                         netns=env.netns, host_link=hname)
        self._record_pending(steps, att)
        ipam = steps.run("ipam", lambda: delegate.add(c.ipam["type"], self.environ, env.path, c.raw, IN_PROCESS),
                         self._ipam_undo)
        ips = [i.address.ip for i in ipam.ips]
        mac = self._choose_mac(ipam.ips)
        att.mac, att.ips = mac, [str(_host(ip)) for ip in ips]
        steps.run("record", lambda: self.store.put(att))  # the pending step's undo removes it
        kind = steps.run("veth", lambda: self._make_pair(hname, nsfd, mac),
                         lambda: self._delete_host_veth(hname, att.ips))
        host = self.host.link_get(hname)
        link = pod.link_get(env.ifname)
        assert host is not None and link is not None

        def host_side() -> None:
            # IPv4 forwards by the ingress interface's switch. IPv6 forwards by conf.all alone (moord
            # sets it), so the host end's own IPv6 forwarding bit would only make it a router, and
            # turning it on (anycast, all-routers groups) doubles what deleting the veth costs the
            # kernel (16 -> 32-38 ms, bench/veth_del.py). What that bit gave, no router advertisement
            # or redirect from the pod taken, is said directly. A pod without IPv6: none on the host
            # end at all (no addrconf to set up or tear down; nothing a pod could announce).
            netns.write_sysctl(f"net/ipv4/conf/{hname}/forwarding", "1")
            if any(ip.version == 6 for ip in ips):
                for key in ("accept_ra", "accept_redirects"):
                    netns.write_sysctl(f"net/ipv6/conf/{hname}/{key}", "0")
                if kind == "netkit":
                    netns.write_sysctl(f"net/ipv6/conf/{hname}/addr_gen_mode", ADDR_GEN_RANDOM)
            elif os.path.isdir("/proc/sys/net/ipv6"):  # a kernel without IPv6 has nothing to disable
                netns.write_sysctl(f"net/ipv6/conf/{hname}/disable_ipv6", "1")
            if kind == "veth":
                self._clsact(host.index)
            self.host.link_set(host.index, up=True)
        steps.run("host-side", host_side)
        steps.run("addresses", lambda: self._pod_addresses(pod, link, nsfd, ips, kind))
        steps.run("up", lambda: pod.link_set(link.index, up=True))
        routes = self._pod_routes(ips)
        steps.run("pod-routes", lambda: self._install_pod_routes(pod, link, host, ips, kind))
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
        res.ips += [IPConfig(address=_host(ip), gateway=GATEWAY[ip.version] if kind == "veth" else None,
                             interface=idx + 1) for ip in ips]
        res.routes += routes if kind == "veth" else [RouteConfig(dst=r.dst) for r in routes]
        return res

    def _clsact(self, index: int) -> None:
        """The clsact qdisc moord's host routing hangs its filter on, made now, before the pod
        has traffic: grafting a qdisc onto a live device deactivates it for a moment and drops
        what it is sending (measured: a datagram of a stream, now and then), while adding a
        filter later does not. Best effort: without it, moord makes it when it attaches."""
        try:
            self.host.clsact(index)
        except OSError as e:
            print(f"moor: no clsact qdisc on the host end ({e}); moord's host routing makes it when it attaches",
                  file=sys.stderr)

    def _pod_addresses(self, pod: RTNL, link: Link, nsfd: int, ips: list, kind: str) -> None:
        if kind == "netkit" and any(ip.version == 6 for ip in ips):
            # an L3 netkit pair has no MAC (all zero) on either end, so EUI-64 gives both ends the
            # same link-local, fe80::200:ff:fe00:0: the node, with no global IPv6 of its own, then
            # pings a pod from the pod's own address and never hears back. Random ones, both ends.
            with netns.entered(nsfd):
                netns.write_sysctl(f"net/ipv6/conf/{self.env.ifname}/addr_gen_mode", ADDR_GEN_RANDOM)
        for ip in ips:
            pod.addr_add(link.index, _host(ip))

    def _pod_routes(self, ips: list) -> list[RouteConfig]:
        return [RouteConfig(dst=DEFAULT[v], gw=GATEWAY[v]) for v in sorted({ip.version for ip in ips})]

    def _make_pair(self, hname: str, nsfd: int, mac: str) -> str:
        """The pod's pair, by conf.device; which kind it is."""
        c, env = self.conf, self.env
        if c.device in ("auto", "netkit"):
            try:
                self.host.netkit_add(hname, env.ifname, nsfd, mtu=c.mtu)
                return "netkit"
            except NetlinkError as e:
                if e.errno != errno.EOPNOTSUPP:
                    raise
                if c.device == "netkit":
                    raise CNIError(UNSUPPORTED_FIELD, "unsupported field 'device': \"netkit\": this kernel has no netkit "
                                   "devices (EOPNOTSUPP: they need Linux 6.7+ with CONFIG_NETKIT)",
                                   "use \"auto\" (netkit where the kernel has it, else veth) or \"veth\"") from None
        self.host.veth_add(hname, env.ifname, nsfd, mtu=c.mtu, peer_mac=mac)
        return "veth"

    def _install_pod_routes(self, pod: RTNL, link: Link, host: Link, ips: list, kind: str = "veth") -> None:
        for v in sorted({ip.version for ip in ips}):
            if kind == "netkit":  # L3: no neighbours, the device is the way out
                pod.route_replace(DEFAULT[v], oif=link.index, proto=4)
                continue
            # the gateway exists only as a permanent neighbour: no ARP/NDP, no proxy on the host
            pod.neigh_replace(link.index, GATEWAY[v], host.mac)
            pod.route_replace(DEFAULT[v], oif=link.index, gateway=GATEWAY[v], proto=4, onlink=True)

    def _delete_host_veth(self, name: str, ips: list[str]) -> None:
        link = self.host.link_get(name)
        if link is not None and link.kind in PAIR_KINDS:
            # the routes first, one by one: the kernel flushes a deleted link's IPv4 routes without
            # an RTM_DELROUTE (the agent would have to notice the link going instead)
            for cidr in ips:
                dst = ipaddress.ip_interface(cidr).network
                self.host.route_del(dst, oif=link.index, proto=RTPROT_MOOR)
            self.host.link_del(link.index)  # takes the pod end along

    # -- DEL ---------------------------------------------------------------------------------
    def delete(self) -> None:
        c, env = self.conf, self.env
        att = self.store.get(c.name, env.container_id, env.ifname)
        prev_ips = [str(_host(i.address.ip)) for i in c.prev_result.ips] if c.prev_result else []
        self._delete_host_veth(att.host_link if att and att.host_link else self._host_name(),
                               att.ips if att else prev_ips)
        self.store.remove(c.name, env.container_id, env.ifname)
        if c.ipam:  # last: the IP is free only once no route on the node points at it
            self._ipam("DEL")

    def _release(self, att: Attachment) -> None:
        self._delete_host_veth(att.host_link or host_veth_name(att.network, att.container_id, att.ifname), att.ips)
        self.store.remove(att.network, att.container_id, att.ifname)

    # -- CHECK -------------------------------------------------------------------------------
    def _check_host(self, prev: Result) -> list[str]:
        hname = self._host_name()
        host = self.host.link_get(hname)
        if host is None or host.kind not in PAIR_KINDS:
            return [f"host veth {hname} does not exist"]
        tables = {v: self.host.routes(v) for v in sorted({ip.version for ip in prev.ips})}
        diffs = []
        for ip in prev.ips:
            dst = ipaddress.ip_network(ip.address.ip)
            if not any(r.dst == dst and r.oif == host.index and r.proto == RTPROT_MOOR for r in tables[ip.version]):
                diffs.append(f"host route {dst} dev {hname} proto moor missing")
        return diffs

    def _check_link(self, pod: RTNL, link: Link, prev: Result, idx) -> list[str]:
        if link.kind not in PAIR_KINDS:
            return [f"{link.name} is a {link.kind or 'plain'} link, not veth or netkit"]
        if link.kind == "netkit":
            return [f"default route dev {link.name} missing" for v in sorted({ip.version for ip in prev.ips})
                    if not any(r.dst == DEFAULT[v] and r.oif == link.index for r in pod.routes(v))]
        return [f"default route via {GATEWAY[v]} missing" for v in sorted({ip.version for ip in prev.ips})
                if not any(r.dst == DEFAULT[v] and r.gateway == GATEWAY[v] for r in pod.routes(v))]
