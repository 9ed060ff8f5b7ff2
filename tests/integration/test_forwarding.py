"""moord owns routed mode's prerequisites in its own netns (the node's): it turns IP forwarding on
for the families the pods use, keeps RA-learned routes while doing so, says what it changed or
what is missing, and reports it on /healthz and /readyz.

    [pod netns] ==veth moorXXXX== (node: up0 192.0.2.2) ==veth== (peer: pp0 192.0.2.1, 2001:db8:1::1)

The peer routes the pod's addresses via the node, as BGP would tell it."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cni.netlink import netns as nsmod
from dataplane import agent
from dataplane.nslab import Lab
from tests.helpers import REPO
from tests.integration.conftest import NODE_IP, MacvlanNet
from tests.integration.test_routed import _args, _conf, _ip
from tests.interop.conftest import wait_for

pytestmark = pytest.mark.integration

V4, V6 = ("net", "ipv4", "ip_forward"), ("net", "ipv6", "conf", "all", "forwarding")
NODE_IP6 = "2001:db8:1::2"
FETCH = ("import json,sys,urllib.request,urllib.error\n"
         "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=5); code, body = r.status, r.read()\n"
         "except urllib.error.HTTPError as e:\n code, body = e.code, e.read()\n"
         "print(json.dumps({'code': code, 'body': json.loads(body)}))")
# a router advertisement (RFC 4861 4.2) with a router lifetime of 1800 s, from the peer's link-local
# address to all nodes: the node (accept_ra 1, not forwarding) takes a default route from it
SEND_RA = ("import socket,struct,sys\n"
           "s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)\n"
           "i = socket.if_nametoindex(sys.argv[1])\n"
           "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)\n"
           "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, i)\n"
           "s.sendto(struct.pack('!BBHBBHII', 134, 0, 0, 64, 0, 1800, 0, 0), ('ff02::1', 0, 0, i))\n")


def sysctl(lab: Lab, ns: str, parts: tuple[str, ...]) -> str:
    return lab.run(ns, "cat", "/proc/sys/" + "/".join(parts)).stdout.decode().strip()


def set_sysctl(lab: Lab, ns: str, *assignments: str) -> None:
    lab.run(ns, "sysctl", "-q", "-w", *assignments)


def moord(net: MacvlanNet, forwarding: str | None = None, peers: list | None = None,
          **extra) -> tuple[subprocess.Popen, Path]:
    """A real moord in the node netns with a private config, once it is ready; and its log."""
    conf = {"bgp": {"asn": 65001, "routerId": NODE_IP, "peers": peers if peers is not None else
                    [{"address": "192.0.2.1", "asn": 65000, "passive": True}], **extra},
            "api": {"socket": str(net.tmp / "moord.sock")}, "cni": {"socket": str(net.tmp / "cni.sock")},
            "metrics": {"address": "127.0.0.1", "port": 9653}, "probe": {"enabled": False}}
    if forwarding is not None:
        conf["node"] = {"forwarding": forwarding}
    (net.tmp / "moord.json").write_text(json.dumps(conf))
    log = net.tmp / "moord.log"
    p = net.lab.spawn(net.node, [sys.executable, "-m", "dataplane.agent", "--config", str(net.tmp / "moord.json")],
                      cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    wait_for(lambda: "ready: start-up done" in log.read_text() or p.poll() is not None, what="moord ready")
    assert p.poll() is None, log.read_text()
    return p, log


def fetch(net: MacvlanNet, path: str) -> dict:
    out = net.lab.run(net.node, sys.executable, "-c", FETCH, f"http://127.0.0.1:9653{path}").stdout
    return json.loads(out)


def ra_defaults(lab: Lab, ns: str) -> list[dict]:
    routes = json.loads(lab.run(ns, "ip", "-6", "-j", "route", "show", "default").stdout or b"[]")
    return [r for r in routes if r.get("protocol") == "ra"]


def components(doc: dict) -> dict:
    return {c["name"]: c for c in doc["body"]["components"]}


@pytest.fixture
def node(net: MacvlanNet) -> MacvlanNet:
    """The node as a fresh host: forwarding off in both families, an IPv6 address on the uplink,
    and the peer routing the pools through the node."""
    lab = net.lab
    set_sysctl(lab, net.node, "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0")
    lab.addr(net.node, "up0", f"{NODE_IP6}/64")
    lab.run(net.peer, "ip", "route", "add", "203.0.113.0/24", "via", NODE_IP)
    lab.run(net.peer, "ip", "-6", "route", "add", "2001:db8:9::/64", "via", NODE_IP6)
    return net


def test_forwarding_is_turned_on_for_the_pods_families_and_they_become_reachable(node: MacvlanNet):
    net, lab = node, node.lab
    set_sysctl(lab, net.node, "net.ipv4.conf.up0.rp_filter=1")  # strict, but one uplink: nothing to say
    pod = net.add("pod1", _conf(net), args=_args("a-0"))
    ip4, ip6 = _ip(pod, 4), _ip(pod, 6)
    assert not lab.ping(net.peer, ip4, timeout=1) and not lab.ping(net.peer, ip6, timeout=1)  # the node drops

    p, log = moord(net)  # node.forwarding: auto, the default
    assert (sysctl(lab, net.node, V4), sysctl(lab, net.node, V6)) == ("1", "1")
    assert lab.ping(net.peer, ip4) and lab.ping(net.peer, ip6)
    text = log.read_text()
    assert "INFO moord.node net.ipv4.ip_forward 0 -> 1 (IPv4 forwarding: pods are routed through the node)" in text
    # IPv6: the pod's route in the table at start says IPv6 is in use
    assert f"INFO moord.node net.ipv6.conf.all.forwarding 0 -> 1 (IPv6 forwarding: IPv6 pod route {ip6}/128)" in text
    assert "rp_filter" not in text and "WARNING" not in text, text

    ready, alive = fetch(net, "/readyz"), fetch(net, "/healthz")
    assert ready["code"] == 200 and ready["body"]["status"] == "ready"
    assert components(ready)["cni"] == {"name": "cni", "ok": True,
                                        "detail": f"unix:{net.tmp / 'cni.sock'} listening"}
    assert components(ready)["start-up"]["ok"]
    assert not components(ready)["bgp"]["ok"]  # the peer never connects: ready all the same
    assert alive["code"] == 200 and components(alive)["node"] == {"name": "node", "ok": True,
                                                                  "detail": "forwarding IPv4, IPv6"}
    p.terminate()
    assert p.wait(20) == 0
    assert "INFO moord shutting down on SIGTERM: a full shutdown" in log.read_text()
    # not put back: the pods keep forwarding while moord restarts or after it stops
    assert (sysctl(lab, net.node, V4), sysctl(lab, net.node, V6)) == ("1", "1")


def test_ipv6_forwarding_waits_for_the_first_ipv6_pod(node: MacvlanNet):
    net, lab = node, node.lab
    _p, log = moord(net)  # an IPv4-only config, and no pod yet
    assert (sysctl(lab, net.node, V4), sysctl(lab, net.node, V6)) == ("1", "0")
    assert "net.ipv6" not in log.read_text()

    pod = net.add("pod1", _conf(net), args=_args("a-0"))  # dual-stack: its IPv6 route appears
    wait_for(lambda: sysctl(lab, net.node, V6) == "1", what="IPv6 forwarding after the first IPv6 pod route")
    assert lab.ping(net.peer, _ip(pod, 6)) and lab.ping(net.peer, _ip(pod, 4))
    assert f"net.ipv6.conf.all.forwarding 0 -> 1 (IPv6 forwarding: IPv6 pod route {_ip(pod, 6)}/128)" in \
        log.read_text()
    assert components(fetch(net, "/healthz"))["node"]["detail"] == "forwarding IPv4, IPv6"


def test_with_forwarding_off_nothing_is_written_and_a_warning_names_each_sysctl(node: MacvlanNet):
    net, lab = node, node.lab
    pod = net.add("pod1", _conf(net), args=_args("a-0"))
    _p, log = moord(net, forwarding="off")
    assert (sysctl(lab, net.node, V4), sysctl(lab, net.node, V6)) == ("0", "0")
    assert not lab.ping(net.peer, _ip(pod, 4), timeout=1)
    text = log.read_text()
    assert "WARNING moord.node net.ipv4.ip_forward is 0: routed pods are unreachable over IPv4" in text
    assert "WARNING moord.node net.ipv6.conf.all.forwarding is 0: routed pods are unreachable over IPv6" in text
    assert " -> 1" not in text.replace("Connect -> ", "")
    ready, alive = fetch(net, "/readyz"), fetch(net, "/healthz")
    assert ready["code"] == 200  # pods can still be set up: readiness is not the node's health
    node_c = components(alive)["node"]
    assert not node_c["ok"] and node_c["detail"] == ("forwarding off; not as routed mode needs: net.ipv4.ip_forward, "
                                                     "net.ipv6.conf.all.forwarding")


def test_ipv6_forwarding_keeps_the_default_route_a_router_advertisement_gave(node: MacvlanNet):
    net, lab = node, node.lab
    other = lab.ns("other")  # a second interface that takes RAs but has none: left alone
    lab.veth(net.node, "up1", other, "o0")
    set_sysctl(lab, net.node, "net.ipv6.conf.up0.accept_ra=1", "net.ipv6.conf.up1.accept_ra=1")
    lab.run(net.peer, sys.executable, "-c", SEND_RA, "pp0")
    ra_default = wait_for(lambda: ra_defaults(lab, net.node), what="the node's default route from the RA")
    # forwarding on by config: the kernel would remove that route at once with accept_ra 1
    _p, log = moord(net, forwarding="on")
    assert sysctl(lab, net.node, V6) == "1"
    assert [r["gateway"] for r in ra_defaults(lab, net.node)] == [ra_default[0]["gateway"]]
    assert sysctl(lab, net.node, ("net", "ipv6", "conf", "up0", "accept_ra")) == "2"
    assert sysctl(lab, net.node, ("net", "ipv6", "conf", "up1", "accept_ra")) == "1"
    text = log.read_text()
    assert "INFO moord.node net.ipv6.conf.up0.accept_ra 1 -> 2 (up0 has routes from router advertisements" in text
    assert text.index("accept_ra 1 -> 2") < text.index("net.ipv6.conf.all.forwarding 0 -> 1")
    assert "up1.accept_ra" not in text


def test_strict_reverse_path_filtering_on_one_of_two_uplinks_is_named(node: MacvlanNet):
    net, lab = node, node.lab
    tor2 = lab.ns("tor2")
    lab.veth(net.node, "up1", tor2, "t0")
    lab.addr(net.node, "up1", "198.51.100.2/24")
    lab.addr(tor2, "t0", "198.51.100.1/24")
    set_sysctl(lab, net.node, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.up0.rp_filter=1",
               "net.ipv4.conf.up1.rp_filter=2")
    _p, log = moord(net, peers=[{"address": "192.0.2.1", "asn": 65000, "passive": True},
                            {"address": "198.51.100.1", "asn": 65000, "passive": True}])
    text = log.read_text()
    assert ("WARNING moord.node net.ipv4.conf.up0.rp_filter is strict (all 0, up0 1) and the BGP peers are "
            "reached through 2 interfaces (up0: 192.0.2.1; up1: 198.51.100.1)") in text
    assert "up1.rp_filter" not in text  # loose
    assert sysctl(lab, net.node, ("net", "ipv4", "conf", "up0", "rp_filter")) == "1"  # told, never changed
    assert "net.ipv4.conf.up0.rp_filter" in components(fetch(net, "/healthz"))["node"]["detail"]


def test_a_start_that_fails_after_forwarding_puts_it_back(node: MacvlanNet, monkeypatch, caplog):
    """The BGP port taken between the bind check and the speaker's own bind: the start fails after
    forwarding was turned on, and puts both sysctls back (moord's run() in this process, inside
    the node netns, as tests/unit/test_moord_start.py does on loopback)."""
    net, lab = node, node.lab
    monkeypatch.setattr(agent, "_check_bgp_bind", lambda address, port: None)
    conf = agent.load(json.dumps({
        "bgp": {"asn": 65001, "routerId": NODE_IP, "listenPort": 1179, "nextHopIPv6": NODE_IP6,
                "gracefulRestart": {"stateFile": str(net.tmp / "gr.json")}},
        "api": {"socket": ""}, "cni": {"socket": ""}, "metrics": {"port": 0}, "probe": {"enabled": False}}))
    fd = nsmod.open_netns(Lab.path(net.node))
    try:
        with nsmod.entered(fd), socket.socket() as busy, caplog.at_level(logging.INFO, logger="moord.node"):
            busy.bind(("0.0.0.0", 1179))
            busy.listen(1)
            with pytest.raises(agent.StartError, match="bgp.listenPort 1179: cannot bind"):
                asyncio.run(agent.run(conf, asyncio.Event()))
    finally:
        os.close(fd)
    assert (sysctl(lab, net.node, V4), sysctl(lab, net.node, V6)) == ("0", "0")
    lines = [r.getMessage() for r in caplog.records if r.name == "moord.node"]
    assert lines[:2] == ["net.ipv4.ip_forward 0 -> 1 (IPv4 forwarding: pods are routed through the node)",
                         "net.ipv6.conf.all.forwarding 0 -> 1 (IPv6 forwarding: bgp.nextHopIPv6 is set)"]
    assert lines[2:] == ["net.ipv6.conf.all.forwarding 1 -> 0 (undone: the start failed)",
                         "net.ipv4.ip_forward 1 -> 0 (undone: the start failed)"]
