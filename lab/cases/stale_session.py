"""stale-session: a route change done as delete-then-add pins a long-lived UDP 4-tuple to a NAT path.

                                   ┌── path A ── st-server 198.51.100.130:5001 (echo; answers the
    st-client 192.0.2.2 ── st-vpc ─┼── path B ──┘  VPC's own addresses only: it authorises clients
                                   └── st-nat (SNAT to 203.0.113.1) ──┘  by source address)

st-vpc is the client's VPC gateway: its route table sends 198.51.100.128/25 down path A, and
everything else to the NAT gateway (the VPC's internet egress). Like a VPC, it keeps a session
table (lab-only nftables: conntrack with a mark): a session that was ever forwarded to the NAT
gateway stays on that path for as long as it lives, and a UDP session lives as long as packets
keep coming.

The route is then moved from path A to path B as delete-then-add. For the moment between the two,
the long-lived flow's packets follow the default route to the NAT gateway; its session is pinned
there; the NAT gateway SNATs it; the server does not answer a NAT'd source. When the route is back,
new flows go direct and get answers, but the old 4-tuple keeps its session, its path and its
silence, until the session is flushed or the source port changes. The same change done as moor
does route changes (`ip route replace`) never leaves a gap, and pins nothing.

What the doctor needs to name it: the old 4-tuple getting no replies while newer flows to the same
peer get them (it waits for 30 s of silence before it calls a session stale)."""
from __future__ import annotations

import time
from typing import Optional

from ..loss import CONNTRACK, NFT, Case, pct

CLIENT, VPC_C = "192.0.2.2", "192.0.2.1"
A_VPC, A_SRV = "198.51.100.1", "198.51.100.2"
B_VPC, B_SRV = "198.51.100.5", "198.51.100.6"
N_VPC, N_NAT = "198.51.100.9", "198.51.100.10"
NAT_OUT, SRV_OUT = "203.0.113.1", "203.0.113.2"
SERVICE, PREFIX, PORT = "198.51.100.130", "198.51.100.128/25", 5001
PINNED = 2  # the VPC session table's mark for "this session's path is the NAT gateway"

VPC_RULES = """
table ip moorlab_vpc {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    iifname "st-v0" meta mark set ct mark
  }}
  chain forward {{
    type filter hook forward priority mangle; policy accept;
    iifname "st-v0" oifname "st-vn" ct mark set {pinned}
  }}
}}
"""
NAT_RULES = """
table ip moorlab_nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "st-n1" masquerade
  }
}
"""


