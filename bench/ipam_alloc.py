"""IPAM throughput and ADD latency: moor-ipam's embedded (SQLite) and etcd stores against the
reference host-local plugin, all measured in this run.

- allocations/s: ADD+DEL pairs through the library call (no exec), sequential, and 8 processes
  in parallel on one network (contention on the store);
- ADD latency: the executable as a runtime runs it (median, p90), moor-ipam via its -IS launcher.
Run: ./run bench ipam [--ops N]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cni.install import write_launcher  # noqa: E402
from tests import etcd_server  # noqa: E402

POOL = {"cidr": "192.0.2.0/24", "gateway": "192.0.2.1"}


def _moor_conf(tmp: Path, tag: str, etcd: str | None) -> dict:
    ipam = {"type": "moor-ipam", "dataDir": str(tmp / f"data-{tag}"), "pools": [POOL], "release": "immediate",
            "cooldownSeconds": 0}
    if etcd:
        ipam["etcd"] = {"endpoints": [etcd], "prefix": f"/bench-{tag}"}
    return {"cniVersion": "1.0.0", "name": f"b{tag}", "type": "macvlan", "ipam": ipam}


def _pairs(conf: dict, n: int, wid: int) -> float:
    from ipam.plugin import run
    data = json.dumps(conf).encode()
    env = {"CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "MOOR_NODE_NAME": "bench"}
    t = time.perf_counter()
    for i in range(n):
        cid = f"w{wid}-{i}"
        out, code = run(dict(env, CNI_COMMAND="ADD", CNI_CONTAINERID=cid,
                             CNI_ARGS=f"K8S_POD_NAMESPACE=b;K8S_POD_NAME=p{wid}-{i}"), data)
        assert code == 0, out
        out, code = run(dict(env, CNI_COMMAND="DEL", CNI_CONTAINERID=cid), data)
        assert code == 0, out
    return time.perf_counter() - t


def _parallel(conf: dict, n: int, procs: int) -> float:
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        t = time.perf_counter()
        pool.starmap(_pairs, [(conf, n // procs, w) for w in range(procs)])
        return time.perf_counter() - t


def _exec_latency(exe: str, conf: dict, n: int) -> tuple[float, float]:
    data = json.dumps(conf).encode()
    xs = []
    for i in range(n):
        env = {"PATH": os.environ["PATH"], "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_CONTAINERID": f"l{i}",
               "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=l;K8S_POD_NAME=l{i}"}
        t = time.perf_counter()
        p = subprocess.run([exe], input=data, env=dict(env, CNI_COMMAND="ADD"), capture_output=True)
        xs.append((time.perf_counter() - t) * 1e3)
        assert p.returncode == 0, p.stdout
        subprocess.run([exe], input=data, env=dict(env, CNI_COMMAND="DEL"), capture_output=True, check=True)
    xs.sort()
    return statistics.median(xs), xs[int(0.9 * (len(xs) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=int, default=400, help="ADD+DEL pairs per throughput run (default 400)")
    ap.add_argument("--latency-runs", type=int, default=40)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moor-ipam-bench-"))
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    exe = str(write_launcher(bin_dir, "moor-ipam"))
    etcd = etcd_server.start(tmp / "etcd")
    try:
        rows = []
        for tag, ep in (("sqlite", None), ("etcd", etcd.endpoint)):
            conf = _moor_conf(tmp, tag, ep)
            seq = a.ops / _pairs(conf, a.ops, 0)
            par = a.ops / _parallel(_moor_conf(tmp, tag + "p", ep), a.ops, 8)
            lat = _exec_latency(exe, _moor_conf(tmp, tag + "l", ep), a.latency_runs)
            rows.append((f"moor-ipam/{tag}", seq, par, lat))
        hl = {"cniVersion": "1.0.0", "name": "bhl", "type": "macvlan",
              "ipam": {"type": "host-local", "dataDir": str(tmp / "hl"), "ranges": [[{"subnet": "192.0.2.0/24"}]]}}
        hl_lat = _exec_latency("/usr/lib/cni/host-local", hl, a.latency_runs)
    finally:
        etcd.stop()
        subprocess.run(["rm", "-rf", str(tmp)])
    print(f"IPAM: ADD+DEL pairs/s through the library call ({a.ops} pairs) and ADD latency of the executable (ms)")
    print(f"{'ipam':<18} {'pairs/s seq':>12} {'pairs/s 8proc':>14} {'ADD med':>8} {'ADD p90':>8}")
    for name, seq, par, (med, p90) in rows:
        print(f"{name:<18} {seq:12.0f} {par:14.0f} {med:8.2f} {p90:8.2f}")
    print(f"{'host-local (Go)':<18} {'-':>12} {'-':>14} {hl_lat[0]:8.2f} {hl_lat[1]:8.2f}")
    for name, _s, _p, (med, _9) in rows:
        print(f"ratio {name}/host-local ADD median: {med / hl_lat[0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
