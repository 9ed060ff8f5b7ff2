"""The stdlib rtnetlink encoder, checked against pyroute2's decoder (an independent implementation)."""
from __future__ import annotations

import ipaddress
import socket

from hypothesis import given, strategies as st
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cni.netlink import wire as w


def _decode(cls, mtype: int, body: bytes):
    m = cls(w.pack_msg(mtype, w.NLM_F_REQUEST, 9, body))
    m.decode()
    return m


def test_macvlan_newlink_decodes_in_pyroute2():
    body = (w.IFINFOMSG.pack(0, 0, 0, w.IFF_UP, w.IFF_UP) + w.attr_str(w.IFLA_IFNAME, "eth0")
            + w.attr_u32(w.IFLA_LINK, 7) + w.attr(w.IFLA_ADDRESS, bytes.fromhex("0a58c000020a"))
            + w.attr_nested(w.IFLA_LINKINFO, w.attr_str(w.IFLA_INFO_KIND, "macvlan"),
                            w.attr_nested(w.IFLA_INFO_DATA, w.attr_u32(w.IFLA_MACVLAN_MODE, 4))))
    m = _decode(ifinfmsg, w.RTM_NEWLINK, body)
    assert m["header"]["sequence_number"] == 9
    assert m.get_attr("IFLA_IFNAME") == "eth0" and m.get_attr("IFLA_LINK") == 7
    assert m.get_attr("IFLA_ADDRESS") == "0a:58:c0:00:02:0a"
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "macvlan"
    assert info.get_attr("IFLA_INFO_DATA").get_attr("IFLA_MACVLAN_MODE") == "bridge"


def test_addr_and_route_messages_decode_in_pyroute2():
    ip = ipaddress.ip_interface("2001:db8:1::10/64")
    body = (w.IFADDRMSG.pack(socket.AF_INET6, 64, w.IFA_F_NODAD, 0, 3) + w.attr(w.IFA_LOCAL, ip.ip.packed)
            + w.attr_u32(w.IFA_FLAGS, w.IFA_F_NODAD | w.IFA_F_PERMANENT))
    m = _decode(ifaddrmsg, w.RTM_NEWADDR, body)
    assert m["prefixlen"] == 64 and m["index"] == 3 and m.get_attr("IFA_LOCAL") == "2001:db8:1::10"
    rt = (w.RTMSG.pack(socket.AF_INET, 32, 0, 0, 254, w.RTPROT_MOOR, 253, 1, 0)
          + w.attr(w.RTA_DST, ipaddress.ip_address("192.0.2.10").packed) + w.attr_u32(w.RTA_OIF, 4))
    r = _decode(rtmsg, w.RTM_NEWROUTE, rt)
    assert r.get_attr("RTA_DST") == "192.0.2.10" and r["dst_len"] == 32 and r["proto"] == 109
    assert r.get_attr("RTA_OIF") == 4


@given(st.lists(st.tuples(st.integers(1, 0x7FFF), st.binary(max_size=64)), max_size=20, unique_by=lambda t: t[0]))
def test_attributes_round_trip(attrs):
    data = b"".join(w.attr(k, v) for k, v in attrs)
    assert len(data) % 4 == 0
    assert w.parse_attrs(data) == dict(attrs)


@given(st.binary(max_size=200))
def test_parsers_never_crash_on_garbage(data):
    w.parse_attrs(data)
    w.split_msgs(data)
