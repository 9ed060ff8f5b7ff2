"""What the eBPF probes cost the dataplane: the same traffic with the probes detached and attached,
alternating in one invocation (ABBA order, so drift hits both sides), medians and the cost in %.

Topology: pod a -- node -- pod b, three network namespaces joined by veth pairs and routed through
the node namespace, as moor's bgp mode wires pods. Workloads:
  tcp          iperf3 TCP, one stream a -> b (client pinned to CPU 0, server to CPU 1); Gbit/s.
  udp64        64-byte UDP a -> b to a draining receiver, packets per second taken by b's kernel
               (/proc/net/snmp in b: InDatagrams + InErrors + NoPorts). iperf3 -u -l 64 is
               sender-bound here (~120 kpps of its own loop), so the sender is our own sendmmsg(2)
               loop in C, built with cc when one is installed (else a Python send loop, printed).
  udp64-drop   the same sender to a closed port: every packet is dropped (NO_SOCKET) and so passes
               through the drop probe — the probe's worst case, one tracepoint hit per packet.
Goals (issue 5): under 3% at 64-byte line rate with every probe loaded, under 1% for TCP.

The probes are machine-wide: drops and packets of anything else running on the machine during an
attached run cost CPU too (and a busy machine makes every median noisy: the min-max columns show
it). --bpf-stats prints how often each probe's programs ran and their own time per run, which is a
steadier measure than throughput on a shared machine.

Run as root: .venv/bin/python bench/probe_overhead.py [--seconds 5] [--reps 5] [--only tcp,udp64]
             [--probes all|drops] [--attach auto|raw|tracepoint] [--bpf-stats]
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
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataplane.nslab import Lab, require_root  # noqa: E402
from dataplane.probe.errors import ProbeUnavailable  # noqa: E402
from dataplane.probe.kheaders import run_stats  # noqa: E402

A_IP, B_IP = "192.0.2.1", "198.51.100.1"
SINK_PORT, CLOSED_PORT = 9000, 9001

UNITS = {"tcp": "Gbit/s", "udp64": "Mpps", "udp64-drop": "Mpps"}

SENDER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#define BATCH 64
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
    double t0 = now(), end = t0 + secs, t = t0;
    while (t < end) {
        int n = sendmmsg(fd, m, BATCH, 0);
        if (n > 0) sent += n;
        if ((++calls & 63) == 0) t = now();
    }
    printf("%llu %.6f\n", sent, now() - t0);
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
sendto = s.sendto; n = 0; t0 = time.monotonic(); end = t0 + secs
while time.monotonic() < end:
    for _ in range(256):
        sendto(p, dst)
    n += 256
print(n, time.monotonic() - t0)
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


def udp_counters(lab: Lab, ns: str) -> dict[str, int]:
    lines = [ln.split() for ln in lab.run(ns, "cat", "/proc/net/snmp").stdout.decode().splitlines() if ln.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


class Probes:
    """Every probe this tree has: the drop probe, and the sessions probe when it exists."""

    def __init__(self, attach: str = "auto", sessions: bool = True):
        self.attach = attach
        self.sessions = sessions
        self.netns: set[int] = set()      # drops_seen() counts drops in these namespaces only
        self.stats: dict[str, list[int]] = {}   # probe class -> [runs, ns] (bpf_stats)
        self.loaded: list = []
        self.notes: list[str] = []
        self.names: set[str] = set()

    def start(self) -> None:
        from dataplane.probe.drops import DropProbe
        p = DropProbe(attach=self.attach)
        p.start()                          # ProbeUnavailable ends the bench: nothing to compare
        self.loaded.append(p)
        self.names.add(f"{type(p).__name__} ({p.attached_as})")
        if not self.sessions:
            return
        try:
            from dataplane.probe import sessions  # written alongside; optional here
            cls = getattr(sessions, "SessionProbe")
            s = cls()
            s.start()
            self.loaded.append(s)
            self.names.add(type(s).__name__)
        except Exception as e:  # not there yet, or cannot load here: say so, measure the rest
            note = f"sessions probe not loaded: {type(e).__name__}: {e}"
            if note not in self.notes:
                self.notes.append(note)

    def drops_seen(self) -> int:
        for p in self.loaded:
            if type(p).__name__ == "DropProbe":
                return sum(d.packets for d in p.snapshot()[0] if d.key.netns in self.netns)
        return 0

    def stop(self) -> None:
        """Detach everything, adding the programs' run counts and times (bpf_stats) to the totals."""
        while self.loaded:
            p = self.loaded.pop()
            if hasattr(p, "program_stats"):
                stats = list(p.program_stats().values())
            elif hasattr(p, "prog_fds"):
                stats = [run_stats(fd) for fd in p.prog_fds().values()]
            else:
                stats = []
            acc = self.stats.setdefault(type(p).__name__, [0, 0])
            for runs, ns in stats:
                acc[0] += runs
                acc[1] += ns
            p.close()


def run_tcp(lab: Lab, a: str, b: str, seconds: float) -> tuple[float, int]:
    """(Gbit/s received, 0: TCP's packet count is not known here)."""
    r = lab.run(a, "iperf3", "-c", B_IP, "-t", str(seconds), "-A", "0,1", "-J", timeout=seconds + 60)
    return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9, 0


