"""The host shim in a network like the issue's: the pods' gateway knows nothing of the node's own
address (the node's uplink is on another subnet, another link), so the node reaches its macvlan
pods only if its packets carry a source address on the pods' subnet: the shim's.

    [pod]..macvlan..(node: up0, no address) ==veth== (gw: 192.0.2.1, 2001:db8:1::1; no route back)
                    (node: wan0 198.51.100.2, 2001:db8:2::2; default routes) ==veth== (ext)
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from cni.netlink import netns as nsmod
from dataplane.nslab import Lab, sh
from tests.helpers import cni_path, ipj, kill_cni_at, run_cni
from tests.integration.conftest import MacvlanNet

pytestmark = pytest.mark.integration

UPLINK = {4: "198.51.100.2", 6: "2001:db8:2::2"}
SHIM_ID = "moor-shim-up0"


@pytest.fixture
def snet(tmp_path: Path) -> Iterator[MacvlanNet]:
    lab = Lab()
    try:
        node, gw, ext = lab.ns("node"), lab.ns("gw"), lab.ns("ext")
        lab.veth(node, "up0", gw, "gw0")  # the pods' segment: the node holds no address on it
        lab.addr(gw, "gw0", "192.0.2.1/24")
        lab.addr(gw, "gw0", "2001:db8:1::1/64")
        lab.veth(node, "wan0", ext, "ext0")  # the node's own uplink, on other subnets
        lab.addr(node, "wan0", f"{UPLINK[4]}/24")
        lab.addr(node, "wan0", f"{UPLINK[6]}/64")
        lab.addr(ext, "ext0", "198.51.100.1/24")
        lab.addr(ext, "ext0", "2001:db8:2::1/64")
        lab.run(node, "ip", "route", "add", "default", "via", "198.51.100.1")
        lab.run(node, "ip", "-6", "route", "add", "default", "via", "2001:db8:2::1")
        yield MacvlanNet(lab=lab, tmp=tmp_path, node=node, peer=gw, path=cni_path(tmp_path))
    finally:
        lab.close()


def _ips(res: dict) -> dict[int, str]:
    return {ipaddress.ip_interface(i["address"]).version: i["address"].split("/")[0] for i in res["ips"]}


def _shim(net: MacvlanNet) -> tuple[str, dict[int, str]]:
    """The one shim on the node and its addresses per family."""
    shims = net.shims()
    assert len(shims) == 1, shims
    [(name, addrs)] = shims.items()
    by_family = {ipaddress.ip_address(a).version: a for a in addrs}
    assert len(by_family) == len(addrs), f"more than one address per family on {name}: {addrs}"
    return name, by_family


def _route(net: MacvlanNet, ip: str) -> dict:
    fam = "-6" if ":" in ip else "-4"
    routes = ipj(net.node, fam, "route", "show", f"{ip}/{128 if ':' in ip else 32}")
    assert len(routes) == 1, routes
    return routes[0]


@contextlib.contextmanager
def _in(ns: str) -> Iterator[None]:
    fd = nsmod.open_netns(Lab.path(ns))
    try:
        with nsmod.entered(fd):
            yield
    finally:
        os.close(fd)


def _tcp(client_ns: str, server_ns: str, server_ip: str) -> str:
    """A TCP exchange from client_ns to a listener on server_ip in server_ns (plain sockets, made
    in each namespace); returns the client address the server saw."""
    fam = socket.AF_INET6 if ":" in server_ip else socket.AF_INET
    with _in(server_ns):
        srv = socket.socket(fam, socket.SOCK_STREAM)
    with _in(client_ns):
        cli = socket.socket(fam, socket.SOCK_STREAM)
    try:
        srv.bind((server_ip, 0))
        srv.listen(1)
        srv.settimeout(10)  # hang guards
        cli.settimeout(10)
        cli.connect((server_ip, srv.getsockname()[1]))  # the kernel completes it before accept
        conn, peer = srv.accept()
        with conn:
            cli.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.sendall(b"pong")
            assert cli.recv(4) == b"pong"
        return peer[0]
    finally:
        cli.close()
        srv.close()


def _moor_ipam(net: MacvlanNet, version: str = "1.0.0", **over) -> dict:
    ipam = {"type": "moor-ipam", "dataDir": str(net.tmp / "ipam"), "gcGraceSeconds": 0, "nodeName": "n1",
            "pools": [{"cidr": "192.0.2.0/24", "rangeStart": "192.0.2.10", "rangeEnd": "192.0.2.60",
                       "gateway": "192.0.2.1"},
                      {"cidr": "2001:db8:1::/64", "rangeStart": "2001:db8:1::10", "rangeEnd": "2001:db8:1::60",
                       "gateway": "2001:db8:1::1"}]}
    return net.conf(version, ipam=ipam, **over)


def _held_by_shim(net: MacvlanNet, ipam: str) -> set[str]:
    """Addresses the IPAM store holds for the shim's identity."""
    if ipam == "host-local":  # a lease file per IP holding "<container ID>\r\n<ifname>"
        return {p.name for p in (net.tmp / "ipam").rglob("*") if p.is_file() and p.name[0].isdigit()
                and p.read_text().splitlines()[0].strip() == SHIM_ID}
    db = net.tmp / "ipam" / "ipam.sqlite3"
    con = sqlite3.connect(db)
    try:
        rows = [json.loads(d) for (d,) in con.execute("SELECT data FROM reservations")]
    finally:
        con.close()
    return {r["ip"] for r in rows if r["state"] == "active" and r["container_id"] == SHIM_ID}


