"""moor's BGP speaker against BIRD 2 as the ToR: session, 4-byte ASN, routes both ways, withdraw,
End-of-RIB, a wrong AS never establishing, and a clean stop withdrawing everything."""
from __future__ import annotations

import signal
import time
import subprocess
import sys

import pytest

from dataplane.nslab import Lab
from tests.helpers import REPO, cni_path, run_cni
from tests.interop.conftest import NODE, TOR, wait_for

pytestmark = pytest.mark.interop

BIRD_CONF = """
router id 192.0.2.1;
protocol device {{}}
protocol static st {{ ipv4; route 198.51.100.0/24 blackhole; }}
protocol bgp node1 {{
  local 192.0.2.1 as 65000;
  neighbor 192.0.2.2 as {node_as};
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  ipv4 {{ import all; export where proto = "st"; }};
}}
"""


def test_session_routes_both_ways_and_withdraw(tor):
    lab, bird, speaker = tor
    bird.start(BIRD_CONF.format(node_as=4200000001))
    sp = speaker("--asn", "4200000001", "--router-id", NODE, "--peer", f"{TOR}:65000", "--announce",
                 "203.0.113.7/32", "--hold-time", "9", "--connect-retry", "1")
    wait_for(lambda: bird.state("node1") == "Established", what="BIRD to reach Established")
    assert wait_for(lambda: bird.routes("node1").get("203.0.113.7/32"), what="the /32 at BIRD") == NODE
    aspath = bird.cmd("show", "route", "203.0.113.7/32", "all")
    assert "4200000001" in aspath  # a 4-byte ASN end to end
    sp.send("announce 203.0.113.9/32")
    wait_for(lambda: "203.0.113.9/32" in bird.routes("node1"), what="a route announced later")
    sp.send("withdraw 203.0.113.7/32")
    wait_for(lambda: "203.0.113.7/32" not in bird.routes("node1"), what="the withdrawal")
    events = wait_for(lambda: [e for e in sp.drain() if e.get("end_of_rib")] and sp.seen, what="End-of-RIB from BIRD")
    learned = {p: nh for e in events for p, nh in e.get("announced", [])}
    assert learned.get("198.51.100.0/24") == TOR
    sp.proc.send_signal(signal.SIGTERM)  # clean stop: Cease, and BIRD drops what we told it
    sp.proc.wait(10)
    wait_for(lambda: not bird.routes("node1"), what="BIRD to drop the routes after our Cease")


def test_wrong_peer_as_never_establishes(tor):
    lab, bird, speaker = tor
    bird.start(BIRD_CONF.format(node_as=65001))  # BIRD expects 65001, we are 65002
    sp = speaker("--asn", "65002", "--router-id", NODE, "--peer", f"{TOR}:65000", "--connect-retry", "1")
    wait_for(lambda: "Bad peer AS" in bird.cmd("show", "protocols", "all", "node1")
             or "Bad OPEN" in bird.cmd("show", "protocols", "all", "node1"), what="BIRD to refuse our AS")
    assert bird.state("node1") != "Established"
    assert not any(e.get("state") == "Established" for e in sp.drain())


def _moord(lab, node_ns: str, tmp, name: str = "moord"):
    conf = tmp / f"{name}.yaml"
    conf.write_text(f"""
bgp:
  asn: 4200000001
  routerId: {NODE}
  holdTime: 9
  peers:
    - address: {TOR}
      asn: 65000
      communities: ["65000:42"]
api: {{socket: {tmp / (name + ".sock")}}}
cni: {{socket: ""}}
metrics: {{port: 0}}
probe: {{enabled: false}}
""")
    return lab.spawn(node_ns, [sys.executable, "-m", "dataplane.agent", "--config", str(conf), "-v"], cwd=REPO,
                     stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "w"))


