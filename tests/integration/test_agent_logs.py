"""What moord says by default: one INFO line per meaningful event, with a real BGP peer (a second
moord) so the session's state changes are real; and with --log-format json every line is a JSON
object with ts, level, logger, msg and the line's fields.

    (node1: n0 192.0.2.2, moord, text) ==veth== (node2: n1 192.0.2.1, moord, json)"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane.nslab import Lab
from tests.helpers import REPO
from tests.interop.conftest import wait_for

pytestmark = pytest.mark.integration


def start(lab: Lab, ns: str, tmp: Path, name: str, me: str, peer: str, *args: str) -> tuple[subprocess.Popen, Path]:
    conf = {"bgp": {"asn": 65001, "routerId": me, "peers": [{"address": peer, "asn": 65001, "gracefulRestart": True}],
                    "gracefulRestart": {"stateFile": str(tmp / f"{name}-gr.json")}},
            "api": {"socket": str(tmp / f"{name}.sock")}, "cni": {"socket": ""}, "metrics": {"port": 0},
            "probe": {"enabled": False}}
    (tmp / f"{name}.json").write_text(json.dumps(conf))
    log = tmp / f"{name}.log"
    p = lab.spawn(ns, [sys.executable, "-m", "dataplane.agent", "--config", str(tmp / f"{name}.json"), *args],
                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    return p, log


def test_default_log_lines_and_json_lines_with_a_real_peer(tmp_path):
    with Lab() as lab:
        n1, n2 = lab.ns("node1"), lab.ns("node2")
        lab.veth(n1, "n0", n2, "n1")
        lab.addr(n1, "n0", "192.0.2.2/24")
        lab.addr(n2, "n1", "192.0.2.1/24")
        a, alog = start(lab, n1, tmp_path, "a", "192.0.2.2", "192.0.2.1")  # default options
        b, blog = start(lab, n2, tmp_path, "b", "192.0.2.1", "192.0.2.2", "--log-format", "json")
        wait_for(lambda: "-> Established (KEEPALIVE received)" in alog.read_text() or a.poll() is not None,
                 what="node1's session to node2 Established")
        text = alog.read_text()
        for line in (f"INFO moord API on unix:{tmp_path}/a.sock", "INFO moord BGP on 0.0.0.0:179, 1 peer(s)",
                     "INFO moord.node net.ipv4.ip_forward 0 -> 1", "INFO moord probes not loaded: disabled",
                     "INFO moord ready: start-up done",
                     "INFO moor.bgp peer 192.0.2.1: OpenConfirm -> Established (KEEPALIVE received)"):
            assert line in text, text
        assert " DEBUG " not in text and "Traceback" not in text

        # node2 stops for a restart (graceful-restart peer): node1's session goes, and says why
        b.send_signal(signal.SIGTERM)
        assert b.wait(20) == 0
        wait_for(lambda: "Established -> Idle" in alog.read_text(), what="node1 to see the session end")
        assert "INFO moor.bgp peer 192.0.2.1: Established -> Idle (connection lost: " in alog.read_text()

        recs = [json.loads(line) for line in blog.read_text().splitlines()]  # every line parses
        assert recs and all({"ts", "level", "logger", "msg"} <= set(r) for r in recs)
        assert all(r["level"] in ("INFO", "WARNING") for r in recs), recs
        # the two connect to each other at once: when each settles the collision at a different
        # moment (node2 already Established on the connection node1 closes, RFC 4271 6.8), both
        # connections end and the retry makes the session, so node2 may log Established twice
        est = [(r["logger"], r["peer"], r["old"], r["reason"]) for r in recs if r.get("new") == "Established"]
        assert est and set(est) == {("moor.bgp", "192.0.2.2", "OpenConfirm", "KEEPALIVE received")}, est
        down = [r for r in recs if r.get("signal")]
        assert [(r["msg"].split(":")[0], r["signal"], r["graceful"]) for r in down] == [
            ("shutting down on SIGTERM", "SIGTERM", True)]
        assert recs[-1]["msg"] == "stopped"
        assert any(r.get("endpoint") == "0.0.0.0:179" for r in recs)

        # node1: a full shutdown
        a.send_signal(signal.SIGINT)
        assert a.wait(20) == 0
        tail = alog.read_text().splitlines()
        assert tail[-2].endswith("INFO moord shutting down on SIGINT: a full shutdown")
        assert tail[-1].endswith("INFO moord stopped")