def _conf(net: MacvlanNet, ipam: str, version: str = "1.0.0", **over) -> dict:
    if ipam == "moor-ipam":
        return _moor_ipam(net, version, **over)
    return net.conf(version, ipv6=True, **over)


def test_the_gateway_cannot_route_back_to_the_node(snet: MacvlanNet):
    """The premise: replies to the node's uplink address through the pods' gateway are lost."""
    for ip in UPLINK.values():
        r = snet.lab.run(snet.peer, "ip", "route", "get", ip, check=False)
        assert r.returncode != 0 and b"unreachable" in r.stderr, r


def test_the_node_and_its_pod_talk_from_the_shim_address_without_ping_i(snet: MacvlanNet):
    res = snet.add("pod1", snet.conf(ipv6=True, hostShim=True))
    pod, pod_ns = _ips(res), snet.pods["pod1"]
    name, shim = _shim(snet)
    assert set(shim) == {4, 6}
    for fam in (4, 6):
        assert ipaddress.ip_address(shim[fam]) in ipaddress.ip_network(("192.0.2.0/24", "2001:db8:1::/64")[fam == 6])
        assert shim[fam] != pod[fam]
        route = _route(snet, pod[fam])
        assert route["dev"] == name and route["prefsrc"] == shim[fam] and route["protocol"] == "moor-shim"
        assert snet.lab.ping(snet.node, pod[fam]), f"node -> pod {pod[fam]} (no -I)"
        # the pod sees the node as the shim's address, and reaches a node service listening on it
        assert _tcp(snet.node, pod_ns, pod[fam]) == shim[fam]
        assert _tcp(pod_ns, snet.node, shim[fam]) == pod[fam]
    # the shim holds host-length addresses: the node gets no route to the pods' whole subnet
    assert [r for r in ipj(snet.node, "route", "show", "192.0.2.0/24")] == []
    assert {(a["local"], a["prefixlen"]) for l in ipj(snet.node, "addr", "show", "dev", name)
            for a in l["addr_info"] if a["scope"] == "global"} == {(shim[4], 32), (shim[6], 128)}


