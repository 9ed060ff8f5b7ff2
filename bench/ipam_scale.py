"""IPAM at cluster scale on etcd: the first layout (one key an IP, every ADD reads the network)
against blocks (an ADD reads its node's blocks), measured in one run.

1. ADD latency and bytes read from etcd per ADD with 0, 10,000 and 100,000 reservations in the
   network (seeded straight into etcd; the blocks network is the same data run through `migrate`),
   rounds interleaved over sizes and layouts, median and spread printed;
2. 50 simulated nodes x 4 workers allocating and releasing at once against a 3-member cluster:
   operations/s, CAS retries per operation, and the invariant (no IP live twice, every live
   container's IP stored for it, nothing left after the DELs and GC).
Run: ./run bench ipam-scale [--rounds 6] [--sizes 0,10000,100000] [--pairs 5]
"""
from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipam import config, policy  # noqa: E402
from ipam.identity import identify  # noqa: E402
from ipam.reservation import ACTIVE, Reservation  # noqa: E402
from ipam.store.etcd import EtcdStore  # noqa: E402
from ipam.store.migrate import migrate  # noqa: E402
from tests import etcd_server  # noqa: E402

POOL6 = "2001:db8:100::/104"  # room for 100,000 seeded reservations plus the bench's own


def _conf(endpoints: list[str], prefix: str, name: str, cidr: str = POOL6) -> config.IPAMConf:
    return config.parse({"name": name, "ipam": {"type": "moor-ipam", "etcd": {"endpoints": endpoints, "prefix": prefix},
                                                "pools": [{"cidr": cidr}], "release": "immediate",
                                                "cooldownSeconds": 0, "gcGraceSeconds": 0}})


def _post(ep: str, path: str, body: dict) -> dict:
    with urllib.request.urlopen(urllib.request.Request(ep + path, data=json.dumps(body).encode()), timeout=60) as r:
        return json.loads(r.read())


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _seed(ep: str, prefix: str, network: str, n: int) -> None:
    """n reservations of the first layout (held by 200 seed nodes, sticky names), 100 a txn."""
    _post(ep, "/v3/kv/put", {"key": _b64(f"{prefix}/{network}/layout"), "value": _b64("ip")})
    ops = []
    for i in range(n):
        ip = str(ipaddress.ip_address(int(ipaddress.ip_network(POOL6).network_address) + 1 + i))
        r = Reservation(ip=ip, pool=POOL6, state=ACTIVE, identity=f"pod:seed/p{i}", pod=f"seed/p{i}",
                        pod_uid=f"u{i}", container_id=f"seed{i:08x}" * 4, ifname="eth0", netns=f"/run/netns/s{i}",
                        node=f"seed-{i // 500}", seq=1, updated=1.0)
        ops.append({"requestPut": {"key": _b64(f"{prefix}/{network}/ip/{ip}"), "value": _b64(json.dumps(r.to_dict()))}})
        if len(ops) == 100:
            _post(ep, "/v3/kv/txn", {"success": ops})
            ops = []
    if ops:
        _post(ep, "/v3/kv/txn", {"success": ops})


def _add_del(store: EtcdStore, conf: config.IPAMConf, node: str, cid: str) -> tuple[float, int, int]:
    """One ADD (timed, bytes read) and its DEL, through the store as the plugin uses it."""
    ident = identify({"K8S_POD_NAMESPACE": "bench", "K8S_POD_NAME": cid}, {}, "pod")
    req = policy.Request(container_id=cid, ifname="eth0", ident=ident, node=node, now=time.time())
    b0, r0 = store.bytes_read, store.retries
    t = time.perf_counter()
    store.transact(conf.network, lambda v: policy.allocate(v, conf, req))
    dt = time.perf_counter() - t
    nbytes = store.bytes_read - b0
    store.transact(conf.network, lambda v: policy.release(v, conf, cid, "eth0", time.time()))
    return dt, nbytes, store.retries - r0


def part1(ep: str, sizes: list[int], rounds: int) -> None:
    print(f"== ADD cost against reservations in the network ({rounds} interleaved rounds, one etcd) ==")
    nets = {}
    for n in sizes:
        for lay in ("ip", "blocks"):
            name = f"s{n}-{lay}"
            t = time.perf_counter()
            _seed(ep, "/scale", name, n)
            conf = _conf([ep], "/scale", name)
            store = EtcdStore([ep], "/scale", 60.0, conf=conf, node="bench")
            extra = ""
            if lay == "blocks":
                t2 = time.perf_counter()
                got = migrate(store, conf)
                extra = f", migrate {time.perf_counter() - t2:.1f} s ({got.get('blocks', 0)} blocks)"
            print(f"  seeded {name}: {n} reservations in {time.perf_counter() - t:.1f} s{extra}")
            nets[(n, lay)] = (store, conf)
    lat: dict = {k: [] for k in nets}
    byt: dict = {k: [] for k in nets}
    for r in range(rounds + 1):  # round 0 warms up (the bench node claims its block)
        for key in nets:
            store, conf = nets[key]
            dt, nb, _ = _add_del(store, conf, "bench", f"b{r}")
            if r:
                lat[key].append(dt * 1e3)
                byt[key].append(nb)
    print(f"  {'reservations':>12} {'layout':>7} {'ADD ms median':>14} {'min-max':>15} {'bytes read/ADD':>15}")
    for key in nets:
        xs = lat[key]
        print(f"  {key[0]:>12} {key[1]:>7} {statistics.median(xs):>14.2f} {min(xs):>7.2f}-{max(xs):<7.2f} "
              f"{statistics.median(byt[key]):>15,.0f}")
    for lay in ("ip", "blocks"):
        lo, hi = statistics.median(lat[(sizes[0], lay)]), statistics.median(lat[(sizes[-1], lay)])
        print(f"  {lay}: latency ratio {sizes[-1]}/{sizes[0]} = {hi / lo:.2f}")


