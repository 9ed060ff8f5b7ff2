"""FRR (Debian's frr package) as the ToR: bgpd alone, without zebra, in the ToR's netns, with its
config, pid file, vty socket, zebra socket path, vtysh config and history all under the test's
tmp dir. Queried through `vtysh --vty_socket DIR ... json`; stopped by the Lab (exactly its PID:
`ip netns exec` execs bgpd, which runs in the foreground)."""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dataplane.nslab import Lab
from tests.interop.conftest import wait_for

BGPD = "/usr/lib/frr/bgpd"


def missing() -> str | None:
    """Why FRR cannot run here, or None when it can."""
    if not Path(BGPD).is_file():
        return f"frr is not installed: no {BGPD} (scripts/setup.sh installs it)"
    if shutil.which("vtysh") is None:
        return "frr is not installed: no vtysh (scripts/setup.sh installs it)"
    return None


@dataclass
class FRR:
    lab: Lab
    ns: str
    tmp: Path
    proc: subprocess.Popen | None = None

    @property
    def dir(self) -> Path:
        return self.tmp / "frr"

    def start(self, conf: str) -> None:
        d = self.dir
        d.mkdir(exist_ok=True)
        if len(str(d / "bgpd.vty").encode()) > 107:  # sun_path holds 108 bytes with the NUL
            raise RuntimeError(f"{d} is too long a path for bgpd's vty socket; use a shorter --basetemp")
        (d / "bgpd.conf").write_text(conf)
        (d / "vtysh.conf").write_text("")  # vtysh reads its config from --config_dir, never /etc/frr
        # -Z: no zebra (no kernel routes, next hops taken as reachable); -z points the zebra client at a
        # private path anyway, so a system zebra's /var/run/frr/zserv.api is never touched; -S: stay root (with
        # `-u root -g root` privs_init refuses: root is not in the frrvty vty group); -P 0: no vty TCP port
        self.proc = self.lab.spawn(self.ns, [BGPD, "-Z", "-z", str(d / "zserv.api"), "-S", "-f", str(d / "bgpd.conf"),
                                             "-i", str(d / "bgpd.pid"), "--vty_socket", str(d), "-P", "0",
                                             "--log", "stdout"],
                                   stdout=open(self.tmp / "bgpd.log", "wb"), stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bgpd exited with {self.proc.returncode}: {self.log()[-2000:]}")
            return (d / "bgpd.vty").exists() and self.show("show bgp summary json") is not None
        wait_for(up, what="bgpd's vty socket")
        # the process the Lab stops is bgpd itself, not a wrapper
        assert int((d / "bgpd.pid").read_text().split()[0]) == self.proc.pid

    def log(self) -> str:
        return (self.tmp / "bgpd.log").read_text(errors="replace")

    def vtysh(self, *commands: str) -> subprocess.CompletedProcess:
        d = self.dir
        args = ["vtysh", "--vty_socket", str(d), "--config_dir", str(d), "-H", str(d / "vtysh.history"), "-d", "bgpd"]
        for c in commands:
            args += ["-c", c]
        return subprocess.run(args, capture_output=True, text=True, timeout=10)

    def show(self, command: str):
        """The parsed JSON of a `show ... json` command, or None when bgpd did not answer with JSON."""
        p = self.vtysh(command)
        try:
            return json.loads(p.stdout) if p.returncode == 0 else None
        except ValueError:
            return None

    def neighbor(self, peer: str) -> dict:
        return (self.show(f"show bgp neighbors {peer} json") or {}).get(peer, {})

    def state(self, peer: str) -> str:
        return self.neighbor(peer).get("bgpState", "")

    def routes(self, afi: str = "ipv4", peer: str | None = None) -> dict[str, str]:
        """prefix -> next hop of the valid best paths in FRR's table (learned from `peer` if given)."""
        doc = self.show(f"show bgp {afi} unicast json") or {}
        out = {}
        for prefix, paths in (doc.get("routes") or {}).items():
            for path in paths:
                if not path.get("valid") or not path.get("bestpath"):
                    continue
                if peer is not None and path.get("peerId") != peer:
                    continue
                hops = path.get("nexthops") or [{}]
                out[prefix] = hops[0].get("ip", "")
        return out

    def route(self, prefix: str, afi: str = "ipv4") -> dict:
        """FRR's detailed entry for one prefix (paths with AS path, origin, next hops)."""
        return self.show(f"show bgp {afi} unicast {prefix} json") or {}