def test_cni_add_makes_the_tor_learn_the_pod_and_del_withdraws_it(tor, tmp_path):
    lab, bird, _speaker = tor
    bird.start(BIRD_CONF.format(node_as=4200000001))
    node_ns = f"{lab.prefix}-node"
    lab.run(node_ns, "sysctl", "-q", "-w", "net.ipv4.conf.n0.forwarding=1")
    path = cni_path(tmp_path)
    conf = {"cniVersion": "1.0.0", "name": "fabric", "type": "moor", "mode": "bgp", "stateDir": str(tmp_path / "s"),
            "ipam": {"type": "moor-ipam", "dataDir": str(tmp_path / "ipam"), "pools": [{"cidr": "203.0.113.0/24"}]}}
    # a pod that exists before the agent starts: read from the table at start
    early = lab.ns("early")
    r0 = run_cni(node_ns, "ADD", conf, path=path, container_id="early", netns=Lab.path(early),
                 args="K8S_POD_NAMESPACE=a;K8S_POD_NAME=early-0")
    assert r0.code == 0, r0.stdout
    agent = _moord(lab, node_ns, tmp_path)
    wait_for(lambda: bird.state("node1") == "Established", what="Established")
    ip0 = r0.json["ips"][0]["address"]
    assert wait_for(lambda: bird.routes("node1").get(ip0), what="the early pod's /32") == NODE
    assert "(65000,42)" in bird.cmd("show", "route", ip0, "all")  # the peer's community
    pod = lab.ns("pod")
    r1 = run_cni(node_ns, "ADD", conf, path=path, container_id="p1", netns=Lab.path(pod),
                 args="K8S_POD_NAMESPACE=a;K8S_POD_NAME=web-0")
    assert r1.code == 0, r1.stdout
    ip1 = r1.json["ips"][0]["address"]
    assert wait_for(lambda: bird.routes("node1").get(ip1), what="the new pod's /32 at the ToR") == NODE
    # the ToR reaches the pod through the node
    lab.run(bird.ns, "ip", "route", "replace", ip1, "via", NODE)
    assert lab.ping(bird.ns, ip1.split("/")[0])
    assert run_cni(node_ns, "DEL", dict(conf, prevResult=r1.json), path=path, container_id="p1",
                   netns=Lab.path(pod), args="K8S_POD_NAMESPACE=a;K8S_POD_NAME=web-0").code == 0
    wait_for(lambda: ip1 not in bird.routes("node1"), what="the withdrawal after DEL")
    # restart the agent: it reads the table again and re-advertises what is there
    agent.terminate()
    agent.wait(10)
    wait_for(lambda: not bird.routes("node1"), what="routes gone with the agent")
    _moord(lab, node_ns, tmp_path, "moord2")
    assert wait_for(lambda: bird.routes("node1").get(ip0), what="re-advertised after restart") == NODE


def test_moord_refuses_a_bad_config_by_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("bgp:\n  asn: 65001\n  routerId: 192.0.2.2\n  peers:\n    - address: 192.0.2.1\n      asn: x\n")
    p = subprocess.run([sys.executable, "-m", "dataplane.agent", "--config", str(bad)], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 2 and "bgp.peers[0].asn must be int" in p.stderr


BIRD_SECURE = """
router id 192.0.2.1;
protocol device {{}}
protocol bgp node1 {{
  local 192.0.2.1 as 65000;
  neighbor 192.0.2.2 as 65001;
  password "{password}";
  ttl security on;
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  ipv4 {{ import all; export none; }};
}}
"""


@pytest.mark.parametrize("ours,established", [("s3cret-key", True), ("wrong-key", False)])
def test_md5_password_and_gtsm(tor, ours, established):
    lab, bird, speaker = tor
    bird.start(BIRD_SECURE.format(password="s3cret-key"))
    sp = speaker("--asn", "65001", "--router-id", NODE, "--peer", f"{TOR}:65000:gtsm,md5={ours}",
                 "--announce", "203.0.113.7/32", "--connect-retry", "1", "--hold-time", "9")
    if established:
        wait_for(lambda: bird.state("node1") == "Established", what="an MD5-signed, GTSM session")
        assert wait_for(lambda: bird.routes("node1").get("203.0.113.7/32"), what="the /32") == NODE
    else:
        # a wrong key: the kernel drops every unsigned-for-it segment, no session ever forms
        wait_for(lambda: any(e.get("state") == "Active" for e in sp.drain()), what="failed connect attempts")
        time.sleep(3)
        assert bird.state("node1") != "Established"
        assert not any(e.get("state") == "Established" for e in sp.drain())
