"""VLAN sub-interfaces (`vlan`): the pod's parent is master.<vlan>, created on demand, shared,
removed with the last pod. This kernel may lack 8021q; then the ADD must fail cleanly (code 102)."""
from __future__ import annotations

import pytest

from dataplane.nslab import sh
from tests.helpers import ipj
from tests.integration.conftest import MacvlanNet

pytestmark = pytest.mark.integration


def _kernel_has_vlan(net: MacvlanNet) -> bool:
    probe = sh("ip", "-n", net.node, "link", "add", "link", "up0", "name", "vprobe", "type", "vlan", "id", "4000",
               check=False)
    if probe.returncode == 0:
        sh("ip", "-n", net.node, "link", "del", "vprobe")
    return probe.returncode == 0


def test_vlan_add_fails_cleanly_without_8021q(net: MacvlanNet):
    if _kernel_has_vlan(net):
        pytest.skip("this kernel has 8021q: the no-VLAN error path cannot be exercised here")
    net.pod("pod1")
    before = net.snapshot()
    r = net.cni("ADD", net.conf(vlan=100))
    assert r.error_code == 102 and "up0.100" in r.json["msg"] and "8021q" in r.json["details"]
    assert net.snapshot() == before


def test_pods_share_the_vlan_parent_and_the_last_one_removes_it(net: MacvlanNet):
    if not _kernel_has_vlan(net):
        pytest.skip("kernel has no 8021q: VLAN sub-interfaces cannot be created here "
                    "(the lab runs this case on VMs: vagrant/)")
    # the peer side of the trunk: its own VLAN 100 interface on the same wire
    sh("ip", "-n", net.peer, "link", "add", "link", "pp0", "name", "pp0.100", "type", "vlan", "id", "100")
    sh("ip", "-n", net.peer, "link", "set", "pp0.100", "up")
    sh("ip", "-n", net.peer, "addr", "add", "198.51.100.1/24", "dev", "pp0.100")
    conf = net.conf(vlan=100, ipam={"type": "host-local", "dataDir": str(net.tmp / "ipam"),
                                   "ranges": [[{"subnet": "198.51.100.0/24", "gateway": "198.51.100.1"}]]})
    r1, r2 = net.add("pod1", conf), net.add("pod2", conf)
    assert ipj(net.node, "-d", "link", "show", "up0.100")[0]["linkinfo"]["info_data"]["id"] == 100
    assert net.lab.ping(net.pods["pod1"], "198.51.100.1")
    assert net.cni("DEL", dict(conf, prevResult=r1), "pod1").code == 0
    assert ipj(net.node, "link", "show", "up0.100"), "parent removed while pod2 uses it"
    assert net.cni("DEL", dict(conf, prevResult=r2), "pod2").code == 0
    assert "up0.100" not in [l["ifname"] for l in ipj(net.node, "link", "show")]
