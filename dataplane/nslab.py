"""Network-namespace lab primitives: hosts as namespaces, wires as veth pairs, all named with one
unique prefix and all removed by close(), so labs and parallel tests never collide or leak."""
from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass, field
from typing import Optional, Sequence


class LabError(RuntimeError):
    pass


def sh(*cmd: str, check: bool = True, input: Optional[bytes] = None,
       env: Optional[dict] = None, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), input=input, capture_output=True, env=env, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
    return proc


@dataclass
class Lab:
    prefix: str = field(default_factory=lambda: "mr" + secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def ns(self, role: str) -> str:
        """Create netns <prefix>-<role> with loopback up; returns its name."""
        name = f"{self.prefix}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        # no IPv6 duplicate address detection: its completion a second later changes the
        # routing tables under a test comparing them before and after
        self.run(name, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        return name

    @staticmethod
    def path(ns: str) -> str:
        return f"/run/netns/{ns}"

    def veth(self, a_ns: str, a_name: str, b_ns: str, b_name: str) -> None:
        """A wire between two namespaces; the ends are created in place and brought up."""
        sh("ip", "link", "add", a_name, "netns", a_ns, "type", "veth", "peer", "name", b_name, "netns", b_ns)
        sh("ip", "-n", a_ns, "link", "set", a_name, "up")
        sh("ip", "-n", b_ns, "link", "set", b_name, "up")

    def addr(self, ns: str, dev: str, cidr: str) -> None:
        sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev, *(["nodad"] if ":" in cidr else []))

    def run(self, ns: str, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, check=check, **kw)

    def spawn(self, ns: str, cmd: Sequence[str], **kw) -> subprocess.Popen:
        """Start a process in a namespace; close() stops exactly the processes started here."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self.procs.append(p)
        return p

    def ping(self, ns: str, dst: str, count: int = 1, timeout: int = 2) -> bool:
        return self.run(ns, "ping", "-c", str(count), "-W", str(timeout), dst, check=False).returncode == 0

    def close(self, close_pipes: bool = False) -> None:
        """Stop the processes started here, then remove the namespaces; `close_pipes`: also close
        those processes' pipes (for callers that read nothing from them afterwards)."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if close_pipes:
                for f in (p.stdin, p.stdout, p.stderr):
                    if f is not None:
                        f.close()
        self.procs.clear()
        # deleting a netns destroys its links (and the veth peers in other namespaces)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def require_root() -> Optional[str]:
    """Why namespace labs cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and netlink"
    if sh("ip", "netns", "list", check=False).returncode != 0:
        return "iproute2 'ip netns' is not available"
    return None
