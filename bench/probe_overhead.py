"""What the eBPF probes cost the dataplane: the same traffic with the probes detached and attached,
interleaved in one invocation, with medians, spreads and the overhead per adjacent pair of runs.

Topology: pod a -- node -- pod b, three network namespaces joined by veth pairs and routed through
the node namespace, as moor's bgp mode wires pods. Workloads (figures):
  tcp          iperf3 TCP, one stream a -> b (client pinned to CPU 0, server to CPU 1); Gbit/s.
  udp64        64-byte UDP a -> b to a draining receiver, packets per second taken by b's kernel
               (/proc/net/snmp in b: InDatagrams + InErrors + NoPorts; the share delivered is
               printed, it should be 100%). iperf3 -u -l 64 is sender-bound here (~120 kpps of its
               own loop), so the sender is our own sendmmsg(2) loop in C, built with cc when one is
               installed (else a Python send loop, printed). The sender is pinned to CPU 0, and the
               whole kernel path (send, veth, forward, veth, UDP receive) runs there in softirq, so
               1/pps is CPU 0's time per packet.
  udp64-drop   the same sender to a closed port: every packet is dropped (NO_SOCKET) and so passes
               through the drop probe — its worst case, one tracepoint hit per packet.
Goals (issue 5): at most 3% at 64-byte UDP with every probe loaded, at most 1% for TCP.

Method. Variants (--variants; default "off,all": nothing attached, every probe attached; "drops"
and "sessions" attach one probe; "nop" attaches programs that only return, where the probes attach
(raw tracepoint kfree_skb, cgroup_skb egress and ingress on the root cgroup): what the attach points
themselves cost; "base": every probe of another checkout, --baseline DIR, loaded by a child
process, to compare two versions of the probes in one run) are interleaved within each figure: repetition i runs every
variant once, in the listed order for even i and reversed for odd i (A B B A A B ...), so slow drift
of the machine hits every side alike and each repetition gives one adjacent off/on pair. Each run
lasts --seconds after a short settle; probes are loaded (compiled, attached) before the settle and
closed after the run, outside the timed window. Printed per side: n, median, IQR (q1-q3) and
min-max; and the overhead two ways: from the medians, and per repetition ((off - on) / off of
the adjacent pair: median, IQR, min-max), the latter being robust to drift between repetitions.

The probes are machine-wide: drops and packets of anything else running on the machine during an
attached run cost CPU too, and a busy machine makes every figure noisy (the spreads show it; the
load average is printed). Then, unless --stats-runs 0, each attached variant runs --stats-runs more
times per figure with sysctl kernel.bpf_stats_enabled=1 (kept out of the timed runs: the stats
themselves cost two clock reads per program run): how often each program ran, its own time per run,
and that time per lab packet as a share of CPU 0's per-packet time with nothing attached — a
steadier estimate than throughput on a shared machine (it counts every run on the machine, so it
is an upper bound for the lab's packets).

Run as root: .venv/bin/python bench/probe_overhead.py [--seconds 4] [--reps 6] [--only tcp,udp64]
             [--variants off,all[,drops,sessions,nop]] [--attach auto|raw|tracepoint] [--stats-runs 2]
             [--baseline DIR] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataplane.nslab import Lab, require_root  # noqa: E402
from dataplane.probe.errors import ProbeUnavailable  # noqa: E402
from dataplane.probe.kheaders import run_stats  # noqa: E402

A_IP, B_IP = "192.0.2.1", "198.51.100.1"
SINK_PORT, CLOSED_PORT = 9000, 9001
SETTLE_S = 0.3

UNITS = {"tcp": "Gbit/s", "udp64": "Mpps", "udp64-drop": "Mpps"}
GOALS = {"tcp": 1.0, "udp64": 3.0, "udp64-drop": 3.0}       # % (issue 5)
VARIANTS = {"off": (), "all": ("drops", "sessions"), "drops": ("drops",), "sessions": ("sessions",),
            "nop": ("nop",), "base": ("base",)}

SENDER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#define BATCH 64
static double cpu(void) { struct rusage r; getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6; }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {           /* dst port seconds size */
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa; memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET; sa.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    double secs = atof(argv[3]); int size = atoi(argv[4]);
    static char buf[65536];
    struct mmsghdr m[BATCH]; struct iovec iov[BATCH];
    memset(m, 0, sizeof(m));
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = buf; iov[i].iov_len = size;
        m[i].msg_hdr.msg_name = &sa; m[i].msg_hdr.msg_namelen = sizeof(sa);
        m[i].msg_hdr.msg_iov = &iov[i]; m[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long long sent = 0, calls = 0;
    double c0 = cpu(), t0 = now(), end = t0 + secs, t = t0;
    while (t < end) {
        int n = sendmmsg(fd, m, BATCH, 0);
        if (n > 0) sent += n;
        if ((++calls & 63) == 0) t = now();
    }
    printf("%llu %.6f %.6f\n", sent, now() - t0, cpu() - c0);
    return 0;
}
"""

