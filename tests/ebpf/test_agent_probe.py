"""moord with its eBPF probe loaded, seen through `netdiag` over the agent's API, on a busy node
(another namespace dropping all the time, links coming and going): the fragment pattern a buggy
gateway drops (several patterns and fragment positions), session pressure, a cause seconds old
under ongoing noise, the agent's view matching the kernel's where both see the cause, status."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataplane.api.client import AgentClient
from dataplane.nslab import Lab
from tests.busy import Busy
from tests.helpers import REPO
from tests.interop.conftest import wait_for
from tests.ebpf.test_drops import GATEWAY_RULES, gateway_lab, send

pytestmark = pytest.mark.ebpf


def start_moord(lab: Lab, ns: str, tmp: Path, **probe) -> Path:
    sock = tmp / "moord.sock"
    conf = {"bgp": {"asn": 65001, "routerId": "192.0.2.250"}, "api": {"socket": str(sock)}, "cni": {"socket": ""},
            "metrics": {"port": 0}, "probe": {"enabled": True, **probe}}
    (tmp / "moord.json").write_text(json.dumps(conf))
    lab.spawn(ns, [sys.executable, "-m", "dataplane.agent", "--config", str(tmp / "moord.json"), "-v"], cwd=REPO,
              stdout=subprocess.DEVNULL, stderr=open(tmp / "moord.log", "w"))
    wait_for(lambda: sock.exists(), what="moord's API socket")
    with AgentClient(str(sock)) as c:
        def loaded():
            comps = {x.name: x for x in c.health().components}
            return comps if "probe.drops" in comps and "probe.sessions" in comps else None
        comps = wait_for(loaded, timeout=60, what="the probes to load (bcc compiles them)")
    if not comps["probe.drops"].ok:
        pytest.skip(f"the drop probe cannot load here: {comps['probe.drops'].detail}")
    return sock


def netdiag(lab: Lab, ns: str, sock: Path, *args: str) -> dict:
    p = lab.run(ns, sys.executable, "-m", "dataplane.netdiag", *args, "--source", "agent", "--agent-socket", str(sock),
                "--json", check=False)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def _gateway_rules(pattern: int) -> bytes:
    return GATEWAY_RULES.replace(b"0x0daf", f"0x{pattern:04x}".encode())


@pytest.mark.parametrize("pattern,fragment", [(0x0DAF, 2), (0xBEEF, 3)], ids=["0daf-second", "beef-third"])
def test_doctor_names_the_fragment_pattern_a_gateway_drops(tmp_path, pattern: int, fragment: int):
    nft = shutil.which("nft")
    if nft is None:
        pytest.skip("nft (nftables) is not installed: the test's buggy gateway needs it")
    with Lab() as lab, Busy(lab):
        a, g, b = gateway_lab(lab)
        lab.run(g, nft, "-f", "-", input=_gateway_rules(pattern))
        sock = start_moord(lab, lab.ns("agent"), tmp_path)
        # three flows whose `fragment`-th fragment carries the pattern at bytes 2-3 after the IP
        # header (each fragment holds 1480 bytes of the datagram over a 1500-byte MTU), one without
        frag = (1500 - 20) * (fragment - 1)
        bad = bytearray(1480 * fragment + 100)
        bad[frag - 8 + 2:frag - 8 + 4] = pattern.to_bytes(2, "big")
        for sport in (41001, 41002, 41003):
            send(lab, a, "198.51.100.1", 7000, sport, 3, bytes(bad))
        send(lab, a, "198.51.100.1", 7000, 41009, 3, bytes(len(bad)))

        def seen():
            doc = netdiag(lab, g, sock, "drops", "--netns", g)
            return [d for d in doc.get("flow_drops", []) if d.get("frag_bytes") == f"{pattern:04x}"]
        assert sum(d["packets"] for d in wait_for(seen, what="the probe's fragment drops via the API")) >= 9
        doc = netdiag(lab, g, sock, "doctor", "--netns", g)
        first = doc["findings"][0]
        assert first["cause"] == "fragment-pattern", json.dumps(doc["findings"][:3], indent=1)
        assert f"0x{pattern:04X}" in first["title"] and not first["elsewhere"]
        assert any(f["elsewhere"] for f in doc["findings"])  # the busy background, listed after it


SPRAY = """
import socket, sys
dst, n = sys.argv[1], int(sys.argv[2])
socks = []
for i in range(n):  # n distinct source ports: n VPC sessions
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", (dst, 6000))
    socks.append(s)
