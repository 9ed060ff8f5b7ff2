"""A small synchronous rtnetlink client over the wire layer (links, addresses, routes)."""
from __future__ import annotations

import errno
import ipaddress
import os
import _socket as socket  # the C module: socket.py imports enum and selectors (~2.5 ms)
import struct
from ..spec.errors import KERNEL_REFUSED
from ..spec.record import record, field

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Optional, Union

    IPNet = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
    IPIf = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
    IPAddr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

from . import wire as w

# tc (linux/rtnetlink.h, linux/pkt_sched.h): the clsact qdisc
RTM_NEWQDISC, RTM_DELQDISC = 36, 37
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
TCA_KIND = 1
TC_H_CLSACT = 0xFFFFFFF1
CLSACT_HANDLE = 0xFFFF0000


def _clsact(ifindex: int) -> bytes:
    return TCMSG.pack(socket.AF_UNSPEC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0) + w.attr_str(TCA_KIND, "clsact")


class NetlinkError(OSError):
    """The kernel refused a request; `errno` is the kernel's error number."""
    cni_code = KERNEL_REFUSED  # what a plugin's error reply says (cni.spec.executable.error_reply)

    def __init__(self, code: int, what: str):
        super().__init__(code, f"{what}: {os.strerror(code)}")
        self.what = what


@record
class Link:
    index: int
    name: str
    flags: int
    mac: str = ""
    mtu: int = 0
    kind: str = ""
    parent: int = 0  # IFLA_LINK: index of the lower device (may live in another netns)
    macvlan_mode: int = 0
    vlan_id: int = 0

    @property
    def up(self) -> bool:
        return bool(self.flags & w.IFF_UP)


@record
class Route:
    dst: IPNet
    oif: int = 0
    gateway: Optional[IPAddr] = None
    proto: int = 0
    scope: int = 0
    table: int = w.RT_TABLE_MAIN
    priority: int = 0
    multipath: tuple = ()  # gateways of an ECMP route (RTA_MULTIPATH)
    extra: dict = field(default_factory=dict, repr=False)


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(p, 16) for p in mac.split(":"))


def _mac_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