def test_control_a_shim_without_address_loses_the_reply(snet: MacvlanNet):
    """The old behaviour, restored by hand on the same topology (routes without src, a shim
    without address): the node's packets leave with its uplink address, the pod answers via its
    gateway, the reply is lost."""
    res = snet.add("pod1", snet.conf(ipv6=True, hostShim=True))
    pod = _ips(res)
    name, shim = _shim(snet)
    for fam, plen in ((4, 32), (6, 128)):
        snet.lab.run(snet.node, "ip", f"-{fam}", "route", "replace", f"{pod[fam]}/{plen}", "dev", name,
                     "proto", "110")
        snet.lab.run(snet.node, "ip", "addr", "del", f"{shim[fam]}/{plen}", "dev", name)
        got = ipj(snet.node, f"-{fam}", "route", "get", pod[fam])
        assert got[0]["prefsrc"] == UPLINK[fam]
        assert not snet.lab.ping(snet.node, pod[fam]), f"{pod[fam]} answered without the shim's source"


@pytest.mark.parametrize("ipam", ["host-local", "moor-ipam"])
def test_shim_address_lives_while_a_pod_uses_the_shim_and_gc_leaves_it(snet: MacvlanNet, ipam: str):
    conf = _conf(snet, ipam, "1.1.0", hostShim=True)
    r1, r2 = snet.add("pod1", conf), snet.add("pod2", conf)
    name, shim = _shim(snet)
    held = _held_by_shim(snet, ipam)
    assert held == set(shim.values())
    for res in (r1, r2):
        for fam, ip in _ips(res).items():
            assert _route(snet, ip)["prefsrc"] == shim[fam]

    assert snet.cni("DEL", conf, "pod1").code == 0
    assert _shim(snet) == (name, shim) and _held_by_shim(snet, ipam) == held
    assert snet.lab.ping(snet.node, _ips(r2)[4])

    # two GC passes (a leak is released on the second; gcGraceSeconds is 0): the runtime's list
    # names pod2 only, yet the shim's address stays, in IPAM and on the shim
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "cid-pod2", "ifname": "eth0"}]})
    for _ in range(2):
        r = run_cni(snet.node, "GC", gc, path=snet.path, container_id="", netns="", ifname="")
        assert r.code == 0, r.stdout
    assert _shim(snet) == (name, shim) and _held_by_shim(snet, ipam) == held
    assert snet.lab.ping(snet.node, _ips(r2)[6])

    assert snet.cni("DEL", conf, "pod2").code == 0
    assert snet.shims() == {}
    assert _held_by_shim(snet, ipam) == set()
    assert not list((snet.tmp / "state" / "shims").glob("*.json"))


def test_parallel_adds_make_one_shim_with_one_address_per_family(snet: MacvlanNet):
    conf = snet.conf(ipv6=True, hostShim=True)
    pods = [f"pod{i}" for i in range(6)]
    for p in pods:
        snet.pod(p)
    with ThreadPoolExecutor(6) as ex:
        replies = list(ex.map(lambda p: snet.cni("ADD", conf, p), pods))
    assert all(r.code == 0 for r in replies), [r.stdout for r in replies]
    name, shim = _shim(snet)
    assert set(shim) == {4, 6}
    assert _held_by_shim(snet, "host-local") == set(shim.values())
    for r in replies:
        for fam, ip in _ips(r.json).items():
            assert _route(snet, ip)["prefsrc"] == shim[fam]
        assert snet.lab.ping(snet.node, _ips(r.json)[4])
    with ThreadPoolExecutor(6) as ex:
        assert all(r.code == 0 for r in ex.map(lambda p: snet.cni("DEL", conf, p), pods))
    assert snet.shims() == {} and _held_by_shim(snet, "host-local") == set()
    assert ipj(snet.node, "route", "show", "table", "all", "proto", "110") == []