class StaleSession(Case):
    name = "stale-session"
    cause = "stale-session"
    title = "a delete-then-add route change pins a long-lived UDP 4-tuple to a NAT gateway's path"
    design = ("case 2: a route change done as delete then add briefly sent traffic to a NAT gateway; the old "
              "sessions kept the stale path, a 4-tuple that never changed never aged out")
    min_before = 0.9  # the old 4-tuple gets no answer at all
    tools = (NFT, CONNTRACK)
    probe = {"sessionAgingSeconds": 5}  # the VPC's UDP aging: a session alive 10 s is long-lived

    @classmethod
    def add_options(cls, p) -> None:
        p.add_argument("--gap", type=float, default=0.3,
                       help="seconds between the delete and the add of the route (default 0.3)")
        p.add_argument("--stale-seconds", type=float, default=15.0,
                       help="how long the stale flow runs before the doctor is asked (default 15: the doctor "
                            "calls a session stale after 10 s without a reply)")
        p.add_argument("--rate", type=int, default=20, help="the long-lived flow's requests per second (default 20)")
        p.add_argument("--remedy", choices=("port", "flush"), default="port",
                       help="port: the client rebinds to a new source port (the doctor's remedy); flush: the VPC "
                            "gateway's stale session is deleted (default port)")

    @classmethod
    def check_options(cls, o) -> Optional[str]:
        if not 0 < o.gap <= 5 or o.stale_seconds < 3 or not 5 <= o.rate <= 1000:
            return "--gap in (0, 5] s, --stale-seconds at least 3, --rate 5-1000"
        if o.gap * o.rate < 2:
            return f"--gap {o.gap:g} s at --rate {o.rate}/s: fewer than 2 packets would meet the gap"
        return None

    def build(self) -> None:
        lab = self.lab
        self.cl, self.vpc = self.ns("st-client"), self.ns("st-vpc")
        self.nat, self.sv = self.ns("st-nat"), self.ns("st-server")
        for ns in (self.vpc, self.nat, self.sv):
            self.forwarding(ns)
        lab.veth(self.cl, "st-c0", self.vpc, "st-v0")
        lab.veth(self.vpc, "st-va", self.sv, "st-sa")
        lab.veth(self.vpc, "st-vb", self.sv, "st-sb")
        lab.veth(self.vpc, "st-vn", self.nat, "st-n0")
        lab.veth(self.nat, "st-n1", self.sv, "st-sn")
        for ns, dev, cidr in ((self.cl, "st-c0", f"{CLIENT}/25"), (self.vpc, "st-v0", f"{VPC_C}/25"),
                              (self.vpc, "st-va", f"{A_VPC}/30"), (self.sv, "st-sa", f"{A_SRV}/30"),
                              (self.vpc, "st-vb", f"{B_VPC}/30"), (self.sv, "st-sb", f"{B_SRV}/30"),
                              (self.vpc, "st-vn", f"{N_VPC}/30"), (self.nat, "st-n0", f"{N_NAT}/30"),
                              (self.nat, "st-n1", f"{NAT_OUT}/30"), (self.sv, "st-sn", f"{SRV_OUT}/30"),
                              (self.sv, "lo", f"{SERVICE}/32")):
            lab.addr(ns, dev, cidr)
        lab.run(self.cl, "ip", "route", "add", "default", "via", VPC_C)
        lab.run(self.vpc, "ip", "route", "add", PREFIX, "via", A_SRV)
        lab.run(self.vpc, "ip", "route", "add", "default", "via", N_NAT)  # the VPC's NAT gateway
        lab.run(self.vpc, "ip", "route", "add", "default", "via", N_NAT, "table", "102")
        lab.run(self.vpc, "ip", "rule", "add", "fwmark", str(PINNED), "lookup", "102", "pref", "1000")
        lab.run(self.vpc, NFT, "-f", "-", input=VPC_RULES.format(pinned=PINNED).encode())
        lab.run(self.nat, "ip", "route", "add", "192.0.2.0/25", "via", N_VPC)
        lab.run(self.nat, "ip", "route", "add", PREFIX, "via", SRV_OUT)
        lab.run(self.nat, NFT, "-f", "-", input=NAT_RULES.encode())
        lab.run(self.sv, "ip", "route", "add", "192.0.2.0/25", "via", A_VPC)
        self.info(f"the VPC gateway {self.vpc}: {PREFIX} via path A, default via the NAT gateway {self.nat}; its "
                  "session table (lab-only nftables + conntrack) keeps a session on the NAT path once it took it")

    def own_finding(self, f: dict) -> bool:
        return f"{CLIENT}:{self.sport} → {SERVICE}:{PORT}" in str(f.get("title", ""))

    # -- helpers -----------------------------------------------------------------------------
    def route(self) -> str:
        return self.lab.run(self.vpc, "ip", "route", "show", PREFIX).stdout.decode().strip() or "none"

    def pinned(self, sport: int) -> list[str]:
        """The VPC gateway's sessions of the client's source port that are pinned to the NAT path."""
        p = self.lab.run(self.vpc, CONNTRACK, "-L", "-p", "udp", "--orig-src", CLIENT, "--sport", str(sport),
                         "--mark", str(PINNED), check=False)
        return [l for l in p.stdout.decode().splitlines() if l.startswith("udp")]

    def nat_sessions(self, sport: int) -> list[str]:
        p = self.lab.run(self.nat, CONNTRACK, "-L", "-p", "udp", "--orig-src", CLIENT, "--sport", str(sport), check=False)
        return [l for l in p.stdout.decode().splitlines() if l.startswith("udp")]

    def window(self, seconds: float, clients: dict, during=None, then=None, progress: float = 0.0) -> dict:
        """Fresh counters, `during()` at the start, `seconds` of traffic, `then()` while it still goes
        on; then the clients pause, the last answers arrive: name -> (sent, answered, source ports)."""
        for c in clients.values():
            c.ask("reset")
        t0 = time.monotonic()
        if during is not None:
            during()
        nxt = t0 + progress if progress else None
        self.snaps: list[dict] = []
        while time.monotonic() - t0 < seconds:
            time.sleep(min(0.5, max(0.0, seconds - (time.monotonic() - t0))))
            if nxt and time.monotonic() >= nxt and time.monotonic() - t0 < seconds - 1:
                st = {k: c.stats() for k, c in clients.items()}
                self.snaps.append(st)
                self.info(f"{time.monotonic() - t0:4.0f} s: " + "; ".join(
                    f"{k} answered {s['replied']:,}/{s['sent']:,}" for k, s in st.items()))
                nxt += progress
        if then is not None:
            then()
        for c in clients.values():
            c.ask("pause")
        time.sleep(0.3)
        out = {}
        for k, c in clients.items():
            s = c.stats()
            out[k] = (s["sent"], s["replied"], s["ports"])
        return out

    @staticmethod
    def lossof(x: tuple) -> float:
        return 1 - x[1] / x[0] if x[0] else 0.0

    def show(self, res: dict) -> None:
        for k, (sent, got, ports) in res.items():
            self.info(f"{k} (source port{'s' if len(ports) > 1 else ''} {', '.join(map(str, ports))}): "
                      f"{got:,} of {sent:,} answered, loss {pct(self.lossof((sent, got)))}")

    # -- the case ----------------------------------------------------------------------------
    def scenario(self) -> None:
        o = self.o
        echo = self.traffic(self.sv, "server", "echo", "--port", PORT, "--bind", SERVICE, "--allow", "192.0.2.0/25")
        old = self.traffic(self.cl, "long-lived flow", "client", "--dst", SERVICE, "--port", PORT, "--sockets", 1,
                           "--rate", o.rate)
        new = self.traffic(self.cl, "new flows", "client", "--dst", SERVICE, "--port", PORT, "--sockets", 2,
                           "--rate", 10, "--rotate", 2)
        clients = {"the long-lived 4-tuple": old, "new flows": new}
        sport = self.sport = old.ready["ports"][0]
        self.info(f"server {SERVICE}:{PORT} in {self.sv}: echoes requests from 192.0.2.0/25 only (services authorise "
                  "clients by source address)")
        self.info(f"client {self.cl}: one long-lived UDP 4-tuple {CLIENT}:{sport} -> {SERVICE}:{PORT} at {o.rate} "
                  f"requests/s, and new flows (new source ports every 2 s) at 10/s")
        self.step(f"healthy: route {self.route()}")
        time.sleep(1.0)
        self.show(self.window(3, clients))

        self.step(f"the route moves from path A to path B, done as delete-then-add ({o.gap:g} s apart)")

        def delete_then_add():
            self.lab.run(self.vpc, "ip", "route", "del", PREFIX, "via", A_SRV)
            time.sleep(o.gap)
            self.lab.run(self.vpc, "ip", "route", "add", PREFIX, "via", B_SRV)
        found: dict = {}

        def look():
            self.info(f"route now: {self.route()}")
            pinned = self.pinned(sport)
            self.say(bool(pinned), f"the VPC gateway's session of {CLIENT}:{sport} is pinned to the NAT path: "
                                   + (pinned[0] if pinned else "no such session"))
            nat = self.nat_sessions(sport)
            if nat:
                self.info(f"the NAT gateway's session: {nat[0]}")
            refused = echo.stats().get("refused_from", {})
            if refused:
                self.info(f"the server got {sum(refused.values()):,} requests from NAT'd sources it does not "
                          "answer: " + ", ".join(f"{k} ({v:,})" for k, v in refused.items()))
            self.step(f"stale: {o.stale_seconds:g} s after the change, what the doctor says while it goes on")
            found["f"] = self.diagnose()
        stale = self.window(o.stale_seconds, clients, during=delete_then_add, then=look, progress=10)
        f = found.get("f")
        self.step("the stale phase, from the change to the end of the doctor's sample")
        self.show(stale)
        self.r.loss_before = self.lossof(stale["the long-lived 4-tuple"])
        # new flows opened in the gap are pinned too, until they rotate (2 s): count from the first
        # progress line (10 s after the change) on
        sent, got = stale["new flows"][:2]
        if self.snaps:
            s0 = self.snaps[0]["new flows"]
            sent, got = sent - s0["sent"], got - s0["replied"]
        new_loss = self.lossof((sent, got))
        self.r.extra["new_flows_loss"] = new_loss
        self.say(new_loss <= 0.02, f"new flows to the same peer opened after the change are answered meanwhile: "
                                   f"{got:,} of {sent:,} (loss {pct(new_loss)})")
        self.judge_doctor()

        self.step("remedy")
        if f is not None:
            self.info(f"the doctor: \"{(f.get('remedy') or [''])[0]}\"")
        else:
            self.info("the doctor printed no stale-session remedy; the lab applies the case's own")
        if o.remedy == "port":
            old.ask("rebind")
            sport = old.stats()["ports"][0]
            self.r.remedy = f"the long-lived flow rebinds to a new source port ({sport})"
            self.info(f"the lab: the client rebinds its long-lived socket: new source port {sport}, a new session")
        else:
            p = self.lab.run(self.vpc, CONNTRACK, "-D", "-p", "udp", "--orig-src", CLIENT, "--sport", str(sport),
                             check=False)
            self.r.remedy = f"the VPC gateway's session of {CLIENT}:{sport} flushed"
            self.info(f"the lab: ip netns exec {self.vpc} conntrack -D -p udp --orig-src {CLIENT} --sport {sport}: "
                      + (p.stderr.decode().strip().splitlines() or ["done"])[-1])
        time.sleep(0.5)
        self.step("after")
        after = self.window(3, clients)
        self.show(after)
        self.r.loss_after = self.lossof(after["the long-lived 4-tuple"])

        self.step("the same route change done as moor does it: `ip route replace` (path B back to path A)")
        before_pins = len(self.pinned(sport))

        def replace():
            self.lab.run(self.vpc, "ip", "route", "replace", PREFIX, "via", A_SRV)
        rep = self.window(3, clients, during=replace)
        self.info(f"route now: {self.route()}")
        self.show(rep)
        lost = {k: v[0] - v[1] for k, v in rep.items()}
        pins = len(self.pinned(sport)) - before_pins
        self.r.extra["replace_loss"] = self.lossof(rep["the long-lived 4-tuple"])
        self.say(all(self.lossof(v) <= 0.01 for v in rep.values()) and pins == 0,
                 f"make-before-break breaks nothing: {sum(lost.values())} requests unanswered, "
                 f"{pins} sessions pinned to the NAT path")
        echo.stop()
