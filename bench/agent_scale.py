"""moord at scale: N pod routes (`proto 109`) already in the node's kernel table when moord starts;
how long until BIRD on the ToR holds all N, and what moord as a whole spends on it (CPU, peak RSS),
against GoBGP delivering the same table to a fresh BIRD in the same run (interleaved).

Topology (dataplane.nslab.Lab, unique names, removed on exit; BIRD, GoBGP and the /proc readers are
bench/bgp_routes.py's): netns "tor" runs BIRD 2 (192.0.2.1, AS 65000, passive, import all, export
none), netns "node" (192.0.2.2, AS 65001) holds the N routes, added once with one `ip -batch` file
before any run: `100.64.x.y/32 dev lo proto 109` counted up from 100.64.0.0 (RFC 6598 space, as in
bgp_routes.py: the TEST-NET blocks hold 768 /32s, not 100,000; only this private netns sees them).

moord (python -m dataplane.agent) is configured as bench/bgp_routes.py starts it: probes off, no CNI
socket, API socket and GR state file in the temp dir, metrics off, node forwarding off. Per run:
  start->est   process start to BIRD's session Established
  start->all   process start to BIRD holding all N routes from it (start-up, kernel table read, UPDATEs)
  CPU@all      moord user+sys s (/proc/PID/stat) when BIRD holds all N
  CPU idle     the same once moord's CPU stopped moving (no tick in IDLE_S), after delivery
  peak RSS     VmHWM of moord, read once idle
  compile      host routing's compile child (dataplane/bpfload.py): its peak RSS, from moord's log; the
               node pays it once, for under a second at start; its CPU is in moord's (a waited child)
GoBGP: gobgpd, then `gobgp mrt inject` of the same N /32s (bench/bgp_routes.py run_one); its
start->all holds its 5-10 s first-connect timer, so its est->all is the comparable delivery time;
its CPU is gobgpd's, read when BIRD holds all N (the inject CLI is a separate process, not counted).

Run as root: ./run bench agent [-n 100000] [--repeat 3] [--no-gobgp] [--no-host-routing] [--profile]
  (--profile: one more moord run under cProfile, top functions printed)
"""
from __future__ import annotations

import argparse
import ipaddress
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bgp_routes import (BASE, NODE, NODE_AS, PY, TOR, TOR_AS, Bird, check_route, cpu_s,  # noqa: E402
                        hwm_kib, run_one)
from dataplane.nslab import Lab, require_root  # noqa: E402

IDLE_S = 1.0  # moord is idle when its CPU time has not moved for this long after delivery
SAMPLE_S = 0.05


@dataclass
class Run:
    what: str
    start_est: float = float("nan")
    start_all: float = float("nan")
    cpu_all: float = float("nan")
    cpu_idle: float = float("nan")
    rss_kib: int = 0
    child_mb: float = float("nan")  # host routing's compile child, peak RSS (moord's log line)

    @property
    def est_all(self) -> float:
        return self.start_all - self.start_est


def load_table(lab: Lab, node: str, work: Path, n: int) -> None:
    """N /32 routes of moor's protocol in the node's main table, in one `ip -batch` (seconds, not
    the minutes of N execs)."""
    batch = work / "routes.batch"
    with open(batch, "w") as f:
        for i in range(n):
            f.write(f"route add {ipaddress.IPv4Address(BASE + i)}/32 dev lo proto 109\n")
    lab.run(node, "ip", "-batch", str(batch))
    out = lab.run(node, "ip", "-4", "route", "show", "proto", "109").stdout
    got = out.count(b"\n")
    if got != n:
        raise RuntimeError(f"the node's table holds {got} routes of proto 109, not {n}")


def moord_conf(d: Path, host_routing: bool = True) -> Path:
    conf = d / "moord.yaml"
    conf.write_text(f"bgp:\n  asn: {NODE_AS}\n  routerId: {NODE}\n  holdTime: 240\n  listenAddress: {NODE}\n"
                    f"  listenPort: 1179\n  gracefulRestart:\n    stateFile: {d / 'moord-gr.json'}\n"
                    f"  peers:\n    - address: {TOR}\n      asn: {TOR_AS}\n"
                    f"api:\n  socket: {d / 'moord.sock'}\ncni:\n  socket: ''\nmetrics:\n  port: 0\n"
                    f"probe:\n  enabled: false\nnode:\n  forwarding: 'off'\n"
                    + ("" if host_routing else "dataplane:\n  hostRouting: false\n"))
    return conf


