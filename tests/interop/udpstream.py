"""A numbered UDP stream for loss tests: `recv PORT OUT` counts what arrives and writes
{"received": n, "missing": [...]} to OUT on SIGTERM; `send DST PORT PPS STOPFILE` sends numbered
datagrams at PPS until STOPFILE exists and prints how many it sent."""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time


def recv(port: int, out: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", port))
    seen: set[int] = set()

    def done(*_):
        top = max(seen) if seen else -1
        with open(out + ".tmp", "w") as f:
            json.dump({"received": len(seen), "highest": top,
                       "missing": [i for i in range(top + 1) if i not in seen][:1000]}, f)
        os.replace(out + ".tmp", out)
        sys.exit(0)
    signal.signal(signal.SIGTERM, done)
    print("ready", flush=True)
    while True:
        data = s.recv(64)
        seen.add(struct.unpack("!I", data[:4])[0])


def send(dst: str, port: int, pps: int, stopfile: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gap, n, t = 1.0 / pps, 0, time.monotonic()
    while not os.path.exists(stopfile):
        try:
            s.sendto(struct.pack("!I", n) + b"x" * 28, (dst, port))
        except OSError:
            pass  # no route: counted as lost by the receiver, which is the point
        n += 1
        t += gap
        time.sleep(max(0.0, t - time.monotonic()))
    print(n, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(int(sys.argv[2]), sys.argv[3])
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
