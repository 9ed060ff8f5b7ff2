"""VLAN sub-interfaces (`vlan`): the pod's parent is master.<vlan>, created on demand, shared,
removed with the last pod (only if moor created it). A kernel without 8021q (this project's
machines) must fail the ADD cleanly (code 102); every other test here needs 8021q and skips
without it: tests/vm/test_vlan_in_vm.py runs this file in a VM on Debian's cloud kernel, where
they run and the no-8021q test skips instead."""
from __future__ import annotations

import pytest

from dataplane.nslab import sh
from tests.helpers import ipj, kill_cni_at, run_cni
from tests.integration.conftest import MacvlanNet

pytestmark = pytest.mark.integration

NO_8021Q = ("kernel has no 8021q: VLAN sub-interfaces cannot be created here "
            "(tests/vm/test_vlan_in_vm.py runs these tests in a VM with Debian's cloud kernel)")
VLAN_NET = "198.51.100.0/24"
VLAN_GW = "198.51.100.1"


def _kernel_has_vlan(net: MacvlanNet) -> bool:
    probe = sh("ip", "-n", net.node, "link", "add", "link", "up0", "name", "vprobe", "type", "vlan", "id", "4000",
               check=False)
    if probe.returncode == 0:
        sh("ip", "-n", net.node, "link", "del", "vprobe")
    return probe.returncode == 0


@pytest.fixture
def vnet(net: MacvlanNet) -> MacvlanNet:
    """`net` on a kernel with 8021q, with the peer's side of the trunk: its VLAN 100 interface
    (198.51.100.1) on the same wire. The peer answers ARP only on the interface holding the
    address (arp_ignore=1), so a pod reaches 198.51.100.1 only with frames tagged 100."""
    if not _kernel_has_vlan(net):
        pytest.skip(NO_8021Q)
    net.lab.run(net.peer, "sysctl", "-q", "-w", "net.ipv4.conf.all.arp_ignore=1")
    sh("ip", "-n", net.peer, "link", "add", "link", "pp0", "name", "pp0.100", "type", "vlan", "id", "100")
    sh("ip", "-n", net.peer, "link", "set", "pp0.100", "up")
    sh("ip", "-n", net.peer, "addr", "add", f"{VLAN_GW}/24", "dev", "pp0.100")
    return net


def _conf(net: MacvlanNet, **over) -> dict:
    return net.conf(vlan=100, ipam={"type": "host-local", "dataDir": str(net.tmp / "ipam"),
                                    "ranges": [[{"subnet": VLAN_NET, "gateway": VLAN_GW}]]}, **over)


def _links(net: MacvlanNet) -> list[str]:
    return [l["ifname"] for l in ipj(net.node, "link", "show")]


