"""The UDP loss lab scenario: `python -m lab loss` (and part of `demo`).

The packet-loss cases of the design notes that the kernel's own counters show, each made on
purpose in fresh namespaces (so no case sees another's counters), each followed by what
`netdiag doctor --netns NS --json --source kernel` ranks first (the agent's eBPF probe is not
used here):

    1 rcvbuf      tx ── rx   a receiver with a tiny SO_RCVBUF that never reads, flooded
    2 no-listener tx ── rx   datagrams to a port nobody listens on
    3 host-queue  tx ── rx   a one-packet pfifo behind a tbf shaper on the sender's veth
    4 fragments   client ── gw ── server   the gateway drops non-first IPv4 fragments whose bytes
                  2-3 after the IP header are 0x0D 0xAF (the first-generation VPC gateway of the
                  design notes), made with a lab-only nftables rule: moor itself never writes one

Case 4 shows the datagrams carrying the pattern lost and the others delivered, and prints what
the doctor can say without the probe (it cannot see fragment bytes and says so).
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from dataplane.nslab import Lab, LabError

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
TX, RX = "198.51.100.1", "198.51.100.2"
# case 4: client 198.51.100.2 -- .1 gw .129 -- server 198.51.100.130
CLIENT, GW_C, GW_S, SERVER = "198.51.100.2", "198.51.100.1", "198.51.100.129", "198.51.100.130"
NFT = "/usr/sbin/nft"

SEND = """
import socket, sys
dst, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    s.sendto(b"x" * size, (dst, port))
"""

# a UDP socket with a tiny receive buffer that never reads; prints the buffer's size
SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
s.bind((sys.argv[1], int(sys.argv[2])))
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), flush=True)
sys.stdin.read()
"""

# counts datagrams by their first byte (the tag); prints {"tag": count} on SIGTERM
FRAG_RECV = """
import json, signal, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (root): this receiver must not be the loss
s.bind(("0.0.0.0", int(sys.argv[1])))
seen = {}
def done(*_):
    print(json.dumps(seen), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
print("ready", flush=True)
while True:
    d = s.recv(65536)
    k = str(d[0])
    seen[k] = seen.get(k, 0) + 1
"""

# N datagrams of SIZE bytes each, alternately tagged 1 (bytes 0x0D 0xAF at the offset that is
# bytes 2-3 after the IP header of the second fragment) and 2 (zeros there)
FRAG_SEND = """
import socket, sys, time
dst, port, n, size, off = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    for tag in (1, 2):
        b = bytearray(size)
        b[0] = tag
        b[1:5] = i.to_bytes(4, "big")
        if tag == 1:
            b[off:off + 2] = b"\\x0d\\xaf"
        s.sendto(bytes(b), (dst, port))
    time.sleep(0.002)
"""

# the buggy gateway, for the lab only: drop non-first IPv4 fragments (20-byte header) whose bytes
# 2-3 after the IP header are 0x0D 0xAF (bits 176..191 from the start of the network header)
MIDDLEBOX = """
table ip moorlab_middlebox {
  chain forward {
    type filter hook forward priority filter; policy accept;
    ip hdrlength 5 ip frag-off & 0x1fff != 0 @nh,176,16 0x0daf counter drop
  }
}
"""


