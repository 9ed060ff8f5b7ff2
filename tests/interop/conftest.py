"""Real routers from Debian packages, each in its own netns as the ToR, with private config,
control socket and pid paths; the test stops exactly the processes it started."""
from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dataplane.nslab import Lab
from lab.bird import Bird
from tests.helpers import REPO

TOR, NODE = "192.0.2.1", "192.0.2.2"


def wait_for(pred, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise TimeoutError(f"gave up after {timeout} s waiting for {what}")  # a guard, not a speed check


@dataclass
class GoBGP:
    lab: Lab
    ns: str
    tmp: Path
    api_port: int = 50051
    proc: subprocess.Popen | None = None

    def start(self, conf: str) -> None:
        (self.tmp / "gobgpd.toml").write_text(conf)
        self.proc = self.lab.spawn(self.ns, ["gobgpd", "-f", str(self.tmp / "gobgpd.toml"), "-p",
                                             "--api-hosts", f"127.0.0.1:{self.api_port}"],
                                   stdout=open(self.tmp / "gobgpd.log", "wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.cli("neighbor").returncode == 0, what="gobgpd's API")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, "gobgp", "-u", "127.0.0.1", "-p", str(self.api_port),
                               *args], capture_output=True, text=True, timeout=10)

    def state(self, neighbor: str) -> str:
        p = self.cli("neighbor", neighbor, "-j")
        try:
            st = json.loads(p.stdout)["state"]["session_state"]
        except (ValueError, KeyError, TypeError):
            return ""
        # GoBGP 3 prints the FSM state as its protobuf number (6 = established)
        names = {1: "idle", 2: "connect", 3: "active", 4: "opensent", 5: "openconfirm", 6: "established"}
        return names.get(st, str(st)) if isinstance(st, int) else str(st).lower()

    def routes(self) -> dict[str, str]:
        p = self.cli("global", "rib", "-a", "ipv4", "-j")
        try:
            doc = json.loads(p.stdout or "{}")
        except ValueError:
            return {}
        out = {}
        for prefix, paths in doc.items():
            for path in paths:
                for a in path.get("attrs", []):
                    if a.get("type") == 3:
                        out[prefix] = a.get("nexthop")
        return out


@dataclass
class SpeakerProc:
    """moor's speaker as its own process in the node netns; events from its stdout."""
    proc: subprocess.Popen
    events: "queue.Queue[dict]" = field(default_factory=queue.Queue)
    seen: list = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass

    def drain(self) -> list[dict]:
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                return self.seen

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


@pytest.fixture(params=["bird"])
def tor(request, tmp_path: Path):
    if request.param == "bird" and shutil.which("bird") is None:
        pytest.skip("bird2 is not installed (scripts/setup.sh installs it)")
    lab = Lab()
    try:
        tor_ns, node_ns = lab.ns("tor"), lab.ns("node")
        lab.veth(tor_ns, "t0", node_ns, "n0")
        lab.addr(tor_ns, "t0", f"{TOR}/24")
        lab.addr(node_ns, "n0", f"{NODE}/24")

        def speaker(*args: str) -> SpeakerProc:
            p = lab.spawn(node_ns, [sys.executable, "-m", "bgp.speaker", *args], cwd=REPO, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(tmp_path / "speaker.log", "w"))
            return SpeakerProc(p)
        if request.param == "gobgp":
            if shutil.which("gobgpd") is None:
                pytest.skip("gobgpd is not installed (scripts/setup.sh installs it)")
            yield lab, GoBGP(lab, tor_ns, tmp_path), speaker
        else:
            yield lab, Bird(lab, tor_ns, tmp_path), speaker
    finally:
        lab.close()
