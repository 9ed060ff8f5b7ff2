"""A private etcd server for tests: its own data dir and loopback ports; stop() ends exactly it."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Etcd:
    proc: subprocess.Popen
    endpoint: str
    netns: str = ""

    def healthy(self) -> bool:
        if self.netns:  # loopback of another netns: ask from inside it
            code = (f"import urllib.request,sys; r=urllib.request.urlopen({self.endpoint + '/health'!r}, timeout=1);"
                    "sys.exit(0 if b'true' in r.read() else 1)")
            return subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-c", code],
                                  capture_output=True).returncode == 0
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as r:
                return json.loads(r.read()).get("health") in ("true", True)
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(data_dir: Path, netns: str = "") -> Etcd:
    """Start etcd on loopback, inside `netns` when given (the plugin runs in the node's netns)."""
    exe = shutil.which("etcd")
    if exe is None:
        raise FileNotFoundError("etcd is not installed (apt-get install etcd-server)")
    client, peer = free_port(), free_port()
    url_c, url_p = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    log = open(data_dir.parent / f"etcd-{client}.log", "wb")
    prefix = ["ip", "netns", "exec", netns] if netns else []  # ip netns exec execs: same PID
    proc = subprocess.Popen([*prefix, exe, "--name", "test", "--data-dir", str(data_dir),
                             "--listen-client-urls", url_c, "--advertise-client-urls", url_c,
                             "--listen-peer-urls", url_p, "--initial-advertise-peer-urls", url_p,
                             "--initial-cluster", f"test={url_p}"], stdout=log, stderr=subprocess.STDOUT)
    e = Etcd(proc, url_c, netns)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited with {proc.returncode}; see {log.name}")
        if e.healthy():
            return e
        time.sleep(0.1)
    e.stop()
    raise RuntimeError("etcd did not become healthy in 30 s")


@dataclass
class Cluster:
    """A private etcd cluster on loopback: each member its own data dir, ports and process."""
    members: list[Etcd]
    args: list[list[str]]  # each member's command line, to restart it on its data dir
    logs: list[Path]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def stop_member(self, i: int) -> None:
        """SIGKILL member i (a crash, not a shutdown)."""
        p = self.members[i].proc
        if p.poll() is None:
            p.kill()
            p.wait()

    def start_member(self, i: int) -> None:
        """Member i again on its data dir: it rejoins and catches up."""
        with open(self.logs[i], "ab") as log:
            proc = subprocess.Popen(self.args[i], stdout=log, stderr=subprocess.STDOUT)
        self.members[i] = Etcd(proc, self.members[i].endpoint)
        _wait_healthy(self.members[i], self.logs[i])

    def stop(self) -> None:
        for m in self.members:
            m.stop()


def _wait_healthy(e: Etcd, log: Path, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if e.proc.poll() is not None:
            raise RuntimeError(f"etcd exited with {e.proc.returncode}; see {log}")
        if e.healthy():
            return
        time.sleep(0.1)
    raise RuntimeError(f"etcd did not become healthy in {timeout:g} s; see {log}")


def start_cluster(base: Path, n: int = 3) -> Cluster:
    """n members on loopback (ports picked free), each with a data dir under `base`."""
    exe = shutil.which("etcd")
    if exe is None:
        raise FileNotFoundError("etcd is not installed (apt-get install etcd-server)")
    base.mkdir(parents=True, exist_ok=True)
    ports = [(free_port(), free_port()) for _ in range(n)]
    initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_c, p) in enumerate(ports))
    cluster = Cluster([], [], [])
    try:
        for i, (c, p) in enumerate(ports):
            url_c, url_p = f"http://127.0.0.1:{c}", f"http://127.0.0.1:{p}"
            args = [exe, "--name", f"m{i}", "--data-dir", str(base / f"m{i}"),
                    "--listen-client-urls", url_c, "--advertise-client-urls", url_c,
                    "--listen-peer-urls", url_p, "--initial-advertise-peer-urls", url_p,
                    "--initial-cluster", initial, "--initial-cluster-token", f"moor-test-{ports[0][0]}",
                    "--initial-cluster-state", "new"]
            log = base / f"m{i}.log"
            with open(log, "wb") as f:
                proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)
            cluster.members.append(Etcd(proc, url_c))
            cluster.args.append(args)
            cluster.logs.append(log)
        for m, log in zip(cluster.members, cluster.logs):  # a member is healthy once there is a quorum
            _wait_healthy(m, log)
    except BaseException:
        cluster.stop()
        raise
    return cluster
