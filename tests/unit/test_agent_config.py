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
    - {address: 192.0.2.1, asn: 65000, passive: true, communities: ["65000:42", no-export]}
"""


def test_good_config():
    c = load(GOOD)
    assert c.local.asn == 4200000001 and c.listen_port == 1179
    assert c.peers[0].passive and c.peers[0].communities == (65000 << 16 | 42, 0xFFFFFF01)


@pytest.mark.parametrize("text,field", [
    ("bgp: 5", "'bgp' mapping"), ("bgp: {routerId: 192.0.2.2}", "bgp.asn is missing"),
    ("bgp: {asn: 0, routerId: 192.0.2.2}", "bgp.asn 0"),
    ("bgp: {asn: 1, routerId: x, peers: [{address: 192.0.2.1}]}", "bgp.peers[0].asn is missing"),
    ("bgp: {asn: 1, routerId: x, peers: [{address: 192.0.2.1, asn: 2, communities: ['1:99999']}]}",
     "bgp.peers[0].communities"),
    ("bgp: {asn: 1, routerId: x, peers: [{address: 192.0.2.1, asn: 2, gracefulRestart: true}]}",
     "bgp.peers[0].gracefulRestart"),
    ("bgp: [", "not YAML"),
])
def test_bad_configs(text, field):
    with pytest.raises(ConfigError) as e:
        load(text)
    assert field in str(e.value)
