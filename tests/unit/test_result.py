"""Result conversion between spec versions."""
from __future__ import annotations

import pytest

from cni.spec.errors import CNIError
from cni.spec.result import Result

V1 = {"cniVersion": "1.1.0",
      "interfaces": [{"name": "eth0", "mac": "0a:58:c0:00:02:0a", "mtu": 1400, "sandbox": "/run/netns/p"}],
      "ips": [{"address": "192.0.2.10/24", "gateway": "192.0.2.1", "interface": 0},
              {"address": "2001:db8:1::10/64", "gateway": "2001:db8:1::1", "interface": 0}],
      "routes": [{"dst": "0.0.0.0/0", "gw": "192.0.2.1", "mtu": 1400, "table": 100}],
      "dns": {"nameservers": ["192.0.2.53"]}}


def test_1_1_0_round_trips():
    assert Result.parse(V1).to_dict("1.1.0") == V1


def test_1_0_0_drops_1_1_0_fields():
    d = Result.parse(V1).to_dict("1.0.0")
    assert "mtu" not in d["interfaces"][0]
    assert d["routes"] == [{"dst": "0.0.0.0/0", "gw": "192.0.2.1"}]
    assert all("version" not in ip for ip in d["ips"])


@pytest.mark.parametrize("version", ["0.4.0", "0.3.1", "0.3.0"])
def test_0_x_results_carry_ip_versions(version):
    d = Result.parse(V1).to_dict(version)
    assert d["cniVersion"] == version
    assert [ip["version"] for ip in d["ips"]] == ["4", "6"]


def test_a_0_4_0_ipam_result_parses():
    r = Result.parse({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "192.0.2.5/24"}]})
    assert str(r.ips[0].address) == "192.0.2.5/24" and r.ips[0].interface is None
    assert r.to_dict("1.0.0")["ips"] == [{"address": "192.0.2.5/24"}]


@pytest.mark.parametrize("doc", [[], {"ips": [{"address": "nope"}]}, {"ips": [{}]},
                                 {"routes": [{"dst": "192.0.2.0/99"}]}, {"interfaces": [{"mac": "x"}]}])
def test_malformed_results_are_decode_errors(doc):
    with pytest.raises(CNIError) as e:
        Result.parse(doc)
    assert e.value.code == 6