def _ip(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


def test_vlan_add_fails_cleanly_without_8021q(net: MacvlanNet):
    if _kernel_has_vlan(net):
        pytest.skip("this kernel has 8021q: the no-VLAN error path cannot be exercised here")
    net.pod("pod1")
    before = net.snapshot()
    r = net.cni("ADD", net.conf(vlan=100))
    assert r.error_code == 102 and "up0.100" in r.json["msg"] and "8021q" in r.json["details"]
    assert net.snapshot() == before


def test_pods_share_the_vlan_parent_and_the_last_one_removes_it(vnet: MacvlanNet):
    net = vnet
    conf = _conf(net)
    r1, r2 = net.add("pod1", conf), net.add("pod2", conf)
    vlan = ipj(net.node, "-d", "link", "show", "up0.100")[0]
    assert vlan["linkinfo"]["info_data"]["id"] == 100
    assert vlan["link"] == "up0" and "UP" in vlan["flags"]
    for pod in ("pod1", "pod2"):
        link = ipj(net.pods[pod], "-d", "link", "show", "eth0")[0]
        assert link["linkinfo"]["info_kind"] == "macvlan"
    # tagged 100 on the wire: the peer answers only on pp0.100; and the pods reach each other
    assert net.lab.ping(net.pods["pod1"], VLAN_GW)
    assert net.lab.ping(net.pods["pod2"], VLAN_GW)
    assert net.lab.ping(net.pods["pod1"], _ip(r2))
    # another VLAN on the same master: its own sub-interface, and no way to the peer's VLAN 100
    conf200 = dict(conf, vlan=200, ipam=dict(conf["ipam"], dataDir=str(net.tmp / "ipam200")))
    r3 = net.add("pod3", conf200)
    assert ipj(net.node, "-d", "link", "show", "up0.200")[0]["linkinfo"]["info_data"]["id"] == 200
    assert not net.lab.ping(net.pods["pod3"], VLAN_GW, timeout=1)
    assert net.cni("DEL", dict(conf200, prevResult=r3), "pod3").code == 0
    assert "up0.200" not in _links(net) and "up0.100" in _links(net)
    assert net.cni("DEL", dict(conf, prevResult=r1), "pod1").code == 0
    assert "up0.100" in _links(net), "parent removed while pod2 uses it"
    assert net.lab.ping(net.pods["pod2"], VLAN_GW)
    assert net.cni("DEL", dict(conf, prevResult=r2), "pod2").code == 0
    assert "up0.100" not in _links(net)
    # DEL again (kubelet retries): nothing to do, still success
    assert net.cni("DEL", dict(conf, prevResult=r2), "pod2").code == 0


def test_a_vlan_interface_moor_did_not_create_is_used_and_kept(vnet: MacvlanNet):
    net = vnet
    sh("ip", "-n", net.node, "link", "add", "link", "up0", "name", "up0.100", "type", "vlan", "id", "100")
    sh("ip", "-n", net.node, "link", "set", "up0.100", "up")
    conf = _conf(net)
    r = net.add("pod1", conf)
    assert net.lab.ping(net.pods["pod1"], VLAN_GW)
    assert net.cni("DEL", dict(conf, prevResult=r), "pod1").code == 0
    assert "up0.100" in _links(net), "moor removed a VLAN interface it did not create"


def test_a_link_with_the_parent_name_that_is_not_that_vlan_is_refused(vnet: MacvlanNet):
    net = vnet
    sh("ip", "-n", net.node, "link", "add", "link", "up0", "name", "up0.100", "type", "vlan", "id", "200")
    net.pod("pod1")
    before = net.snapshot()
    r = net.cni("ADD", _conf(net))
    assert r.error_code == 7 and "up0.100" in r.json["msg"] and "not VLAN 100" in r.json["msg"]
    assert net.snapshot() == before


@pytest.mark.parametrize("step", ["shared-made", "parent", "link", "announce"])
def test_a_failed_add_removes_the_vlan_interface_it_created(vnet: MacvlanNet, step: str):
    net = vnet
    net.pod("pod1")
    before = net.snapshot()
    r = net.cni("ADD", _conf(net), env={"MOOR_FAILPOINT": step})
    assert r.error_code == 199 and step in r.json["msg"]
    assert net.snapshot() == before and "up0.100" not in _links(net)
    net.add("pod1", _conf(net))
    assert net.lab.ping(net.pods["pod1"], VLAN_GW)


def test_the_host_shim_hangs_off_the_vlan_and_goes_with_it(vnet: MacvlanNet):
    net = vnet
    sh("ip", "-n", net.node, "addr", "add", "198.51.100.2/24", "dev", "up0")  # the node's address in the VLAN's subnet
    conf = _conf(net, hostShim=True)
    r = net.add("pod1", conf)
    shims = [l for l in ipj(net.node, "-d", "link", "show") if l["ifname"].startswith("mshim")]
    assert len(shims) == 1 and shims[0]["link"] == "up0.100"
    assert net.lab.ping(net.node, _ip(r)), "the node cannot reach its pod through the shim"
    assert net.cni("DEL", dict(conf, prevResult=r), "pod1").code == 0
    assert not [n for n in _links(net) if n.startswith("mshim") or n == "up0.100"]


def test_gc_removes_the_vlan_and_shim_of_an_add_killed_before_its_record(vnet: MacvlanNet):
    """SIGKILL after the VLAN sub-interface and the shim were made, before the attachment was
    recorded, and the runtime crashed too (no DEL): GC removes both."""
    net = vnet
    conf = _conf(net, cniVersion="1.1.0", hostShim=True, gcGraceSeconds=0)  # two passes back to back
    net.pod("pod1")
    before = net.snapshot()
    kill_cni_at(net.node, conf, path=net.path, pause="shared-made", container_id="cid-pod1", netns=net.pod("pod1"),
                ready=lambda: any(a["ifname"].startswith("mshim") and a.get("addr_info")
                                  for a in ipj(net.node, "addr", "show")))
    assert "up0.100" in _links(net)
    for _ in range(2):  # a leak is released on the second pass
        r = run_cni(net.node, "GC", dict(conf, **{"cni.dev/valid-attachments": []}), path=net.path,
                    container_id="", netns="", ifname="")
        assert r.code == 0, r.stdout
    assert not [n for n in _links(net) if n.startswith("mshim") or n == "up0.100"]
    assert net.snapshot() == before