def run_moord(lab: Lab, tor: str, node: str, work: Path, n: int, poll: float, i: int,
              profile: Path | None = None, host_routing: bool = True) -> Run:
    d = Path(tempfile.mkdtemp(prefix=f"moord-{i}-", dir=work))
    bird = Bird(lab, tor, d / "bird", "moord")
    res = Run("moord")
    proc = None
    try:
        bird.start()
        conf = moord_conf(d, host_routing)
        cmd = [PY, "-m", "dataplane.agent", "--config", str(conf)]
        if profile is not None:
            cmd[1:1] = ["-m", "cProfile", "-o", str(profile)]
        t0 = time.monotonic()
        proc = lab.spawn(node, cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=open(d / "moord.log", "wb"))
        guard = t0 + 60 + n / 1000  # a hang guard, not a speed requirement
        while True:
            now = time.monotonic()
            state, imported = bird.ctl.status("moord")
            if state == "Established" and res.start_est != res.start_est:
                res.start_est = now - t0
            if imported >= n:
                res.start_all = now - t0
                res.cpu_all = cpu_s(proc.pid)
                break
            if proc.poll() is not None:
                raise RuntimeError(f"moord exited ({proc.returncode}): {(d / 'moord.log').read_text()[-2000:]}")
            if now > guard:
                raise TimeoutError(f"moord: {imported}/{n} routes at BIRD after {now - t0:.0f} s (state {state})")
            time.sleep(poll)
        check_route(bird, "moord", f"{ipaddress.IPv4Address(BASE + n - 1)}/32")
        last, still, guard = cpu_s(proc.pid), time.monotonic(), time.monotonic() + 60
        while time.monotonic() - still < IDLE_S:
            if time.monotonic() > guard:
                raise TimeoutError("moord never went idle after delivering its routes")
            time.sleep(SAMPLE_S)
            c = cpu_s(proc.pid)
            if c != last:
                last, still = c, time.monotonic()
        res.cpu_idle, res.rss_kib = last, hwm_kib(proc.pid)
        m = re.search(rb"child process \([0-9.]+ s CPU, ([0-9.]+) MB peak there", (d / "moord.log").read_bytes())
        if m:
            res.child_mb = float(m.group(1))
        return res
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60 if profile else 20)  # a clean stop; cProfile writes its stats on the way out
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        bird.stop()


def _ms(x: float) -> str:
    return "-" if x != x else (f"{x * 1e3:.0f} ms" if x < 10 else f"{x:.1f} s")


def _spread(xs: list[float], fmt) -> str:
    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))}-{fmt(max(xs))})" if len(xs) > 1 else fmt(xs[0])


