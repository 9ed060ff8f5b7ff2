"""moor's BGP speaker against FRR (bgpd from Debian's frr) as the ToR, each in its own netns:
session and withdraw, 4-byte ASN, an IPv6 session with IPv6 routes, TCP MD5 (right and wrong
key), and FRR's own route reaching moor (while FRR's echo of moor's route back to it is ignored)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataplane.nslab import Lab
from tests.helpers import REPO
from tests.interop.conftest import NODE, TOR, SpeakerProc, wait_for
from tests.interop.frr import FRR, missing

pytestmark = pytest.mark.interop

TOR6, NODE6 = "2001:db8::1", "2001:db8::2"

def bgpd_conf(neighbor: str, remote_as: int, afi: str = "ipv4", password: str = "", networks=()) -> str:
    """bgpd as the ToR in AS 65000 with one eBGP neighbor, fast timers, no policy needed."""
    lines = ["hostname tor", "debug bgp neighbor-events", "debug bgp updates",
             "router bgp 65000",
             f" bgp router-id {TOR}",
             " no bgp ebgp-requires-policy",  # eBGP without route-maps (RFC 8212 default off)
             " no bgp network import-check",  # `network` without a RIB route (there is no zebra)
             " no bgp default ipv4-unicast",
             f" neighbor {neighbor} remote-as {remote_as}",
             f" neighbor {neighbor} timers 3 9",
             f" neighbor {neighbor} timers connect 1"]
    if password:
        lines.append(f" neighbor {neighbor} password {password}")
    lines += [f" address-family {afi} unicast", f"  neighbor {neighbor} activate"]
    lines += [f"  network {n}" for n in networks]
    lines += [" exit-address-family", ""]
    return "\n".join(lines)


def holds_for(pred, seconds: float, what: str) -> None:
    """`pred` stays true through an observation window: a bound on how long we look, not a speed check."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert pred(), what
        time.sleep(0.3)
    assert pred(), what


def md5_failures(lab: Lab, ns: str) -> int:
    """TcpExt TCPMD5Failure of a namespace: segments dropped for a wrong MD5 signature."""
    lines = [l.split() for l in lab.run(ns, "cat", "/proc/net/netstat").stdout.decode().splitlines()]
    for head, vals in zip(lines[::2], lines[1::2]):
        if head and head[0] == "TcpExt:":
            return int(dict(zip(head[1:], vals[1:])).get("TCPMD5Failure", 0))
    return 0


def learned(sp: SpeakerProc) -> dict[str, str]:
    """prefix -> next hop of what moor's speaker reported announced and not withdrawn since."""
    out: dict[str, str] = {}
    for e in sp.drain():
        for p in e.get("withdrawn") or []:
            out.pop(p, None)
        for p, nh in e.get("announced") or []:
            out[p] = nh
    return out


def established(sp: SpeakerProc) -> bool:
    return any(e.get("state") == "Established" for e in sp.drain())


@pytest.fixture
def frr(tmp_path: Path):
    why = missing()
    if why:
        pytest.skip(why)
    lab = Lab()
    try:
        tor_ns, node_ns = lab.ns("tor"), lab.ns("node")
        lab.veth(tor_ns, "t0", node_ns, "n0")
        lab.addr(tor_ns, "t0", f"{TOR}/24")
        lab.addr(node_ns, "n0", f"{NODE}/24")

        def speaker(*args: str) -> SpeakerProc:
            p = lab.spawn(node_ns, [sys.executable, "-m", "bgp.speaker", "-v", *args], cwd=REPO, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=open(tmp_path / "speaker.log", "w"))
            return SpeakerProc(p)
        yield lab, FRR(lab, tor_ns, tmp_path), speaker
    finally:
        lab.close()  # the speaker, then bgpd: exactly the processes spawned here


def test_session_route_and_withdraw(frr):
    lab, tor, speaker = frr
    tor.start(bgpd_conf(NODE, 65001))
    sp = speaker("--asn", "65001", "--router-id", NODE, "--peer", f"{TOR}:65000", "--announce", "203.0.113.7/32",
                 "--hold-time", "9", "--connect-retry", "1")
    wait_for(lambda: tor.state(NODE) == "Established", what="FRR to reach Established")
    assert wait_for(lambda: tor.routes(peer=NODE).get("203.0.113.7/32"), what="the /32 at FRR") == NODE
    assert established(sp)
    sp.send("announce 203.0.113.9/32")
    assert wait_for(lambda: tor.routes(peer=NODE).get("203.0.113.9/32"), what="a later announcement") == NODE
    sp.send("withdraw 203.0.113.7/32")
    wait_for(lambda: "203.0.113.7/32" not in tor.routes(), what="the withdrawal at FRR")
    assert tor.routes(peer=NODE) == {"203.0.113.9/32": NODE}  # only that one route went
    assert tor.state(NODE) == "Established"  # withdrawn by UPDATE, not by a reset
    sp.proc.terminate()  # a clean stop: Cease, and FRR drops what we told it
    sp.proc.wait(10)
    wait_for(lambda: not tor.routes(peer=NODE), what="FRR to drop our routes after the Cease")
    assert "Cease/Administrative Shutdown" in tor.log()


