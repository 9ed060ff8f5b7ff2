"""ADD and DEL latency of moor's macvlan mode against the Go reference macvlan plugin, both with
the reference host-local IPAM, measured in the same run on the same namespace topology.

Prints median and p90 for each and the ratio moor/reference, then where moor's time goes.
Run as root: ./run bench [--rounds N]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cni.install import write_launcher  # noqa: E402
from dataplane.nslab import Lab, sh  # noqa: E402

REF = "/usr/lib/cni"


def _enter(ns: str):
    """preexec_fn: run the plugin inside the node netns without `ip netns exec` (which also
    remounts /sys and would add the same constant to both sides)."""
    def fn() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    return fn


def _call(exe: str, node: str, command: str, conf: dict, pod_ns: str, cid: str, path: str,
          extra: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_IFNAME": "eth0", "CNI_PATH": path, **(extra or {})}
    data = json.dumps(conf).encode()
    t = time.perf_counter()
    p = subprocess.run([exe], input=data, env=env, capture_output=True, preexec_fn=_enter(node), check=False)
    dt = (time.perf_counter() - t) * 1e3
    if p.returncode != 0:
        raise RuntimeError(f"{exe} {command} failed: {p.stdout!r} {p.stderr!r}")
    return dt, p


def _stats(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]


def _wall(cmd: list[str], n: int = 20) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=40, help="ADD/DEL pairs per plugin (default 40)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moor-bench-"))
    cni_bin = tmp / "bin"
    cni_bin.mkdir()
    launcher = str(write_launcher(cni_bin))
    for p in Path(REF).iterdir():
        os.symlink(p, cni_bin / p.name)

    def ipam(tag: str) -> dict:
        return {"type": "host-local", "dataDir": str(tmp / f"ipam-{tag}"),
                "ranges": [[{"subnet": "192.0.2.0/24", "rangeStart": "192.0.2.10", "rangeEnd": "192.0.2.250",
                             "gateway": "192.0.2.1"}]]}

    confs = {
        "go-macvlan": {"cniVersion": "1.0.0", "name": "bgo", "type": "macvlan", "master": "up0",
                       "mode": "bridge", "ipam": ipam("go")},
        "moor": {"cniVersion": "1.0.0", "name": "bmoor", "type": "moor", "mode": "macvlan", "master": "up0",
                 "stateDir": str(tmp / "state"), "ipam": ipam("moor")},
        "moor+moor-ipam": {"cniVersion": "1.0.0", "name": "bmi", "type": "moor", "mode": "macvlan",
                           "master": "up0", "stateDir": str(tmp / "state"),
                           "ipam": {"type": "moor-ipam", "dataDir": str(tmp / "mi"), "release": "immediate",
                                    "cooldownSeconds": 0, "pools": [{"cidr": "192.0.2.0/24", "gateway": "192.0.2.1"}]}},
    }
    write_launcher(cni_bin, "moor-ipam")
    exes = {"go-macvlan": f"{REF}/macvlan", "moor": launcher, "moor+moor-ipam": launcher}
    results: dict[str, dict[str, list[float]]] = {k: {"ADD": [], "DEL": []} for k in confs}
    internal: list[float] = []
    with Lab() as lab:
        node, peer = lab.ns("node"), lab.ns("peer")
        lab.veth(node, "up0", peer, "pp0")
        pods = [lab.ns(f"p{i}") for i in range(4)]
        # interleave the two plugins round by round so drift on the machine hits both alike
        for r in range(args.rounds):
            for name in confs:
                pod = pods[r % len(pods)]
                cid = f"{name.replace('+', '-')}-{r}"
                extra = {"MOOR_TIMING": "1", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=b;K8S_POD_NAME=p{r}"} \
                    if name.startswith("moor") else None
                dt, p = _call(exes[name], node, "ADD", confs[name], pod, cid, str(cni_bin), extra)
                results[name]["ADD"].append(dt)
                if name == "moor":  # host-local: the same IPAM as the reference
                    internal.append(float(p.stderr.split(b" took ")[1].split(b" ms")[0]))
                dt, _ = _call(exes[name], node, "DEL", confs[name], pod, cid, str(cni_bin))
                results[name]["DEL"].append(dt)
        # host-local alone: the IPAM exec both plugins pay
        hl = []
        for r in range(args.rounds):
            conf = dict(confs["moor"]["ipam"], name="bhl", cniVersion="1.0.0")
            c = {"cniVersion": "1.0.0", "name": "bhl", "ipam": conf}
            dt, _ = _call(f"{REF}/host-local", node, "ADD", c, pods[0], f"hl-{r}", str(cni_bin))
            hl.append(dt)
            _call(f"{REF}/host-local", node, "DEL", c, pods[0], f"hl-{r}", str(cni_bin))
    sh("rm", "-rf", str(tmp))

    print(f"CNI ADD/DEL latency, macvlan + host-local, {args.rounds} rounds each (ms)")
    print(f"{'plugin':<16} {'ADD med':>8} {'ADD p90':>8} {'DEL med':>8} {'DEL p90':>8}")
    for name, r in results.items():
        am, a9 = _stats(r["ADD"])
        dm, d9 = _stats(r["DEL"])
        print(f"{name:<16} {am:8.2f} {a9:8.2f} {dm:8.2f} {d9:8.2f}")
    ra = _stats(results["moor"]["ADD"])[0] / _stats(results["go-macvlan"]["ADD"])[0]
    rd = _stats(results["moor"]["DEL"])[0] / _stats(results["go-macvlan"]["DEL"])[0]
    print(f"ratio moor/reference (both host-local): ADD {ra:.2f}x, DEL {rd:.2f}x (median)")
    ri = _stats(results["moor+moor-ipam"]["ADD"])[0] / _stats(results["go-macvlan"]["ADD"])[0]
    print(f"ratio moor+moor-ipam (in process) / reference: ADD {ri:.2f}x")
    py = str(Path(sys.executable))
    print("\nwhere moor's ADD time goes (medians, ms):")
    root = str(Path(__file__).resolve().parent.parent)
    imp = f"import sys; sys.path.insert(0, {root!r}); import cni.plugin, cni.macvlan"
    print(f"  python -IS -c pass (launcher)   {_wall([py, '-IS', '-c', 'pass']):7.2f}")
    print(f"  venv python -c pass             {_wall([py, '-c', 'pass']):7.2f}")
    print(f"  python -IS + moor's imports     {_wall([py, '-IS', '-c', imp]):7.2f}")
    print(f"  import pyroute2 (not used)      {_wall([py, '-c', 'import pyroute2'], 5):7.2f}")
    print(f"  host-local ADD exec             {statistics.median(hl):7.2f}")
    print(f"  moor ADD inside the process     {statistics.median(internal):7.2f}  (IPAM exec included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
