"""moord's YAML config: every error names its field."""
from __future__ import annotations

import pytest

from dataplane.agent import ConfigError, load

GOOD = """
bgp:
  asn: 4200000001
  routerId: 192.0.2.2
  listenPort: 1179
  peers:
    - {address: 192.0.2.1, asn: 65000, passive: true, communities: ["65000:42", no-export], gracefulRestart: true}
  gracefulRestart: {restartTime: 60, staleRoutesTime: 200, stateFile: /tmp/x.json}
  installLearned: true
  nextHopIPv6: 2001:db8::2
  advertise: {podRoutes: true, blocks: [203.0.113.0/26]}
"""


def test_good_config():
    c = load(GOOD)
    assert c.local.asn == 4200000001 and c.listen_port == 1179
    assert c.peers[0].passive and c.peers[0].communities == (65000 << 16 | 42, 0xFFFFFF01)
    assert c.peers[0].graceful_restart and c.local.restart_time == 60 and c.stale_time == 200
    assert c.state_file == "/tmp/x.json" and c.install_learned and c.local.next_hop6 == "2001:db8::2"
    assert [str(b) for b in c.advertise_blocks] == ["203.0.113.0/26"]
    # graceful restart starts off: R and F are decided by the agent at start, never configured
    assert not c.local.restarted and not c.local.forwarding


@pytest.mark.parametrize("text,field", [
    ("bgp: 5", "'bgp' mapping"), ("bgp: {routerId: 192.0.2.2}", "bgp.asn is missing"),
    ("bgp: {asn: 0, routerId: 192.0.2.2}", "bgp.asn 0"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, peers: [{address: 192.0.2.1}]}", "bgp.peers[0].asn is missing"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, peers: [{address: 192.0.2.1, asn: 2, communities: ['1:99999']}]}",
     "bgp.peers[0].communities"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, peers: [{address: 192.0.2.1, asn: 2, gracefulRestart: yes-please}]}",
     "bgp.peers[0].gracefulRestart must be bool"),
    ("bgp: {asn: 1, routerId: x}", "bgp.routerId"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, nextHopIPv6: 192.0.2.2}", "bgp.nextHopIPv6"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, gracefulRestart: {restartTime: 5000}}", "bgp.gracefulRestart.restartTime"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, peers: [{address: nope, asn: 2}]}", "bgp.peers[0].address"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, peers: [{address: 192.0.2.1, asn: 2}, {address: 192.0.2.1, asn: 3}]}",
     "appears twice"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, advertise: {blocks: [10.0.0.1/8]}}", "bgp.advertise.blocks[0]"),
    ("bgp: {asn: 1, routerId: 192.0.2.2, installLearned: 1}", "bgp.installLearned must be bool"),
    ("bgp: [", "not YAML"),
])
def test_bad_configs(text, field):
    with pytest.raises(ConfigError) as e:
        load(text)
    assert field in str(e.value)
