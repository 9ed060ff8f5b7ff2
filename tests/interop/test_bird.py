"""moor's BGP speaker against BIRD 2 as the ToR: session, 4-byte ASN, routes both ways, withdraw,
End-of-RIB, a wrong AS never establishing, and a clean stop withdrawing everything."""
from __future__ import annotations

import signal

import pytest

from tests.interop.conftest import NODE, TOR, wait_for

pytestmark = pytest.mark.interop

BIRD_CONF = """
router id 192.0.2.1;
protocol device {{}}
protocol static st {{ ipv4; route 198.51.100.0/24 blackhole; }}
protocol bgp node1 {{
  local 192.0.2.1 as 65000;
  neighbor 192.0.2.2 as {node_as};
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  ipv4 {{ import all; export where proto = "st"; }};
}}
"""


def test_session_routes_both_ways_and_withdraw(tor):
    lab, bird, speaker = tor
    bird.start(BIRD_CONF.format(node_as=4200000001))
    sp = speaker("--asn", "4200000001", "--router-id", NODE, "--peer", f"{TOR}:65000", "--announce",
                 "203.0.113.7/32", "--hold-time", "9", "--connect-retry", "1")
    wait_for(lambda: bird.state("node1") == "Established", what="BIRD to reach Established")
    assert wait_for(lambda: bird.routes("node1").get("203.0.113.7/32"), what="the /32 at BIRD") == NODE
    aspath = bird.cmd("show", "route", "203.0.113.7/32", "all")
    assert "4200000001" in aspath  # a 4-byte ASN end to end
    sp.send("announce 203.0.113.9/32")
    wait_for(lambda: "203.0.113.9/32" in bird.routes("node1"), what="a route announced later")
    sp.send("withdraw 203.0.113.7/32")
    wait_for(lambda: "203.0.113.7/32" not in bird.routes("node1"), what="the withdrawal")
    events = wait_for(lambda: [e for e in sp.drain() if e.get("end_of_rib")] and sp.seen, what="End-of-RIB from BIRD")
    learned = {p: nh for e in events for p, nh in e.get("announced", [])}
    assert learned.get("198.51.100.0/24") == TOR
    sp.proc.send_signal(signal.SIGTERM)  # clean stop: Cease, and BIRD drops what we told it
    sp.proc.wait(10)
    wait_for(lambda: not bird.routes("node1"), what="BIRD to drop the routes after our Cease")


def test_wrong_peer_as_never_establishes(tor):
    lab, bird, speaker = tor
    bird.start(BIRD_CONF.format(node_as=65001))  # BIRD expects 65001, we are 65002
    sp = speaker("--asn", "65002", "--router-id", NODE, "--peer", f"{TOR}:65000", "--connect-retry", "1")
    wait_for(lambda: "Bad peer AS" in bird.cmd("show", "protocols", "all", "node1")
             or "Bad OPEN" in bird.cmd("show", "protocols", "all", "node1"), what="BIRD to refuse our AS")
    assert bird.state("node1") != "Established"
    assert not any(e.get("state") == "Established" for e in sp.drain())
