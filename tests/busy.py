"""A busy node for diagnosis tests: a real node is never quiet. While the context is open,
another namespace sends UDP to a closed port (~200 datagrams/s: NoPorts, the probe's NO_SOCKET)
and links come and go in a third one (their ICMPv6 MLD reports and router solicitations are
dropped: the kernel's background). A doctor asked about the case under test must still name the
case's cause first."""
from __future__ import annotations

import subprocess
import sys
import threading

from dataplane.nslab import Lab, sh

CLOSED_PORT = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    for _ in range(20):
        s.sendto(b"background", ("127.0.0.1", 9))  # nothing listens on 9 (discard)
    time.sleep(0.1)
"""


class Busy:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.sender: subprocess.Popen | None = None
        self.churned = 0

    def __enter__(self) -> "Busy":
        noisy = self.lab.ns("bgnoise")
        self.sender = self.lab.spawn(noisy, [sys.executable, "-c", CLOSED_PORT], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        churn = self.lab.ns("bgchurn")
        self.thread = threading.Thread(target=self._churn, args=(churn,), daemon=True)
        self.thread.start()
        return self

    def _churn(self, ns: str) -> None:
        """Links created, brought up (IPv6 on: MLD, RS, DAD) and deleted, over and over."""
        i = 0
        while not self.stopping.is_set():
            a, b = f"bgc{i % 4}a", f"bgc{i % 4}b"
            r = sh("ip", "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b, check=False)
            if r.returncode == 0:
                sh("ip", "-n", ns, "link", "set", a, "up", check=False)
                sh("ip", "-n", ns, "link", "set", b, "up", check=False)
                self.stopping.wait(0.3)
                sh("ip", "-n", ns, "link", "del", a, check=False)
                self.churned += 1
            i += 1

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(10)
        # the sender is one of the lab's processes: lab.close() stops it with the namespaces