def test_static_shim_addresses(snet: MacvlanNet):
    conf = snet.conf(ipv6=True, hostShim={"addresses": ["192.0.2.254/24", "2001:db8:1::fe/64"]})
    res = snet.add("pod1", conf)
    pod = _ips(res)
    name, shim = _shim(snet)
    assert shim == {4: "192.0.2.254", 6: "2001:db8:1::fe"}
    assert _held_by_shim(snet, "host-local") == set()  # nothing asked of the IPAM for the shim
    for fam in (4, 6):
        assert _route(snet, pod[fam])["prefsrc"] == shim[fam]
        assert _tcp(snet.node, snet.pods["pod1"], pod[fam]) == shim[fam]
    assert snet.cni("DEL", conf, "pod1").code == 0
    assert snet.shims() == {}


def test_static_addresses_missing_the_pods_family_are_refused_and_undone(snet: MacvlanNet):
    snet.pod("pod1")
    before = snet.snapshot()
    r = snet.cni("ADD", snet.conf(ipv6=True, hostShim={"addresses": ["192.0.2.254/24"]}))
    assert r.error_code == 7 and "'hostShim.addresses' has no IPv6 address" in r.json["msg"], r.stdout
    assert snet.snapshot() == before


@pytest.mark.parametrize("value,field", [
    ("yes", "'hostShim'"),
    ({"addresses": []}, "'hostShim.addresses'"),
    ({"addresses": "192.0.2.254/24"}, "'hostShim.addresses'"),
    ({"addresses": ["192.0.2.254"]}, "'hostShim.addresses[0]'"),
    ({"addresses": ["192.0.2.254/24", "shim/24"]}, "'hostShim.addresses[1]'"),
    ({"addresses": ["192.0.2.0/24"]}, "'hostShim.addresses[0]'"),
    ({"addresses": ["192.0.2.255/24"]}, "'hostShim.addresses[0]'"),
    ({"addresses": ["fe80::1/64"]}, "'hostShim.addresses[0]'"),
    ({"addresses": ["192.0.2.254/24", "192.0.2.253/24"]}, "'hostShim.addresses[1]'"),
    ({"addresses": ["192.0.2.254/24"], "src": "x"}, "'hostShim.src'"),
], ids=["string", "empty", "not-a-list", "no-prefix", "not-an-ip", "network", "broadcast", "link-local",
        "two-v4", "unknown-key"])
def test_bad_host_shim_values_are_code_7_and_create_nothing(snet: MacvlanNet, value, field: str):
    snet.pod("pod1")
    before = snet.snapshot()
    r = snet.cni("ADD", snet.conf(hostShim=value))
    assert r.error_code == 7 and field in r.json["msg"], r.stdout
    assert snet.snapshot() == before


@pytest.mark.parametrize("step", ["shared-made", "parent", "shim-routes"])
def test_a_failed_first_add_undoes_the_shim_address_exactly(snet: MacvlanNet, step: str):
    """With moor-ipam a rollback puts the store back as it was (no cooling reservation left)."""
    conf = _moor_ipam(snet, hostShim=True)
    snet.add("pod0", _moor_ipam(snet))  # the store exists (an empty one is made on first use)
    assert snet.cni("DEL", _moor_ipam(snet), "pod0").code == 0
    snet.pod("pod1")
    before = snet.snapshot()
    r = snet.cni("ADD", conf, env={"MOOR_FAILPOINT": step})
    assert r.error_code == 199, r.stdout
    assert snet.snapshot() == before


