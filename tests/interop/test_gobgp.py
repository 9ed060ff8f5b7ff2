"""moor's speaker against GoBGP (gobgpd from Debian) as the ToR."""
from __future__ import annotations

import time

import pytest

from tests.interop.conftest import NODE, TOR, wait_for

pytestmark = pytest.mark.interop

GOBGP_CONF = """
[global.config]
  as = 65000
  router-id = "192.0.2.1"
[global.apply-policy.config]
  default-import-policy = "accept-route"
  default-export-policy = "accept-route"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "192.0.2.2"
    peer-as = {node_as}
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
"""


@pytest.mark.parametrize("tor", ["gobgp"], indirect=True)
def test_gobgp_learns_and_forgets_our_routes(tor):
    lab, gobgp, speaker = tor
    gobgp.start(GOBGP_CONF.format(node_as=4200000001))
    sp = speaker("--asn", "4200000001", "--router-id", NODE, "--peer", f"{TOR}:65000", "--announce",
                 "203.0.113.7/32", "--hold-time", "9", "--connect-retry", "1")
    wait_for(lambda: gobgp.state(NODE) == "established", what="GoBGP to reach established")
    assert wait_for(lambda: gobgp.routes().get("203.0.113.7/32"), what="the /32 at GoBGP") == NODE
    sp.send("announce 203.0.113.9/32")
    wait_for(lambda: "203.0.113.9/32" in gobgp.routes(), what="a later announcement")
    sp.send("withdraw 203.0.113.7/32")
    wait_for(lambda: "203.0.113.7/32" not in gobgp.routes(), what="the withdrawal")
    # GoBGP's own route reaches us
    assert gobgp.cli("global", "rib", "add", "-a", "ipv4", "198.51.100.0/24").returncode == 0
    learned = wait_for(lambda: {p: nh for e in sp.drain() for p, nh in e.get("announced", [])}.get("198.51.100.0/24"),
                       what="GoBGP's route at moor")
    assert learned == TOR


@pytest.mark.parametrize("tor", ["gobgp"], indirect=True)
def test_gobgp_wrong_as_never_establishes(tor):
    lab, gobgp, speaker = tor
    gobgp.start(GOBGP_CONF.format(node_as=65001))
    sp = speaker("--asn", "65002", "--router-id", NODE, "--peer", f"{TOR}:65000", "--connect-retry", "1")
    wait_for(lambda: any(e.get("state") == "OpenSent" for e in sp.drain()), what="an OPEN exchange attempt")
    time.sleep(3)  # several connect-retry rounds: none may establish
    assert gobgp.state(NODE) != "established"
    assert not any(e.get("state") == "Established" for e in sp.drain())
