"""rcvbuf: a receiver whose socket receive buffer is too small for the bursts it gets.

    rb-tx 198.51.100.1 ──veth── rb-rx 198.51.100.2:5001  (SO_RCVBUF --rcvbuf)

The sender sends bursts of --burst datagrams of --size bytes, --rate per second; the receiver
reads as fast as Python can, but a burst arrives faster than it wakes up, and what does not fit
in sk_rcvbuf is dropped (Udp RcvbufErrors, the probe's SOCKET_RCVBUFF and the socket's sk_rcvbuf).
Remedy: the receiver restarted with the SO_RCVBUF the doctor names."""
from __future__ import annotations

import re
from typing import Optional

from ..loss import Case, remedy_commands

TX, RX, PORT = "198.51.100.1", "198.51.100.2", 5001


class Rcvbuf(Case):
    name = "rcvbuf"
    cause = "rcvbuf"
    title = "a receiver whose socket receive buffer is too small for the bursts it gets"
    design = "case 3: the VM's default socket receive buffers were too small"
    kernel_sees = True

    @classmethod
    def add_options(cls, p) -> None:
        p.add_argument("--rcvbuf", type=int, default=1024, metavar="BYTES",
                       help="the receiver's setsockopt(SO_RCVBUF) (the kernel doubles it, at least 2,304 B; "
                            "default 1024)")
        cls.traffic_options(p, rate=400, burst=16, size=1000)

    @classmethod
    def check_options(cls, o) -> Optional[str]:
        if o.rcvbuf < 1 or o.rate < 1 or o.burst < 1 or not 8 <= o.size <= 65000 or o.seconds < 2:
            return "--rcvbuf, --rate and --burst must be positive, --size 8-65000, --seconds at least 2"
        return None

    def build(self) -> None:
        self.tx, self.rx = self.pair("rb", TX, RX)

    def measure(self, rcvbuf: int, diagnose: bool) -> tuple[float, Optional[dict]]:
        o = self.o
        recv = self.traffic(self.rx, "receiver", "recv", "--bind", RX, "--port", PORT, "--rcvbuf", rcvbuf)
        self.info(f"receiver {RX}:{PORT} in {self.rx}: setsockopt(SO_RCVBUF, {rcvbuf:,}) -> sk_rcvbuf "
                  f"{recv.ready['rcvbuf']:,} B")
        send = self.traffic(self.tx, "sender", "send", "--dst", RX, "--port", PORT, "--rate", o.rate,
                            "--burst", o.burst, "--size", o.size)
        self.info(f"sender in {self.tx}: {o.rate}/s in bursts of {o.burst} datagrams of {o.size:,} B, {o.seconds:g} s")
        f = self.run_for(o.seconds, diagnose)
        sent = send.stop()["sent"]
        got = self.settle(recv)["received"]
        recv.stop()
        lost = 1 - got / sent if sent else 0.0
        self.info(f"sent {sent:,}, received {got:,}: loss {100 * lost:.1f}%")
        return lost, f

    def scenario(self) -> None:
        self.step("before: the loss, and what the doctor says while it goes on")
        self.r.loss_before, f = self.measure(self.o.rcvbuf, diagnose=True)
        self.judge_doctor()
        self.step("remedy")
        size = None
        if f is not None:
            text = " ".join(f.get("remedy") or [])
            m = re.search(r"setsockopt\(SO_RCVBUF, (\d+)\)", text) or re.search(r"≥ ?([\d,]+) bytes", text)
            if m:
                size = int(m.group(1).replace(",", ""))
                if "setsockopt" not in m.group(0):
                    size //= 2  # "≥ N bytes" is sk_rcvbuf: the kernel doubles what setsockopt gets
            for ns, argv in remedy_commands(f, self.names):
                if argv[:2] == ["sysctl", "-w"]:
                    p = self.lab.run(ns, *argv, check=False)
                    self.info(f"ip netns exec {ns} {' '.join(argv)}: "
                              + ("done" if p.returncode == 0 else p.stderr.decode().strip()))
        if size:
            self.r.remedy = f"receiver restarted with setsockopt(SO_RCVBUF, {size})"
            self.info(f"the doctor: \"{(f.get('remedy') or [''])[0]}\"")
            self.info(f"the lab: restart the receiver with setsockopt(SO_RCVBUF, {size:,})")
        else:
            size = 1 << 18
            self.r.remedy = f"(the lab's own) receiver restarted with setsockopt(SO_RCVBUF, {size})"
            self.say(False, f"the doctor printed no SO_RCVBUF size to apply; the lab uses {size:,}")
        self.step("after: the same traffic")
        self.r.loss_after, _ = self.measure(size, diagnose=False)
