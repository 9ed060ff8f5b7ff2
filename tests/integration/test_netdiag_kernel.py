"""`netdiag` without the agent, as a subprocess, on drops made on purpose in namespaces: the doctor
ranks the right cause first (no listener, receive buffer too small, queue too small) naming the
port, buffer or interface; `pod` joins a real CNI ADD's records with the kernel's view."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane.nslab import Lab
from tests.busy import Busy
from tests.helpers import REPO
from tests.integration.conftest import MacvlanNet
from tests.integration.test_counters import RX, TX, send, sink, until

pytestmark = pytest.mark.integration


def netdiag(*args: str, ns: str = "", check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "dataplane.netdiag", *args]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def doctor(ns: str, *extra: str) -> list[dict]:
    doc = json.loads(netdiag("doctor", "--netns", ns, "--json", "--source", "kernel", *extra).stdout)
    assert doc["source"] == "kernel" and [n["name"] for n in doc["namespaces"]] == [ns]
    assert any("eBPF probe" in u for u in doc["unavailable"])  # says what it cannot see
    return doc["findings"]


@pytest.fixture
def pair():
    """tx -- rx, on a busy node (another namespace dropping all the time, links coming and going)."""
    lab = Lab()
    try:
        tx, rx = lab.ns("tx"), lab.ns("rx")
        lab.veth(tx, "ndtx0", rx, "ndrx0")
        lab.addr(tx, "ndtx0", f"{TX}/24")
        lab.addr(rx, "ndrx0", f"{RX}/24")
        with Busy(lab):
            yield lab, tx, rx
    finally:
        lab.close(close_pipes=True)


def test_udp_to_a_closed_port_is_no_listener_first(pair):
    lab, tx, rx = pair
    send(lab, tx, RX, 4789, 400)
    f = doctor(rx, "--interval", "0")[0]
    assert f["cause"] == "no-listener" and f["where"] == f"netns {rx}" and f["volume"] == 400
    assert any("Udp NoPorts 400" in e for e in f["evidence"])
    assert any(f"ip netns exec {rx} tcpdump" in r for r in f["remedy"])
    text = netdiag("doctor", "--netns", rx, "--source", "kernel", "--interval", "0").stdout
    assert "#1 [no listener] UDP datagrams to ports nobody listens on in netns " + rx in text
    assert "not visible here:" in text


def test_a_flooded_tiny_receive_buffer_is_rcvbuf_first_naming_port_and_size(pair):
    lab, tx, rx = pair
    p, rcvbuf = sink(lab, rx, RX, 5001)
    send(lab, tx, RX, 5001, 2000)
    findings = doctor(rx)  # the default: two samples a second apart
    f = findings[0]
    assert f["cause"] == "rcvbuf" and f"{RX}:5001" in f["title"] and f["volume"] > 0
    assert f["remedy"][0].startswith(f"raise SO_RCVBUF of {RX}:5001 in netns {rx} from {rcvbuf} to ≥ ")
    assert any(f"{p.pid} python" in e and f"receive buffer {rcvbuf:,} B" in e for e in f["evidence"])
    assert f["rate"] == 0  # the flood ended before the samples: history, said so
    udp = json.loads(netdiag("udp", "--netns", rx, "--json", "--source", "kernel").stdout)
    (sock,) = [s for s in udp["netns"][0]["sockets"] if s["lport"] == 5001]
    assert sock["rcvbuf"] == rcvbuf and sock["drops"] == f["volume"] and sock["pid"] == p.pid


def test_a_tiny_queue_is_the_queue_cause_first_naming_the_interface(pair):
    lab, tx, rx = pair
    lab.run(tx, "tc", "qdisc", "replace", "dev", "ndtx0", "root", "handle", "1:", "tbf", "rate", "1mbit",
            "burst", "2kb", "limit", "3000")
    lab.run(tx, "tc", "qdisc", "replace", "dev", "ndtx0", "parent", "1:1", "handle", "10:", "pfifo", "limit", "1")
    sink(lab, rx, RX, 5001)  # a listener, so the receiver's side adds no drops of its own
    send(lab, tx, RX, 5001, 500, size=200)
    findings = doctor(tx, "--interval", "0")
    f = findings[0]
    assert f["cause"] == "host-queue" and "ndtx0" in f["title"] and f["where"] == f"netns {tx}"
    assert any("limit 3,000 bytes" in e for e in f["evidence"])
    assert any("child qdisc pfifo 10:" in e for e in f["evidence"]) and any("SndbufErrors" in e for e in f["evidence"])
    assert f["remedy"][0] == (f"raise the limit of the pfifo under 1:1 on ndtx0: ip netns exec {tx} tc qdisc replace "
                              "dev ndtx0 parent 1:1 pfifo limit 1000 (now 1 packets)")
    assert not any(x["title"].startswith("UDP sends failed") for x in findings)  # the queue explains them
    drops = json.loads(netdiag("drops", "--netns", tx, "--json", "--source", "kernel").stdout)
    (q,) = [q for q in drops["netns"][0]["qdiscs"] if q["ifname"] == "ndtx0" and q["root"]]
    assert q["drops"] == f["volume"] and q["kind"] == "tbf"


def test_watch_rates_in_the_drops_view(pair):
    lab, tx, rx = pair
    p = subprocess.Popen(["ip", "netns", "exec", rx, sys.executable, "-m", "dataplane.netdiag", "drops", "--netns",
                          rx, "--json", "--watch", "0.5", "--source", "kernel"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        json.loads(p.stdout.readline())  # the first frame: no rates yet
        sender = subprocess.Popen(["ip", "netns", "exec", tx, sys.executable, "-c",
                                   "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                                   "while True:\n s.sendto(b'x',('%s',9)); time.sleep(0.001)" % RX])
        try:
            def growing():
                doc = json.loads(p.stdout.readline())
                return doc["rates"].get(str(doc["netns"][0]["inode"]), {}).get("udp", {}).get("no_ports")
            assert until(growing, timeout=20)
        finally:
            sender.terminate()
            sender.wait()
        p.send_signal(2)  # Ctrl-C
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


def test_unknown_netns_and_pod_exit_2(pair, tmp_path: Path):
    p = netdiag("doctor", "--netns", "no-such-netns-4711", "--source", "kernel", check=False)
    assert p.returncode == 2 and "no-such-netns-4711" in p.stderr
    p = netdiag("pod", "x/y", "--ipam-dir", str(tmp_path), "--cni-state-dir", str(tmp_path), "--source", "kernel",
                check=False)
    assert p.returncode == 2 and "pod x/y not found" in p.stderr


def test_pod_view_of_a_routed_pod(net: MacvlanNet):
    net.lab.run(net.node, "sysctl", "-q", "-w", "net.ipv4.conf.up0.forwarding=1")
    conf = {"cniVersion": "1.0.0", "name": "rnet", "type": "moor", "mode": "bgp", "stateDir": str(net.tmp / "state"),
            "ipam": {"type": "moor-ipam", "dataDir": str(net.tmp / "ipam"), "pools": [{"cidr": "203.0.113.0/24"}]}}
    res = net.add("pod1", conf, args="IgnoreUnknown=1;K8S_POD_NAMESPACE=r;K8S_POD_NAME=a-0;K8S_POD_UID=u1")
    ip = res["ips"][0]["address"].split("/")[0]
    host_if = res["interfaces"][0]["name"]
    dirs = ["--cni-state-dir", str(net.tmp / "state"), "--ipam-dir", str(net.tmp / "ipam"), "--source", "kernel"]
    doc = json.loads(netdiag("pod", "r/a-0", "--json", *dirs, ns=net.node).stdout)
    assert doc["pod"] == "r/a-0" and [r["ip"] for r in doc["reservations"]] == [ip]
    (a,) = doc["attachments"]
    assert (a["mode"], a["host_link"], a["netns"], a["error"]) == ("bgp", host_if, Lab.path(net.pods["pod1"]), "")
    assert any(r.startswith("default via 169.254.1.1 dev eth0") for r in a["routes"])
    assert f"{ip}/32 dev eth0" in a["addresses"]
    assert any(n.startswith("169.254.1.1 dev eth0 lladdr") and "PERMANENT" in n for n in a["neighbours"])
    assert a["host_routes"] == [f"{ip}/32 dev {host_if} proto moor"]
    assert [lk["name"] for lk in a["host_side"]] == [host_if] and a["counters"]["pod"] == "r/a-0"
    text = netdiag("pod", "r/a-0", *dirs, ns=net.node).stdout
    assert "host routes to the pod:" in text and host_if in text
    # the kernel's moor routes, and the pod's netns named after the pod in every other view
    bgp = json.loads(netdiag("bgp", "--json", "--source", "kernel", ns=net.node).stdout)
    assert [(r["prefix"], r["proto"], r["dev"]) for r in bgp["kernel_routes"]] == [(f"{ip}/32", "moor", host_if)]
    drops = json.loads(netdiag("drops", "--json", "--netns", "host", "--netns", net.pods["pod1"], *dirs,
                               ns=net.node).stdout)
    assert [n["label"] for n in drops["netns"]] == ["host netns", "pod r/a-0"]


def test_doctor_and_pod_scope_to_one_pod_on_a_busy_node(net: MacvlanNet):
    """`doctor --pod NS/NAME` reads that pod's namespace and ranks its findings first; `netdiag pod`
    shows what drops in the pod. The node is busy meanwhile (another namespace dropping, links
    coming and going)."""
    net.lab.run(net.node, "sysctl", "-q", "-w", "net.ipv4.conf.up0.forwarding=1")
    conf = {"cniVersion": "1.0.0", "name": "rnet", "type": "moor", "mode": "bgp", "stateDir": str(net.tmp / "state"),
            "ipam": {"type": "moor-ipam", "dataDir": str(net.tmp / "ipam"), "pools": [{"cidr": "203.0.113.0/24"}]}}
    res = net.add("pod1", conf, args="IgnoreUnknown=1;K8S_POD_NAMESPACE=r;K8S_POD_NAME=a-0;K8S_POD_UID=u1")
    ip = res["ips"][0]["address"].split("/")[0]
    pod_ns = net.pods["pod1"]
    dirs = ["--cni-state-dir", str(net.tmp / "state"), "--ipam-dir", str(net.tmp / "ipam"), "--source", "kernel"]
    with Busy(net.lab):
        sink(net.lab, pod_ns, ip, 5001)
        send(net.lab, pod_ns, ip, 5001, 1000)  # the pod floods its own tiny-buffered receiver
        doc = json.loads(netdiag("doctor", "--pod", "r/a-0", "--json", "--interval", "0", *dirs, ns=net.node).stdout)
        f = doc["findings"][0]
        assert doc["scoped"] and f["cause"] == "rcvbuf" and f["where"] == "pod r/a-0" and not f["elsewhere"]
        assert [n["label"] for n in doc["namespaces"]] == ["pod r/a-0"]
        view = json.loads(netdiag("pod", "r/a-0", "--json", *dirs, ns=net.node).stdout)
        assert view["findings"][0]["cause"] == "rcvbuf"
        text = netdiag("pod", "r/a-0", *dirs, ns=net.node).stdout
        assert "What drops in the pod" in text and f"receive buffer too small: {ip}:5001" in text
        p = netdiag("doctor", "--pod", "r/nope", *dirs, ns=net.node, check=False)
        assert p.returncode == 2 and "pod r/nope not found" in p.stderr
        p = netdiag("doctor", "--pod", "r/a-0", "--netns", "host", *dirs, ns=net.node, check=False)
        assert p.returncode == 2 and "give one of them" in p.stderr


def test_unscoped_the_cause_still_outranks_the_busy_background(pair):
    """Without --netns the doctor reads every namespace, the busy background's included: a
    receive buffer overflow (severity 4) still ranks above the background's no-listener drops."""
    lab, tx, rx = pair
    sink(lab, rx, RX, 5001)
    send(lab, tx, RX, 5001, 2000)
    doc = json.loads(netdiag("doctor", "--json", "--source", "kernel").stdout)
    causes = [f["cause"] for f in doc["findings"]]
    assert causes[0] == "rcvbuf", causes
    assert any(f["cause"] == "no-listener" and "bg-rx" in f["where"] for f in doc["findings"]), causes


def test_a_namespace_path_that_is_no_network_namespace_is_refused(pair, tmp_path: Path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for bad, why in (("/proc/self/ns/mnt", "not a network namespace"), (str(fifo), "not a network namespace")):
        p = netdiag("drops", "--netns", bad, "--source", "kernel", check=False)
        assert p.returncode == 2 and why in p.stderr and "Traceback" not in p.stderr


def test_status_says_what_the_doctor_can_see_without_the_agent(tmp_path: Path):
    doc = json.loads(netdiag("status", "--json", "--agent-socket", str(tmp_path / "none.sock"),
                             "--ipam-dir", str(tmp_path)).stdout)
    assert not doc["agent"]["reachable"] and "none.sock does not exist" in doc["agent"]["error"]
    assert doc["versions"]["kernel"] == os.uname().release
    assert any("per-flow drops" in c for c in doc["cannot"]) and doc["ipam"]["error"]