def run_udp(lab: Lab, tools: Tools, a: str, b: str, port: int, seconds: float) -> tuple[float, int]:
    """(Mpps taken by pod b's kernel, packets)."""
    before = udp_counters(lab, b)
    r = lab.run(a, "taskset", "-c", "0", *tools.sender, B_IP, str(port), str(seconds), "64", timeout=seconds + 60)
    _sent, elapsed = r.stdout.split()
    time.sleep(0.2)                        # let the last softirq batch land before reading
    after = udp_counters(lab, b)
    taken = sum(after[k] - before[k] for k in ("InDatagrams", "InErrors", "NoPorts"))
    return taken / float(elapsed) / 1e6, taken


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one run")
    ap.add_argument("--reps", type=int, default=5, help="runs per side (detached / attached)")
    ap.add_argument("--only", default="tcp,udp64,udp64-drop")
    ap.add_argument("--attach", default="auto", choices=("auto", "raw", "tracepoint"),
                    help="how the drop probe attaches to skb:kfree_skb")
    ap.add_argument("--probes", default="all", choices=("all", "drops"),
                    help="all: every probe in the tree (drops + sessions); drops: the drop probe alone")
    ap.add_argument("--bpf-stats", action="store_true",
                    help="set sysctl kernel.bpf_stats_enabled=1 during the run (restored after) and print "
                         "the probe programs' own time per run; it is machine-wide and costs a little")
    args = ap.parse_args()
    why = require_root()
    if why:
        print(f"probe_overhead: {why}", file=sys.stderr)
        return 2
    for tool in ("iperf3", "taskset"):
        if not shutil.which(tool):
            print(f"probe_overhead: {tool} is not installed (Debian package {'iperf3' if tool == 'iperf3' else 'util-linux'})",
                  file=sys.stderr)
            return 2
    probes = Probes(args.attach, sessions=args.probes == "all")
    try:                                   # can the probes load at all?
        probes.start()
    except ProbeUnavailable as e:
        print(f"probe_overhead: the drop probe cannot load here: {e}", file=sys.stderr)
        return 2
    probes.stop()

    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    results: dict[str, dict[str, list[float]]] = {}
    extra: dict[str, dict[str, float]] = {}
    per_probe: dict[str, dict[str, list[int]]] = {}
    lab = Lab()
    stats_file = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats_before = stats_file.read_text().strip() if args.bpf_stats and stats_file.exists() else None
    if stats_before is not None:
        stats_file.write_text("1")
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
            workloads: dict[str, Callable[[], tuple[float, int]]] = {
                "tcp": lambda: run_tcp(lab, a, b, args.seconds),
                "udp64": lambda: run_udp(lab, tools, a, b, SINK_PORT, args.seconds),
                "udp64-drop": lambda: run_udp(lab, tools, a, b, CLOSED_PORT, args.seconds),
            }
            for name in wanted:
                if name not in workloads:
                    raise SystemExit(f"unknown workload {name!r}; known: {', '.join(workloads)}")
                fn = workloads[name]
                fn()                       # warm-up, not counted
                res = results[name] = {"detached": [], "attached": []}
                ex = extra[name] = {"packets": 0, "drops": 0}
                probes.stats = {}
                for rep in range(args.reps):
                    order = ("detached", "attached") if rep % 2 == 0 else ("attached", "detached")
                    for side in order:
                        if side == "attached":
                            probes.start()
                        try:
                            value, packets = fn()
                            res[side].append(value)
                            if side == "attached":
                                ex["packets"] += packets
                                ex["drops"] += probes.drops_seen()
                        finally:
                            probes.stop()
                    print(f"  {name} rep {rep + 1}/{args.reps}: detached {res['detached'][-1]:.3f} "
                          f"attached {res['attached'][-1]:.3f} {UNITS[name]}", file=sys.stderr, flush=True)
                per_probe[name] = dict(probes.stats)
        finally:
            probes.stop()
            lab.close()
            if stats_before is not None:
                stats_file.write_text(stats_before)

    print(f"\nprobe overhead: {args.reps} runs per side of {args.seconds:g} s, alternating (ABBA); "
          f"attached: {' + '.join(sorted(probes.names))}")
    for note in probes.notes:
        print(f"  ({note})")
    print(f"  UDP sender/receiver: {tools.kind}; CPUs: {os.cpu_count()}")
    print(f"{'workload':<11} {'unit':<7} {'detached':>9} {'attached':>9} {'cost %':>7}  "
          f"{'min-max detached':>17} {'min-max attached':>17}  {'lab drops':>9}")
    for name, res in results.items():
        d, t = statistics.median(res["detached"]), statistics.median(res["attached"])
        cost = (d - t) / d * 100 if d else float("nan")
        print(f"{name:<11} {UNITS[name]:<7} {d:>9.3f} {t:>9.3f} {cost:>6.2f}%  "
              f"{min(res['detached']):>8.3f}-{max(res['detached']):<8.3f} "
              f"{min(res['attached']):>8.3f}-{max(res['attached']):<8.3f}  {extra[name]['drops']:>9}")
    if args.bpf_stats:
        print("\nprobe programs' own time (kernel.bpf_stats_enabled), during the attached runs; it counts every run "
              "on the machine, other traffic included, so per-packet figures are upper bounds:")
        print(f"{'workload':<11} {'probe':<13} {'runs':>10} {'ns/run':>7} {'ns per lab packet':>18} "
              f"{'% of detached per-packet time':>30}")
        for name, by_probe in per_probe.items():
            ex = extra[name]
            for probe_name, (runs, ns) in sorted(by_probe.items()):
                line = f"{name:<11} {probe_name:<13} {runs:>10} {ns / runs if runs else 0.0:>7.0f}"
                if ex["packets"]:
                    per_pkt = ns / ex["packets"]
                    share = per_pkt * statistics.median(results[name]["detached"]) * 1e6 / 1e9 * 100
                    line += f" {per_pkt:>18.1f} {share:>29.2f}%"
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
