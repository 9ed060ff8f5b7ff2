"""eBPF host routing (dataplane/hostrouting.py) on real routed-mode pods in namespaces:

    [pod a] [pod b] ..veth.. (node: moor<hash> per pod; up0 192.0.2.2) ==veth== (remote: r0 192.0.2.1,
                                                                        peers 198.51.100.1, 2001:db8:2::1 on lo)

Pods are made by the moor CNI plugin (mode bgp, moor-ipam) inside the node netns. The fast path is
proven two independent ways: the program's own per-CPU counters, and the node's IP stack counters
(/proc/net/snmp ForwDatagrams, /proc/net/snmp6 Ip6OutForwDatagrams), which count every packet the
normal stack forwards and none that the program redirects."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from cni.netlink import netns as nsmod
from dataplane.hostrouting import NAME, HostRouting, HostRoutingConfig, HostRoutingUnavailable
from dataplane.nslab import Lab
from tests.helpers import REPO, cni_path, ipj
from tests.integration.conftest import MacvlanNet
from tests.interop.conftest import wait_for

pytestmark = pytest.mark.ebpf

REMOTE4, REMOTE6 = "198.51.100.1", "2001:db8:2::1"
SMALL4, SMALL6 = "198.51.100.2", "2001:db8:2::2"  # behind a second link with MTU 1280 (up1)
METRIC4, METRIC6 = "198.51.100.3", "2001:db8:2::3"  # behind a route with an (unlocked) MTU 1280 metric
NODE4, NODE6 = "192.0.2.2", "2001:db8:1::2"
UDPSTREAM = str(REPO / "tests" / "interop" / "udpstream.py")


def _conf(tmp: Path) -> dict:
    return {"cniVersion": "1.0.0", "name": "hrnet", "type": "moor", "mode": "bgp", "stateDir": str(tmp / "state"),
            "ipam": {"type": "moor-ipam", "dataDir": str(tmp / "ipam"), "gcGraceSeconds": 0,
                     "pools": [{"cidr": "203.0.113.0/24"}, {"cidr": "2001:db8:9::/64"}]}}


class Node(MacvlanNet):
    """The node, its remote router and routed pods: name -> (netns, IPv4, IPv6, host veth)."""

    def add_pod(self, name: str) -> tuple[str, str, str, str]:
        res = self.add(name, _conf(self.tmp), args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=hr;K8S_POD_NAME={name};"
                                                     f"K8S_POD_UID=u-{name}")
        ips = [i["address"].split("/")[0] for i in res["ips"]]
        v4 = next(i for i in ips if ":" not in i)
        v6 = next(i for i in ips if ":" in i)
        return self.pods[name], v4, v6, res["interfaces"][0]["name"]

    def forwarded(self) -> int:
        """Packets the node's normal stack forwarded, IPv4 and IPv6."""
        snmp = self.lab.run(self.node, "cat", "/proc/net/snmp").stdout.decode().splitlines()
        names, values = (l.split()[1:] for l in snmp if l.startswith("Ip:"))
        v4 = int(dict(zip(names, values))["ForwDatagrams"])
        snmp6 = dict(l.split() for l in self.lab.run(self.node, "cat", "/proc/net/snmp6").stdout.decode().splitlines()
                     if l.strip())
        return v4 + int(snmp6["Ip6OutForwDatagrams"])


@pytest.fixture
def node(tmp_path: Path):
    lab = Lab()
    try:
        n, r = lab.ns("node"), lab.ns("remote")
        lab.veth(n, "up0", r, "r0")
        for ns, dev, a4, a6 in ((n, "up0", NODE4, NODE6), (r, "r0", "192.0.2.1", "2001:db8:1::1")):
            lab.addr(ns, dev, f"{a4}/24")
            lab.addr(ns, dev, f"{a6}/64")
        lab.veth(n, "up1", r, "r1")
        for ns, dev, a4, a6 in ((n, "up1", "198.51.100.129", "2001:db8:3::2"), (r, "r1", "198.51.100.130",
                                                                                  "2001:db8:3::1")):
            lab.run(ns, "ip", "link", "set", dev, "mtu", "1280")
            lab.addr(ns, dev, f"{a4}/25")
            lab.addr(ns, dev, f"{a6}/64")
        for a in (REMOTE4, SMALL4, METRIC4, REMOTE6, SMALL6, METRIC6):
            lab.addr(r, "lo", f"{a}/{128 if ':' in a else 32}")
        lab.run(n, "sysctl", "-q", "-w", "net.ipv4.conf.all.forwarding=1", "net.ipv6.conf.all.forwarding=1")
        lab.run(r, "ip", "route", "add", "203.0.113.0/24", "via", NODE4)
        lab.run(r, "ip", "-6", "route", "add", "2001:db8:9::/64", "via", NODE6)
        lab.run(n, "ip", "route", "add", f"{REMOTE4}/32", "via", "192.0.2.1")
        lab.run(n, "ip", "route", "add", f"{SMALL4}/32", "via", "198.51.100.130")
        lab.run(n, "ip", "route", "add", f"{METRIC4}/32", "via", "192.0.2.1", "mtu", "1280")
        lab.run(n, "ip", "-6", "route", "add", f"{REMOTE6}/128", "via", "2001:db8:1::1")
        lab.run(n, "ip", "-6", "route", "add", f"{SMALL6}/128", "via", "2001:db8:3::1")
        lab.run(n, "ip", "-6", "route", "add", f"{METRIC6}/128", "via", "2001:db8:1::1", "mtu", "1280")
        yield Node(lab=lab, tmp=tmp_path, node=n, peer=r, path=cni_path(tmp_path))
    finally:
        lab.close()


