"""fragment-gateway: a gateway drops UDP fragments by their content.

    fg-client 192.0.2.2 ── .1 fg-gw 198.51.100.1 ── fg-server 198.51.100.2:5001
                              nftables (lab-only): drop non-first IPv4 fragments whose bytes 2-3
                              after the IP header are --pattern (the first-generation VPC gateway)

The client sends datagrams of --size bytes (fragmented on the 1,500-byte MTU), every other one
with --pattern exactly where fragment number --fragment has its bytes 2-3 after the IP header;
the others have zeros there. Each datagram with the pattern loses that fragment at the gateway and
never reassembles at the server; the others arrive. The probe records those two bytes of every
dropped fragment, so the doctor can name the pattern; the kernel's counters only show reassembly
failures. Remedy: datagrams that fit one packet (no fragments, nothing for the gateway to match)."""
from __future__ import annotations

import re
from typing import Optional

from ..loss import NFT, Case

CLIENT, GW_C, GW_S, SERVER, PORT = "192.0.2.2", "192.0.2.1", "198.51.100.1", "198.51.100.2", 5001
MTU = 1500
FRAG = (MTU - 20) // 8 * 8  # IP payload bytes per fragment

RULES = """
table ip moorlab_gateway {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ip hdrlength 5 ip frag-off & 0x1fff != 0 @nh,176,16 0x{pattern} counter drop
  }}
}}
"""


def pattern_hex(text: str) -> Optional[str]:
    t = text.strip().lower()
    if t.startswith("0x"):
        t = t[2:]
    elif t.isdigit() and len(t) != 4:
        t = f"{int(t):04x}"
    return t if re.fullmatch(r"[0-9a-f]{4}", t) else None


def offset(k: int) -> int:
    """The UDP data offset of bytes 2-3 after the IP header of fragment k (k >= 2)."""
    return (k - 1) * FRAG + 2 - 8


