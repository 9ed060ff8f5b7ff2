"""moord's gRPC API on its unix socket and its Prometheus metrics, against a real agent with a
real pod (routed mode, moor-ipam) in network namespaces."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from dataplane.api import moor_pb2 as pb
from dataplane.api.client import AgentClient, AgentUnavailable
from dataplane.nslab import Lab
from tests.helpers import REPO, cni_path, run_cni
from tests.interop.conftest import wait_for

pytestmark = pytest.mark.integration

FETCH = "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def test_api_and_metrics_show_peers_routes_reservations_and_what_is_unavailable(tmp_path):
    with Lab() as lab:
        node = lab.ns("node")
        lab.veth(node, "n0", lab.ns("peer"), "p0")
        lab.addr(node, "n0", "192.0.2.2/24")
        netconf = {"cniVersion": "1.0.0", "name": "fabric", "type": "moor", "mode": "bgp",
                   "stateDir": str(tmp_path / "state"),
                   "ipam": {"type": "moor-ipam", "dataDir": str(tmp_path / "ipam"), "pools": [{"cidr": "203.0.113.0/28"}]}}
        (tmp_path / "10-fabric.conf").write_text(json.dumps(netconf))
        pod = lab.ns("pod")
        r = run_cni(node, "ADD", netconf, path=cni_path(tmp_path), container_id="c1", netns=Lab.path(pod),
                    args="K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0")
        assert r.code == 0, r.stdout
        ip = r.json["ips"][0]["address"]
        sock = tmp_path / "moord.sock"
        conf = {"bgp": {"asn": 65001, "routerId": "192.0.2.2", "peers": [{"address": "192.0.2.1", "asn": 65000}]},
                "api": {"socket": str(sock)}, "cni": {"socket": ""}, "metrics": {"address": "127.0.0.1", "port": 9653},
                "probe": {"enabled": False}, "ipam": {"config": str(tmp_path / "10-fabric.conf")}}
        (tmp_path / "moord.yaml").write_text(json.dumps(conf))
        lab.spawn(node, [sys.executable, "-m", "dataplane.agent", "--config", str(tmp_path / "moord.yaml")], cwd=REPO,
                  stdout=subprocess.DEVNULL, stderr=open(tmp_path / "moord.log", "w"))
        wait_for(lambda: sock.exists(), what="the API socket")
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600  # root only

        with AgentClient(str(sock)) as c:
            h = wait_for(lambda: c.health(), what="Health")
            assert not h.ok  # the one peer is not there
            bgp = next(x for x in h.components if x.name == "bgp")
            assert bgp.detail == "0/1 peers Established"
            peers = c.call("BgpPeers").peers
            assert [(p.address, p.asn) for p in peers] == [("192.0.2.1", 65000)]
            assert peers[0].state in ("Idle", "Connect", "Active")
            assert ip in wait_for(lambda: list(c.call("BgpRoutes").advertised), what="the pod route")
            ipam = c.call("Ipam")
            assert not ipam.error
            assert [(x.ip, x.pod, x.state) for x in ipam.reservations] == [(ip.split("/")[0], "shop/cart-0", "active")]
            assert [(p.cidr, p.size, p.active) for p in ipam.pools] == [("203.0.113.0/28", 14, 1)]
            assert "disabled" in c.call("Drops").unavailable
            assert "disabled" in c.sessions().unavailable
            assert isinstance(c.call("Health"), pb.HealthReply)

        # netdiag through the agent: BGP and IPAM as moord sees them, and what it cannot see
        nd = [sys.executable, "-m", "dataplane.netdiag", "--source", "agent", "--agent-socket", str(sock)]
        doc = json.loads(lab.run(node, *nd, "bgp", "--json").stdout)
        assert doc["peers"][0]["address"] == "192.0.2.1" and ip in doc["advertised"]
        table = lab.run(node, *nd, "ipam").stdout.decode()
        assert "shop/cart-0" in table and ip.split("/")[0] in table
        drops = lab.run(node, *nd, "drops").stdout.decode()
        assert "disabled in moord's config" in drops

        text = lab.run(node, sys.executable, "-c", FETCH, "http://127.0.0.1:9653/metrics").stdout.decode()
        assert 'moor_bgp_peer_state{peer="192.0.2.1",state="Established"} 0.0' in text
        assert "moor_bgp_routes_advertised 1.0" in text
        assert 'moor_ipam_addresses{pool="203.0.113.0/28",state="active"} 1.0' in text
        assert 'moor_ipam_pool_size{pool="203.0.113.0/28"} 14.0' in text
        assert "moor_drops_total" not in text  # no probe: no made-up zeros
        missing = lab.run(node, sys.executable, "-c", FETCH, "http://127.0.0.1:9653/nope", check=False)
        assert missing.returncode != 0 and b"404" in missing.stderr

    with pytest.raises(AgentUnavailable):  # the agent is gone with the lab: a clear error, not a hang
        AgentClient(str(sock), timeout=1).health()
