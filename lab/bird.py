"""BIRD 2 in a network namespace with its own config, control socket, pid file and log: the ToR of
the lab's routed scenario and of the interop tests."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from dataplane.nslab import Lab, LabError


class Bird:
    """BIRD 2 in a netns with private config, control socket, pid file and log in `tmp`."""

    def __init__(self, lab: Lab, ns: str, tmp: Path):
        self.lab, self.ns, self.tmp = lab, ns, tmp
        self.ctl = tmp / "bird.ctl"
        self.proc: subprocess.Popen | None = None

    def start(self, conf: str) -> None:
        (self.tmp / "bird.conf").write_text(conf)
        with open(self.tmp / "bird.log", "wb") as log:
            self.proc = self.lab.spawn(self.ns, ["bird", "-f", "-c", str(self.tmp / "bird.conf"), "-s", str(self.ctl),
                                                 "-P", str(self.tmp / "bird.pid")], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10  # a guard, not a speed check
        while not self.ctl.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.ctl.exists():
            raise LabError(f"BIRD did not open its control socket: {(self.tmp / 'bird.log').read_text()[-500:]}")

    def cmd(self, *args: str) -> str:
        try:
            return subprocess.run(["birdc", "-s", str(self.ctl), *args], capture_output=True, text=True,
                                  timeout=10).stdout
        except subprocess.TimeoutExpired:
            return ""

    def state(self, proto: str) -> str:
        for line in self.cmd("show", "protocols", proto).splitlines():
            parts = line.split()
            if parts and parts[0] == proto:
                return parts[5] if len(parts) > 5 else ""
        return ""

    def routes(self, proto: str) -> dict[str, str]:
        """prefix -> next hop of the routes BIRD learned from `proto`."""
        out, prefix = {}, None
        for line in self.cmd("show", "route", "protocol", proto).splitlines():
            parts = line.split()
            if parts and "/" in parts[0]:
                prefix = parts[0]
            if prefix and "via" in parts:
                out[prefix] = parts[parts.index("via") + 1]
        return out
