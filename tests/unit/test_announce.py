"""Unsolicited NA messages, decoded with scapy."""
from __future__ import annotations

import ipaddress

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr

from cni import announce


def test_unsolicited_na_has_override_and_target_lladdr():
    na = ICMPv6ND_NA(announce.na_message("0a:59:00:00:00:10", ipaddress.ip_address("2001:db8:1::10")))
    assert na.type == 136 and na.O == 1 and na.S == 0 and na.R == 0
    assert na.tgt == "2001:db8:1::10"
    assert na[ICMPv6NDOptDstLLAddr].lladdr == "0a:59:00:00:00:10"
