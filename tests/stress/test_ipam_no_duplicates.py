"""No duplicate IP, ever: 16 concurrent moor-ipam workers, ~2,000 random ADD/DEL operations with
random pod identities and fixed-IP requests, some workers SIGKILLed mid-operation and replaced,
then the store's invariants and the owners are checked — against the embedded SQLite store and
against a real etcd shared by three simulated nodes. Two GC passes then reclaim what the killed
workers leaked, and nothing else."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ipam import config
from ipam.plugin import run
from ipam.reservation import ACTIVE
from ipam.store import open_store
from tests import etcd_server
from tests.helpers import REPO

WORKERS = 16
TOTAL_OPS = 2000
KILLS = 6
HANG_GUARD_S = 900


def _netconf(tmp: Path, etcd: str | list[str] | None) -> dict:
    ipam = {"type": "moor-ipam", "dataDir": str(tmp / "data"), "sticky": "pod", "holdSeconds": 2,
            "cooldownSeconds": 0, "gcGraceSeconds": 0,
            "pools": [{"cidr": "192.0.2.0/24", "rangeStart": "192.0.2.10", "rangeEnd": "192.0.2.99",
                       "gateway": "192.0.2.1"}]}
    if etcd:
        ipam["etcd"] = {"endpoints": etcd if isinstance(etcd, list) else [etcd], "prefix": f"/stress-{os.getpid()}"}
    return {"cniVersion": "1.1.0", "name": "stress", "type": "macvlan", "ipam": ipam}


def _spawn(wid: int, n_ops: int, netconf: dict, tmp: Path, nodes: int, threads: int = 1) -> subprocess.Popen:
    arg = json.dumps({"wid": wid, "n_ops": n_ops, "netconf": netconf, "journal": str(tmp / f"j{wid}"),
                      "node": f"node{wid % nodes}", "seed": wid, "threads": threads})
    return subprocess.Popen([sys.executable, "-m", "tests.ipam_stress", arg], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stress(tmp: Path, netconf: dict, nodes: int, chaos=None, total_ops: int = TOTAL_OPS, threads: int = 1) -> None:
    """`chaos(kills)`: called after each worker kill (the 3-member cluster loses and regains a member).
    `threads`: workers per process (WORKERS in all), the way moord's CNI server runs calls."""
    rnd = random.Random(7)
    per = total_ops // WORKERS * threads
    procs = {wid: _spawn(wid, per, netconf, tmp, nodes, threads) for wid in range(WORKERS // threads)}
    next_wid, kills = WORKERS, 0
    try:
        # KILLS rounds: SIGKILL a running worker mid-operation, start a replacement
        while kills < KILLS:
            time.sleep(rnd.uniform(0.2, 0.6))
            running = [w for w, p in procs.items() if p.poll() is None]
            if not running:
                break
            victim = rnd.choice(running)
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            kills += 1
            procs[next_wid] = _spawn(next_wid, per // 2, netconf, tmp, nodes, threads)
            next_wid += 1
            if chaos is not None:
                chaos(kills)
        for p in procs.values():
            p.wait(timeout=HANG_GUARD_S)  # a hung worker fails the test instead of blocking CI
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for w, p in procs.items():
        assert p.returncode in (0, -signal.SIGKILL), f"worker {w} failed: {p.stderr.read().decode()[-2000:]}"

    # what each container was told, from the journals
    live, doubt = {}, set()
    for j in tmp.glob("j*"):
        for line in j.read_text().splitlines():
            kind, cid, *rest = line.split()
            if kind in ("add-start", "del-start"):
                doubt.add(cid)
            elif kind == "add":
                live[cid] = rest[0]
                doubt.discard(cid)
            elif kind == "del":
                live.pop(cid, None)
                doubt.discard(cid)
            elif kind == "add-failed":
                doubt.discard(cid)
    assert len(doubt) <= kills * threads  # each killed process: at most one call in flight a thread
    conf = config.parse(netconf)
    store = open_store(conf)
    try:
        records = store.read(conf.network)  # the whole network, every node's blocks
    finally:
        store.close()
    active = {r.ip: r for r in records if r.state == ACTIVE}
    # no IP told to two live containers, and each live container owns its IP in the store (a
    # container whose DEL a kill interrupted may or may not have released it: it is in doubt)
    sure = {cid: ip for cid, ip in live.items() if cid not in doubt}
    dupes = [ip for ip, n in Counter(sure.values()).items() if n > 1]
    assert not dupes, f"duplicate IPs handed out: {dupes}"
    for cid, ip in sure.items():
        assert ip in active and active[ip].container_id == cid, (cid, ip, active.get(ip))
    # every active reservation is a live container's or one a killed worker was adding
    strays = {r.container_id for r in active.values()} - set(live) - doubt
    assert not strays, f"active reservations nobody holds: {strays}"
    for r in records:
        assert conf.pools[0].usable(__import__("ipaddress").ip_address(r.ip))

    # two GC passes per node, with the runtime's list of live attachments, reclaim exactly the leaks
    gc_conf = dict(netconf, **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in live]})
    for _ in range(2):
        for n in range(nodes):
            out, code = run({"CNI_COMMAND": "GC", "MOOR_NODE_NAME": f"node{n}"}, json.dumps(gc_conf).encode())
            assert code == 0, out
    store = open_store(conf)
    try:
        after = store.read(conf.network)  # the whole network, every node's blocks
    finally:
        store.close()
    owners = {r.container_id for r in after if r.state == ACTIVE}
    assert set(sure) <= owners <= set(live)


def test_no_duplicates_embedded_store(tmp_path: Path):
    _stress(tmp_path, _netconf(tmp_path, None), nodes=1)


def test_no_duplicates_embedded_store_threads_and_processes(tmp_path: Path):
    """4 processes of 4 threads each: threads of one process queue on its writer lock, processes
    on SQLite's, and a SIGKILL takes a process down with the lock one of its threads held."""
    _stress(tmp_path, _netconf(tmp_path, None), nodes=1, threads=4)


def test_no_duplicates_etcd_three_nodes(tmp_path: Path):
    try:
        etcd = etcd_server.start(tmp_path / "etcd")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    try:
        _stress(tmp_path, _netconf(tmp_path, etcd.endpoint), nodes=3)
    finally:
        etcd.stop()


def test_no_duplicates_etcd_cluster_losing_a_member(tmp_path: Path):
    """Three etcd members on loopback; mid-storm one is SIGKILLed, and restarted two worker kills
    later (it rejoins and catches up). The plugin's requests to the dead member fail over to the
    others; no write is lost or doubled."""
    try:
        cluster = etcd_server.start_cluster(tmp_path / "etcd")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    events = []

    def chaos(kills: int) -> None:
        if kills == 2:
            cluster.stop_member(1)
            events.append("killed")
        elif kills == 4:
            cluster.start_member(1)
            events.append("restarted")

    try:
        # half the storm: three members fsync every write on a shared 2-core runner
        _stress(tmp_path, _netconf(tmp_path, cluster.endpoints), nodes=3, chaos=chaos, total_ops=TOTAL_OPS // 2)
        assert events == ["killed", "restarted"]  # the storm ran through both
        assert cluster.members[1].healthy()
    finally:
        cluster.stop()


def _open_and_add(args) -> tuple[bytes, int]:
    netconf, cid, barrier = args
    barrier.wait()  # everyone opens the brand-new database in the same instant
    return run({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": "/x", "CNI_IFNAME": "eth0"},
               json.dumps(netconf).encode())


def test_many_processes_opening_a_new_database_at_once(tmp_path: Path):
    """A node's first pods start together: each process opens, and sets up, the new database."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        netconf = _netconf(tmp_path / f"r{round_}", None)
        barrier = ctx.Manager().Barrier(12)
        with ctx.Pool(12) as pool:
            outs = pool.map(_open_and_add, [(netconf, f"c{i}", barrier) for i in range(12)])
        assert all(code == 0 for _, code in outs), outs
        assert len({json.loads(o)["ips"][0]["address"] for o, _ in outs}) == 12
