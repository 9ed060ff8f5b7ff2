"""Pod set-up and tear-down against the Go reference plugins, measured in the same run.

Variants, one ADD and one DEL each per round, interleaved round by round (the order rotates) so drift
on the machine hits all alike:
  macvlan: Go macvlan + host-local (the reference); moor + host-local and moor + moor-ipam, each
           alone (the executable does the work) and through moord (the fast path, cni/entry.py)
  routed:  Go ptp + host-local (the reference); moor bgp + host-local and + moor-ipam, alone and agent
  "... agent C": the fast path through the C client (cni/client.c, as `moor install` puts it in the
           CNI bin dir where a C compiler exists), not paying for an interpreter start
Then 100 pods at concurrency 8, ADD and DEL throughput, the reference and moor both ways, repeated.

A pod lives --age seconds (default 0.1) between its ADD and its DEL. Deleting a veth costs the kernel
~20 ms right after it was made and ~40 ms once the new link's own set-up (IPv6 addrconf) has run,
~30 ms later (measured in one process: 20.2 ms back to back, 41.6 ms after a 30 ms pause): a DEL
right behind its ADD would measure how fast each plugin starts, not what deleting a pod costs.

Both sides keep their files (host-local's dataDir; moor's stateDir and moor-ipam's dataDir) under
--dir (default: the system's temp dir), on whatever filesystem that is; the header names it. It
matters: on an ext4 without a journal (this project's CI VM) every file created scans past the
inodes deleted in the last five minutes, and moor creates four files an ADD where host-local
creates one (18% of moord's CPU at concurrency 8, measured with perf); tmpfs, a journalled ext4 or
XFS have no such scan.

Every plugin runs inside the node's network namespace the same way: this process enters it once,
before the first exec, so no side pays for `ip netns exec` or a preexec hook. Printed: medians, p90,
and the median of the per-round ratios variant/reference with its interquartile range.
Run as root: ./run bench [--rounds N] [--pods N] [--concurrency N] [--reps N] [--age S] [--dir D]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cni.client import build  # noqa: E402
from cni.install import write_launcher  # noqa: E402
from dataplane.nslab import Lab  # noqa: E402

REF = "/usr/lib/cni"
CLONE_NEWNET = 0x40000000


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def _call(exe: str, command: str, conf: dict, pod: str, cid: str, path: str, args: str = "") -> float:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": pod,
           "CNI_IFNAME": "eth0", "CNI_PATH": path}
    if args:
        env["CNI_ARGS"] = args
    data = json.dumps(conf).encode()
    t = time.perf_counter()
    p = subprocess.run([exe], input=data, env=env, capture_output=True, check=False)
    dt = (time.perf_counter() - t) * 1e3
    if p.returncode != 0:
        raise RuntimeError(f"{exe} {command} {cid} failed: {p.stdout!r} {p.stderr!r}")
    return dt


def filesystem(path: str) -> str:
    """The filesystem `path` is on, as the header prints it: type, device, and for ext4 whether it
    has a journal (jbd2 lists the journalled devices)."""
    best, fstype, dev = "", "?", "?"
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mnt = left.split()[4]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype, dev = mnt, right.split()[0], right.split()[1]
    note = f"{fstype} on {dev} (mounted at {best})"
    if fstype == "ext4":
        name = os.path.basename(dev)
        journalled = any(d.startswith(name + "-") for d in os.listdir("/proc/fs/jbd2")) \
            if os.path.isdir("/proc/fs/jbd2") else False
        note += ", with a journal" if journalled else ", without a journal"
    return note


def _p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]


def _iqr(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def main() -> int:
    ap = argparse.ArgumentParser(prog="./run bench", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=60, help="ADD/DEL pairs per variant (default 60)")
    ap.add_argument("--pods", type=int, default=100, help="pods in the concurrency test (default 100)")
    ap.add_argument("--concurrency", type=int, default=8, help="calls at once in it (default 8)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the concurrency test (default 3)")
    ap.add_argument("--age", type=float, default=0.1,
                    help="seconds a pod lives between its ADD and its DEL (default 0.1; 0: back to back)")
    ap.add_argument("--dir", default=None,
                    help="where both sides keep their files (default: the system's temp dir)")
    a = ap.parse_args()
    if a.rounds < 2 or a.pods < 1 or a.concurrency < 1 or a.reps < 1:
        ap.error("--rounds must be >= 2, --pods, --concurrency and --reps >= 1")
    if a.dir is not None and not os.path.isdir(a.dir):
        ap.error(f"--dir {a.dir}: no such directory")
    tmp = Path(tempfile.mkdtemp(prefix="moor-bench-", dir=a.dir))
    cni_bin = tmp / "bin"
    launcher = str(write_launcher(cni_bin, "moor"))
    write_launcher(cni_bin, "moor-ipam")
    # the C client (cni/client.c), handing what it cannot do to the Python launcher, as installed
    client = str(cni_bin / "moor-c")
    why = build(Path(client), launcher)
    if why:
        print(f"the C client is not measured: {why}")
    for p in Path(REF).iterdir():
        os.symlink(p, cni_bin / p.name)
    sock = str(tmp / "cni.sock")

    def host_local(tag: str, subnet: str = "192.0.2.0/24") -> dict:
        net = subnet.rsplit(".", 1)[0]
        return {"type": "host-local", "dataDir": str(tmp / f"hl-{tag}"),
                "ranges": [[{"subnet": subnet, "rangeStart": f"{net}.10", "rangeEnd": f"{net}.250",
                             "gateway": f"{net}.1"}]]}

    def moor_ipam(tag: str, cidr: str) -> dict:
        return {"type": "moor-ipam", "dataDir": str(tmp / f"mi-{tag}"), "release": "immediate",
                "cooldownSeconds": 0, "gcGraceSeconds": 0, "pools": [{"cidr": cidr}]}

    def moor(tag: str, mode: str, ipam: dict, agent: bool) -> dict:
        c = {"cniVersion": "1.0.0", "name": f"b{tag}", "type": "moor", "mode": mode, "stateDir": str(tmp / "state"),
             "agentSocket": sock if agent else "", "ipam": ipam}
        if mode == "macvlan":
            c["master"] = "up0"
        return c

    nets = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
    groups = {
        "macvlan": {
            "go macvlan+host-local": (f"{REF}/macvlan", {"cniVersion": "1.0.0", "name": "bgo", "type": "macvlan",
                                                         "master": "up0", "mode": "bridge", "ipam": host_local("go")}),
            "moor+host-local alone": (launcher, moor("m1", "macvlan", host_local("m1"), False)),
            "moor+host-local agent": (launcher, moor("m2", "macvlan", host_local("m2"), True)),
            "moor+moor-ipam alone": (launcher, moor("m3", "macvlan", moor_ipam("m3", nets[0]), False)),
            "moor+moor-ipam agent": (launcher, moor("m4", "macvlan", moor_ipam("m4", nets[0]), True)),
            "moor+moor-ipam agent C": (client, moor("m5", "macvlan", moor_ipam("m5", nets[0]), True)),
        },
        "routed": {
            "go ptp+host-local": (f"{REF}/ptp", {"cniVersion": "1.0.0", "name": "bptp", "type": "ptp",
                                                 "ipam": host_local("ptp", nets[1])}),
            "moor bgp+host-local alone": (launcher, moor("r1", "bgp", host_local("r1", nets[2]), False)),
            "moor bgp+host-local agent": (launcher, moor("r2", "bgp", host_local("r2", nets[2]), True)),
            "moor bgp+moor-ipam alone": (launcher, moor("r3", "bgp", moor_ipam("r3", nets[2]), False)),
            "moor bgp+moor-ipam agent": (launcher, moor("r4", "bgp", moor_ipam("r4", nets[2]), True)),
            "moor bgp+moor-ipam agent C": (client, moor("r5", "bgp", moor_ipam("r5", nets[2]), True)),
        },
    }
    if why:
        for vs in groups.values():
            for name in [n for n in vs if n.endswith(" C")]:
                del vs[name]
    times = {g: {v: {"ADD": [], "DEL": []} for v in vs} for g, vs in groups.items()}
    conc: dict[str, dict[str, list[float]]] = {}
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    with Lab() as lab:
        node, peer = lab.ns("node"), lab.ns("peer")
        lab.veth(node, "up0", peer, "pp0")
        lab.run(node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        agent_log = open(tmp / "moord.log", "w")
        (tmp / "moord.yaml").write_text(json.dumps(
            {"bgp": {"asn": 65001, "routerId": "192.0.2.2"}, "api": {"socket": ""}, "cni": {"socket": sock},
             "metrics": {"port": 0}, "probe": {"enabled": False}}))
        agent = lab.spawn(node, [sys.executable, "-m", "dataplane.agent", "--config", str(tmp / "moord.yaml")],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=agent_log)
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"moord did not start: {(tmp / 'moord.log').read_text()}")
            time.sleep(0.1)
        pods = [Lab.path(lab.ns(f"p{i}")) for i in range(max(4, a.pods))]
        _enter(Lab.path(node))  # from here every exec starts in the node's netns, both sides alike
        try:
            for r in range(a.rounds):
                for group, variants in groups.items():
                    names = list(variants)
                    k = r % len(names)
                    for name in names[k:] + names[:k]:  # rotate: no variant always runs first
                        exe, conf = variants[name]
                        cid = f"{name.replace(' ', '-').replace('+', '_')}-{r}"
                        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=b;K8S_POD_NAME=p{r}"
                        pod = pods[r % 4]
                        times[group][name]["ADD"].append(_call(exe, "ADD", conf, pod, cid, str(cni_bin), args))
                        time.sleep(a.age)  # the pod lives a moment, as pods do (see --age)
                        times[group][name]["DEL"].append(_call(exe, "DEL", conf, pod, cid, str(cni_bin), args))
            # throughput: many pods at once
            cvars = {"go macvlan+host-local": groups["macvlan"]["go macvlan+host-local"],
                     "moor+host-local alone": groups["macvlan"]["moor+host-local alone"],
                     "moor+host-local agent": groups["macvlan"]["moor+host-local agent"],
                     "moor+moor-ipam agent": groups["macvlan"]["moor+moor-ipam agent"]}
            if not why:
                cvars["moor+moor-ipam agent C"] = groups["macvlan"]["moor+moor-ipam agent C"]
            conc = {v: {"ADD": [], "DEL": []} for v in cvars}
            for rep in range(a.reps):
                names = list(cvars)
                k = rep % len(names)
                for name in names[k:] + names[:k]:
                    exe, conf = cvars[name]
                    for command in ("ADD", "DEL"):
                        def one(i: int) -> float:
                            return _call(exe, command, conf, pods[i], f"c{rep}-{i}", str(cni_bin),
                                         f"IgnoreUnknown=1;K8S_POD_NAMESPACE=c;K8S_POD_NAME=p{i}")
                        t = time.perf_counter()
                        with ThreadPoolExecutor(a.concurrency) as ex:
                            list(ex.map(one, range(a.pods)))
                        conc[name][command].append(a.pods / (time.perf_counter() - t))
        finally:
            ctypes.CDLL(None, use_errno=True).setns(home, CLONE_NEWNET)
            os.close(home)
            agent_log.close()
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"files (both sides): {tmp.parent}, {filesystem(str(tmp.parent))}\n")
    print(f"CNI ADD/DEL latency, {a.rounds} interleaved rounds per variant (ms; ratio: median of per-round "
          "ratios to the reference, [IQR])")
    for group, variants in times.items():
        ref = next(iter(variants))
        print(f"\n{group}: reference {ref}")
        print(f"  {'variant':<28} {'ADD med':>8} {'p90':>7} {'ADD ratio':>20} {'DEL med':>8} {'p90':>7} {'DEL ratio':>20}")
        for name, t in variants.items():
            cols = []
            for cmd in ("ADD", "DEL"):
                ratios = [x / y for x, y in zip(t[cmd], variants[ref][cmd])]
                lo, med, hi = _iqr(ratios)
                cols.append(f"{statistics.median(t[cmd]):8.2f} {_p90(t[cmd]):7.2f} {med:6.2f}x [{lo:.2f}-{hi:.2f}]")
            print(f"  {name:<28} {cols[0]:>37} {cols[1]:>37}")
    print(f"\n{a.pods} pods at concurrency {a.concurrency}, {a.reps} interleaved reps (pods/s, median [min-max]; "
          "ratio of medians to the reference)")
    ref = next(iter(conc))
    for name, c in conc.items():
        cols = []
        for cmd in ("ADD", "DEL"):
            med = statistics.median(c[cmd])
            cols.append(f"{cmd} {med:7.1f} [{min(c[cmd]):.1f}-{max(c[cmd]):.1f}] {med / statistics.median(conc[ref][cmd]):5.2f}x")
        print(f"  {name:<28} {cols[0]}   {cols[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
