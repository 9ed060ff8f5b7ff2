"""moord with its eBPF probe loaded, seen through `netdiag` over the agent's API: the fragment
pattern a buggy gateway drops, named by the doctor from the probe's per-flow evidence."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane.api.client import AgentClient
from dataplane.nslab import Lab
from tests.helpers import REPO
from tests.interop.conftest import wait_for
from tests.ebpf.test_drops import GATEWAY_RULES, gateway_lab, send

pytestmark = pytest.mark.ebpf


def start_moord(lab: Lab, ns: str, tmp: Path, **probe) -> Path:
    sock = tmp / "moord.sock"
    conf = {"bgp": {"asn": 65001, "routerId": "192.0.2.250"}, "api": {"socket": str(sock)},
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


def test_doctor_names_the_fragment_pattern_a_gateway_drops(tmp_path):
    nft = shutil.which("nft")
    if nft is None:
        pytest.skip("nft (nftables) is not installed: the test's buggy gateway needs it")
    with Lab() as lab:
        a, g, b = gateway_lab(lab)
        lab.run(g, nft, "-f", "-", input=GATEWAY_RULES)
        sock = start_moord(lab, lab.ns("agent"), tmp_path)
        # three flows whose second fragment carries 0x0DAF at bytes 2-3 after the IP header, one without
        frag = 1500 - 20
        bad = bytearray(2000)
        bad[frag - 8 + 2:frag - 8 + 4] = b"\x0d\xaf"
        for sport in (41001, 41002, 41003):
            send(lab, a, "198.51.100.1", 7000, sport, 3, bytes(bad))
        send(lab, a, "198.51.100.1", 7000, 41009, 3, bytes(2000))

        def seen():
            doc = netdiag(lab, g, sock, "drops", "--netns", g)
            return [d for d in doc.get("flow_drops", []) if d.get("frag_bytes") == "0daf"]
        assert sum(d["packets"] for d in wait_for(seen, what="the probe's fragment drops via the API")) >= 9
        doc = netdiag(lab, g, sock, "doctor", "--netns", g)
        first = doc["findings"][0]
        assert first["cause"] == "fragment-pattern", json.dumps(doc["findings"][:3], indent=1)
        text = " ".join(first["evidence"] + first["remedy"]).lower()
        assert "0daf" in text or "0x0daf" in text or "0d af" in text, text


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
    with Lab() as lab:
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