"""


def test_netdiag_reports_sessions_against_the_vpc_limit(tmp_path):
    with Lab() as lab, Busy(lab):
        client, server = lab.ns("client"), lab.ns("server")
        lab.veth(client, "c0", server, "s0")
        lab.addr(client, "c0", "203.0.113.1/24")
        lab.addr(server, "s0", "203.0.113.2/24")
        sock = start_moord(lab, lab.ns("agent"), tmp_path, sessionLimit=50, sessionAgingSeconds=300)
        lab.run(client, sys.executable, "-c", SPRAY, "203.0.113.2", "80")

        def counted():
            doc = netdiag(lab, client, sock, "sessions")
            mine = [s for s in doc.get("sessions", []) if s.get("saddr") == "203.0.113.1" and s.get("dport") == 6000]
            return doc if len(mine) >= 80 else None
        doc = wait_for(counted, what="the 80 sessions in the agent's view")
        p = doc["pressure"]
        assert p["limit"] == 50 and p["active"] >= 80
        findings = netdiag(lab, client, sock, "doctor")["findings"]
        first = findings[0]
        assert first["cause"] == "session-limit", json.dumps(findings[:3], indent=1)
        assert "50" in " ".join(first["evidence"])


RCV_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
s.bind((sys.argv[1], int(sys.argv[2])))
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), flush=True)
sys.stdin.read()
"""
FLOOD = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    s.sendto(b"x" * 1000, (sys.argv[1], int(sys.argv[2])))
"""


def _rcvbuf_case(lab: Lab) -> tuple[str, str]:
    tx, rx = lab.ns("tx"), lab.ns("rx")
    lab.veth(tx, "t0", rx, "r0")
    lab.addr(tx, "t0", "203.0.113.1/24")
    lab.addr(rx, "r0", "203.0.113.2/24")
    p = lab.spawn(rx, [sys.executable, "-c", RCV_SINK, "203.0.113.2", "5001"], stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip().isdigit()
    lab.run(tx, sys.executable, "-c", FLOOD, "203.0.113.2", "5001", "3000")
    return tx, rx


def test_a_cause_seconds_old_under_ongoing_noise_ranks_first_and_since_windows_it(tmp_path):
    """The review's case: the overflow stopped seconds ago while the background keeps dropping;
    asked about the receiver's namespace through the agent, the doctor names the overflow first,
    says when the last drop was, and --since leaves it out once it is older than the window."""
    with Lab() as lab, Busy(lab):
        sock = start_moord(lab, lab.ns("agent"), tmp_path)
        _tx, rx = _rcvbuf_case(lab)

        def seen():
            f = netdiag(lab, rx, sock, "doctor", "--netns", rx, "--interval", "0")["findings"]
            return f if f and f[0]["cause"] == "rcvbuf" and f[0].get("last_seen") else None
        findings = wait_for(seen, what="the overflow in the agent's view")
        time.sleep(3)  # the cause is history now; the background goes on
        doc = netdiag(lab, rx, sock, "doctor", "--netns", rx)
        f = doc["findings"][0]
        assert f["cause"] == "rcvbuf" and "5001" in f["title"] and not f["elsewhere"], json.dumps(doc["findings"][:3])
        assert any("last drop" in e for e in f["evidence"]) and f["last_seen"] <= time.time() - 2
        assert [x["cause"] for x in doc["findings"] if x["elsewhere"]][:1] == ["no-listener"]
        windowed = netdiag(lab, rx, sock, "doctor", "--netns", rx, "--since", "1s", "--interval", "0")
        assert not any(x["cause"] == "rcvbuf" and x.get("last_seen") for x in windowed["findings"]), findings


def test_the_agent_and_the_kernel_name_the_same_cause_where_both_see_it(tmp_path):
    with Lab() as lab, Busy(lab):
        sock = start_moord(lab, lab.ns("agent"), tmp_path)
        _tx, rx = _rcvbuf_case(lab)
        via_agent = wait_for(lambda: (f := netdiag(lab, rx, sock, "doctor", "--netns", rx, "--interval", "0")[
            "findings"]) and f[0]["cause"] == "rcvbuf" and f, what="the agent's view")
        p = lab.run(rx, sys.executable, "-m", "dataplane.netdiag", "doctor", "--netns", rx, "--source", "kernel",
                    "--json", "--interval", "0")
        via_kernel = json.loads(p.stdout)["findings"]
        assert via_kernel[0]["cause"] == via_agent[0]["cause"] == "rcvbuf"
        assert via_kernel[0]["title"] == via_agent[0]["title"]  # the same socket, in the same words


def test_status_through_the_agent_names_its_probes_and_sessions(tmp_path):
    with Lab() as lab:
        agent = lab.ns("agent")
        sock = start_moord(lab, agent, tmp_path)
        doc = netdiag(lab, agent, sock, "status")
        a = doc["agent"]
        assert a["reachable"] and {c["name"] for c in a["components"]} >= {"bgp", "probe.drops", "probe.sessions"}
        assert any("per-flow drops" in x for x in doc["sees"]) and doc["versions"]["bcc"]
        assert a["version"].startswith("moor ") and "kernel" in a["version"]
