"""Gratuitous ARP and unsolicited NA frames, decoded with scapy."""
from __future__ import annotations

import ipaddress

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr
from scapy.layers.l2 import ARP, Ether

from cni import announce


def test_gratuitous_arp_request_and_reply():
    frames = announce.arp_frames("0a:58:c0:00:02:0a", ipaddress.ip_address("192.0.2.10"))
    assert len(frames) == 2
    for frame, op in zip(frames, (1, 2)):
        eth = Ether(frame)
        assert eth.dst == "ff:ff:ff:ff:ff:ff" and eth.src == "0a:58:c0:00:02:0a"
        arp = eth[ARP]
        assert arp.op == op and arp.psrc == arp.pdst == "192.0.2.10" and arp.hwsrc == "0a:58:c0:00:02:0a"


def test_unsolicited_na_has_override_and_target_lladdr():
    na = ICMPv6ND_NA(announce.na_message("0a:59:00:00:00:10", ipaddress.ip_address("2001:db8:1::10")))
    assert na.type == 136 and na.O == 1 and na.S == 0 and na.R == 0
    assert na.tgt == "2001:db8:1::10"
    assert na[ICMPv6NDOptDstLLAddr].lladdr == "0a:59:00:00:00:10"