def test_four_byte_asn(frr):
    lab, tor, speaker = frr
    tor.start(bgpd_conf(NODE, 4200000001))
    speaker("--asn", "4200000001", "--router-id", NODE, "--peer", f"{TOR}:65000", "--announce", "203.0.113.7/32",
            "--hold-time", "9", "--connect-retry", "1")
    wait_for(lambda: tor.state(NODE) == "Established", what="FRR to accept AS 4200000001")
    assert tor.neighbor(NODE)["neighborCapabilities"]["4byteAs"] == "advertisedAndReceived"
    assert wait_for(lambda: tor.routes(peer=NODE).get("203.0.113.7/32"), what="the /32 at FRR") == NODE
    (path,) = tor.route("203.0.113.7/32")["paths"]
    assert path["aspath"]["segments"] == [{"type": "as-sequence", "list": [4200000001]}]  # not AS_TRANS 23456
    assert path["nexthops"][0]["ip"] == NODE


def test_ipv6_session_and_route(frr):
    lab, tor, speaker = frr
    tor_ns, node_ns = tor.ns, f"{lab.prefix}-node"
    lab.addr(tor_ns, "t0", f"{TOR6}/64")
    lab.addr(node_ns, "n0", f"{NODE6}/64")
    for ns, dev in ((tor_ns, "t0"), (node_ns, "n0")):  # no DAD: usable at once, never 'tentative'
        out = lab.run(ns, "ip", "-6", "addr", "show", "dev", dev, "scope", "global").stdout.decode()
        assert "inet6 2001:db8::" in out and "tentative" not in out, out
    tor.start(bgpd_conf(NODE6, 65001, afi="ipv6"))
    sp = speaker("--asn", "65001", "--router-id", NODE, "--peer", f"[{TOR6}]:65000", "--listen", "::",
                 "--announce", "2001:db8:7::7/128", "--hold-time", "9", "--connect-retry", "1")
    wait_for(lambda: tor.state(NODE6) == "Established", what="an IPv6 session at FRR")
    assert wait_for(lambda: tor.routes("ipv6", peer=NODE6).get("2001:db8:7::7/128"), what="the /128 at FRR") == NODE6
    (path,) = tor.route("2001:db8:7::7/128", afi="ipv6")["paths"]
    assert path["nexthops"][0]["scope"] == "global"
    assert tor.neighbor(NODE6)["neighborCapabilities"]["multiprotocolExtensions"]["ipv6Unicast"][
        "advertisedAndReceived"]
    sp.send("withdraw 2001:db8:7::7/128")
    wait_for(lambda: "2001:db8:7::7/128" not in tor.routes("ipv6"), what="the IPv6 withdrawal at FRR")
    assert tor.state(NODE6) == "Established"


@pytest.mark.parametrize("ours,matches", [("s3cret-key", True), ("wrong-key", False)])
def test_md5_password(frr, ours, matches):
    lab, tor, speaker = frr
    tor.start(bgpd_conf(NODE, 65001, password="s3cret-key"))
    sp = speaker("--asn", "65001", "--router-id", NODE, "--peer", f"{TOR}:65000:md5={ours}",
                 "--announce", "203.0.113.7/32", "--hold-time", "9", "--connect-retry", "1")
    if matches:
        wait_for(lambda: tor.state(NODE) == "Established", what="an MD5-signed session")
        assert wait_for(lambda: tor.routes(peer=NODE).get("203.0.113.7/32"), what="the /32 at FRR") == NODE
        assert md5_failures(lab, tor.ns) == 0
    else:
        # the ToR's kernel drops our SYNs, signed with the wrong key: no session can form
        wait_for(lambda: md5_failures(lab, tor.ns) > 0, what="the ToR's kernel to reject a wrong MD5 signature")
        wait_for(lambda: any(e.get("state") == "Active" for e in sp.drain()), what="failed connect attempts")
        not_up = ("Idle", "Connect", "Active", "OpenSent", "OpenConfirm")  # bgpd answers, and not Established
        holds_for(lambda: tor.state(NODE) in not_up and not established(sp), 8,
                  "no session with a wrong MD5 key over several connect retries and hold times")
        assert not tor.routes(peer=NODE)


def test_frr_route_reaches_moor(frr):
    lab, tor, speaker = frr
    tor.start(bgpd_conf(NODE, 65001, networks=["198.51.100.0/24"]))
    sp = speaker("--asn", "65001", "--router-id", NODE, "--peer", f"{TOR}:65000", "--announce", "203.0.113.7/32",
                 "--hold-time", "9", "--connect-retry", "1")
    assert wait_for(lambda: learned(sp).get("198.51.100.0/24"), what="FRR's network at moor") == TOR
    # FRR sends moor's own route back to it (path 65000 65001); moor must not take it
    adv = f"show bgp ipv4 unicast neighbors {NODE} advertised-routes json"
    wait_for(lambda: "203.0.113.7/32" in ((tor.show(adv) or {}).get("advertisedRoutes") or {}),
             what="FRR to advertise our route back to us")

    def add_network(prefix: str, no: bool = False) -> None:
        p = tor.vtysh("configure terminal", "router bgp 65000", "address-family ipv4 unicast",
                      f"{'no ' if no else ''}network {prefix}")
        assert p.returncode == 0, p.stdout + p.stderr
    add_network("198.51.100.128/25")  # sent after the echo: once moor has it, the echo was read too
    assert wait_for(lambda: learned(sp).get("198.51.100.128/25"), what="a network added later") == TOR
    assert "203.0.113.7/32" not in learned(sp)
    add_network("198.51.100.0/24", no=True)
    wait_for(lambda: "198.51.100.0/24" not in learned(sp), what="FRR's withdrawal at moor")
    assert learned(sp) == {"198.51.100.128/25": TOR}
    assert any("198.51.100.0/24" in (e.get("withdrawn") or []) for e in sp.seen)
