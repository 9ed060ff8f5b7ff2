"""What moor's speaker refuses from a real router (BIRD 2 as the ToR): routes whose next hop no
router can have (class E, broadcast) are treated as withdrawn (RFC 4271 6.3, RFC 7606 7.3) while the
session and the router's other routes stay. (A next hop equal to our own session address BIRD
never sends: it withdraws such a route itself; the unit tests cover that case.)"""
from __future__ import annotations

import pytest

from tests.interop.conftest import NODE, TOR, wait_for

pytestmark = pytest.mark.interop

# three static routes; the export filter points two of them at impossible next hops (a broken ToR)
BIRD_CONF = """
router id 192.0.2.1;
protocol device {}
protocol static st {
  ipv4;
  route 198.51.100.0/25 blackhole;
  route 198.51.100.128/26 blackhole;
  route 198.51.100.192/26 blackhole;
}
protocol bgp node1 {
  local 192.0.2.1 as 65000;
  neighbor 192.0.2.2 as 65001;
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  ipv4 {
    import all;
    export filter {
      if proto != "st" then reject;
      if net = 198.51.100.128/26 then bgp_next_hop = 240.0.0.1;
      if net = 198.51.100.192/26 then bgp_next_hop = 255.255.255.255;
      accept;
    };
  };
}
"""


def test_routes_via_impossible_next_hops_are_refused_and_the_session_stays(tor, tmp_path):
    lab, bird, speaker = tor
    bird.start(BIRD_CONF)
    sp = speaker("--asn", "65001", "--router-id", NODE, "--peer", f"{TOR}:65000", "--hold-time", "9",
                 "--connect-retry", "1")
    wait_for(lambda: bird.state("node1") == "Established", what="BIRD to reach Established")
    events = wait_for(lambda: [e for e in sp.drain() if e.get("end_of_rib")] and sp.seen, what="End-of-RIB from BIRD")
    exported = bird.cmd("show", "route", "export", "node1", "all")
    assert "240.0.0.1" in exported and "255.255.255.255" in exported  # BIRD did send them
    learned = {p: nh for e in events for p, nh in e.get("announced", [])}
    assert learned == {"198.51.100.0/25": TOR}  # only the good route is taken
    log = wait_for(lambda: (text := (tmp_path / "speaker.log").read_text()) and "255.255.255.255 is broadcast" in text
                   and "240.0.0.1 is class E" in text and text, what="the warnings")
    assert TOR in log
    assert bird.state("node1") == "Established" and not any(e.get("state") == "Idle" for e in sp.drain())
