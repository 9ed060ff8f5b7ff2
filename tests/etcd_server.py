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