def _worker(args) -> tuple[list, int, int, int]:
    """One process running `threads` simulated workers (node, worker) of ADD/DEL pairs."""
    eps, prefix, name, cidr, workers, pairs = args
    conf = _conf(eps, prefix, name, cidr)
    journal, lock = [], threading.Lock()
    totals = Counter()

    def one(node: str, w: int) -> None:
        store = EtcdStore(eps, prefix, 10.0, conf=conf, node=node)
        live = []
        for i in range(pairs):
            cid = f"{node}-{w}-{i}"
            for _ in range(100):
                try:
                    ident = identify({"K8S_POD_NAMESPACE": "s", "K8S_POD_NAME": cid}, {}, "pod")
                    req = policy.Request(container_id=cid, ifname="eth0", ident=ident, node=node, now=time.time())
                    got = store.transact(name, lambda v: policy.allocate(v, conf, req))
                    break
                except Exception as e:  # noqa: BLE001 - code 11: retry as a runtime does
                    if getattr(e, "code", None) != 11:
                        raise
                    time.sleep(0.05)
            else:
                raise RuntimeError("gave up")
            live.append(cid)
            with lock:
                journal.append(("add", cid, got[0].ip))
            if i % 2:
                old = live.pop(0)
                store.transact(name, lambda v: policy.release(v, conf, old, "eth0", time.time()))
                with lock:
                    journal.append(("del", old, ""))
        with lock:
            totals["ops"] += pairs + pairs // 2
            totals["retries"] += store.retries
            totals["bytes"] += store.bytes_read

    ts = [threading.Thread(target=one, args=(n, w)) for n, w in workers]
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    return journal, totals["ops"], totals["retries"], totals["bytes"]


def part2(eps: list[str], pairs: int, procs: int) -> None:
    print(f"== 50 nodes x 4 workers against a 3-member cluster ({pairs} ADDs each, every other one DELeted) ==")
    cidr = "2001:db8:200::/112"
    workers = [(f"node{n:02d}", w) for n in range(50) for w in range(4)]
    for lay in ("ip", "blocks"):
        name = f"storm-{lay}"
        _post(eps[0], "/v3/kv/put", {"key": _b64(f"/scale/{name}/layout"), "value": _b64(lay)})
        chunks = [workers[i::procs] for i in range(procs)]
        t = time.perf_counter()
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            outs = pool.map(_worker, [(eps, "/scale", name, cidr, c, pairs) for c in chunks])
        dt = time.perf_counter() - t
        live = {}
        for journal, *_ in outs:
            for ev, cid, ip in journal:
                if ev == "add":
                    live[cid] = ip
                else:
                    live.pop(cid)
        ops = sum(o[1] for o in outs)
        retries = sum(o[2] for o in outs)
        nbytes = sum(o[3] for o in outs)
        conf = _conf(eps, "/scale", name, cidr)
        store = EtcdStore(eps, "/scale", 60.0, conf=conf, node="checker")
        active = {r.container_id: r.ip for r in store.read(name) if r.state == ACTIVE}
        twice = [ip for ip, k in Counter(live.values()).items() if k > 1]
        ok = not twice and active == live
        # the rest DELeted by their nodes, then each node's GC: nothing may be left
        for cid in list(live):
            node = cid.split("-")[0]
            s = EtcdStore(eps, "/scale", 60.0, conf=conf, node=node)
            s.transact(name, lambda v: policy.release(v, conf, cid, "eth0", time.time()))
        for n in sorted({c.split("-")[0] for c in live}):
            s = EtcdStore(eps, "/scale", 60.0, conf=conf, node=n)
            while any(s.transact(name, lambda v: policy.collect(v, conf, n, lambda r: False, time.time() + 1, 60))):
                pass  # at most 60 records a txn (etcd's limit): until nothing is left to collect
        left = [r for r in store.read(name) if r.state == ACTIVE]
        print(f"  {lay:>7}: {ops} ops in {dt:.1f} s = {ops / dt:.0f} ops/s, CAS retries/op {retries / ops:.2f}, "
              f"bytes read/op {nbytes / ops:,.0f}; invariant {'holds' if ok and not left else 'BROKEN'} "
              f"(live {len(live)}, stored {len(active)}, duplicates {len(twice)}, left after DEL+GC {len(left)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--sizes", default="0,10000,100000")
    ap.add_argument("--pairs", type=int, default=4, help="ADDs per simulated worker in part 2")
    ap.add_argument("--procs", type=int, default=8, help="processes carrying part 2's 200 workers")
    ap.add_argument("--skip", choices=("1", "2"), help="skip a part")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="moor-ipam-scale-"))
    try:
        if a.skip != "1":
            e = etcd_server.start(tmp / "single")
            try:
                part1(e.endpoint, [int(x) for x in a.sizes.split(",")], a.rounds)
            finally:
                e.stop()
        if a.skip != "2":
            cluster = etcd_server.start_cluster(tmp / "cluster")
            try:
                part2(cluster.endpoints, a.pairs, a.procs)
            finally:
                cluster.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
