"""moord (not the bare speaker) against FRR and GoBGP as the ToR: a CNI ADD makes the router learn
the pod's /32 and /128 with the node as next hop, DEL withdraws them, the session is MD5-signed
(a wrong key never establishes), and the router's own route is installed in the node's kernel."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from dataplane.nslab import Lab
from tests.helpers import REPO, cni_path, run_cni
from tests.interop.conftest import NODE, TOR, GoBGP, wait_for
from tests.interop.frr import FRR, missing
from tests.interop.test_fabric import learned

pytestmark = pytest.mark.interop

KEY = "s3cret-key"
NODE6 = "2001:db8::2"

FRR_CONF = f"""hostname tor
router bgp 65000
 bgp router-id {TOR}
 no bgp ebgp-requires-policy
 no bgp network import-check
 no bgp default ipv4-unicast
 neighbor {NODE} remote-as 4200000001
 neighbor {NODE} timers 3 9
 neighbor {NODE} timers connect 1
 neighbor {NODE} password {KEY}
 address-family ipv4 unicast
  neighbor {NODE} activate
  network 198.51.100.0/24
 exit-address-family
 address-family ipv6 unicast
  neighbor {NODE} activate
 exit-address-family
"""

GOBGP_CONF = f"""
[global.config]
  as = 65000
  router-id = "{TOR}"
[global.apply-policy.config]
  default-import-policy = "accept-route"
  default-export-policy = "accept-route"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{NODE}"
    peer-as = 4200000001
    auth-password = "{KEY}"
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
"""


class Router:
    """The ToR, FRR or GoBGP, behind one small interface."""

    def __init__(self, kind: str, lab: Lab, ns: str, tmp):
        self.kind = kind
        self.impl = FRR(lab, ns, tmp) if kind == "frr" else GoBGP(lab, ns, tmp)

    def start(self) -> None:
        self.impl.start(FRR_CONF if self.kind == "frr" else GOBGP_CONF)
        if self.kind == "gobgp":
            assert self.impl.cli("global", "rib", "add", "-a", "ipv4", "198.51.100.0/24").returncode == 0

    def established(self) -> bool:
        st = self.impl.state(NODE)
        return st == "Established" if self.kind == "frr" else st == "established"

    def routes(self, v6: bool = False) -> dict[str, str]:
        if self.kind == "frr":
            return self.impl.routes("ipv6" if v6 else "ipv4")
        p = self.impl.cli("global", "rib", "-a", "ipv6" if v6 else "ipv4", "-j")
        out = {}
        for prefix, paths in json.loads(p.stdout or "{}").items():
            for path in paths:
                for a in path.get("attrs", []):
                    if a.get("type") == 3:
                        out[prefix] = a.get("nexthop")
                    if a.get("type") == 14:  # MP_REACH: IPv6 next hop
                        out[prefix] = a.get("nexthop")
        return out


@pytest.fixture(params=["frr", "gobgp"])
def fabric(request, tmp_path):
    if request.param == "frr" and missing():
        pytest.skip(missing())
    if request.param == "gobgp" and shutil.which("gobgpd") is None:
        pytest.skip("gobgpd is not installed (scripts/setup.sh installs it)")
    lab = Lab()
    try:
        tor, node = lab.ns("tor"), lab.ns("node")
        lab.veth(tor, "t0", node, "n0")
        for ns, dev, a4, a6 in ((tor, "t0", TOR, "2001:db8::1"), (node, "n0", NODE, NODE6)):
            lab.addr(ns, dev, f"{a4}/24")
            lab.addr(ns, dev, f"{a6}/64")
        yield lab, Router(request.param, lab, tor, tmp_path), node
    finally:
        lab.close()


def moord(lab: Lab, node: str, tmp, password: str):
    conf = {"bgp": {"asn": 4200000001, "routerId": NODE, "holdTime": 9, "nextHopIPv6": NODE6, "installLearned": True,
                    "peers": [{"address": TOR, "asn": 65000, "password": password}]},
            "api": {"socket": str(tmp / "moord.sock")}, "cni": {"socket": ""}, "metrics": {"port": 0}, "probe": {"enabled": False}}
    (tmp / "moord.json").write_text(json.dumps(conf))
    return lab.spawn(node, [sys.executable, "-m", "dataplane.agent", "--config", str(tmp / "moord.json"), "-v"],
                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp / "moord.log", "w"))


def test_pod_routes_reach_the_router_and_its_routes_reach_the_kernel(fabric, tmp_path):
    lab, router, node = fabric
    router.start()
    moord(lab, node, tmp_path, KEY)
    wait_for(router.established, what=f"{router.kind} Established with moord (MD5-signed)")
    assert wait_for(lambda: learned(lab, node, "198.51.100.0/24"), what="the router's route in the kernel") == [TOR]
    conf = {"cniVersion": "1.0.0", "name": "fabric", "type": "moor", "mode": "bgp", "stateDir": str(tmp_path / "s"),
            "ipam": {"type": "moor-ipam", "dataDir": str(tmp_path / "ipam"),
                     "pools": [{"cidr": "203.0.113.0/24"}, {"cidr": "2001:db8:7::/64"}]}}
    pod = lab.ns("pod")
    r = run_cni(node, "ADD", conf, path=cni_path(tmp_path), container_id="p1", netns=Lab.path(pod),
                args="K8S_POD_NAMESPACE=a;K8S_POD_NAME=web-0")
    assert r.code == 0, r.stdout
    v4, v6 = (ip["address"] for ip in r.json["ips"])
    assert wait_for(lambda: router.routes().get(v4), what="the pod's /32 at the router") == NODE
    assert wait_for(lambda: router.routes(v6=True).get(v6), what="the pod's /128 at the router") == NODE6
    assert run_cni(node, "DEL", dict(conf, prevResult=r.json), path=cni_path(tmp_path), container_id="p1",
                   netns=Lab.path(pod), args="K8S_POD_NAMESPACE=a;K8S_POD_NAME=web-0").code == 0
    wait_for(lambda: v4 not in router.routes() and v6 not in router.routes(v6=True), what="both withdrawn")


def test_a_wrong_md5_key_never_establishes(fabric, tmp_path):
    lab, router, node = fabric
    router.start()
    moord(lab, node, tmp_path, "wrong-key")
    wait_for(lambda: "Connect -> Active" in (tmp_path / "moord.log").read_text()
             or "OpenSent" in (tmp_path / "moord.log").read_text(), what="moord's connect attempts")
    time.sleep(4)  # several connect-retry rounds (an observation window, not a speed check)
    assert not router.established()
    assert "Established" not in (tmp_path / "moord.log").read_text()