RECEIVER_C = r"""
#define _GNU_SOURCE
#include <netinet/in.h>
#include <string.h>
#include <stdlib.h>
#include <sys/socket.h>
#define BATCH 64
int main(int argc, char **argv) {           /* port */
    int fd = socket(AF_INET, SOCK_DGRAM, 0), sz = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz));
    struct sockaddr_in sa; memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET; sa.sin_port = htons(atoi(argv[1]));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa))) return 1;
    static char buf[BATCH][2048];
    struct mmsghdr m[BATCH]; struct iovec iov[BATCH];
    memset(m, 0, sizeof(m));
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = buf[i]; iov[i].iov_len = sizeof(buf[i]);
        m[i].msg_hdr.msg_iov = &iov[i]; m[i].msg_hdr.msg_iovlen = 1;
    }
    for (;;) recvmmsg(fd, m, BATCH, MSG_WAITFORONE, NULL);
}
"""

SENDER_PY = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst = (sys.argv[1], int(sys.argv[2])); secs = float(sys.argv[3]); p = b"\0" * int(sys.argv[4])
sendto = s.sendto; n = 0; c0 = time.process_time(); t0 = time.monotonic(); end = t0 + secs
while time.monotonic() < end:
    for _ in range(256):
        sendto(p, dst)
    n += 256
print(n, time.monotonic() - t0, time.process_time() - c0)
"""

RECEIVER_PY = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("", int(sys.argv[1])))
recv = s.recv
while True:
    recv(2048)
"""


class Tools:
    """The UDP sender and receiver: C built here when a compiler exists, else Python."""

    def __init__(self, tmp: Path):
        cc = shutil.which("cc") or shutil.which("gcc")
        self.kind = "python"
        self.sender = [sys.executable, "-c", SENDER_PY]
        self.receiver = [sys.executable, "-c", RECEIVER_PY]
        if cc:
            ok = True
            for name, src in (("sender", SENDER_C), ("receiver", RECEIVER_C)):
                (tmp / f"{name}.c").write_text(src)
                r = subprocess.run([cc, "-O2", "-o", str(tmp / name), str(tmp / f"{name}.c")], capture_output=True)
                ok = ok and r.returncode == 0
            if ok:
                self.kind = f"C sendmmsg/recvmmsg ({Path(cc).name})"
                self.sender = [str(tmp / "sender")]
                self.receiver = [str(tmp / "receiver")]