class LossLab:
    def __init__(self, lab: Lab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.failures = 0

    def say(self, ok: bool, what: str) -> bool:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        self.failures += 0 if ok else 1
        return ok

    # -- pieces ---------------------------------------------------------------------------------
    def pair(self, tag: str) -> tuple[str, str, str]:
        """Two fresh namespaces joined by a veth: (tx ns, rx ns, the tx end's name)."""
        tx, rx = self.lab.ns(f"{tag}-tx"), self.lab.ns(f"{tag}-rx")
        dev = f"{tag}-tx0"
        self.lab.veth(tx, dev, rx, f"{tag}-rx0")
        self.lab.addr(tx, dev, f"{TX}/24")
        self.lab.addr(rx, f"{tag}-rx0", f"{RX}/24")
        return tx, rx, dev

    def send(self, ns: str, dst: str, port: int, n: int, size: int) -> None:
        self.lab.run(ns, PY, "-c", SEND, dst, str(port), str(n), str(size))

    def sink(self, ns: str, addr: str, port: int) -> tuple[subprocess.Popen, int]:
        p = self.lab.spawn(ns, [PY, "-c", SINK, addr, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
        line = p.stdout.readline()  # bounded: the child prints at once or dies (EOF)
        if not line.strip().isdigit():
            raise LabError(f"the tiny-buffer receiver did not start (exit {p.poll()})")
        return p, int(line)

    def doctor(self, *namespaces: str) -> dict:
        args = ["doctor"] + [a for ns in namespaces for a in ("--netns", ns)] + ["--json", "--source", "kernel"]
        print(f"  $ netdiag {' '.join(args)}")
        p = subprocess.run([PY, "-m", "dataplane.netdiag", *args], cwd=REPO, capture_output=True, text=True,
                           timeout=60)
        if p.returncode != 0:
            raise LabError(f"netdiag exited {p.returncode}: {p.stderr.strip()[-500:]}")
        return json.loads(p.stdout)

    @staticmethod
    def first(doc: dict) -> Optional[dict]:
        f = doc["findings"][0] if doc.get("findings") else None
        if f is None:
            print("    (no finding)")
        else:
            print(f"    #1 [{f['cause_text']}] {f['title']}  ({f['volume']:,} {f['unit']})")
            print(f"       remedy: {f['remedy'][0] if f['remedy'] else '-'}")
        return f

    def snmp(self, ns: str, proto: str = "Ip") -> dict[str, int]:
        lines = [l.split() for l in self.lab.run(ns, "cat", "/proc/net/snmp").stdout.decode().splitlines()
                 if l.startswith(proto + ":")]
        return dict(zip(lines[0][1:], map(int, lines[1][1:]))) if len(lines) >= 2 else {}

    # -- the cases --------------------------------------------------------------------------------
    def rcvbuf(self) -> None:
        print("\n1. receive buffer too small: a receiver with SO_RCVBUF 1024 that never reads, 2,000 datagrams "
              "of 1,000 B at once")
        tx, rx, _ = self.pair("rb")
        p, size = self.sink(rx, RX, 5001)
        self.send(tx, RX, 5001, 2000, 1000)
        f = self.first(self.doctor(rx))
        p.stdin.close()
        if not self.say(f is not None and f["cause"] == "rcvbuf", "the doctor ranks the receive-buffer cause first"):
            return
        text = " ".join([f["title"], *f["evidence"], *f["remedy"]])
        named = f"{RX}:5001" in f["title"] and (str(size) in text or f"{size:,}" in text)
        self.say(named, f"it names the port ({RX}:5001) and the buffer size ({size:,} B); "
                        f"{f['volume']:,} datagrams dropped")

    def no_listener(self) -> None:
        print("\n2. no listener: 400 datagrams to UDP port 4789, where nothing listens")
        tx, rx, _ = self.pair("nl")
        self.send(tx, RX, 4789, 400, 100)
        f = self.first(self.doctor(rx))
        self.say(f is not None and f["cause"] == "no-listener" and f["volume"] == 400,
                 "the doctor ranks \"no listener\" first, all 400 datagrams counted")

    def queue(self) -> None:
        print("\n3. host queue too small: a one-packet pfifo behind a 1 Mbit/s tbf shaper on the sender's veth, "
              "500 datagrams of 200 B")
        tx, rx, dev = self.pair("hq")
        # a plain pfifo on a veth never drops (veth transmits at once); a shaper makes the queue fill
        self.lab.run(tx, "tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "tbf", "rate", "1mbit",
                     "burst", "1600", "limit", "3000")
        self.lab.run(tx, "tc", "qdisc", "add", "dev", dev, "parent", "1:1", "pfifo", "limit", "1")
        p, _ = self.sink(rx, RX, 5001)  # a listener, so the receiver adds no "no listener" of its own
        self.send(tx, RX, 5001, 500, 200)
        f = self.first(self.doctor(tx))
        p.stdin.close()
        self.say(f is not None and f["cause"] == "host-queue" and dev in f["title"],
                 f"the doctor ranks the queue cause first, naming the interface {dev}"
                 + (f" ({f['volume']:,} packets dropped)" if f else ""))

    def fragments(self) -> None:
        n, size = 200, 2000
        # a 2,000-byte datagram on a 1,500-byte MTU: the first fragment carries 1,480 bytes of IP
        # payload (the 8-byte UDP header + 1,472 data bytes), so bytes 2-3 after the second
        # fragment's IP header are data bytes 1,474-1,475
        off = 1480 - 8 + 2
        print(f"\n4. the fragment-pattern middlebox: client -- gw -- server; the gateway drops non-first fragments "
              f"with bytes 0x0D 0xAF (3503) right after the IP header\n   (a lab-only nftables rule); {n} datagrams "
              f"of {size:,} B to UDP port 5001 with that pattern at data offset {off} and {n} without, interleaved")
        if not shutil.which(NFT) and not Path(NFT).exists():
            self.say(False, f"{NFT} is missing (Debian package nftables): the lab's buggy gateway needs it")
            return
        lab = self.lab
        cl, gw, sv = lab.ns("fr-client"), lab.ns("fr-gw"), lab.ns("fr-server")
        lab.veth(cl, "fr-c0", gw, "fr-g0")
        lab.veth(sv, "fr-s0", gw, "fr-g1")
        lab.addr(cl, "fr-c0", f"{CLIENT}/25")
        lab.addr(gw, "fr-g0", f"{GW_C}/25")
        lab.addr(gw, "fr-g1", f"{GW_S}/25")
        lab.addr(sv, "fr-s0", f"{SERVER}/25")
        lab.run(cl, "ip", "route", "add", "default", "via", GW_C)
        lab.run(sv, "ip", "route", "add", "default", "via", GW_S)
        lab.run(gw, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        # incomplete datagrams expire after ipfrag_time (30 s by default); 1 s here so the server's
        # reassembly failures show while the demo runs
        lab.run(sv, "sysctl", "-q", "-w", "net.ipv4.ipfrag_time=1")
        lab.run(gw, NFT, "-f", "-", input=MIDDLEBOX.encode())
        recv = lab.spawn(sv, [PY, "-c", FRAG_RECV, "5001"], stdout=subprocess.PIPE, text=True)
        got: dict[str, Any] = {}
        before: dict[str, int] = {}
        try:
            if recv.stdout.readline().strip() != "ready":
                raise LabError(f"the fragment receiver did not start (exit {recv.poll()})")
            before = self.snmp(sv)
            lab.run(cl, PY, "-c", FRAG_SEND, SERVER, "5001", str(n), str(size), str(off))
            # the pattern-free datagrams are in at once; the rest expire from the reassembly queue
            wait_until = time.monotonic() + 10
            while time.monotonic() < wait_until and \
                    self.snmp(sv).get("ReasmFails", 0) - before.get("ReasmFails", 0) < n:
                time.sleep(0.2)
            time.sleep(0.3)
        finally:
            if recv.poll() is None:
                recv.send_signal(signal.SIGTERM)
            try:
                out = recv.communicate(timeout=10)[0]
                got = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                got = {}
        after = self.snmp(sv)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("ReasmReqds", "ReasmOKs", "ReasmFails", "ReasmTimeout")}
        rule = lab.run(gw, NFT, "list", "table", "ip", "moorlab_middlebox").stdout.decode()
        dropped = next((int(l.split("packets")[1].split()[0]) for l in rule.splitlines() if "counter packets" in l), 0)
        pat, clean = got.get("1", 0), got.get("2", 0)
        print(f"  received: {clean} of {n} without the pattern, {pat} of {n} with it; the gateway's rule dropped "
              f"{dropped} fragments; the server's counters: "
              + ", ".join(f"{k} {v}" for k, v in delta.items()))
        self.say(clean == n, f"every datagram without the pattern arrives ({clean}/{n})")
        self.say(pat == 0 and dropped == n, f"every datagram with 0x0DAF in its second fragment is lost ({n - pat}/{n}), "
                                            "its second fragment dropped at the gateway")
        doc = self.doctor(gw, sv)
        self.first(doc)
        unseen = [u for u in doc.get("unavailable", []) if "fragment" in u]
        for u in unseen:
            print(f"    not visible without the probe: {u}")
        self.say(bool(unseen), "the doctor says what it cannot see (the fragments' bytes need moord's eBPF probe)")

    # -- the scenario ------------------------------------------------------------------------------
    def run(self) -> int:
        print(f"moor UDP loss lab: the loss cases made on purpose, and what `netdiag doctor` (kernel counters, no "
              f"eBPF probe) ranks first (namespaces prefixed {self.lab.prefix})")
        for case in (self.rcvbuf, self.no_listener, self.queue, self.fragments):
            try:
                case()
            except (LabError, subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
                self.say(False, f"the case stopped: {e}")
        print(f"\nloss: {'all checks passed' if not self.failures else f'{self.failures} check(s) failed'}")
        return 0 if not self.failures else 1


def run(lab: Lab, tmp: Path) -> int:
    return LossLab(lab, tmp).run()
