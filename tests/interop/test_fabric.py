"""moord in whole fabrics of network namespaces, with BIRD 2 as the ToR: graceful restart under a
live UDP stream, learned routes installed with ECMP, and two nodes whose pods reach each other
(and a fixed-IP pod that moves between them) through BGP-learned routes."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataplane.nslab import Lab
from tests.helpers import REPO, cni_path, run_cni
from tests.interop.conftest import Bird, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 is not installed")]

TOR, NODE1 = "192.0.2.1", "192.0.2.2"
STREAM = str(Path(__file__).with_name("udpstream.py"))


def moord(lab: Lab, ns: str, tmp: Path, name: str, asn: int, router_id: str, peers: list[dict], **bgp):
    conf = {"bgp": {"asn": asn, "routerId": router_id, "holdTime": 9, "peers": peers,
                    "gracefulRestart": {"restartTime": 60, "stateFile": str(tmp / f"{name}-gr.json")}, **bgp},
            "api": {"socket": str(tmp / f"{name}.sock")}, "cni": {"socket": ""}, "metrics": {"port": 0}, "probe": {"enabled": False}}
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(conf))  # JSON is YAML
    return lab.spawn(ns, [sys.executable, "-m", "dataplane.agent", "--config", str(path), "-v"], cwd=REPO,
                     stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "a"))


def cni_conf(tmp: Path, node: str, pool: str = "203.0.113.0/24") -> dict:
    return {"cniVersion": "1.0.0", "name": "fabric", "type": "moor", "mode": "bgp",
            "stateDir": str(tmp / f"{node}-state"),
            "ipam": {"type": "moor-ipam", "dataDir": str(tmp / f"{node}-ipam"), "pools": [{"cidr": pool}]}}


def kernel_route(lab: Lab, ns: str, dst: str, v: str = "-4") -> str:
    return lab.run(ns, "ip", v, "route", "show", dst, check=False).stdout.decode().strip()


BIRD_GR = """
router id 192.0.2.1;
protocol device {{}}
protocol kernel {{ ipv4 {{ export all; }}; }}
protocol bgp node1 {{
  local 192.0.2.1 as 65000;
  neighbor 192.0.2.2 as 4200000001;
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  graceful restart {gr};
  graceful restart time 60;
  ipv4 {{ import all; export none; }};
}}
"""


@pytest.fixture
def lab():
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def test_graceful_restart_keeps_a_udp_stream_whole_across_a_moord_restart(lab, tmp_path):
    tor, node = lab.ns("tor"), lab.ns("node")
    lab.veth(tor, "t0", node, "n0")
    lab.addr(tor, "t0", f"{TOR}/24")
    lab.addr(node, "n0", f"{NODE1}/24")
    lab.run(node, "sysctl", "-q", "-w", "net.ipv4.conf.n0.forwarding=1")
    bird = Bird(lab, tor, tmp_path)
    bird.start(BIRD_GR.format(gr="on"))
    peers = [{"address": TOR, "asn": 65000, "gracefulRestart": True}]
    agent = moord(lab, node, tmp_path, "moord", 4200000001, NODE1, peers)
    pod = lab.ns("pod")
    r = run_cni(node, "ADD", cni_conf(tmp_path, "n1"), path=cni_path(tmp_path), container_id="p1",
                netns=Lab.path(pod), args="K8S_POD_NAMESPACE=a;K8S_POD_NAME=web-0")
    assert r.code == 0, r.stdout
    ip = r.json["ips"][0]["address"].split("/")[0]
    wait_for(lambda: "proto bird" in kernel_route(lab, tor, ip), what="the pod's /32 in the ToR's kernel")

    out, stop = tmp_path / "recv.json", tmp_path / "stop"
    recv = lab.spawn(pod, [sys.executable, STREAM, "recv", "5001", str(out)], stdout=subprocess.PIPE, text=True)
    assert recv.stdout.readline().strip() == "ready"
    send = lab.spawn(tor, [sys.executable, STREAM, "send", ip, "5001", "200", str(stop)], stdout=subprocess.PIPE,
                     text=True)
    time.sleep(1)  # the stream runs before the restart (a pace, not a measurement)

    agent.send_signal(signal.SIGKILL)  # the harshest restart: no shutdown code runs at all
    agent.wait(10)
    wait_for(lambda: bird.state("node1") != "Established", what="BIRD to see the session gone")
    during = bird.cmd("show", "protocols", "all", "node1")
    assert f"{ip}/32" in bird.routes("node1"), during  # kept as stale by the helper
    assert "graceful restart active" in during
    assert "proto bird" in kernel_route(lab, tor, ip)
    time.sleep(1)

    moord(lab, node, tmp_path, "moord", 4200000001, NODE1, peers)
    wait_for(lambda: bird.state("node1") == "Established", what="the session back")
    wait_for(lambda: "restarted" in (tmp_path / "moord.log").read_text(), what="moord to know it restarted")
    assert "forwarding state kept" in (tmp_path / "moord.log").read_text()
    # BIRD ends its graceful-restart wait on our End-of-RIB, not its 60 s timer
    wait_for(lambda: "stale" not in bird.cmd("show", "route", ip, "all").lower()
             and f"{ip}/32" in bird.routes("node1")
             and "graceful restart active" not in bird.cmd("show", "protocols", "all", "node1"), timeout=30, what="the route refreshed after End-of-RIB")
    time.sleep(1)
    stop.touch()
    sent = int(send.stdout.readline())
    send.wait(10)
    time.sleep(0.5)  # the last datagrams in flight
    recv.send_signal(signal.SIGTERM)
    recv.wait(10)
    got = json.loads(out.read_text())
    assert got["missing"] == [] and got["received"] == sent, (got, sent, during)


BIRD_TOR = """
router id {me};
protocol device {{}}
protocol static st {{ ipv4; route 198.51.100.0/24 blackhole; route 198.51.100.128/25 blackhole; }}
protocol bgp node1 {{
  local {me} as 65000; neighbor {node} as 4200000001;
  hold time 9; connect retry time 1; error wait time 1, 2; graceful restart on;
  ipv4 {{ import all; export where proto = "st"; }};
}}
"""


def learned(lab: Lab, ns: str, dst: str) -> list[str]:
    """Gateways of the installed learned route to dst (protocol moor-bgp, 111)."""
    out = json.loads(lab.run(ns, "ip", "-j", "-4", "route", "show", dst, check=False).stdout or b"[]")
    for r in out:
        if str(r.get("protocol")) in ("111", "moor-bgp"):
            return sorted([h["gateway"] for h in r.get("nexthops", [])] or [r["gateway"]])
    return []


def test_learned_routes_are_installed_with_ecmp_replaced_in_place_and_survive_a_restart(lab, tmp_path):
    # a node dual-homed to two ToRs, each sending the same prefixes: ECMP over both
    node = lab.ns("node")
    tors = {}
    for name, me, mine in (("tor1", "192.0.2.1", "192.0.2.2"), ("tor2", "192.0.2.129", "192.0.2.130")):
        ns = lab.ns(name)
        lab.veth(ns, "t0", node, f"n{name[-1]}")
        lab.addr(ns, "t0", f"{me}/25")
        lab.addr(node, f"n{name[-1]}", f"{mine}/25")
        (tmp_path / name).mkdir()
        tors[name] = Bird(lab, ns, tmp_path / name)
        tors[name].start(BIRD_TOR.format(me=me, node=mine))
    TOR2 = "192.0.2.129"
    peers = [{"address": a, "asn": 65000, "gracefulRestart": True} for a in (TOR, TOR2)]
    agent = moord(lab, node, tmp_path, "moord", 4200000001, NODE1, peers, installLearned=True)
    both = sorted([TOR, TOR2])
    wait_for(lambda: learned(lab, node, "198.51.100.0/24") == both, what="an ECMP route over both ToR addresses")
    assert learned(lab, node, "198.51.100.128/25") == both

    # one ToR session goes: the route is replaced in place, never deleted on the way
    mon = lab.spawn(node, ["ip", "-4", "monitor", "route"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)  # let the monitor subscribe
    tors["tor2"].cmd("disable", "node1")
    wait_for(lambda: learned(lab, node, "198.51.100.0/24") == [TOR], what="the single-path route")
    tors["tor2"].cmd("enable", "node1")
    wait_for(lambda: learned(lab, node, "198.51.100.0/24") == both, what="ECMP again")
    mon.terminate()
    events = mon.communicate(timeout=10)[0]
    assert "198.51.100.0/24" in events and "Deleted" not in events, events

    # a restart stop (SIGTERM with graceful restart): the routes stay and keep forwarding
    agent.send_signal(signal.SIGTERM)
    agent.wait(10)
    assert learned(lab, node, "198.51.100.0/24") == both
    for bird in tors.values():  # meanwhile the ToRs stop sending them ...
        bird.cmd("disable", "st")
    moord(lab, node, tmp_path, "moord", 4200000001, NODE1, peers, installLearned=True)
    # ... so after both peers' End-of-RIB the adopted routes go, and not before the agent is back
    wait_for(lambda: not learned(lab, node, "198.51.100.0/24"), what="the stale learned routes removed")
    log = (tmp_path / "moord.log").read_text()
    assert "adopted 2 learned routes" in log and "removed 2 learned routes" in log, log

    # a full shutdown (SIGINT) takes every learned route with it
    for bird in tors.values():
        bird.cmd("enable", "st")
    wait_for(lambda: learned(lab, node, "198.51.100.0/24") == both, what="routes back")
    agent = lab.procs[-1]
    agent.send_signal(signal.SIGINT)
    agent.wait(10)
    assert not learned(lab, node, "198.51.100.0/24") and not learned(lab, node, "198.51.100.128/25")


BIRD_TWO_NODES = """
router id 192.0.2.1;
protocol device {{}}
protocol kernel {{ ipv4 {{ export all; }}; }}
template bgp node {{
  local as 65000; hold time 9; connect retry time 1; error wait time 1, 2;
  ipv4 {{ import all; export where source = RTS_BGP; }};
}}
protocol bgp node1 from node {{ neighbor 192.0.2.2 as 65101; }}
protocol bgp node2 from node {{ neighbor 192.0.2.130 as 65102; }}
"""


def test_two_nodes_reach_each_others_pods_through_bgp_and_a_fixed_ip_pod_moves(lab, tmp_path):
    tor = lab.ns("tor")
    lab.run(tor, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    nodes = {}
    for name, tor_ip, ip, asn in (("n1", "192.0.2.1", "192.0.2.2", 65101), ("n2", "192.0.2.129", "192.0.2.130", 65102)):
        ns = lab.ns(name)
        lab.veth(tor, f"t{name}", ns, "up0")
        lab.addr(tor, f"t{name}", f"{tor_ip}/25")
        lab.addr(ns, "up0", f"{ip}/25")
        lab.run(ns, "sysctl", "-q", "-w", "net.ipv4.conf.up0.forwarding=1")
        moord(lab, ns, tmp_path, f"moord-{name}", asn, ip, [{"address": tor_ip, "asn": 65000}], installLearned=True)
        nodes[name] = ns
    bird = Bird(lab, tor, tmp_path)
    bird.start(BIRD_TWO_NODES.format())
    path = cni_path(tmp_path)

    def add(node: str, pod: str, ip: str) -> tuple[str, dict]:
        ns = lab.ns(pod)
        conf = dict(cni_conf(tmp_path, node), runtimeConfig={"ips": [ip]})
        r = run_cni(nodes[node], "ADD", conf, path=path, container_id=pod, netns=Lab.path(ns),
                    args=f"K8S_POD_NAMESPACE=a;K8S_POD_NAME={pod}")
        assert r.code == 0, r.stdout
        return ns, dict(conf, prevResult=r.json)

    web1, _ = add("n1", "web1", "203.0.113.10")
    web2, _ = add("n2", "web2", "203.0.113.20")
    db, db_conf = add("n1", "db", "203.0.113.30")
    for node, dst, via in (("n1", "203.0.113.20", "192.0.2.1"), ("n2", "203.0.113.10", "192.0.2.129"),
                           ("n2", "203.0.113.30", "192.0.2.129")):
        wait_for(lambda: learned(lab, nodes[node], dst) == [via], what=f"{dst} learned on {node}")
    assert lab.ping(web1, "203.0.113.20", count=3) and lab.ping(web2, "203.0.113.10", count=3)
    assert lab.ping(web2, "203.0.113.30")

    # db-0 is deleted on n1 and re-created on n2 with the same fixed IP
    assert run_cni(nodes["n1"], "DEL", db_conf, path=path, container_id="db", netns=Lab.path(db),
                   args="K8S_POD_NAMESPACE=a;K8S_POD_NAME=db").code == 0
    wait_for(lambda: not learned(lab, nodes["n2"], "203.0.113.30"), what="the withdrawal reaching n2")
    db2, _ = add("n2", "db-moved", "203.0.113.30")
    wait_for(lambda: learned(lab, nodes["n1"], "203.0.113.30") == ["192.0.2.1"], what="the moved /32 on n1")
    assert lab.ping(web1, "203.0.113.30", count=3)  # same IP, other node, reachable again


BIRD_DUAL = """
router id 192.0.2.1;
protocol device {{}}
protocol bgp node1 {{
  local 192.0.2.1 as 65000; neighbor 192.0.2.2 as 4200000001;
  hold time 9; connect retry time 1; error wait time 1, 2;
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
"""


def test_ipv6_pod_routes_over_an_ipv4_session(lab, tmp_path):
    tor, node = lab.ns("tor"), lab.ns("node")
    lab.veth(tor, "t0", node, "n0")
    for ns, dev, a4, a6 in ((tor, "t0", TOR, "2001:db8::1"), (node, "n0", NODE1, "2001:db8::2")):
        lab.addr(ns, dev, f"{a4}/24")
        lab.addr(ns, dev, f"{a6}/64")
    lab.run(node, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")  # a node's setting, not moor's
    bird = Bird(lab, tor, tmp_path)
    bird.start(BIRD_DUAL.format())
    moord(lab, node, tmp_path, "moord", 4200000001, NODE1, [{"address": TOR, "asn": 65000}], nextHopIPv6="2001:db8::2")
    conf = cni_conf(tmp_path, "n1")
    conf["ipam"]["pools"].append({"cidr": "2001:db8:7::/64"})
    pod = lab.ns("pod")
    r = run_cni(node, "ADD", conf, path=cni_path(tmp_path), container_id="p6", netns=Lab.path(pod),
                args="K8S_POD_NAMESPACE=a;K8S_POD_NAME=v6-0")
    assert r.code == 0, r.stdout
    ips = {ip["address"].split("/")[0] for ip in r.json["ips"]}
    v6 = next(ip for ip in ips if ":" in ip)
    routes = wait_for(lambda: (lambda got: got if f"{v6}/128" in got else None)(bird.routes("node1")),
                      what="the pod's /128 at the ToR")
    assert routes[f"{v6}/128"] == "2001:db8::2"
    assert any(p.endswith("/32") and routes[p] == NODE1 for p in routes)
    lab.run(tor, "ip", "-6", "route", "replace", f"{v6}/128", "via", "2001:db8::2")
    assert lab.ping(tor, v6)
