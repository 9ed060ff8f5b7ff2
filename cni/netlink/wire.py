"""rtnetlink wire format: message headers, attributes, constants.

Only what the CNI plugin needs. The plugin is executed once per pod; importing pyroute2 costs
~210 ms here (the Go reference ADD is ~9 ms), so the plugin speaks netlink with the stdlib.
"""
from __future__ import annotations

import struct
from ..spec.record import record, field

# message types
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH = 28
NLMSG_ERROR, NLMSG_DONE = 2, 3

# flags
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400

# link attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 3, 4, 5
IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_LINK_NETNSID = 18, 28, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_MACVLAN_MODE = 1
IFLA_VLAN_ID = 1
VETH_INFO_PEER = 1
# netkit (include/uapi/linux/if_link.h, Linux 6.7+): IFLA_INFO_DATA of kind "netkit"
IFLA_NETKIT_PEER_INFO, IFLA_NETKIT_PRIMARY, IFLA_NETKIT_POLICY, IFLA_NETKIT_PEER_POLICY, IFLA_NETKIT_MODE = 1, 2, 3, 4, 5
NETKIT_L2, NETKIT_L3 = 0, 1  # enum netkit_mode
NETKIT_PASS, NETKIT_DROP = 0, 2  # enum netkit_action (TC_ACT_OK, TC_ACT_SHOT): the policy without a program
IFF_UP = 0x1

MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}

# address attributes
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
IFA_F_PERMANENT = 0x80

# neighbour messages
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80

# route attributes
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 7, 9, 15
RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex; its attributes follow
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
RTM_F_FIB_MATCH = 0x2000  # a route lookup answers with the table entry it matched

# moor's own route protocol numbers: the routing table is the contract with the agent.
RTPROT_MOOR = 109  # pod routes the agent advertises (bgp mode)
RTPROT_MOOR_SHIM = 110  # host-shim routes to local macvlan pods: never advertised
RTPROT_MOOR_BGP = 111  # routes the agent learned over BGP and installed (installLearned)

_NLMSGHDR = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
RTMSG = struct.Struct("=BBBBBBBBI")
NLA_F_NESTED = 0x8000


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def attr_u16(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=H", value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def attr_nested(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Attributes of one level; the last of a repeated type wins (none repeat here)."""
    out: dict[int, bytes] = {}
    off = 0
    while off + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, off)
        if length < _RTATTR.size:
            break
        out[kind & ~NLA_F_NESTED & 0x7FFF] = data[off + _RTATTR.size : off + length]
        off += _align(length)
    return out


def u32(b: bytes) -> int:
    return struct.unpack("=I", b[:4])[0]


def cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode()


def pack_msg(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, flags, seq, 0) + body


@record
class Message:
    type: int
    flags: int
    seq: int
    body: bytes = field(repr=False)


def iter_msgs(data: bytes):
    """(type, flags, seq, body, offset of the next message) of each message in a datagram, without
    an object per message (the agent's route watch reads 100,000 of them in a burst)."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size:
            break
        body = data[off + _NLMSGHDR.size : off + length]
        off += _align(length)
        yield mtype, flags, seq, body, off


def split_msgs(data: bytes) -> list[Message]:
    return [Message(mtype, flags, seq, body) for mtype, flags, seq, body, _next in iter_msgs(data)]
