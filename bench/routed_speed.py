"""Routed mode at the speed of a bare veth? Pod a -> pod b on one node, four ways, in one run:

  veth      two namespaces joined by one veth pair (the reference)
  routed    moor routed mode (CNI plugin, mode bgp): veth per pod, the node's stack forwards
  routed+hr the same with eBPF host routing (dataplane/hostrouting.py) attached to both pod veths
  macvlan   moor macvlan mode (CNI plugin, bridge mode on the node's uplink)

Figures: tcp (iperf3, one stream, client on CPU 0, server on CPU 1; Gbit/s), udp1400 (1400-byte
UDP at max rate; Gbit/s of datagrams pod b's UDP layer took) and udp64 (64-byte UDP; Mpps taken).
The UDP sender and receiver are bench/probe_overhead.py's (sendmmsg/recvmmsg in C when cc exists:
iperf3 -u is sender-bound at small sizes), sender pinned to CPU 0, receiver to CPU 1.

Method: every repetition runs each figure on each setup, interleaved (A B C D, then D C B A: drift
hits every side alike), --seconds each; printed per setup and figure: the ratio to the bare veth of
the same repetition, median and min-max over repetitions, and the absolute medians. The machine is
shared (the load average is printed): spreads say how far to trust a figure.

Goals (issue 13): routed+hr / veth >= 0.95 TCP, >= 0.90 UDP 1400 B, >= 0.90 UDP 64 B.

Run as root: .venv/bin/python bench/routed_speed.py [--reps 4] [--seconds 10] [--only tcp,udp64] [--prog-stats]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataplane.nslab import Lab, require_root  # noqa: E402

BENCH = Path(__file__).resolve().parent
SETUPS = ("veth", "routed", "routed+hr", "macvlan")
FIGURES = {"tcp": "Gbit/s", "udp1400": "Gbit/s", "udp64": "Mpps"}
SINK_PORT = 7001
GOALS = {"tcp": 0.95, "udp1400": 0.90, "udp64": 0.90}


def _probe_overhead():
    """bench/probe_overhead.py as a module: its UDP tools and /proc/net/snmp reader."""
    spec = importlib.util.spec_from_file_location("_moor_probe_overhead", BENCH / "probe_overhead.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class Setup:
    """Two endpoints a (sender) and b (receiver) at b_ip, with iperf3 and the UDP sink in b."""

    def __init__(self, name: str, lab: Lab, a: str, b: str, b_ip: str):
        self.name, self.lab, self.a, self.b, self.b_ip = name, lab, a, b, b_ip


def _routed_conf(tmp: Path, name: str) -> dict:
    return {"cniVersion": "1.0.0", "name": name, "type": "moor", "mode": "bgp", "stateDir": str(tmp / f"{name}-state"),
            "ipam": {"type": "moor-ipam", "dataDir": str(tmp / f"{name}-ipam"), "pools": [{"cidr": "203.0.113.0/24"}]}}


def _macvlan_conf(tmp: Path) -> dict:
    return {"cniVersion": "1.0.0", "name": "mv", "type": "moor", "mode": "macvlan", "master": "up0",
            "stateDir": str(tmp / "mv-state"),
            "ipam": {"type": "host-local", "dataDir": str(tmp / "mv-ipam"),
                     "ranges": [[{"subnet": "192.0.2.0/24", "rangeStart": "192.0.2.10", "rangeEnd": "192.0.2.60"}]]}}


def _add(lab: Lab, node: str, conf: dict, pod: str, path: str) -> tuple[str, dict]:
    from tests.helpers import run_cni
    ns = lab.ns(pod)
    r = run_cni(node, "ADD", conf, path=path, container_id=f"c-{ns}", netns=Lab.path(ns),
                args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod};K8S_POD_UID=u-{pod}")
    if r.code != 0:
        raise RuntimeError(f"ADD {pod}: {r.stdout.decode()} {r.stderr.decode()}")
    return ns, r.json


def build(lab: Lab, tmp: Path) -> tuple[dict[str, Setup], object]:
    from tests.helpers import cni_path
    path = cni_path(tmp)
    setups: dict[str, Setup] = {}
    a, b = lab.ns("va"), lab.ns("vb")
    lab.veth(a, "eth0", b, "eth0")
    lab.addr(a, "eth0", "198.51.100.1/24")
    lab.addr(b, "eth0", "198.51.100.2/24")
    setups["veth"] = Setup("veth", lab, a, b, "198.51.100.2")
    hr = None
    for name in ("routed", "routed+hr"):
        node = lab.ns("rn" if name == "routed" else "hn")
        lab.run(node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        conf = _routed_conf(tmp, "r" if name == "routed" else "h")
        pa, _ = _add(lab, node, conf, f"{node}a", path)
        pb, res = _add(lab, node, conf, f"{node}b", path)
        b_ip = res["ips"][0]["address"].split("/")[0]
        setups[name] = Setup(name, lab, pa, pb, b_ip)
        if name == "routed+hr":
            hr = _host_routing(lab, node)
    node, peer = lab.ns("mn"), lab.ns("mp")
    lab.veth(node, "up0", peer, "pp0")
    pa, _ = _add(lab, node, _macvlan_conf(tmp), "mva", path)
    pb, res = _add(lab, node, _macvlan_conf(tmp), "mvb", path)
    setups["macvlan"] = Setup("macvlan", lab, pa, pb, res["ips"][0]["address"].split("/")[0])
    for s in setups.values():
        if not lab.ping(s.a, s.b_ip):
            raise RuntimeError(f"{s.name}: a cannot reach b at {s.b_ip}")
    return setups, hr


def _host_routing(lab: Lab, node: str):
    """HostRouting loaded here, attached to every pod veth of `node` (what moord does from its
    route watch), its netlink socket in the node netns."""
    from cni.netlink import netns as nsmod
    from dataplane.hostrouting import HostRouting
    from tests.helpers import ipj
    hr = HostRouting()
    fd = nsmod.open_netns(Lab.path(node))
    try:
        with nsmod.entered(fd):
            hr.start()
    finally:
        os.close(fd)
    for r in ipj(node, "route", "show", "proto", "109"):
        index = ipj(node, "link", "show", r["dev"])[0]["ifindex"]
        hr.pod_route(f"{r['dst']}/32", index, True)
    hr.attach_all()
    return hr


def _bpf_stats(on: bool) -> bool:
    """kernel.bpf_stats_enabled to `on` (the program's run count and time); what it was."""
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    try:
        was = path.read_text().strip() == "1"
        path.write_text("1" if on else "0")
        return was
    except OSError:
        return False


def run_tcp(s: Setup, seconds: float) -> float:
    r = s.lab.run(s.a, "iperf3", "-c", s.b_ip, "-t", str(seconds), "-A", "0,1", "-J", timeout=seconds + 60)
    return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def run_udp(po, tools, s: Setup, seconds: float, size: int) -> float:
    before = po.snmp(s.lab, s.b)
    r = s.lab.run(s.a, "taskset", "-c", "0", *tools.sender, s.b_ip, str(SINK_PORT), str(seconds), str(size),
                  timeout=seconds + 60)
    _sent, elapsed, _cpu = r.stdout.split()
    time.sleep(0.2)  # the last softirq batch
    after = po.snmp(s.lab, s.b)
    taken = sum(after[k] - before[k] for k in ("Udp.InDatagrams", "Udp.InErrors", "Udp.NoPorts"))
    rate = taken / float(elapsed)
    return rate * size * 8 / 1e9 if size > 64 else rate / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(prog="routed_speed", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--only", default=",".join(FIGURES), help="figures: " + ", ".join(FIGURES))
    ap.add_argument("--json", default="", help="also write every run here")
    ap.add_argument("--prog-stats", action="store_true",
                    help="kernel.bpf_stats_enabled on for the run: the host routing program's ns per packet "
                         "(the counting itself costs the program ~20-30 ns a run, so the ratios are not the goal's)")
    args = ap.parse_args()
    why = require_root()
    if why:
        print(f"routed_speed: {why}", file=sys.stderr)
        return 2
    for tool in ("iperf3", "taskset"):
        if shutil.which(tool) is None:
            print(f"routed_speed: {tool} is not installed", file=sys.stderr)
            return 2
    figures = [f for f in args.only.split(",") if f]
    if not figures or any(f not in FIGURES for f in figures):
        print(f"routed_speed: --only takes {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    po = _probe_overhead()
    load0 = open("/proc/loadavg").read().split()[:3]
    runs: dict[str, dict[str, list[float]]] = {f: {s: [] for s in SETUPS} for f in figures}
    lab, hr = Lab(), None
    with tempfile.TemporaryDirectory(prefix="moor-bench-") as tmp:
        try:
            tools = po.Tools(Path(tmp))
            setups, hr = build(lab, Path(tmp))
            for s in setups.values():
                lab.spawn(s.b, ["taskset", "-c", "1", "iperf3", "-s", "-p", "5201"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
                lab.spawn(s.b, ["taskset", "-c", "1", *tools.receiver, str(SINK_PORT)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            if args.prog_stats:
                stats_was = _bpf_stats(True)
            do = {"tcp": lambda s: run_tcp(s, args.seconds),
                  "udp1400": lambda s: run_udp(po, tools, s, args.seconds, 1400),
                  "udp64": lambda s: run_udp(po, tools, s, args.seconds, 64)}
            for rep in range(args.reps):
                order = SETUPS if rep % 2 == 0 else tuple(reversed(SETUPS))
                for f in figures:
                    for name in order:
                        runs[f][name].append(do[f](setups[name]))
                    print(f"  rep {rep + 1}/{args.reps} {f}: " + " ".join(
                        f"{n} {runs[f][n][-1]:.3f}" for n in SETUPS) + f" {FIGURES[f]}", file=sys.stderr, flush=True)
            counters = hr.counters() if hr is not None else {}
            progs = hr.prog_stats() if hr is not None else {}
        finally:
            if "stats_was" in locals():
                _bpf_stats(stats_was)
            if hr is not None:
                hr.close(detach=True)
            lab.close(close_pipes=True)
    load1 = open("/proc/loadavg").read().split()[:3]
    print(f"\nrouted_speed: {args.reps} reps x {args.seconds:g} s, interleaved; UDP tools: {tools.kind}; "
          f"load average {' '.join(load0)} -> {' '.join(load1)}")
    print(f"{'':10} " + " ".join(f"{f + ' / veth':>24}" for f in figures))
    for name in SETUPS[1:]:
        cells = []
        for f in figures:
            ratios = [x / v for x, v in zip(runs[f][name], runs[f]["veth"]) if v]
            cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"{name:10} " + " ".join(f"{c:>24}" for c in cells))
    print("medians: " + "; ".join(f"{f}: " + ", ".join(f"{n} {statistics.median(runs[f][n]):.3f}" for n in SETUPS)
                                  + f" {FIGURES[f]}" for f in figures))
    print(f"host routing counters over the run: {counters}")
    for name, (n, ns) in progs.items():
        if n:
            print(f"host routing program {name}: {n} runs, {ns / n:.0f} ns per run (kernel.bpf_stats_enabled)")
    goals = []
    for f in figures:
        r = statistics.median([x / v for x, v in zip(runs[f]["routed+hr"], runs[f]["veth"]) if v])
        goals.append(f"{f} {r:.3f} {'>=' if r >= GOALS[f] else '<'} {GOALS[f]:.2f} "
                     f"({'met' if r >= GOALS[f] else 'NOT met'})")
    print("goals (routed+hr / veth): " + "; ".join(goals))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "counters": counters}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