@contextmanager
def host_routing(node: Node, pods: list, **conf):
    """HostRouting loaded in this process, its netlink socket in the node netns, attached to the
    pods' host veths as moord would from its route watch; detached (and checked gone) after."""
    hr = HostRouting(HostRoutingConfig(**conf))
    fd = nsmod.open_netns(Lab.path(node.node))
    try:
        with nsmod.entered(fd):
            try:
                hr.start()
            except HostRoutingUnavailable as e:
                pytest.skip(f"host routing cannot load here: {e}")
    finally:
        os.close(fd)
    try:
        for _ns, v4, v6, veth in pods:
            index = ipj(node.node, "link", "show", veth)[0]["ifindex"]
            hr.pod_route(f"{v4}/32", index, True)
            hr.pod_route(f"{v6}/128", index, True)
        hr.attach_all()
        yield hr
    finally:
        hr.close(detach=True)
    for _ns, _v4, _v6, veth in pods:
        assert not tc_filters(node, veth), veth


def tc_filters(node: Node, dev: str) -> list:
    """moor's filters on a device's ingress hook, as tc(8) sees them."""
    p = node.lab.run(node.node, "tc", "-j", "filter", "show", "dev", dev, "ingress", check=False)
    return [f for f in json.loads(p.stdout or b"[]") if f.get("options", {}).get("bpf_name", "").startswith(NAME)]


def delta(hr: HostRouting, before: dict) -> dict:
    now = hr.counters()
    return {k: now[k] - before.get(k, 0) for k in now}


UDP_ECHO_SERVER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for a in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, 7007))
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        d, peer = key.fileobj.recvfrom(65536)
        key.fileobj.sendto(d, peer)
"""
UDP_ECHO_CLIENT = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(3)
ok = 0
for i in range(int(sys.argv[3])):
    s.sendto(b"%06d" % i + b"u" * 500, (sys.argv[1], int(sys.argv[2])))
    try:
        ok += s.recv(2048)[:6] == b"%06d" % i
    except socket.timeout:
        pass
print(ok)
"""
TCP_ECHO = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.socket(fam, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen()
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    while (d := c.recv(65536)):
        c.sendall(d)
    c.close()
"""
TCP_CLIENT = """
import hashlib, os, socket, sys, threading
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
data = os.urandom(4 << 20)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
t = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
t.start()
got = bytearray()
while (d := c.recv(65536)):
    got += d
t.join()
print(hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), len(got))
"""
UDP_REFUSED = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], 9))
s.send(b"anyone?")
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("silence")
"""


def udp_echo(node: Node, ns: str, dst: str, n: int = 50) -> int:
    p = node.lab.run(ns, sys.executable, "-c", UDP_ECHO_CLIENT, dst, "7007", str(n))
    return int(p.stdout)


