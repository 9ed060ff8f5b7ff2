"""The netkit RTM_NEWLINK body (cni/netlink/rtnl.py RTNL.netkit_body) against bytes written out
from the kernel's uapi, include/uapi/linux/if_link.h (Linux 6.7+):

    enum netkit_mode { NETKIT_L2, NETKIT_L3 };                      -> L3 = 1
    enum netkit_action { NETKIT_PASS = TC_ACT_OK, ... };            -> PASS = 0
    enum { IFLA_NETKIT_UNSPEC, IFLA_NETKIT_PEER_INFO, IFLA_NETKIT_PRIMARY, IFLA_NETKIT_POLICY,
           IFLA_NETKIT_PEER_POLICY, IFLA_NETKIT_MODE, ... };        -> 1, 2, 3, 4, 5

and IFLA_IFNAME 3, IFLA_MTU 4, IFLA_LINKINFO 18, IFLA_INFO_KIND 1, IFLA_INFO_DATA 2,
IFLA_NET_NS_FD 28 (if_link.h), NLA_F_NESTED 0x8000 (netlink.h). This kernel has no netkit: the
bytes are what can be checked here; tests/integration/test_routed.py runs the request where a kernel
has netkit, and skips naming why elsewhere."""
from __future__ import annotations

from cni.netlink import wire as w
from cni.netlink.rtnl import RTNL

IFINFOMSG0 = "00 00 0000 00000000 00000000 00000000"  # family, pad, type, index, flags, change


def hexbytes(*parts: str) -> bytes:
    return bytes.fromhex("".join(p.replace(" ", "") for p in parts))


def test_the_uapi_numbers():
    assert (w.IFLA_NETKIT_PEER_INFO, w.IFLA_NETKIT_PRIMARY, w.IFLA_NETKIT_POLICY, w.IFLA_NETKIT_PEER_POLICY,
            w.IFLA_NETKIT_MODE) == (1, 2, 3, 4, 5)
    assert (w.NETKIT_L2, w.NETKIT_L3, w.NETKIT_PASS, w.NETKIT_DROP) == (0, 1, 0, 2)


def test_a_netkit_pair_in_l3_mode_with_its_peer_in_the_pod_netns():
    want = hexbytes(
        IFINFOMSG0,
        "0800 0300", "6e6b3000",                         # IFLA_IFNAME "nk0\0"
        "5400 1280",                                     # IFLA_LINKINFO | NLA_F_NESTED, 84 bytes
        "0b00 0100", "6e65746b697400 00",                #   IFLA_INFO_KIND "netkit\0" (+1 pad)
        "4400 0280",                                     #   IFLA_INFO_DATA | NLA_F_NESTED, 68 bytes
        "2800 0100",                                     #     IFLA_NETKIT_PEER_INFO, 40 bytes: a struct ifinfomsg
        IFINFOMSG0,
        "0900 0300", "6574683000 000000",                #       IFLA_IFNAME "eth0\0" (+3 pad)
        "0800 1c00", "07000000",                         #       IFLA_NET_NS_FD 7
        "0800 0500", "01000000",                         #     IFLA_NETKIT_MODE NETKIT_L3
        "0800 0300", "00000000",                         #     IFLA_NETKIT_POLICY NETKIT_PASS
        "0800 0400", "00000000",                         #     IFLA_NETKIT_PEER_POLICY NETKIT_PASS
    )
    assert RTNL.netkit_body("nk0", "eth0", 7) == want


def test_the_mtu_goes_to_both_ends():
    body = RTNL.netkit_body("nk0", "eth0", 7, mtu=1400)
    mtu = hexbytes("0800 0400", "78050000")  # IFLA_MTU 1400
    assert body.endswith(mtu) and body.count(mtu) == 2
    assert body[16 + 8:16 + 12] == hexbytes("5c00 1280")  # the link info grew by the peer's 8 bytes