def topology(lab: Lab) -> tuple[str, str, str]:
    a, n, b = lab.ns("poda"), lab.ns("node"), lab.ns("podb")
    lab.veth(a, "eth0", n, "veth-a")
    lab.veth(b, "eth0", n, "veth-b")
    lab.addr(a, "eth0", f"{A_IP}/24")
    lab.addr(n, "veth-a", "192.0.2.254/24")
    lab.addr(b, "eth0", f"{B_IP}/24")
    lab.addr(n, "veth-b", "198.51.100.254/24")
    lab.run(a, "ip", "route", "add", "default", "via", "192.0.2.254")
    lab.run(b, "ip", "route", "add", "default", "via", "198.51.100.254")
    lab.run(n, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    if not lab.ping(a, B_IP):
        raise RuntimeError("pod a cannot reach pod b")
    return a, n, b


def snmp(lab: Lab, ns: str) -> dict[str, int]:
    """Udp* and Ip* counters of a namespace (/proc/net/snmp read inside it), as 'Udp.InDatagrams'."""
    out: dict[str, int] = {}
    lines = [ln.split() for ln in lab.run(ns, "cat", "/proc/net/snmp").stdout.decode().splitlines()]
    for head, vals in zip(lines[0::2], lines[1::2]):
        if head and head[0] in ("Ip:", "Udp:"):
            out.update({f"{head[0][:-1]}.{k}": int(v) for k, v in zip(head[1:], vals[1:])})
    return out


# Every probe of another checkout of moor (--baseline DIR), loaded by a child process that imports
# that tree's dataplane.probe and holds the probes attached until told to quit: the "base" variant,
# interleaved with this tree's, compares two versions of the probes in one run.
HOLDER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from dataplane.probe.drops import DropProbe
from dataplane.probe.kheaders import run_stats
from dataplane.probe.sessions import SessionProbe
drops, sessions = DropProbe(attach=sys.argv[2]), SessionProbe()
drops.start()
sessions.start()
print("ready", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "stats":
        out = {f"drops.{k}": v for k, v in drops.program_stats().items()}
        out.update({f"sessions.{k}": run_stats(fd) for k, fd in sessions.prog_fds().items()})
        print(json.dumps(out), flush=True)
    elif cmd == "drops":
        netns = set(json.loads(arg))
        print(sum(d.packets for d in drops.snapshot()[0] if d.key.netns in netns), flush=True)
    else:
        break
drops.close()
sessions.close()
"""


class Baseline:
    """The probes of another tree, held by a child process (HOLDER)."""

    def __init__(self, tree: str, attach: str):
        self.tree, self.attach = tree, attach
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, self.tree, self.attach],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise ProbeUnavailable(f"the probes of {self.tree} did not load")

    def _ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline()

    def program_stats(self) -> dict[str, tuple[int, int]]:
        return {k: tuple(v) for k, v in json.loads(self._ask("stats")).items()}

    def drops_seen(self, netns: set[int]) -> int:
        return int(self._ask("drops " + json.dumps(sorted(netns))))

    def close(self) -> None:
        if self.proc is not None:
            try:
                self._ask("quit")
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class Probes:
    """Loads the probes of a variant; accumulates their programs' run statistics when asked."""

    def __init__(self, attach: str = "auto", baseline: Optional[str] = None):
        self.baseline = baseline
        self.attach = attach
        self.netns: set[int] = set()      # drops_seen() counts drops in these namespaces only
        self.loaded: list = []
        self.notes: list[str] = []
        self.names: dict[str, str] = {}   # probe -> how it was attached

    def start(self, which: tuple[str, ...]) -> None:
        for name in which:
            if name == "nop":
                p = Nop()
                p.start()
                self.names["nop"] = "programs that only return (raw_tracepoint kfree_skb, cgroup_skb egress + ingress)"
            elif name == "base":
                if not self.baseline:
                    raise ProbeUnavailable("the base variant needs --baseline DIR")
                p = Baseline(self.baseline, self.attach)
                p.start()
                self.names["base"] = f"every probe of {self.baseline}"
            elif name == "drops":
                from dataplane.probe.drops import DropProbe
                p = DropProbe(attach=self.attach)
                p.start()                      # ProbeUnavailable ends the bench: nothing to compare
                self.names["drops"] = f"DropProbe ({p.attached_as})"
            else:
                from dataplane.probe.sessions import SessionProbe
                p = SessionProbe()
                p.start()
                self.names["sessions"] = (f"SessionProbe (netns from {'skb' if p.netns_from_skb else 'sock_create'}"
                                          f", clock {'jiffies' if p.hz else 'ktime'})")
            self.loaded.append((name, p))

    def drops_seen(self) -> int:
        for name, p in self.loaded:
            if name == "drops":
                return sum(d.packets for d in p.snapshot()[0] if d.key.netns in self.netns)
            if name == "base":
                return p.drops_seen(self.netns)
        return 0

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """{probe.program: (runs, ns)} of the loaded programs (bpf_stats: zero while disabled)."""
        out: dict[str, tuple[int, int]] = {}
        for name, p in self.loaded:
            if name == "base":
                out.update(p.program_stats())
            elif hasattr(p, "program_stats"):
                for prog, rs in p.program_stats().items():
                    out[f"{name}.{prog}"] = rs
            else:
                for prog, fd in p.prog_fds().items():
                    out[f"{name}.{prog}"] = run_stats(fd)
        return out

    def stop(self) -> None:
        while self.loaded:
            _name, p = self.loaded.pop()
            p.close()


@dataclass
class Run:
    value: float        # Gbit/s or Mpps (wall clock)
    per_cpu: float      # the same per CPU-second of the sender (its user + system time, which holds
                        # the softirq work done in its context: here the whole veth path for UDP)
    packets: int        # skbs received by pod b's IP layer (Ip InReceives; UDP: datagrams taken)
    elapsed: float
    delivered: float = 1.0   # UDP: InDatagrams / taken
    drops: int = 0      # drops the drop probe saw in the lab's namespaces (attached runs)


def run_tcp(lab: Lab, a: str, b: str, seconds: float) -> Run:
    before = snmp(lab, b)
    r = lab.run(a, "iperf3", "-c", B_IP, "-t", str(seconds), "-A", "0,1", "-J", timeout=seconds + 60)
    after = snmp(lab, b)
    out = json.loads(r.stdout)["end"]
    end = out["sum_received"]
    gbps = end["bits_per_second"] / 1e9
    # per_cpu is not measured for TCP: the receive path runs partly on the server's CPU
    return Run(gbps, float("nan"), after["Ip.InReceives"] - before["Ip.InReceives"], float(end["seconds"]))


def run_udp(lab: Lab, tools: Tools, a: str, b: str, port: int, seconds: float) -> Run:
    before = snmp(lab, b)
    r = lab.run(a, "taskset", "-c", "0", *tools.sender, B_IP, str(port), str(seconds), "64", timeout=seconds + 60)
    _sent, elapsed, cpu = r.stdout.split()
    time.sleep(0.2)                        # let the last softirq batch land before reading
    after = snmp(lab, b)
    d = {k: after[k] - before[k] for k in after}
    taken = d["Udp.InDatagrams"] + d["Udp.InErrors"] + d["Udp.NoPorts"]
    return Run(taken / float(elapsed) / 1e6, taken / float(cpu) / 1e6 if float(cpu) > 0 else 0.0,
               taken, float(elapsed), delivered=d["Udp.InDatagrams"] / taken if taken else 0.0)


# -- statistics ---------------------------------------------------------------------------------


@dataclass
class Spread:
    n: int
    median: float
    q1: float
    q3: float
    lo: float
    hi: float

    @classmethod
    def of(cls, xs: list[float]) -> "Spread":
        if not xs:
            return cls(0, *([float("nan")] * 5))
        q1, _q2, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
        return cls(len(xs), statistics.median(xs), q1, q3, min(xs), max(xs))


def cost_pct(off: float, on: float) -> float:
    return (off - on) / off * 100 if off else float("nan")


METRICS = {"value": "wall clock", "per_cpu": "per sender CPU-second"}


@dataclass
class Figure:
    name: str
    runs: dict[str, list[Run]] = field(default_factory=dict)
    stats: dict[str, dict[str, list[int]]] = field(default_factory=dict)   # variant -> prog -> [runs, ns]
    stats_packets: dict[str, int] = field(default_factory=dict)

    def values(self, variant: str, metric: str = "value") -> list[float]:
        return [getattr(r, metric) for r in self.runs[variant]]

    def pair_costs(self, variant: str, metric: str = "value") -> list[float]:
        """(off - on) / off in % for each repetition: its two runs were adjacent in time."""
        return [cost_pct(getattr(o, metric), getattr(v, metric)) for o, v in zip(self.runs["off"], self.runs[variant])]

    def off_ns_per_packet(self) -> float:
        return statistics.median(r.elapsed / r.packets * 1e9 for r in self.runs["off"] if r.packets)


# Programs that only return, attached where the probes attach: their bpf_stats time per run is the
# floor of that measurement (the kernel reads the clock around every run while stats are on), which
# the report subtracts from the probes' programs of the same kind.
NOP_C = r"""
int nop_kfree_skb(struct bpf_raw_tracepoint_args *ctx) { return 0; }
int nop_egress(struct __sk_buff *skb) { return 1; }
int nop_ingress(struct __sk_buff *skb) { return 1; }
"""
KIND = {"on_kfree_skb": "nop_kfree_skb", "on_udp_fail_queue_rcv_skb": "nop_kfree_skb",
        "sess_egress": "nop_egress", "sess_ingress": "nop_ingress", "sess_sock_create": ""}


class Nop:
    """The floor programs (see NOP_C), attached as the "nop" stats variant."""

    def __init__(self) -> None:
        self.bpf = None
        self.links: list = []
        self.cg_fd = -1

    def start(self) -> None:
        from bcc import BPF
        from dataplane.probe import sessions
        from dataplane.probe.kheaders import compile_bpf
        self.bpf = compile_bpf([], text=NOP_C)
        self.bpf.attach_raw_tracepoint(tp=b"kfree_skb", fn_name=b"nop_kfree_skb")
        self.cg_fd, _ = sessions._open_cgroup2_root()
        for name, at in ((b"nop_egress", 1), (b"nop_ingress", 0)):
            fn = self.bpf.load_func(name, BPF.CGROUP_SKB, attach_type=at)
            self.links.append(sessions._attach(fn.fd, self.cg_fd, at))

    def program_stats(self) -> dict[str, tuple[int, int]]:
        if self.bpf is None:
            return {}
        return {n.decode(): run_stats(fn.fd) for n, fn in self.bpf.funcs.items()}

    def close(self) -> None:
        from dataplane.probe import sessions
        for link in self.links:
            sessions._detach(link)
        self.links = []
        if self.cg_fd >= 0:
            os.close(self.cg_fd)
            self.cg_fd = -1
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def report(figures: list[Figure], variants: list[str], args, tools: Tools, probes: Probes,
           load: tuple[str, str]) -> None:
    print(f"\nprobe overhead: {args.reps} runs per side of {args.seconds:g} s per figure, interleaved "
          f"(A B B A ...); UDP sender/receiver: {tools.kind}; {os.cpu_count()} CPUs; kernel {os.uname().release}")
    print(f"  attached: {'; '.join(f'{k}: {v}' for k, v in sorted(probes.names.items()))}")
    print(f"  load average at start {load[0]}, at end {load[1]}")
    for metric, label in METRICS.items():
        print(f"\n[{label}]")
        print(f"{'figure':<11} {'unit':<7} {'side':<9} {'n':>2} {'median':>8} {'IQR (q1-q3)':>17} {'min-max':>17}"
              + (f" {'delivered':>9} {'lab drops':>10}" if metric == "value" else ""))
        for f in figures:
            if metric == "per_cpu" and f.name == "tcp":
                continue
            for v in variants:
                s = Spread.of(f.values(v, metric))
                line = (f"{f.name:<11} {UNITS[f.name]:<7} {v:<9} {s.n:>2} {s.median:>8.3f} "
                        f"{s.q1:>8.3f}-{s.q3:<8.3f} {s.lo:>8.3f}-{s.hi:<8.3f}")
                if metric == "value":
                    deliv = min(r.delivered for r in f.runs[v]) if f.name == "udp64" else None
                    drops = sum(r.drops for r in f.runs[v])
                    line += (f" {(f'{deliv * 100:.2f}%' if deliv is not None else ''):>9}"
                             f" {drops if v != 'off' else '':>10}")
                print(line)
        print(f"overhead ({label}), (off - on) / off: from the medians; per repetition (its off and on runs "
              f"adjacent): median [IQR] [min .. max]")
        for f in figures:
            if metric == "per_cpu" and f.name == "tcp":
                continue
            for v in variants:
                if v == "off":
                    continue
                med = cost_pct(statistics.median(f.values("off", metric)), statistics.median(f.values(v, metric)))
                p = Spread.of(f.pair_costs(v, metric))
                goal = GOALS[f.name]
                print(f"  {f.name:<11} {v:<9} medians {med:+6.2f}%   pairs {p.median:+6.2f}% "
                      f"[{p.q1:+.2f} .. {p.q3:+.2f}] [{p.lo:+.2f} .. {p.hi:+.2f}] n={p.n}   "
                      f"goal <= {goal:g}%: {'met' if p.median <= goal else 'NOT met'}")
    if any(f.stats for f in figures):
        print("\nprobe programs' own time (kernel.bpf_stats_enabled, separate runs): runs and ns/run of each "
              "program; net ns/run after the floor (a program that only returns, same attach point, same "
              "runs: the stats' own clock reads); runs and net ns per lab packet (b's Ip InReceives) and that "
              "as a share of CPU 0's per-packet time with nothing attached. Every run on the machine counts, "
              "so these are upper bounds for the lab's packets; the attach points' own cost (the cgroup hook "
              "around the program) is not in them.")
        print(f"  {'figure':<11} {'variant':<9} {'program':<34} {'runs':>9} {'ns/run':>7} {'net':>6} "
              f"{'runs/pkt':>8} {'ns/pkt':>7} {'share':>7}")
        for f in figures:
            base = f.off_ns_per_packet()
            floors: dict[str, float] = {}
            for prog, (runs, ns) in f.stats.get("nop", {}).items():
                floors[prog.split(".", 1)[1]] = ns / runs if runs else 0.0
            for v, progs in f.stats.items():
                pk = f.stats_packets.get(v, 0)
                total = 0.0
                for prog, (runs, ns) in sorted(progs.items()):
                    per_run = ns / runs if runs else 0.0
                    kind = KIND.get(prog.split(".", 1)[1], "")
                    net = max(0.0, per_run - floors.get(kind, 0.0)) if v != "nop" else per_run
                    per = net * runs / pk if pk else 0.0
                    total += per
                    print(f"  {f.name:<11} {v:<9} {prog:<34} {runs:>9} {per_run:>7.1f} {net:>6.1f} "
                          f"{runs / pk if pk else 0:>8.3f} {per:>7.1f} {per / base * 100:>6.2f}%")
                print(f"  {f.name:<11} {v:<9} {'(sum)':<34} {'':>9} {'':>7} {'':>6} {'':>8} {total:>7.1f} "
                      f"{total / base * 100:>6.2f}%   of {base:.0f} ns/packet")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="length of one run")
    ap.add_argument("--reps", type=int, default=6, help="runs per side and figure")
    ap.add_argument("--only", default="tcp,udp64,udp64-drop")
    ap.add_argument("--variants", default="off,all",
                    help="comma list of off, all, drops, sessions; off is always included")
    ap.add_argument("--attach", default="auto", choices=("auto", "raw", "tracepoint"),
                    help="how the drop probe attaches to skb:kfree_skb")
    ap.add_argument("--baseline", metavar="DIR",
                    help="another checkout of moor (e.g. `git worktree` of the previous commit): the variant "
                         "\"base\" attaches its probes, to compare two versions in one interleaved run")
    ap.add_argument("--stats-runs", type=int, default=2,
                    help="extra runs per attached variant (and the nop floor) and figure with bpf_stats on (0: none)")
    ap.add_argument("--json", help="also write every run's figures to this file")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    if "off" not in variants:
        variants.insert(0, "off")
    if len(variants) < 2:
        ap.error("nothing to compare: give an attached variant")
    if "base" in variants and not args.baseline:
        ap.error("the variant base needs --baseline DIR")
    if args.baseline and "base" not in variants:
        variants.append("base")
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    for w in wanted:
        if w not in UNITS:
            ap.error(f"unknown figure {w!r}; known: {', '.join(UNITS)}")
    if args.reps < 6:
        print(f"probe_overhead: note: {args.reps} repetitions; the report wants at least 6 per side", file=sys.stderr)
    why = require_root()
    if why:
        print(f"probe_overhead: {why}", file=sys.stderr)
        return 2
    for tool in ("iperf3", "taskset"):
        if not shutil.which(tool):
            print(f"probe_overhead: {tool} is not installed (Debian package {'iperf3' if tool == 'iperf3' else 'util-linux'})",
                  file=sys.stderr)
            return 2
    probes = Probes(args.attach, args.baseline)
    try:                                   # can the probes load at all?
        probes.start(tuple(sorted({p for v in variants for p in VARIANTS[v]})))
    except ProbeUnavailable as e:
        print(f"probe_overhead: a probe cannot load here: {e}", file=sys.stderr)
        return 2
    finally:
        probes.stop()

    figures: list[Figure] = []
    lab = Lab()
    stats_file = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats_before = stats_file.read_text().strip() if stats_file.exists() else None
    load_start = _loadavg()
    with tempfile.TemporaryDirectory(prefix="moor-bench-") as tmp:
        tools = Tools(Path(tmp))
        try:
            a, n, b = topology(lab)
            probes.netns = {os.stat(Lab.path(ns)).st_ino for ns in (a, n, b)}
            lab.spawn(b, ["taskset", "-c", "1", "iperf3", "-s", "-p", "5201"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lab.spawn(b, ["taskset", "-c", "1", *tools.receiver, str(SINK_PORT)],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            workloads: dict[str, Callable[[], Run]] = {
                "tcp": lambda: run_tcp(lab, a, b, args.seconds),
                "udp64": lambda: run_udp(lab, tools, a, b, SINK_PORT, args.seconds),
                "udp64-drop": lambda: run_udp(lab, tools, a, b, CLOSED_PORT, args.seconds),
            }

            def one(fn: Callable[[], Run], variant: str, collect: Optional[Figure] = None) -> Run:
                try:
                    probes.start(VARIANTS[variant])
                    time.sleep(SETTLE_S)
                    before = probes.program_stats() if collect is not None else {}
                    r = fn()
                    r.drops = probes.drops_seen()
                    if collect is not None:
                        acc = collect.stats.setdefault(variant, {})
                        for prog, (runs, ns) in probes.program_stats().items():
                            b0 = before.get(prog, (0, 0))
                            x = acc.setdefault(prog, [0, 0])
                            x[0] += runs - b0[0]
                            x[1] += ns - b0[1]
                        collect.stats_packets[variant] = collect.stats_packets.get(variant, 0) + r.packets
                    return r
                finally:
                    probes.stop()

            for name in wanted:
                fn = workloads[name]
                fn()                       # warm-up, not counted
                fig = Figure(name, {v: [] for v in variants})
                figures.append(fig)
                for rep in range(args.reps):
                    order = variants if rep % 2 == 0 else list(reversed(variants))
                    for v in order:
                        fig.runs[v].append(one(fn, v))
                    print(f"  {name} rep {rep + 1}/{args.reps}: "
                          + " ".join(f"{v} {fig.runs[v][-1].value:.3f}" for v in variants)
                          + f" {UNITS[name]}", file=sys.stderr, flush=True)
                if args.stats_runs > 0 and stats_before is not None:
                    stats_file.write_text("1")
                    try:
                        for _ in range(args.stats_runs):
                            for v in ["nop"] + [x for x in variants[1:] if x != "nop"]:
                                one(fn, v, collect=fig)
                    finally:
                        stats_file.write_text(stats_before)
        finally:
            probes.stop()
            lab.close()
            if stats_before is not None:
                stats_file.write_text(stats_before)

    report(figures, variants, args, tools, probes, (load_start, _loadavg()))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seconds": args.seconds, "reps": args.reps, "variants": variants,
            "load": [load_start, _loadavg()],
            "figures": {f.name: {"unit": UNITS[f.name],
                                 "runs": {v: [r.__dict__ for r in rs] for v, rs in f.runs.items()},
                                 "bpf_stats": f.stats, "bpf_stats_packets": f.stats_packets}
                        for f in figures}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
