"""moord's gRPC API on its unix socket and its Prometheus metrics, against a real agent with a
real pod (routed mode, moor-ipam) in network namespaces."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import grpc
import pytest

from dataplane.api import moor_pb2 as pb
from dataplane.api import moor_pb2_grpc as rpc
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


def _big_store(ipam_dir, n: int, netns: dict[str, str]) -> list:
    """n reservations written straight through the store's API (one transaction): nodes n1..n4 in
    turn, realistic field sizes; `netns`: node -> a netns path recorded on that node's rows."""
    import ipaddress

    from ipam.reservation import Reservation
    from ipam.store.sqlite import SQLiteStore
    base = ipaddress.ip_address("2001:db8:a::")
    rows = [Reservation(ip=str(base + 1 + i), pool="2001:db8:a::/112", state="active", identity=f"pod:shop/cart-{i}",
                        pod=f"shop/cart-{i}", container_id=f"{i:064x}", ifname="eth0", node=f"n{1 + i % 4}",
                        netns=netns.get(f"n{1 + i % 4}", ""), seq=1, updated=1.0) for i in range(n)]
    store = SQLiteStore(str(ipam_dir))
    try:
        store.transact("fabric", lambda v: [v.put(r) for r in rows])
    finally:
        store.close()
    return rows


def test_ipam_pages_through_a_network_one_reply_could_not_hold(tmp_path):
    n = 40_000
    rows = _big_store(tmp_path / "ipam", n, {})
    # the reply the old unpaged Ipam sent: over grpc's default 4 MiB limit, which refused it outright
    whole = pb.IpamReply(reservations=[pb.Reservation(ip=r.ip, pool=r.pool, key=r.identity, pod=r.pod,
                                                      container_id=r.container_id, state=r.state) for r in rows])
    assert whole.ByteSize() > 4 * 1024 * 1024
    netconf = {"cniVersion": "1.0.0", "name": "fabric", "type": "moor", "mode": "bgp",
               "ipam": {"type": "moor-ipam", "dataDir": str(tmp_path / "ipam"), "pools": [{"cidr": "2001:db8:a::/112"}]}}
    (tmp_path / "10-fabric.conf").write_text(json.dumps(netconf))
    sock = tmp_path / "moord.sock"
    conf = {"bgp": {"asn": 65001, "routerId": "192.0.2.2", "peers": []}, "api": {"socket": str(sock)},
            "cni": {"socket": ""}, "metrics": {"port": 0}, "probe": {"enabled": False},
            "ipam": {"config": str(tmp_path / "10-fabric.conf")}}
    (tmp_path / "moord.yaml").write_text(json.dumps(conf))
    with Lab() as lab:
        node = lab.ns("node")
        lab.spawn(node, [sys.executable, "-m", "dataplane.agent", "--config", str(tmp_path / "moord.yaml")], cwd=REPO,
                  stdout=subprocess.DEVNULL, stderr=open(tmp_path / "moord.log", "w"))
        wait_for(lambda: sock.exists(), what="the API socket")
        # a client that keeps grpc's default receive limit: every page fits in it
        with AgentClient(str(sock), timeout=30) as c:
            wait_for(lambda: c.health(), what="Health")
            c.channel.close()
            c.channel = grpc.insecure_channel(f"unix://{sock}")
            c.stub = rpc.AgentStub(c.channel)
            replies = list(c.ipam_pages())
            assert [r.error for r in replies] == [""] * 40
            assert all(len(r.reservations) == 1000 for r in replies) and replies[-1].next_page_token == ""
            got = [x.ip for r in replies for x in r.reservations]
            assert got == [r.ip for r in rows]  # each once, in address order
            assert sum(p.active for r in replies for p in r.pools) == n  # per page: the client sums
            assert {p.size for r in replies for p in r.pools} == {65535}  # the pool minus its network address
            big = list(c.ipam_pages(page_size=100_000))  # capped at 5000
            assert [len(r.reservations) for r in big] == [5000] * 8
            mine = [x.ip for r in c.ipam_pages(page_size=3000, node="n3") for x in r.reservations]
            assert mine == [r.ip for r in rows if r.node == "n3"]
            first = c.call("Ipam")  # an old client's Empty decodes as the first page
            assert len(first.reservations) == 1000 and first.next_page_token
        nd = [sys.executable, "-m", "dataplane.netdiag", "--source", "agent", "--agent-socket", str(sock)]
        doc = json.loads(lab.run(node, *nd, "ipam", "--json", "--node", "n2").stdout)
        assert [r["ip"] for r in doc["reservations"]] == [r.ip for r in rows if r.node == "n2"]
        assert [(p["cidr"], p["active"]) for p in doc["pools"]] == [("2001:db8:a::/112", n // 4)]
        text = lab.run(node, *nd, "ipam").stdout.decode()
        assert f"Reservations ({n})" in text and "2001:db8:a::9c40" in text  # the last one


def test_pod_map_reads_only_this_nodes_reservations(tmp_path, monkeypatch):
    from dataplane.view import AgentView
    with Lab() as lab:
        mine, other = lab.ns("podmine"), lab.ns("podother")
        # 2,500 rows; n1's name the netns "podmine", the other nodes' "podother" (as if it were theirs)
        rows = _big_store(tmp_path / "ipam", 2500, {"n1": Lab.path(mine), "n2": Lab.path(other),
                                                    "n3": Lab.path(other), "n4": Lab.path(other)})
        netconf = {"cniVersion": "1.0.0", "name": "fabric", "type": "moor",
                   "ipam": {"type": "moor-ipam", "dataDir": str(tmp_path / "ipam"), "pools": [{"cidr": "2001:db8:a::/112"}]}}
        (tmp_path / "10-fabric.conf").write_text(json.dumps(netconf))
        monkeypatch.setenv("MOOR_NODE_NAME", "n1")  # how moor-ipam names this node
        by_ino, _ = AgentView(ipam_config=str(tmp_path / "10-fabric.conf")).pods()
        assert set(by_ino) == {os.stat(Lab.path(mine)).st_ino}
        assert by_ino[os.stat(Lab.path(mine)).st_ino].pod in {r.pod for r in rows if r.node == "n1"}
        monkeypatch.setenv("MOOR_NODE_NAME", "n2")
        by_ino, _ = AgentView(ipam_config=str(tmp_path / "10-fabric.conf")).pods()
        assert set(by_ino) == {os.stat(Lab.path(other)).st_ino}