@pytest.mark.parametrize("cleanup", ["DEL", "GC"])
def test_an_add_killed_before_its_record_leaves_no_shim_behind(snet: MacvlanNet, cleanup: str):
    """SIGKILL after the shim, its address and its IPAM allocation were made but before the
    attachment was recorded: no record names them. The sandbox's DEL (kubelet tears down a failed
    set-up) or, when no DEL comes, GC releases them; a later pod makes them afresh."""
    conf = _moor_ipam(snet, "1.1.0", hostShim=True)
    snet.add("pod0", _moor_ipam(snet))  # the store exists (an empty one is made on first use)
    assert snet.cni("DEL", _moor_ipam(snet), "pod0").code == 0
    snet.pod("pod1")
    before = snet.snapshot()
    kill_cni_at(snet.node, conf, path=snet.path, pause="shared-made", container_id="cid-pod1",
                netns=snet.pod("pod1"), ready=lambda: sum(len(a) for a in snet.shims().values()) == 2)
    assert len(_held_by_shim(snet, "moor-ipam")) == 2
    [rec] = [json.loads(f.read_text()) for f in (snet.tmp / "state" / "networks").rglob("*.json")]
    assert (rec["parent"], rec["shim"]) == ("", "")  # pending: no record names the parent or the shim
    if cleanup == "DEL":
        assert snet.cni("DEL", conf, "pod1").code == 0
    else:  # the runtime crashed too: two GC passes with nothing listed
        for _ in range(2):
            r = run_cni(snet.node, "GC", dict(conf, **{"cni.dev/valid-attachments": []}), path=snet.path,
                        container_id="", netns="", ifname="")
            assert r.code == 0, r.stdout
    assert snet.shims() == {} and _held_by_shim(snet, "moor-ipam") == set()
    after = snet.snapshot()
    for snap in (before, after):  # the released IPs cool down in the store: that is their record
        snap["files"] = [f for f in snap["files"] if not f[0].endswith("ipam.sqlite3")]
    assert after == before
    res = snet.add("pod2", conf)  # and the next pod makes a working shim again
    assert _tcp(snet.node, snet.pods["pod2"], _ips(res)[4]) == _shim(snet)[1][4]


def test_a_failed_add_keeps_the_shim_address_another_pod_uses(snet: MacvlanNet):
    conf = _moor_ipam(snet, hostShim=True)
    r1 = snet.add("pod1", conf)
    name, shim = _shim(snet)
    r = snet.cni("ADD", conf, "pod2", env={"MOOR_FAILPOINT": "shim-routes"})
    assert r.error_code == 199, r.stdout
    assert _shim(snet) == (name, shim) and _held_by_shim(snet, "moor-ipam") == set(shim.values())
    assert _tcp(snet.node, snet.pods["pod1"], _ips(r1)[4]) == shim[4]


def test_two_networks_on_one_parent_each_speak_from_their_own_shim_address(snet: MacvlanNet):
    """One shim per parent, one address per network on it: each pod route's src is its own
    network's (the kernel alone would pick one address of the shim for both)."""
    a = snet.conf(hostShim=True)
    b = snet.conf(name="mnet2", hostShim=True, ipam={
        "type": "host-local", "dataDir": str(snet.tmp / "ipam"),
        "ranges": [[{"subnet": "203.0.113.0/24", "rangeStart": "203.0.113.10", "gateway": "203.0.113.1"}]]})
    ra, rb = snet.add("pod1", a), snet.add("pod2", b)
    [(name, addrs)] = snet.shims().items()
    shim_a = next(x for x in addrs if x.startswith("192.0.2."))
    shim_b = next(x for x in addrs if x.startswith("203.0.113."))
    assert len(addrs) == 2
    assert _route(snet, _ips(ra)[4])["prefsrc"] == shim_a and _route(snet, _ips(rb)[4])["prefsrc"] == shim_b
    assert _tcp(snet.node, snet.pods["pod1"], _ips(ra)[4]) == shim_a
    assert _tcp(snet.node, snet.pods["pod2"], _ips(rb)[4]) == shim_b
    assert snet.cni("DEL", a, "pod1").code == 0  # network a's address goes, the shim stays for b
    assert snet.shims() == {name: [shim_b]}
    assert _held_by_shim(snet, "host-local") == {shim_b}
    assert _tcp(snet.node, snet.pods["pod2"], _ips(rb)[4]) == shim_b
    assert snet.cni("DEL", b, "pod2").code == 0
    assert snet.shims() == {} and _held_by_shim(snet, "host-local") == set()
