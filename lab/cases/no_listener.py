"""no-listener: datagrams to a port nobody listens on (the extra case).

    nl-tx 198.51.100.1 ──veth── nl-rx 198.51.100.2  (nothing on --port)

Every datagram is dropped by the receiving kernel (Udp NoPorts, the probe's NO_SOCKET, an ICMP
port unreachable back). The busy background does the same thing in its own namespaces, so the
doctor must rank the case's port first, not the background's. Remedy: start the service on the
address and port the doctor names."""
from __future__ import annotations

import re
from typing import Optional

from ..loss import Case

TX, RX = "198.51.100.1", "198.51.100.2"


class NoListener(Case):
    name = "no-listener"
    cause = "no-listener"
    title = "datagrams to a UDP port nobody listens on"
    design = "the extra case: a service that is not (yet) there"
    kernel_sees = True

    @classmethod
    def add_options(cls, p) -> None:
        p.add_argument("--port", type=int, default=4789, help="the UDP port nobody listens on (default 4789)")
        cls.traffic_options(p, rate=300)

    @classmethod
    def check_options(cls, o) -> Optional[str]:
        if not 1 <= o.port <= 65535 or o.port == 9 or o.rate < 1 or o.seconds < 2:
            return "--port must be 1-65535 (not 9: the background's), --rate positive, --seconds at least 2"
        return None

    def build(self) -> None:
        self.tx, self.rx = self.pair("nl", TX, RX)

    def measure(self, recv, diagnose: bool) -> tuple[float, Optional[dict]]:
        o = self.o
        send = self.traffic(self.tx, "sender", "send", "--dst", RX, "--port", o.port, "--rate", o.rate, "--burst", 3)
        self.info(f"sender in {self.tx}: {o.rate}/s to {RX}:{o.port}, {o.seconds:g} s")
        f = self.run_for(o.seconds, diagnose)
        sent = send.stop()["sent"]
        got = self.settle(recv)["received"] if recv is not None else 0
        lost = 1 - got / sent if sent else 0.0
        self.info(f"sent {sent:,}, received {got:,}: loss {100 * lost:.1f}%")
        return lost, f

    def scenario(self) -> None:
        o = self.o
        self.step(f"before: nothing listens on UDP {RX}:{o.port} in {self.rx}")
        self.r.loss_before, f = self.measure(None, diagnose=True)
        self.judge_doctor()
        self.step("remedy")
        addr, port = RX, None
        if f is not None:
            m = re.search(r"(\d+\.\d+\.\d+\.\d+):(\d+)", " ".join([f.get("title", ""), *(f.get("remedy") or [])]))
            if m:
                addr, port = m.group(1), int(m.group(2))
        if port is None:
            port = o.port
            self.say(False, f"the doctor names no address and port to serve; the lab starts the listener on "
                            f"{addr}:{port} itself")
            self.r.remedy = f"(the lab's own) a listener on {addr}:{port}"
        else:
            self.info(f"the doctor: \"{(f.get('remedy') or [''])[0]}\"")
            self.r.remedy = f"a listener started on {addr}:{port} in {self.rx}"
        recv = self.traffic(self.rx, "the service", "recv", "--bind", addr, "--port", port, "--rcvbuf-force", 4 << 20)
        self.info(f"the lab: start the service on UDP {addr}:{port} in {self.rx}")
        self.step("after: the same traffic")
        self.r.loss_after, _ = self.measure(recv, diagnose=False)
        recv.stop()
