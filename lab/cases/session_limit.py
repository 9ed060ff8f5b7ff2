"""session-limit: a VPC gateway whose session table is full for a UDP-heavy client.

    sl-client 192.0.2.2 ── .1 sl-gw 198.51.100.1 ── sl-server 198.51.100.2 ... (--peers addresses)
                              nftables (lab-only): `ct state new ct count over --limit drop`,
                              the VPC's session (5-tuple) table limit

The client talks to --peers peers over --flows sockets (one source port each: one session each),
request and reply; the gateway admits --limit sessions and drops the first packets of every other
new one, so those flows never get an answer. moord's probe is told the VPC's limit
(probe.sessionLimit) and counts the node's sessions against it. Remedy: raise the gateway's limit
(default), or --remedy reuse: fewer sockets, reused for every request."""
from __future__ import annotations

import re
import time
from typing import Optional

from ..loss import CONNTRACK, NFT, Case, pow2

CLIENT, GW_C, GW_S, PORT = "192.0.2.2", "192.0.2.1", "198.51.100.1", 7000

RULES = """
table ip moorlab_vpc {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct state new ct count over {limit} counter drop
  }}
}}
"""


class SessionLimit(Case):
    name = "session-limit"
    cause = "session-limit"
    title = "a VPC gateway whose session table limit is too small for a UDP-heavy client with many peers"
    design = "case 5: the VPC's session (5-tuple) table limit was too small for a UDP-heavy service with many peers"
    tools = (NFT, CONNTRACK)

    @classmethod
    def add_options(cls, p) -> None:
        p.add_argument("--limit", type=int, default=100,
                       help="the gateway's session limit, and moord's probe.sessionLimit (default 100)")
        p.add_argument("--flows", type=int, default=200, help="the client's sockets: one session each (default 200)")
        p.add_argument("--peers", type=int, default=4, help="server addresses the flows are spread over (default 4)")
        cls.traffic_options(p, rate=400, rate_help="requests per second over all flows")
        p.add_argument("--remedy", choices=("raise", "reuse"), default="raise",
                       help="raise: the gateway's limit to twice the sessions the doctor counts; reuse: the client "
                            "keeps a quarter of the limit in sockets and reuses them (default raise)")

    @classmethod
    def check_options(cls, o) -> Optional[str]:
        if o.limit < 4 or o.flows <= o.limit or o.flows > 900:
            return "--limit at least 4, --flows more than --limit (else nothing overflows) and at most 900"
        if not 1 <= o.peers <= 100 or o.rate < o.flows / 4 or o.seconds < 2:
            return "--peers 1-100, --rate at least a quarter of --flows (each flow must keep talking), --seconds >= 2"
        return None

    @property
    def probe(self) -> dict:  # type: ignore[override]
        # the gateway forgets an idle UDP session after 30 s (conntrack's unreplied timeout)
        return {"sessionLimit": self.o.limit, "sessionAgingSeconds": 30}

    def build(self) -> None:
        lab, o = self.lab, self.o
        self.cl, self.gw, self.sv = self.ns("sl-client"), self.ns("sl-gw"), self.ns("sl-server")
        lab.veth(self.cl, "sl-c0", self.gw, "sl-g0")
        lab.veth(self.sv, "sl-s0", self.gw, "sl-g1")
        lab.addr(self.cl, "sl-c0", f"{CLIENT}/25")
        lab.addr(self.gw, "sl-g0", f"{GW_C}/25")
        lab.addr(self.gw, "sl-g1", f"{GW_S}/25")
        self.peers = [f"198.51.100.{2 + i}" for i in range(o.peers)]
        for a in self.peers:
            lab.addr(self.sv, "sl-s0", f"{a}/25")
        lab.run(self.cl, "ip", "route", "add", "default", "via", GW_C)
        lab.run(self.sv, "ip", "route", "add", "default", "via", GW_S)
        self.forwarding(self.gw)
        self.set_limit(o.limit)
        self.info(f"the VPC gateway {self.gw} (lab-only nftables): at most {o.limit} sessions, the first packet of "
                  "any other new session dropped")

    def set_limit(self, limit: int) -> None:
        self.lab.run(self.gw, NFT, "delete", "table", "ip", "moorlab_vpc", check=False)
        self.lab.run(self.gw, NFT, "-f", "-", input=RULES.format(limit=limit).encode())
        self.limit = limit

    def gw_state(self) -> str:
        n = self.lab.run(self.gw, CONNTRACK, "-C", check=False).stdout.decode().strip() or "?"
        rule = self.lab.run(self.gw, NFT, "list", "table", "ip", "moorlab_vpc").stdout.decode()
        m = re.search(r"counter packets (\d+)", rule)
        return f"gateway: {n} sessions in its table (limit {self.limit}), {m.group(1) if m else '?'} new-session packets dropped"

    def measure(self, flows: int, diagnose: bool) -> tuple[float, Optional[dict]]:
        o = self.o
        echo = self.traffic(self.sv, "server", "echo", "--port", PORT, "--bind", ",".join(self.peers))
        cl = self.traffic(self.cl, "client", "client", "--dst", ",".join(self.peers), "--port", PORT,
                          "--sockets", flows, "--rate", o.rate, "--burst", 10)
        self.info(f"client: {flows} sockets (source ports) to {len(self.peers)} peers on port {PORT}, {o.rate} "
                  f"requests/s in all, {o.seconds:g} s")
        time.sleep(1.5)  # every flow has sent a few requests: its session exists (or was refused)
        cl.ask("reset")
        f = self.run_for(o.seconds, diagnose, after=0.0)
        cl.ask("pause")
        time.sleep(0.5)  # the last answers arrive
        st = cl.stop()
        echo.stop()
        sent, replied = st["sent"], st["replied"]
        lost = 1 - replied / sent if sent else 0.0
        self.info(f"requests {sent:,}, answered {replied:,}: loss {100 * lost:.1f}%; flows that never got an answer: "
                  f"{st.get('flows_unanswered', '?')} of {flows}; {self.gw_state()}")
        return lost, f

    def scenario(self) -> None:
        o = self.o
        self.step("before: the loss, and what the doctor says while it goes on")
        self.r.loss_before, f = self.measure(o.flows, diagnose=True)
        self.judge_doctor()
        self.step("remedy")
        active = None
        if f is not None:
            text = " ".join([*(f.get("evidence") or []), *(f.get("remedy") or [])])
            self.info(f"the doctor: \"{(f.get('remedy') or [''])[0]}\"")
            m = re.search(r"([\d,]+) active (?:sessions )?vs limit ([\d,]+)", text)
            if m:
                active = int(m.group(1).replace(",", ""))
        else:
            self.say(False, "the doctor printed no session-limit remedy; the lab applies its own")
        flows = o.flows
        if o.remedy == "raise":
            new = pow2(2 * max(active or 0, o.flows))
            self.set_limit(new)
            self.r.remedy = f"the gateway's session limit raised from {o.limit} to {new}"
            self.info(f"the lab: raise the gateway's session limit from {o.limit} to {new} (twice the "
                      f"{active if active is not None else o.flows} sessions counted, rounded up)")
        else:
            flows = max(1, o.limit // 4)
            # the refused and the idle sessions age out of the gateway's table after its UDP timeout;
            # the lab does not wait for that: it clears the table
            self.lab.run(self.gw, CONNTRACK, "-F", check=False)
            self.r.remedy = f"the client reuses {flows} sockets instead of {o.flows}"
            self.info(f"the lab: the client keeps {flows} sockets and reuses them for every request (and the gateway's "
                      "old sessions are cleared, as its UDP timeout would)")
        self.step("after: the same requests")
        self.r.loss_after, _ = self.measure(flows, diagnose=False)