class RTNL:
    """One NETLINK_ROUTE socket. A netlink socket stays bound to the netns it was created in,
    so a socket opened inside the pod's netns keeps working after the caller leaves it."""

    def __init__(self, protocol: int = 0, timeout: float | None = None) -> None:
        """`protocol`: NETLINK_ROUTE (0) or another netlink family spoken with the same framing
        (NETLINK_SOCK_DIAG for the counters); `timeout`: seconds a read may wait (None: forever)."""
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if timeout is not None:
            self.sock.settimeout(timeout)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RTNL":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------
    def _request(self, mtype: int, flags: int, body: bytes, what: str, keep=None) -> list:
        """The reply's messages; with `keep`, keep(message) of each where that is not None (a dump
        of 100k routes is then never held whole)."""
        self._seq += 1
        seq = self._seq
        self.sock.send(w.pack_msg(mtype, flags | w.NLM_F_REQUEST | w.NLM_F_ACK, seq, body))
        out: list[w.Message] = []
        while True:
            data = self.sock.recv(1 << 20)
            for msg in w.split_msgs(data):
                if msg.seq != seq:
                    continue
                if msg.type == w.NLMSG_ERROR:
                    code = -struct.unpack_from("=i", msg.body)[0]
                    if code:
                        raise NetlinkError(code, what)
                    return out
                if msg.type == w.NLMSG_DONE:
                    # a dump can end with an error code, or be marked inconsistent (the table
                    # changed while it was read): partial data must not pass for the whole
                    code = -struct.unpack_from("=i", msg.body)[0] if len(msg.body) >= 4 else 0
                    if code:
                        raise NetlinkError(code, what)
                    if msg.flags & w.NLM_F_DUMP_INTR:
                        raise NetlinkError(errno.EAGAIN, f"{what} (interrupted by a change; retry)")
                    return out
                if keep is None:
                    out.append(msg)
                elif (kept := keep(msg)) is not None:
                    out.append(kept)

    def dump(self, mtype: int, body: bytes, what: str, attempts: int = 3, keep=None) -> list:
        """A dump request, read again when the kernel marks it interrupted by a change (a partial
        dump must not pass for the whole); NetlinkError EAGAIN after `attempts` such reads. `keep`:
        as in _request."""
        for attempt in range(attempts):
            try:
                return self._request(mtype, w.NLM_F_DUMP, body, what, keep)
            except NetlinkError as e:
                if e.errno != errno.EAGAIN or attempt == attempts - 1:
                    raise
        return []

    # -- links -----------------------------------------------------------------------------
    @staticmethod
    def _parse_link(msg: w.Message) -> Link:
        _fam, _type, index, flags, _chg = w.IFINFOMSG.unpack_from(msg.body)
        a = w.parse_attrs(msg.body[w.IFINFOMSG.size :])
        link = Link(index=index, name=w.cstr(a.get(w.IFLA_IFNAME, b"")), flags=flags)
        if w.IFLA_ADDRESS in a:
            link.mac = _mac_str(a[w.IFLA_ADDRESS])
        if w.IFLA_MTU in a:
            link.mtu = w.u32(a[w.IFLA_MTU])
        if w.IFLA_LINK in a:
            link.parent = w.u32(a[w.IFLA_LINK])
        if w.IFLA_LINKINFO in a:
            info = w.parse_attrs(a[w.IFLA_LINKINFO])
            link.kind = w.cstr(info.get(w.IFLA_INFO_KIND, b""))
            data = w.parse_attrs(info.get(w.IFLA_INFO_DATA, b""))
            if link.kind in ("macvlan", "macvtap") and w.IFLA_MACVLAN_MODE in data:
                link.macvlan_mode = w.u32(data[w.IFLA_MACVLAN_MODE])
            if link.kind == "vlan" and w.IFLA_VLAN_ID in data:
                link.vlan_id = struct.unpack("=H", data[w.IFLA_VLAN_ID][:2])[0]
        return link

    def link_get(self, name: str = "", index: int = 0) -> Optional[Link]:
        body = w.IFINFOMSG.pack(0, 0, index, 0, 0)
        if name:
            body += w.attr_str(w.IFLA_IFNAME, name)
        try:
            msgs = self._request(w.RTM_GETLINK, 0, body, f"get link {name or index}")
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return self._parse_link(msgs[0]) if msgs else None

    def link_add(self, name: str, kind: str, parent: int, data: bytes = b"", mac: str = "",
                 mtu: int = 0, netns_fd: int = -1, up: bool = False) -> None:
        """Create a link; with netns_fd it is created directly inside that netns (no move)."""
        attrs = [w.attr_str(w.IFLA_IFNAME, name), w.attr_u32(w.IFLA_LINK, parent),
                 w.attr_nested(w.IFLA_LINKINFO, w.attr_str(w.IFLA_INFO_KIND, kind),
                               *([w.attr_nested(w.IFLA_INFO_DATA, data)] if data else []))]
        if mac:
            attrs.append(w.attr(w.IFLA_ADDRESS, _mac_bytes(mac)))
        if mtu:
            attrs.append(w.attr_u32(w.IFLA_MTU, mtu))
        if netns_fd >= 0:
            attrs.append(w.attr_u32(w.IFLA_NET_NS_FD, netns_fd))
        flags = w.IFF_UP if up else 0
        body = w.IFINFOMSG.pack(0, 0, 0, flags, w.IFF_UP if up else 0) + b"".join(attrs)
        self._request(w.RTM_NEWLINK, w.NLM_F_CREATE | w.NLM_F_EXCL, body, f"create {kind} link {name}")

    def veth_add(self, name: str, peer: str, peer_netns_fd: int, mtu: int = 0, peer_mac: str = "") -> None:
        """A veth pair: `name` here, `peer` created directly inside the netns of peer_netns_fd."""
        peer_attrs = [w.attr_str(w.IFLA_IFNAME, peer), w.attr_u32(w.IFLA_NET_NS_FD, peer_netns_fd)]
        if mtu:
            peer_attrs.append(w.attr_u32(w.IFLA_MTU, mtu))
        if peer_mac:
            peer_attrs.append(w.attr(w.IFLA_ADDRESS, _mac_bytes(peer_mac)))
        peer_msg = w.IFINFOMSG.pack(0, 0, 0, 0, 0) + b"".join(peer_attrs)
        attrs = [w.attr_str(w.IFLA_IFNAME, name),
                 w.attr_nested(w.IFLA_LINKINFO, w.attr_str(w.IFLA_INFO_KIND, "veth"),
                               w.attr_nested(w.IFLA_INFO_DATA, w.attr(w.VETH_INFO_PEER, peer_msg)))]
        if mtu:
            attrs.append(w.attr_u32(w.IFLA_MTU, mtu))
        body = w.IFINFOMSG.pack(0, 0, 0, 0, 0) + b"".join(attrs)
        self._request(w.RTM_NEWLINK, w.NLM_F_CREATE | w.NLM_F_EXCL, body, f"create veth {name}/{peer}")

    @staticmethod
    def netkit_body(name: str, peer: str, peer_netns_fd: int, mtu: int = 0) -> bytes:
        """RTM_NEWLINK body of a netkit pair in L3 mode (no MAC, no ARP: routed pods need neither):
        `name` here, `peer` created inside the netns of peer_netns_fd. Both policies pass (what
        no BPF program decides goes to the stack, as with a veth); netkit_new_link parses the peer
        like veth's, a struct ifinfomsg and its attributes in IFLA_NETKIT_PEER_INFO."""
        peer_attrs = [w.attr_str(w.IFLA_IFNAME, peer), w.attr_u32(w.IFLA_NET_NS_FD, peer_netns_fd)]
        if mtu:
            peer_attrs.append(w.attr_u32(w.IFLA_MTU, mtu))
        peer_msg = w.IFINFOMSG.pack(0, 0, 0, 0, 0) + b"".join(peer_attrs)
        data = (w.attr(w.IFLA_NETKIT_PEER_INFO, peer_msg) + w.attr_u32(w.IFLA_NETKIT_MODE, w.NETKIT_L3)
                + w.attr_u32(w.IFLA_NETKIT_POLICY, w.NETKIT_PASS) + w.attr_u32(w.IFLA_NETKIT_PEER_POLICY, w.NETKIT_PASS))
        attrs = [w.attr_str(w.IFLA_IFNAME, name),
                 w.attr_nested(w.IFLA_LINKINFO, w.attr_str(w.IFLA_INFO_KIND, "netkit"),
                               w.attr_nested(w.IFLA_INFO_DATA, data))]
        if mtu:
            attrs.append(w.attr_u32(w.IFLA_MTU, mtu))
        return w.IFINFOMSG.pack(0, 0, 0, 0, 0) + b"".join(attrs)

    def netkit_add(self, name: str, peer: str, peer_netns_fd: int, mtu: int = 0) -> None:
        """A netkit pair (netkit_body); EOPNOTSUPP where the kernel has no netkit (before 6.7, or
        without CONFIG_NETKIT: rtnetlink knows no such kind)."""
        self._request(w.RTM_NEWLINK, w.NLM_F_CREATE | w.NLM_F_EXCL, self.netkit_body(name, peer, peer_netns_fd, mtu),
                      f"create netkit {name}/{peer}")

    def neigh_replace(self, index: int, ip: IPAddr, mac: str) -> None:
        """A permanent neighbour entry (the pod's link-local gateway never needs ARP/NDP)."""
        fam = _family(ip.version)
        body = w.NDMSG.pack(fam, index, w.NUD_PERMANENT, 0, 0) + w.attr(w.NDA_DST, ip.packed) + \
            w.attr(w.NDA_LLADDR, _mac_bytes(mac))
        self._request(w.RTM_NEWNEIGH, w.NLM_F_CREATE | w.NLM_F_REPLACE, body, f"add neighbour {ip}")

    def macvlan_add(self, name: str, parent: int, mode: str, **kw) -> None:
        data = w.attr_u32(w.IFLA_MACVLAN_MODE, w.MACVLAN_MODES[mode])
        self.link_add(name, "macvlan", parent, data, **kw)

    def vlan_add(self, name: str, parent: int, vlan_id: int, **kw) -> None:
        self.link_add(name, "vlan", parent, w.attr_u16(w.IFLA_VLAN_ID, vlan_id), **kw)

    # -- tc: the clsact qdisc that eBPF host routing's filter hangs on ------------------------
    def clsact(self, ifindex: int) -> bool:
        """A clsact qdisc on the device; True when this call created it. Grafting (or removing)
        a qdisc deactivates the device for a moment, dropping what it transmits then: the routed
        ADD makes it before the pod has traffic, so moord later only adds its filter."""
        try:
            self._request(RTM_NEWQDISC, w.NLM_F_CREATE | w.NLM_F_EXCL, _clsact(ifindex), f"clsact on ifindex {ifindex}")
        except NetlinkError as e:
            if e.errno == errno.EEXIST:
                return False
            raise
        return True

    def clsact_del(self, ifindex: int) -> None:
        self._request(RTM_DELQDISC, 0, _clsact(ifindex), f"remove clsact on ifindex {ifindex}")

    def link_set(self, index: int, up: Optional[bool] = None, name: str = "") -> None:
        flags = change = 0
        if up is not None:
            flags, change = (w.IFF_UP if up else 0), w.IFF_UP
        body = w.IFINFOMSG.pack(0, 0, index, flags, change)
        if name:
            body += w.attr_str(w.IFLA_IFNAME, name)
        self._request(w.RTM_NEWLINK, 0, body, f"set link {index}")

    def link_del(self, index: int) -> bool:
        """Delete a link; False when it was already gone."""
        try:
            self._request(w.RTM_DELLINK, 0, w.IFINFOMSG.pack(0, 0, index, 0, 0), f"delete link {index}")
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    # -- addresses -------------------------------------------------------------------------
    def addr_add(self, index: int, iface: IPIf, nodad: bool = True) -> None:
        fam = _family(iface.version)
        flags = w.IFA_F_PERMANENT | (w.IFA_F_NODAD if nodad and iface.version == 6 else 0)
        body = w.IFADDRMSG.pack(fam, iface.network.prefixlen, flags & 0xFF, 0, index)
        packed = iface.ip.packed
        body += w.attr(w.IFA_LOCAL, packed) + w.attr(w.IFA_ADDRESS, packed) + w.attr_u32(w.IFA_FLAGS, flags)
        self._request(w.RTM_NEWADDR, w.NLM_F_CREATE | w.NLM_F_REPLACE, body, f"add address {iface}")

    def addr_del(self, index: int, iface: IPIf) -> bool:
        """Remove an address from a link; False when it was not there (or the link is gone)."""
        fam = _family(iface.version)
        body = w.IFADDRMSG.pack(fam, iface.network.prefixlen, 0, 0, index) + w.attr(w.IFA_LOCAL, iface.ip.packed)
        try:
            self._request(w.RTM_DELADDR, 0, body, f"delete address {iface}")
        except NetlinkError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT, errno.ESRCH):
                return False
            raise
        return True

    def addrs(self, index: int = 0) -> list[IPIf]:
        out: list[IPIf] = []
        for m in self._request(w.RTM_GETADDR, w.NLM_F_DUMP, w.IFADDRMSG.pack(0, 0, 0, 0, 0), "dump addresses"):
            if m.type != w.RTM_NEWADDR:
                continue
            fam, plen, _fl, _scope, idx = w.IFADDRMSG.unpack_from(m.body)
            if index and idx != index:
                continue
            a = w.parse_attrs(m.body[w.IFADDRMSG.size :])
            raw = a.get(w.IFA_LOCAL) or a.get(w.IFA_ADDRESS)
            if raw:
                out.append(ipaddress.ip_interface((ipaddress.ip_address(raw), plen)))
        return out

    # -- routes ----------------------------------------------------------------------------
    def _route_body(self, dst: IPNet, oif: int, gateway: Optional[IPAddr], proto: int, scope: int,
                    onlink: bool, table: int, priority: int = 0, src: Optional[IPAddr] = None) -> bytes:
        fam = _family(dst.version)
        body = w.RTMSG.pack(fam, dst.prefixlen, 0, 0, table if table < 256 else 252, proto, scope,
                            w.RTN_UNICAST, w.RTNH_F_ONLINK if onlink else 0)
        if dst.prefixlen:
            body += w.attr(w.RTA_DST, dst.network_address.packed)
        if oif:
            body += w.attr_u32(w.RTA_OIF, oif)
        if gateway is not None:
            body += w.attr(w.RTA_GATEWAY, gateway.packed)
        if priority:
            body += w.attr_u32(w.RTA_PRIORITY, priority)
        if src is not None:  # the source the node's own packets on this route carry (`ip route ... src`)
            body += w.attr(w.RTA_PREFSRC, src.packed)
        body += w.attr_u32(w.RTA_TABLE, table)
        return body

    def route_replace(self, dst: IPNet, oif: int = 0, gateway: Optional[IPAddr] = None, proto: int = 4,
                      scope: Optional[int] = None, onlink: bool = False, table: int = w.RT_TABLE_MAIN,
                      priority: int = 0, src: Optional[IPAddr] = None) -> None:
        """Install or atomically replace a route (make-before-break: never delete-then-add);
        `src` must be an address the node holds."""
        if scope is None:
            scope = w.RT_SCOPE_UNIVERSE if gateway is not None else w.RT_SCOPE_LINK
        body = self._route_body(dst, oif, gateway, proto, scope, onlink, table, priority, src)
        self._request(w.RTM_NEWROUTE, w.NLM_F_CREATE | w.NLM_F_REPLACE, body, f"replace route {dst}")

    def route_replace_multipath(self, dst: IPNet, gateways: list[IPAddr], proto: int,
                                priority: int = 0, table: int = w.RT_TABLE_MAIN) -> None:
        """Install or atomically replace an ECMP route over several gateways (each resolved by the
        kernel to its interface), make-before-break like route_replace."""
        mtype, flags, body = self.route_replace_request(dst, list(gateways), proto, priority, table, multipath=True)
        self._request(mtype, flags, body, f"replace route {dst}")

    def route_add(self, dst: IPNet, oif: int = 0, gateway: Optional[IPAddr] = None, proto: int = 4,
                  onlink: bool = False, table: int = w.RT_TABLE_MAIN) -> bool:
        """Add a route that must not displace another; False when one to dst already exists."""
        scope = w.RT_SCOPE_UNIVERSE if gateway is not None else w.RT_SCOPE_LINK
        body = self._route_body(dst, oif, gateway, proto, scope, onlink, table)
        try:
            self._request(w.RTM_NEWROUTE, w.NLM_F_CREATE | w.NLM_F_EXCL, body, f"add route {dst}")
        except NetlinkError as e:
            if e.errno == errno.EEXIST:
                return False
            raise
        return True

    def route_del(self, dst: IPNet, oif: int = 0, proto: int = 0, table: int = w.RT_TABLE_MAIN,
                  priority: int = 0) -> bool:
        mtype, flags, body = self.route_del_request(dst, proto, priority, table, oif)
        try:
            self._request(mtype, flags, body, f"delete route {dst}")
        except NetlinkError as e:
            if e.errno in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                return False
            raise
        return True

    # -- many requests at once (the agent's learned routes) -----------------------------------
    def route_replace_request(self, dst: IPNet, gateways: list, proto: int, priority: int = 0,
                              table: int = w.RT_TABLE_MAIN, multipath: bool = False) -> tuple[int, int, bytes]:
        """The request route_replace (one gateway) or route_replace_multipath (several) sends,
        for batch()."""
        if len(gateways) == 1 and not multipath:
            body = self._route_body(dst, 0, gateways[0], proto, w.RT_SCOPE_UNIVERSE, False, table, priority)
        else:
            body = self._route_body(dst, 0, None, proto, w.RT_SCOPE_UNIVERSE, False, table, priority)
            hops = b""
            for gw in gateways:
                a = w.attr(w.RTA_GATEWAY, gw.packed)
                hops += w.RTNEXTHOP.pack(w.RTNEXTHOP.size + len(a), 0, 0, 0) + a
            body += w.attr(w.RTA_MULTIPATH, hops)
        return w.RTM_NEWROUTE, w.NLM_F_CREATE | w.NLM_F_REPLACE, body

    def route_del_request(self, dst: IPNet, proto: int = 0, priority: int = 0,
                          table: int = w.RT_TABLE_MAIN, oif: int = 0) -> tuple[int, int, bytes]:
        """The request route_del sends, for batch(). Scope NOWHERE matches a route of any scope
        (the kernel compares the scope otherwise)."""
        return w.RTM_DELROUTE, 0, self._route_body(dst, oif, None, proto, w.RT_SCOPE_NOWHERE, False, table, priority)

    def batch(self, requests: list) -> list[int]:
        """Send requests [(type, flags, body)] in one datagram; the kernel runs them in order.
        Returns each one's errno (0: done). Only failures are answered, and the last request, so
        the replies stay few and fit the receive buffer; keep batches to a few hundred requests.
        An OSError (ENOBUFS: replies were lost) leaves the outcome of the batch unknown."""
        if not requests:
            return []
        base = self._seq + 1
        out = bytearray()
        last = len(requests) - 1
        for i, (mtype, flags, body) in enumerate(requests):
            self._seq += 1
            out += w.pack_msg(mtype, flags | w.NLM_F_REQUEST | (w.NLM_F_ACK if i == last else 0), self._seq, body)
        self.sock.send(bytes(out))
        codes = [0] * len(requests)
        while True:
            for msg in w.split_msgs(self.sock.recv(1 << 20)):
                i = msg.seq - base
                if msg.type != w.NLMSG_ERROR or not 0 <= i <= last:
                    continue
                codes[i] = -struct.unpack_from("=i", msg.body)[0]
                if i == last:
                    return codes

    def route_match(self, ip: IPAddr) -> Optional[Route]:
        """The route the kernel's lookup for `ip` matches (RTM_F_FIB_MATCH, Linux 4.13+: the table
        entry, not a cached result); None when nothing matches. One request however large the
        table is, where a dump of a node with 100,000 pod routes costs seconds."""
        fam = _family(ip.version)
        body = w.RTMSG.pack(fam, 0, ip.max_prefixlen, 0, 0, 0, 0, 0, w.RTM_F_FIB_MATCH) + w.attr(w.RTA_DST, ip.packed)
        try:
            msgs = self._request(w.RTM_GETROUTE, 0, body, f"look up the route to {ip}")
        except NetlinkError as e:
            if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESRCH):
                return None
            raise
        return next((r for r in map(parse_route, msgs) if r is not None), None)

    def routes(self, version: int, table: int = w.RT_TABLE_MAIN) -> list[Route]:
        body = w.RTMSG.pack(_family(version), 0, 0, 0, 0, 0, 0, 0, 0)
        out = []
        for m in self._request(w.RTM_GETROUTE, w.NLM_F_DUMP, body, "dump routes"):
            r = parse_route(m)
            if r is not None and r.table == table:
                out.append(r)
        return out