def report(n: int, moord: list[Run], gobgp: list) -> None:
    print(f"\nmoord with {n} kernel routes at start, into BIRD; medians (min-max) of {len(moord)} run(s)")
    print(f"  start->est   {_spread([r.start_est for r in moord], _ms)}")
    print(f"  est->all     {_spread([r.est_all for r in moord], _ms)}")
    print(f"  start->all   {_spread([r.start_all for r in moord], _ms)}")
    print(f"  CPU@all      {_spread([r.cpu_all for r in moord], lambda x: f'{x:.2f} s')}")
    print(f"  CPU idle     {_spread([r.cpu_idle for r in moord], lambda x: f'{x:.2f} s')}")
    print(f"  peak RSS     {_spread([r.rss_kib / 1024 for r in moord], lambda x: f'{x:.1f} MB')}")
    if any(r.child_mb == r.child_mb for r in moord):
        print(f"  compile      {_spread([r.child_mb for r in moord if r.child_mb == r.child_mb], lambda x: f'{x:.0f} MB')} peak in host routing's "
              "compile child, gone once loaded")
    if not gobgp:
        return
    print(f"GoBGP, the same {n} /32s by `gobgp mrt inject`, {len(gobgp)} run(s)")
    print(f"  est->all     {_spread([g.est_all for g in gobgp], _ms)}   (start->all "
          f"{_spread([g.start_all for g in gobgp], _ms)}: its 5-10 s connect timer)")
    print(f"  CPU          {_spread([g.cpu for g in gobgp], lambda x: f'{x:.2f} s')}")
    print(f"  peak RSS     {_spread([g.rss_kib / 1024 for g in gobgp], lambda x: f'{x:.1f} MB')}")
    med = statistics.median
    print("ratios of medians, moord / GoBGP (>1: moord slower / bigger)")
    print(f"  delivery (moord start->all / GoBGP est->all) {med(r.start_all for r in moord) / med(g.est_all for g in gobgp):.2f}x"
          f"   est->all {med(r.est_all for r in moord) / med(g.est_all for g in gobgp):.2f}x")
    print(f"  CPU (moord idle / GoBGP) {med(r.cpu_idle for r in moord) / med(g.cpu for g in gobgp):.2f}x"
          f"   peak RSS {med(r.rss_kib for r in moord) / med(g.rss_kib for g in gobgp):.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description="moord with N pod routes in the kernel at start: delivery to BIRD, "
                                 "CPU and peak RSS, against GoBGP with the same table. Details: the module docstring.")
    ap.add_argument("-n", "--routes", type=int, default=100_000, help="kernel routes (default 100000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved (default 3)")
    ap.add_argument("--no-gobgp", action="store_true", help="moord runs only")
    ap.add_argument("--no-host-routing", action="store_true",
                    help="moord with dataplane.hostRouting false (default: moord's default, on)")
    ap.add_argument("--poll", type=float, default=0.005, help="BIRD polling interval, s (default 0.005)")
    ap.add_argument("--profile", action="store_true", help="then one moord run under cProfile")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args()
    why = require_root()
    if why:
        print(f"agent_scale bench: {why}", file=sys.stderr)
        return 2
    for exe in ("bird", "ip") + (() if args.no_gobgp else ("gobgpd", "gobgp", "ss")):
        if shutil.which(exe) is None:
            print(f"agent_scale bench: {exe} is not installed (scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    n = args.routes
    work = Path(tempfile.mkdtemp(prefix="moor-agent-scale-"))
    moord: list[Run] = []
    gobgp: list = []
    prof = work / "moord.prof" if args.profile else None
    load0 = open("/proc/loadavg").read().split()[:3]
    try:
        with Lab() as lab:
            tor, node = lab.ns("tor"), lab.ns("node")
            lab.veth(tor, "t0", node, "n0")
            lab.addr(tor, "t0", f"{TOR}/24")
            lab.addr(node, "n0", f"{NODE}/24")
            t = time.monotonic()
            load_table(lab, node, work, n)
            print(f"{n} routes proto 109 in the node netns ({_ms(time.monotonic() - t)})", flush=True)
            for i in range(args.repeat):  # interleaved, so drift on the machine hits both alike
                r = run_moord(lab, tor, node, work, n, args.poll, i, host_routing=not args.no_host_routing)
                moord.append(r)
                print(f"  moord #{i + 1}: start->all {_ms(r.start_all)}, CPU@all {r.cpu_all:.2f} s, idle "
                      f"{r.cpu_idle:.2f} s, peak RSS {r.rss_kib / 1024:.1f} MB", flush=True)
                if not args.no_gobgp:
                    g = run_one(lab, tor, node, work, "gobgp", n, args.poll)
                    gobgp.append(g)
                    print(f"  gobgp #{i + 1}: est->all {_ms(g.est_all)}, CPU {g.cpu:.2f} s, "
                          f"peak RSS {g.rss_kib / 1024:.1f} MB", flush=True)
            if prof is not None:
                r = run_moord(lab, tor, node, work, n, args.poll, args.repeat, profile=prof,
                              host_routing=not args.no_host_routing)
                print(f"  moord under cProfile: start->all {_ms(r.start_all)}", flush=True)
    except KeyboardInterrupt:
        print("interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    finally:
        if moord:
            report(n, moord, gobgp)
        if prof is not None and prof.exists():
            st = pstats.Stats(str(prof)).strip_dirs()
            st.sort_stats("tottime").print_stats(25)
        print(f"\nload average before {' '.join(load0)}, after {' '.join(open('/proc/loadavg').read().split()[:3])}")
        if args.keep:
            print(f"configs and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
