"""host-queue: the host's queue in front of a link is too small for the senders' bursts.

    hq-tx 198.51.100.1 ──veth (tbf --shaper, child pfifo limit --limit)── hq-rx 198.51.100.2:5001

A veth transmits at once, so a plain queue on it never fills; a shaper (tbf) makes it a link of
finite speed, as a NIC is. Bursts of --burst datagrams arrive faster than the shaper sends them and
the short pfifo behind it drops the rest (qdisc drops, the probe's QDISC_DROP), although the mean
rate is well below the link's. Remedy: the queue limit the doctor prints (`tc qdisc replace ...`),
run as printed."""
from __future__ import annotations

from typing import Optional

from ..loss import Case, remedy_commands

TX, RX, PORT = "198.51.100.1", "198.51.100.2", 5001
DEV = "hq-tx0"


class HostQueue(Case):
    name = "host-queue"
    cause = "host-queue"
    title = "a host queue (qdisc) too short for the senders' bursts"
    design = "case 4: the host's buffers were too small"
    kernel_sees = True
    tools = ("tc",)

    @classmethod
    def add_options(cls, p) -> None:
        p.add_argument("--limit", type=int, default=1, help="the pfifo's limit in packets (default 1)")
        p.add_argument("--shaper", default="1mbit", help="the tbf rate in front of it (default 1mbit)")
        cls.traffic_options(p, rate=200, burst=50, size=200, rate_help="datagrams per second (~370 kbit/s)")

    @classmethod
    def check_options(cls, o) -> Optional[str]:
        if o.limit < 1 or o.rate < 1 or o.burst < 1 or not 8 <= o.size <= 1400 or o.seconds < 2:
            return "--limit, --rate, --burst positive, --size 8-1400 (one packet), --seconds at least 2"
        return None

    def build(self) -> None:
        self.tx, self.rx = self.pair("hq", TX, RX, tx_dev=DEV)
        self.lab.run(self.tx, "tc", "qdisc", "replace", "dev", DEV, "root", "handle", "1:", "tbf", "rate", self.o.shaper,
                     "burst", "1600", "limit", "3000")
        self.lab.run(self.tx, "tc", "qdisc", "add", "dev", DEV, "parent", "1:1", "pfifo", "limit", str(self.o.limit))

    def qdiscs(self) -> str:
        out = self.lab.run(self.tx, "tc", "qdisc", "show", "dev", DEV).stdout.decode().strip()
        return "; ".join(l.strip() for l in out.splitlines())

    def measure(self, diagnose: bool) -> tuple[float, Optional[dict]]:
        o = self.o
        recv = self.traffic(self.rx, "receiver", "recv", "--bind", RX, "--port", PORT, "--rcvbuf-force", 4 << 20)
        send = self.traffic(self.tx, "sender", "send", "--dst", RX, "--port", PORT, "--rate", o.rate,
                            "--burst", o.burst, "--size", o.size)
        self.info(f"sender in {self.tx}: bursts of {o.burst} datagrams of {o.size} B, {o.rate}/s "
                  f"({o.rate * (o.size + 28) * 8 / 1000:.0f} kbit/s on average), {o.seconds:g} s; qdiscs on {DEV}: "
                  f"{self.qdiscs()}")
        f = self.run_for(o.seconds, diagnose)
        sent = send.stop()["sent"]
        got = self.settle(recv, quiet=0.6)["received"]  # the shaper drains its queue
        recv.stop()
        lost = 1 - got / sent if sent else 0.0
        self.info(f"sent {sent:,}, received {got:,}: loss {100 * lost:.1f}%")
        return lost, f

    def scenario(self) -> None:
        self.step("before: the loss, and what the doctor says while it goes on")
        self.r.loss_before, f = self.measure(diagnose=True)
        self.judge_doctor()
        self.step("remedy")
        done = False
        if f is not None:
            self.info(f"the doctor: \"{(f.get('remedy') or [''])[0]}\"")
            for ns, argv in remedy_commands(f, self.names):
                if argv[:3] in (["tc", "qdisc", "replace"], ["tc", "qdisc", "change"]) and "..." not in argv:
                    p = self.lab.run(ns, *argv, check=False)
                    ok = p.returncode == 0
                    self.info(f"the lab runs it: ip netns exec {ns} {' '.join(argv)}: "
                              + ("done" if ok else p.stderr.decode().strip()))
                    if ok:
                        self.r.remedy = " ".join(argv)
                        done = True
                        break
        if not done:
            argv = ["tc", "qdisc", "replace", "dev", DEV, "parent", "1:1", "pfifo", "limit", "1000"]
            self.lab.run(self.tx, *argv)
            self.r.remedy = "(the lab's own) " + " ".join(argv)
            self.say(False, f"the doctor printed no queue command the lab could run; the lab runs {' '.join(argv)}")
        self.step("after: the same traffic")
        self.r.loss_after, _ = self.measure(diagnose=False)