def parse_route(m: w.Message) -> Optional[Route]:
    """A unicast route from an RTM_NEWROUTE/RTM_DELROUTE message (a dump reply or an event)."""
    if m.type not in (w.RTM_NEWROUTE, w.RTM_DELROUTE) or len(m.body) < w.RTMSG.size:
        return None
    fam, dlen, _sl, _tos, tbl, proto, scope, rtype, _fl = w.RTMSG.unpack_from(m.body)
    if rtype != w.RTN_UNICAST or fam not in (socket.AF_INET, socket.AF_INET6):
        return None
    a = w.parse_attrs(m.body[w.RTMSG.size :])
    tbl = w.u32(a[w.RTA_TABLE]) if w.RTA_TABLE in a else tbl
    zero = b"\0" * (4 if fam == socket.AF_INET else 16)
    dst = ipaddress.ip_network((ipaddress.ip_address(a.get(w.RTA_DST, zero)), dlen))
    gw = ipaddress.ip_address(a[w.RTA_GATEWAY]) if w.RTA_GATEWAY in a else None
    return Route(dst=dst, oif=w.u32(a[w.RTA_OIF]) if w.RTA_OIF in a else 0, gateway=gw,
                 proto=proto, scope=scope, table=tbl, priority=w.u32(a[w.RTA_PRIORITY]) if w.RTA_PRIORITY in a else 0,
                 multipath=_nexthops(a.get(w.RTA_MULTIPATH, b"")))


def _nexthops(data: bytes) -> tuple:
    """The gateways in an RTA_MULTIPATH attribute (struct rtnexthop, each with its own attributes)."""
    out, off = [], 0
    while off + w.RTNEXTHOP.size <= len(data):
        ln = w.RTNEXTHOP.unpack_from(data, off)[0]
        if ln < w.RTNEXTHOP.size:
            break
        sub = w.parse_attrs(data[off + w.RTNEXTHOP.size:off + ln])
        if w.RTA_GATEWAY in sub:
            out.append(ipaddress.ip_address(sub[w.RTA_GATEWAY]))
        off += (ln + 3) & ~3
    return tuple(out)