class FragmentGateway(Case):
    name = "fragment-gateway"
    cause = "fragment-pattern"
    title = "a gateway that drops UDP fragments whose bytes 2-3 after the IP header are a pattern"
    design = "case 1: a first-generation gateway dropped every UDP fragment with 0x0D 0xAF (3503) after the IP header"
    tools = (NFT,)

    @classmethod
    def add_options(cls, p) -> None:
        p.add_argument("--pattern", default="0x0DAF",
                       help="the two bytes the gateway drops fragments by (hex 0x0DAF, or decimal 3503; default 0x0DAF)")
        p.add_argument("--fragment", type=int, default=2,
                       help="which fragment of a datagram carries them (2 = the second; default 2)")
        p.add_argument("--size", type=int, default=2000, help="UDP payload bytes per datagram (default 2000)")
        p.add_argument("--rate", type=int, default=100,
                       help="datagrams per second, half of them with the pattern (default 100)")
        p.add_argument("--seconds", type=float, default=4.0, help="traffic per measurement (default 4)")

    @classmethod
    def check_options(cls, o) -> Optional[str]:
        if pattern_hex(o.pattern) is None:
            return f"--pattern {o.pattern!r}: two bytes, as hex (0x0DAF) or decimal (3503)"
        if o.fragment < 2:
            return "--fragment must be 2 or more: the gateway drops non-first fragments"
        if not o.size <= 65507:
            return "--size at most 65,507 (the largest UDP payload over IPv4)"
        if o.size < offset(o.fragment) + 2:
            need = offset(o.fragment) + 2
            return (f"--size {o.size} has no fragment {o.fragment} carrying bytes 2-3 on a {MTU}-byte MTU: "
                    f"at least {need} bytes")
        if o.rate < 2 or o.seconds < 2:
            return "--rate at least 2, --seconds at least 2"
        return None

    def build(self) -> None:
        lab = self.lab
        self.pattern = pattern_hex(self.o.pattern)
        self.cl, self.gw, self.sv = self.ns("fg-client"), self.ns("fg-gw"), self.ns("fg-server")
        lab.veth(self.cl, "fg-c0", self.gw, "fg-g0")
        lab.veth(self.sv, "fg-s0", self.gw, "fg-g1")
        lab.addr(self.cl, "fg-c0", f"{CLIENT}/25")
        lab.addr(self.gw, "fg-g0", f"{GW_C}/25")
        lab.addr(self.gw, "fg-g1", f"{GW_S}/25")
        lab.addr(self.sv, "fg-s0", f"{SERVER}/25")
        lab.run(self.cl, "ip", "route", "add", "default", "via", GW_C)
        lab.run(self.sv, "ip", "route", "add", "default", "via", GW_S)
        self.forwarding(self.gw)
        # an incomplete datagram waits ipfrag_time (30 s) before it counts as a reassembly failure;
        # 1 s here, so the server's counters show the loss while the case runs
        lab.run(self.sv, "sysctl", "-q", "-w", "net.ipv4.ipfrag_time=1")
        lab.run(self.gw, NFT, "-f", "-", input=RULES.format(pattern=self.pattern).encode())
        self.info(f"the gateway {self.gw} (lab-only nftables): drop non-first IPv4 fragments with bytes "
                  f"0x{self.pattern.upper()} ({int(self.pattern, 16)}) right after the IP header")

    def dropped_at_gateway(self) -> int:
        rule = self.lab.run(self.gw, NFT, "list", "table", "ip", "moorlab_gateway").stdout.decode()
        m = re.search(r"counter packets (\d+)", rule)
        return int(m.group(1)) if m else 0

    def measure(self, chunk: int, diagnose: bool) -> tuple[float, Optional[dict]]:
        o = self.o
        recv = self.traffic(self.sv, "receiver", "recv", "--bind", SERVER, "--port", PORT, "--rcvbuf-force", 8 << 20)
        args = ["--dst", SERVER, "--port", PORT, "--rate", o.rate, "--burst", 2, "--size", o.size, "--alternate",
                "--pattern", self.pattern, "--pattern-offset", offset(o.fragment)]
        if chunk:
            args += ["--chunk", chunk]
        gw0 = self.dropped_at_gateway()
        send = self.traffic(self.cl, "sender", "send", *args)
        frags = -(-(o.size + 8) // FRAG)
        self.info(f"client: {o.rate} datagrams/s of {o.size:,} B, " +
                  (f"each sent as datagrams of at most {chunk:,} B (one packet each)" if chunk else
                   f"{frags} fragments each on the {MTU}-byte MTU") +
                  f"; every other one has 0x{self.pattern.upper()} at data offset {offset(o.fragment)} (bytes 2-3 "
                  f"after the IP header of fragment {o.fragment}), {o.seconds:g} s")
        f = self.run_for(o.seconds, diagnose, after=1.5)
        st = send.stop()
        got = self.settle(recv)
        recv.stop()
        sent, rcvd = st["sent"], got["received"]
        by_s, by_r = st.get("by_tag", {}), got.get("by_tag", {})
        lost = 1 - rcvd / sent if sent else 0.0
        self.info(f"sent {sent:,}, received {rcvd:,}: loss {100 * lost:.1f}% (with the pattern {by_r.get('1', 0):,} of "
                  f"{by_s.get('1', 0):,} arrived, without it {by_r.get('2', 0):,} of {by_s.get('2', 0):,}); the "
                  f"gateway's rule dropped {self.dropped_at_gateway() - gw0:,} fragments")
        self.r.extra["with_pattern" if not chunk else "with_pattern_after"] = (by_s.get("1", 0), by_r.get("1", 0))
        return lost, f

    def scenario(self) -> None:
        self.step("before: the loss, and what the doctor says while it goes on")
        self.r.loss_before, f = self.measure(0, diagnose=True)
        self.judge_doctor()
        if f is not None:
            text = " ".join([f.get("title", ""), *(f.get("evidence") or []), *(f.get("remedy") or [])]).lower()
            self.say(self.pattern in text, f"the doctor names the pattern 0x{self.pattern.upper()}")
        self.step("remedy")
        chunk = MTU - 28
        if f is not None:
            self.info(f"the doctor: \"{(f.get('remedy') or [''])[0]}\"")
            self.r.remedy = f"datagrams of at most {chunk} B (one packet each, no fragments)"
        else:
            self.r.remedy = f"(the lab's own) datagrams of at most {chunk} B"
            self.say(False, "the doctor printed no fragment remedy; the lab applies its own")
        self.info(f"the lab: the client sends its data in datagrams of at most {chunk:,} B ({MTU} MTU - 20 IP - 8 UDP), "
                  "so no datagram is fragmented")
        self.step("after: the same data")
        self.r.loss_after, _ = self.measure(chunk, diagnose=False)