def echo_server(node: Node, ns: str, *binds: str) -> None:
    """A UDP echo on port 7007 of each address (IPv4 and IPv6: lab/traffic.py's echo is IPv4 only)."""
    p = node.lab.spawn(ns, [sys.executable, "-c", UDP_ECHO_SERVER, *binds], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"


def test_pod_to_pod_on_one_node_goes_straight_into_the_pod(node: Node):
    a, b = node.add_pod("pa"), node.add_pod("pb")
    echo_server(node, b[0], b[1], b[2])
    for ip6 in (False, True):
        srv = node.lab.spawn(b[0], [sys.executable, "-c", TCP_ECHO, b[2] if ip6 else b[1], "7008" if ip6 else "7009"],
                             stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"
    # the control: without the program the node's stack forwards what the pods send each other
    fwd0 = node.forwarded()
    assert udp_echo(node, a[0], b[1], 20) == 20
    assert node.forwarded() - fwd0 >= 40
    with host_routing(node, [a, b]) as hr:
        assert [len(tc_filters(node, p[3])) for p in (a, b)] == [1, 1]
        before, fwd = hr.counters(), node.forwarded()
        for dst in (b[1], b[2]):
            assert node.lab.ping(a[0], dst, count=3), dst
            assert udp_echo(node, a[0], dst) == 50
        for dst, port in ((b[1], "7009"), (b[2], "7008")):
            out = node.lab.run(a[0], sys.executable, "-c", TCP_CLIENT, dst, port).stdout.decode().split()
            assert out == ["True", str(4 << 20)], (dst, out)
        d = delta(hr, before)
        # both ways (a's requests at a's veth, b's answers at b's veth) went into the other pod:
        # 2 x (6 pings + 100 datagrams) and every TCP segment, and the stack forwarded none of them
        assert d["to_pod"] >= 212 + 2 * 64, d
        assert d["to_uplink"] == 0, d
        assert node.forwarded() - fwd < 10, (node.forwarded() - fwd, d)  # a stray neighbour probe at most


def test_pod_to_a_peer_behind_the_uplink_and_back(node: Node):
    a = node.add_pod("pa")
    echo_server(node, node.peer, REMOTE4, REMOTE6)
    with host_routing(node, [a], uplinks=["up0"]) as hr:
        for dst in (REMOTE4, REMOTE6):  # a first exchange resolves the neighbours (the stack's job)
            node.lab.ping(a[0], dst, count=1)
        before, fwd = hr.counters(), node.forwarded()
        for dst in (REMOTE4, REMOTE6):
            assert node.lab.ping(a[0], dst, count=3), dst
            assert udp_echo(node, a[0], dst) == 50
        d = delta(hr, before)
        # out: bpf_redirect_neigh on the pod's veth; back in: the uplink's program into the pod
        assert d["to_uplink"] >= 106 and d["to_pod"] >= 106, d
        assert node.forwarded() - fwd < 10, node.forwarded() - fwd


def test_node_to_pod_and_pod_to_node_use_the_normal_stack(node: Node):
    a = node.add_pod("pa")
    with host_routing(node, [a]) as hr:
        before = hr.counters()
        for dst in (NODE4, NODE6):
            assert node.lab.ping(a[0], dst, count=2), dst
        for dst in (a[1], a[2]):
            assert node.lab.ping(node.node, dst, count=2), dst
        d = delta(hr, before)
        assert d["pass_fib"] >= 4 and d["to_pod"] == d["to_uplink"] == 0, d  # the node's own: not forwarded


def test_icmp_errors_and_path_mtu_still_come_from_where_they_should(node: Node):
    a = node.add_pod("pa")
    with host_routing(node, [a]) as hr:
        for dst in (REMOTE4, REMOTE6):
            # a UDP datagram to a closed port: the remote's port unreachable reaches the pod's socket
            assert node.lab.run(a[0], sys.executable, "-c", UDP_REFUSED, dst).stdout.decode().strip() == "refused"
        before = hr.counters()
        # TTL 1: the node answers time exceeded (the program leaves the packet to the stack)
        out4 = node.lab.run(a[0], "ping", "-c1", "-W2", "-t1", REMOTE4, check=False).stdout.decode()
        out6 = node.lab.run(a[0], "ping", "-6", "-c1", "-W2", "-t1", REMOTE6, check=False).stdout.decode()
        assert f"From {NODE4}" in out4 and "Time to live exceeded" in out4, out4
        assert f"From {NODE6}" in out6 and "Time exceeded" in out6, out6
        assert delta(hr, before)["pass_special"] >= 2
        # bigger than the next link's MTU with DF: frag needed / packet too big from the node
        before = hr.counters()
        assert too_big(node, a[0], SMALL4) and too_big(node, a[0], SMALL6)
        assert delta(hr, before)["pass_fib"] >= 2
        # and what fits still goes (the fast path, once the stack has resolved the next hop)
        for dst in (SMALL4, SMALL6):
            node.lab.ping(a[0], dst)
        before = hr.counters()
        assert node.lab.ping(a[0], SMALL4, count=2) and node.lab.ping(a[0], SMALL6, count=2)
        assert delta(hr, before)["to_uplink"] >= 4


# a 1400-byte UDP datagram with DF set whatever path MTU the pod has cached (PMTUDISC_PROBE), to
# the remote's closed port 9; prints what came back on the error queue: "EMSGSIZE <mtu> <from>"
# (frag needed / packet too big), "ECONNREFUSED 0 <from>" (it went through), or "nothing"
DF_PROBE = """
import select, socket, struct, sys
dst = sys.argv[1]
v6 = ":" in dst
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
lvl = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
s.setsockopt(lvl, 23 if v6 else 10, 3)  # IPV6_MTU_DISCOVER / IP_MTU_DISCOVER = PMTUDISC_PROBE
s.setsockopt(lvl, 25 if v6 else 11, 1)  # IPV6_RECVERR / IP_RECVERR
s.sendto(b"x" * 1400, (dst, 9))
poll = select.poll()
poll.register(s, select.POLLERR)
if not poll.poll(3000):
    print("nothing")
    sys.exit()
_, anc, _, _ = s.recvmsg(2048, 1024, socket.MSG_ERRQUEUE)
err = anc[0][2]
errno_, origin, typ, code, _pad, info, _data = struct.unpack_from("=IBBBBII", err)
off = err[16:]
frm = socket.inet_ntop(socket.AF_INET6, off[8:24]) if v6 else socket.inet_ntop(socket.AF_INET, off[4:8])
print({90: "EMSGSIZE", 111: "ECONNREFUSED"}.get(errno_, errno_), info, frm)
"""


def too_big(node: Node, ns: str, dst: str) -> bool:
    """The node answers frag needed / packet too big, MTU 1280, to a DF datagram of 1428 bytes."""
    got = node.lab.run(ns, sys.executable, "-c", DF_PROBE, dst).stdout.decode().split()
    return got == ["EMSGSIZE", "1280", NODE6 if ":" in dst else NODE4] or pytest.fail(f"{dst}: {got}")


def df_probe(node: Node, ns: str, dst: str) -> list[str]:
    return node.lab.run(ns, sys.executable, "-c", DF_PROBE, dst).stdout.decode().split()


def test_a_route_mtu_metric_is_honoured_as_by_the_stack(node: Node):
    """The stack's forwarding honours a route's MTU metric (`ip route ... mtu 1280`), locked or not;
    bpf_fib_lookup honours it only when locked (ip_mtu_from_fib_result, ip6_mtu_from_fib6), so the
    program bounds the length by the route MTU trie moord fills (dataplane/routemtu.py) and leaves
    a longer packet to the stack."""
    a = node.add_pod("pa")
    assert too_big(node, a[0], METRIC4) and too_big(node, a[0], METRIC6)  # the stack alone
    with host_routing(node, [a]) as hr:
        for dst in (METRIC4, METRIC6):  # the next hop resolved: the big one meets the fast path
            assert node.lab.ping(a[0], dst)
        before = hr.counters()
        assert too_big(node, a[0], METRIC4) and too_big(node, a[0], METRIC6)
        d = delta(hr, before)
        assert d["pass_mtu"] >= 2 and d["to_uplink"] == 0, d
        # what fits the metric still takes the fast path
        before = hr.counters()
        assert node.lab.ping(a[0], METRIC4, count=2) and node.lab.ping(a[0], METRIC6, count=2)
        assert delta(hr, before)["to_uplink"] >= 4


def test_the_route_mtu_bound_follows_route_changes_after_attach(node: Node):
    """A metric route added after attach bounds the fast path once its event is applied; replaced
    without the metric, the bound goes and a 1428-byte DF datagram is forwarded again. The events are
    applied by route_mtus_changed(), which moord calls when the socket is readable."""
    a = node.add_pod("pa")
    net4, net6 = "198.51.100.0/26", "2001:db8:2::/64"  # cover REMOTE4/6; the /32 and /128 carry no metric
    with host_routing(node, [a]) as hr:
        for dst in (REMOTE4, REMOTE6):
            assert node.lab.ping(a[0], dst)
        # the control: no metric, the datagram goes through the fast path to the remote's closed port
        before = hr.counters()
        assert [df_probe(node, a[0], d)[0] for d in (REMOTE4, REMOTE6)] == ["ECONNREFUSED"] * 2
        assert delta(hr, before)["to_uplink"] >= 2
        node.lab.run(node.node, "ip", "route", "add", net4, "via", "192.0.2.1", "table", "100", "mtu", "1280")
        node.lab.run(node.node, "ip", "-6", "route", "add", net6, "via", "2001:db8:1::1", "mtu", "1280")
        try:
            wait_for(lambda: (hr.route_mtus_changed(), len(hr.mtu_trie) == 4)[1], what="the metric routes' events")
            # a covering route in another table bounds it too (policy rules may pick any table):
            # the stack itself still forwards (main's /32 has no metric), which the program leaves it
            before = hr.counters()
            assert [df_probe(node, a[0], d)[0] for d in (REMOTE4, REMOTE6)] == ["ECONNREFUSED"] * 2
            d = delta(hr, before)
            assert d["pass_mtu"] >= 2 and d["to_uplink"] == 0, d
            node.lab.run(node.node, "ip", "route", "replace", f"{METRIC4}/32", "via", "192.0.2.1")
            node.lab.run(node.node, "ip", "-6", "route", "del", net6)
            node.lab.run(node.node, "ip", "route", "del", net4, "table", "100")
            wait_for(lambda: (hr.route_mtus_changed(), len(hr.mtu_trie) == 1)[1], what="the routes' removal")
            before = hr.counters()
            assert df_probe(node, a[0], METRIC4)[0] == "ECONNREFUSED" and too_big(node, a[0], METRIC6)
            assert [df_probe(node, a[0], d)[0] for d in (REMOTE4, REMOTE6)] == ["ECONNREFUSED"] * 2
            d = delta(hr, before)
            assert d["to_uplink"] >= 3 and d["pass_mtu"] >= 1, d
        finally:
            node.lab.run(node.node, "ip", "route", "del", net4, "table", "100", check=False)
            node.lab.run(node.node, "ip", "-6", "route", "del", net6, check=False)


def test_a_spoofed_source_is_left_to_the_stack(node: Node):
    a, b = node.add_pod("pa"), node.add_pod("pb")
    with host_routing(node, [a, b]) as hr:
        node.lab.run(a[0], "ip", "addr", "add", "203.0.113.250/32", "dev", "eth0")
        before = hr.counters()
        node.lab.run(a[0], "ping", "-c2", "-W1", "-I", "203.0.113.250", b[1], check=False)
        d = delta(hr, before)
        assert d["pass_source"] >= 2 and d["to_pod"] == 0, d


def test_the_packet_filter_ruleset_stays_empty(node: Node):
    nft = shutil.which("nft")
    if nft is None:
        pytest.skip("nft (nftables) is not installed")
    a, b = node.add_pod("pa"), node.add_pod("pb")
    with host_routing(node, [a, b], uplinks=["up0"]):
        assert node.lab.ping(a[0], b[1])
        assert node.lab.run(node.node, nft, "list", "ruleset").stdout.strip() == b""


# -- moord ---------------------------------------------------------------------------------------
def start_moord(node: Node, tmp: Path, wrap: tuple = (), metrics_port: int = 0, **dataplane) -> subprocess.Popen:
    """moord in the node netns; no `dataplane` section unless given: host routing is on by default.
    `wrap`: a command moord runs under (setpriv)."""
    conf = {"bgp": {"asn": 65001, "routerId": NODE4}, "api": {"socket": ""}, "cni": {"socket": ""},
            "metrics": {"address": "127.0.0.1", "port": metrics_port}, "probe": {"enabled": False}}
    if dataplane:
        conf["dataplane"] = dataplane
    (tmp / "moord.json").write_text(json.dumps(conf))
    log = tmp / "moord.log"
    starts = log.read_text().count("ready: start-up done") if log.exists() else 0
    with open(log, "a") as f:
        p = node.lab.spawn(node.node, [*wrap, sys.executable, "-m", "dataplane.agent", "--config",
                                       str(tmp / "moord.json"), "-v"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=f)
    wait_for(lambda: log.read_text().count("ready: start-up done") > starts or p.poll() is not None, timeout=60,
             what="moord to start")
    assert p.poll() is None, log.read_text()[-2000:]
    return p


def host_routing_lines(tmp: Path) -> list[str]:
    return [l for l in (tmp / "moord.log").read_text().splitlines() if "host routing" in l]


def stop(p: subprocess.Popen, sig: signal.Signals) -> None:
    p.send_signal(sig)
    p.wait(20)


def moord_attached(node: Node, tmp: Path, pod: tuple) -> subprocess.Popen:
    """moord started, its host routing loaded and attached to `pod`; skips (moord stopped) where
    host routing cannot load here."""
    agent = start_moord(node, tmp)
    wait_for(lambda: any("host routing o" in l for l in host_routing_lines(tmp)), timeout=60,
             what="moord's host routing")
    if not tc_filters(node, pod[3]):
        stop(agent, signal.SIGINT)
        pytest.skip(f"host routing cannot load here: {host_routing_lines(tmp)}")
    return agent


def test_moord_attaches_keeps_the_fast_path_through_a_restart_and_detaches_on_shutdown(node: Node, tmp_path: Path):
    a, b = node.add_pod("pa"), node.add_pod("pb")
    agent = start_moord(node, tmp_path)
    wait_for(lambda: any("host routing on" in l for l in host_routing_lines(tmp_path)), timeout=60,
             what="moord's host routing")
    if any("host routing off" in l for l in host_routing_lines(tmp_path)):
        pytest.skip(f"host routing cannot load here: {host_routing_lines(tmp_path)}")
    assert [len(tc_filters(node, p[3])) for p in (a, b)] == [1, 1]  # the pods that were there first
    c = node.add_pod("pc")  # and one the route watch reports later
    wait_for(lambda: tc_filters(node, c[3]), what="moord to attach to a new pod")
    assert node.lab.ping(c[0], a[1]) and node.lab.ping(a[0], c[2])

    out, stopfile = tmp_path / "stream.json", tmp_path / "stream.stop"
    recv = node.lab.spawn(b[0], [sys.executable, UDPSTREAM, "recv", "5001", str(out)], stdout=subprocess.PIPE,
                          text=True)
    assert recv.stdout.readline().strip() == "ready"
    fwd = node.forwarded()
    send = node.lab.spawn(a[0], [sys.executable, UDPSTREAM, "send", b[1], "5001", "500", str(stopfile)],
                          stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)  # the stream runs before the stop (a pace, not a measurement)
        stop(agent, signal.SIGTERM)  # a restart stop: the filters stay, the pods keep the fast path
        assert [len(tc_filters(node, p[3])) for p in (a, b, c)] == [1, 1, 1]
        assert node.lab.ping(a[0], c[1])
        agent = start_moord(node, tmp_path)
        wait_for(lambda: sum("host routing on" in l for l in host_routing_lines(tmp_path)) == 2, timeout=60,
                 what="the second moord's host routing")
        # replaced in place, not added beside: one filter each, the new program's
        assert [len(tc_filters(node, p[3])) for p in (a, b, c)] == [1, 1, 1]
        assert node.lab.ping(a[0], c[1])
        time.sleep(1)
    finally:
        stopfile.touch()
        sent = int(send.communicate(timeout=20)[0].strip() or 0)
    time.sleep(0.5)  # the last datagrams in flight
    recv.send_signal(signal.SIGTERM)
    recv.wait(10)
    got = json.loads(out.read_text())
    assert sent > 1000 and got["received"] == sent and not got["missing"], (sent, got)
    # every datagram took the fast path: the stack forwarded none of them (pings, probes: a few)
    assert node.forwarded() - fwd < 40, (node.forwarded() - fwd, sent)

    stop(agent, signal.SIGINT)  # a full shutdown: moor's filters go, the pods use the stack
    assert [tc_filters(node, p[3]) for p in (a, b, c)] == [[], [], []]
    fwd = node.forwarded()
    assert node.lab.ping(a[0], b[1]) and node.lab.ping(c[0], a[2])
    assert node.forwarded() - fwd >= 4


def test_moord_with_host_routing_off_removes_what_a_previous_moord_left(node: Node, tmp_path: Path):
    a = node.add_pod("pa")
    agent = moord_attached(node, tmp_path, a)
    stop(agent, signal.SIGTERM)
    assert tc_filters(node, a[3])
    agent = start_moord(node, tmp_path, hostRouting=False)
    assert not tc_filters(node, a[3])
    assert any("disabled in moord's config (dataplane.hostRouting)" in l for l in host_routing_lines(tmp_path))
    assert any("removed the filters a previous moord left on 1 pod veth" in l for l in host_routing_lines(tmp_path))
    stop(agent, signal.SIGINT)


# -- the drop probe on the redirect path -----------------------------------------------------------
@pytest.fixture
def drops():
    from dataplane.probe.drops import DropProbe
    from dataplane.probe.errors import ProbeUnavailable
    p = DropProbe()
    try:
        p.start()
    except ProbeUnavailable as e:
        pytest.skip(str(e))
    try:
        yield p
    finally:
        p.close()


def test_a_drop_after_redirect_peer_is_named_and_attributed_to_the_receiving_pod(node: Node, drops):
    """A UDP flood from pod a to a socket in pod b with the smallest receive buffer: each datagram
    goes by bpf_redirect_peer straight into b's netns, and the ones b's socket cannot hold are
    dropped there. The probe must name SOCKET_RCVBUFF, b's netns and b's eth0 (the pod a drop is
    blamed on is the netns's pod: view.py), not the node or a's veth, one for one with b's own
    RcvbufErrors counter."""
    from tests.ebpf.test_drops import GUARD, RECEIVER, inode, send, udp_snmp
    a, b = node.add_pod("pa"), node.add_pod("pb")
    eth0 = ipj(b[0], "link", "show", "eth0")[0]["ifindex"]
    for v6, dst, src in ((False, b[1], a[1]), (True, b[2], a[2])):
        port = 5310 + v6
        rx = node.lab.spawn(b[0], [sys.executable, "-c", RECEIVER, dst, str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
        try:
            assert rx.stdout.readline(), "receiver did not start"
            with host_routing(node, [a, b]) as hr:
                assert node.lab.ping(a[0], dst)  # neighbours resolved: the flood meets the fast path
                before = hr.counters()
                send(node.lab, a[0], dst, port, 41010, 300)
                d = delta(hr, before)
                assert d["to_pod"] >= 300, d  # every datagram was redirected into b
            deadline = time.monotonic() + GUARD  # the probe counts in softirq: read until caught up (bounded)
            while True:
                errors = udp_snmp(node.lab, b[0], "RcvbufErrors", v6)
                flow = [s for s in drops.snapshot()[0] if s.key.dport == port and s.key.sport == 41010]
                if (errors and sum(s.packets for s in flow) >= errors) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        finally:
            rx.stdin.close()
            rx.wait(10)
        assert errors > 0, "the receive buffer never overflowed: nothing to observe"
        assert {(s.key.reason, s.key.netns, s.key.ifindex, s.key.saddr, s.key.daddr) for s in flow} == \
            {("SOCKET_RCVBUFF", inode(b[0]), eth0, src, dst)}, flow
        assert sum(s.packets for s in flow) == errors


def test_a_drop_on_the_uplink_after_redirect_neigh_is_the_nodes_as_without_the_fast_path(node: Node, drops):
    """The remote end of the uplink goes down while the node's neighbour entry is still valid: the
    fast path sends pod a's datagrams out of up0 by bpf_redirect_neigh and the veth drops them. The
    skb is still owned by a's socket (no ip_rcv() orphaned it), so the probe saw a device in the
    node's netns and a socket in a's and blamed a's netns, device unknown; it must say what it says
    for the same drop through the normal stack: the node's netns, up0, the same reason."""
    from tests.ebpf.test_drops import GUARD, inode, send
    a = node.add_pod("pa")
    up0 = ipj(node.node, "link", "show", "up0")[0]["ifindex"]

    def flow(sport: int, n: int) -> list:
        deadline = time.monotonic() + GUARD  # counted in softirq: read until all are there (bounded)
        while True:
            got = [s for s in drops.snapshot()[0] if s.key.dport == 5401 and s.key.sport == sport]
            if sum(s.packets for s in got) >= n or time.monotonic() > deadline:
                return got

    # a permanent neighbour outlives the carrier (a learned one is flushed when the carrier goes)
    mac = ipj(node.peer, "link", "show", "r0")[0]["address"]
    node.lab.run(node.node, "ip", "neigh", "replace", "192.0.2.1", "lladdr", mac, "dev", "up0", "nud", "permanent")
    node.lab.run(node.peer, "ip", "link", "set", "r0", "down")
    wait_for(lambda: "NO-CARRIER" in ipj(node.node, "link", "show", "up0")[0]["flags"], what="up0 to lose its carrier")
    with host_routing(node, [a], uplinks=["up0"]) as hr:
        before = hr.counters()
        send(node.lab, a[0], REMOTE4, 5401, 41021, 20)
        assert delta(hr, before)["to_uplink"] >= 20
    send(node.lab, a[0], REMOTE4, 5401, 41022, 20)  # the control: the same drop, the stack forwarding
    fast, stack = flow(41021, 20), flow(41022, 20)
    where = {(s.key.netns, s.key.ifindex) for s in fast + stack}
    assert where == {(inode(node.node), up0)}, (fast, stack)
    assert {s.key.reason for s in fast} == {s.key.reason for s in stack}, (fast, stack)
    assert sum(s.packets for s in fast) == sum(s.packets for s in stack) == 20


READYZ = """
import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=5)
    print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


def test_moord_that_cannot_load_host_routing_says_why_once_and_pods_use_the_stack(node: Node, tmp_path: Path):
    """On by default; where the program cannot load (here: moord without CAP_BPF, CAP_SYS_ADMIN and
    CAP_PERFMON, so the kernel refuses bpf() as on a node whose kernel lacks the support), one
    warning names the reason, /readyz says ready, no filter is attached and the pods talk through
    the normal stack."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    a, b = node.add_pod("pa"), node.add_pod("pb")
    drop = "-bpf,-sys_admin,-perfmon"
    agent = start_moord(node, tmp_path, wrap=(setpriv, "--bounding-set", drop, "--inh-caps", drop),
                        metrics_port=9477)
    try:
        wait_for(lambda: host_routing_lines(tmp_path), timeout=60, what="moord's host routing")
        lines = host_routing_lines(tmp_path)
        assert len(lines) == 1 and "host routing off: " in lines[0] and "normal stack" in lines[0], lines
        assert "WARNING" in lines[0] and "the kernel refused bpf(): Operation not permitted" in lines[0], lines
        status, body = node.lab.run(node.node, sys.executable, "-c", READYZ, "9477").stdout.decode().split(" ", 1)
        doc = json.loads(body)
        comp = next(c for c in doc["components"] if c["name"] == "hostRouting")
        assert status == "200" and doc["status"] == "ready" and not comp["ok"] and comp["detail"], doc
        assert agent.poll() is None
        assert [tc_filters(node, p[3]) for p in (a, b)] == [[], []]
        fwd = node.forwarded()
        assert node.lab.ping(a[0], b[1]) and node.lab.ping(b[0], a[2])
        assert node.forwarded() - fwd >= 4  # the stack forwarded them
    finally:
        stop(agent, signal.SIGINT)


def test_moord_follows_a_route_mtu_metric_set_after_it_attached(node: Node, tmp_path: Path):
    """moord's loop reads the route MTU events: a metric put on the route to REMOTE4/6 while the
    fast path runs makes the node answer frag needed / packet too big, as the stack alone does."""
    a = node.add_pod("pa")
    agent = moord_attached(node, tmp_path, a)
    try:
        for dst in (REMOTE4, REMOTE6):
            assert node.lab.ping(a[0], dst)
            assert df_probe(node, a[0], dst)[0] == "ECONNREFUSED"  # the control: 1428 bytes fit
        node.lab.run(node.node, "ip", "route", "replace", f"{REMOTE4}/32", "via", "192.0.2.1", "mtu", "1280")
        node.lab.run(node.node, "ip", "-6", "route", "replace", f"{REMOTE6}/128", "via", "2001:db8:1::1", "mtu",
                     "1280")
        wait_for(lambda: any("4 route MTU bound(s)" in l for l in host_routing_lines(tmp_path)),
                 what="moord to apply the metric routes")
        assert too_big(node, a[0], REMOTE4) and too_big(node, a[0], REMOTE6)
    finally:
        stop(agent, signal.SIGINT)


def test_a_full_shutdown_while_moord_compiles_removes_a_previous_moords_filters(node: Node, tmp_path: Path):
    """SIGINT before the compile child returned: nothing is attached after the shutdown began, and
    the filters a previous moord left (maps nobody updates any more) go with the full shutdown."""
    a = node.add_pod("pa")
    agent = moord_attached(node, tmp_path, a)
    stop(agent, signal.SIGTERM)  # a restart stop: the filter stays
    assert tc_filters(node, a[3])
    agent = start_moord(node, tmp_path)  # returns at "ready", the compile (seconds) still running
    loaded = sum("host routing on" in l for l in host_routing_lines(tmp_path))
    stop(agent, signal.SIGINT)
    assert agent.returncode == 0
    tail = (tmp_path / "moord.log").read_text().splitlines()
    down = max(i for i, l in enumerate(tail) if "shutting down on SIGINT" in l)
    assert not [l for l in tail[down:] if "host routing" in l], tail[down:]  # nor loaded, nor attached
    assert tail[-1].endswith("moord stopped"), tail[-3:]
    assert not tc_filters(node, a[3]), loaded
    assert node.lab.ping(a[0], node.add_pod("pb")[1])


def test_the_routed_add_makes_the_clsact_so_a_first_attach_drops_nothing(node: Node):
    """Grafting a qdisc onto a live device deactivates it for a moment and drops what it sends;
    the routed ADD makes the clsact before the pod has traffic, so attaching only adds a filter.
    A flood from the node to the pod while host routing attaches: no drop on the host end."""
    a = node.add_pod("pa")
    qdiscs = json.loads(node.lab.run(node.node, "tc", "-j", "qdisc", "show", "dev", a[3]).stdout)
    assert [q["kind"] for q in qdiscs if q["kind"] == "clsact"] == ["clsact"], qdiscs

    def tx_dropped() -> int:
        return ipj(node.node, "-s", "link", "show", a[3])[0]["stats64"]["tx"]["dropped"]

    before = tx_dropped()
    flood = node.lab.spawn(node.node, [sys.executable, "-c", (
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "end = time.time() + 3\n"
        f"while time.time() < end: s.sendto(b'x' * 100, ('{a[1]}', 9))\n")])
    try:
        time.sleep(0.5)  # the flood runs before the attach (a pace, not a measurement)
        for _ in range(3):
            with host_routing(node, [a]):
                pass
    finally:
        flood.wait(10)
    assert tx_dropped() == before
