"""moor-ipam's etcd layout in blocks, against a real (private) etcd: nodes claim blocks with
affinity, claim another when full, borrow when the pool has none free (not under strictAffinity),
a sticky pod keeps its IP on another node, explicit IPs work across blocks, handles follow every
write, empty blocks go back after their idle time, corrupt records stay quarantined, GC reads only
its node's blocks."""
from __future__ import annotations

import base64
import json
import urllib.request

import pytest

from ipam import config
from ipam.plugin import run
from ipam.reservation import ACTIVE, CORRUPT
from ipam.store import open_store


class Net:
    """One network in its own etcd prefix, driven through the plugin's library call."""

    def __init__(self, endpoint: str, prefix: str, **ipam):
        doc = {"type": "moor-ipam", "etcd": {"endpoints": [endpoint], "prefix": prefix}, "cooldownSeconds": 0,
               "gcGraceSeconds": 0, "holdSeconds": 600,
               "pools": [{"cidr": "192.0.2.0/24", "rangeStart": "192.0.2.8", "rangeEnd": "192.0.2.23",
                          "blockSize": 29}]}
        doc.update(ipam)
        self.netconf = {"cniVersion": "1.1.0", "name": "blk", "type": "macvlan", "ipam": doc}
        self.conf = config.parse(self.netconf)
        self.endpoint, self.prefix = endpoint, prefix

    def cni(self, cmd: str, node: str, cid: str = "", pod: str = "", ip: str = "", **extra) -> tuple[dict, int]:
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME={pod}" if pod else ""
        if ip:
            args += f";IP={ip}"
        env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0",
               "MOOR_NODE_NAME": node, "CNI_ARGS": args}
        out, code = run(env, json.dumps(dict(self.netconf, **extra)).encode())
        doc = json.loads(out) if out.strip() else {}
        return doc, (doc["code"] if code else 0)  # the CNI error code

    def add(self, node: str, cid: str, pod: str = "", ip: str = "") -> str:
        out, code = self.cni("ADD", node, cid, pod, ip)
        assert code == 0, out
        return out["ips"][0]["address"].split("/")[0]

    def store(self, node: str = "reader"):
        return open_store(self.conf, node=node)

    def blocks(self) -> dict[str, tuple[str, set[str]]]:
        """cidr -> (node, {ip of each record})"""
        return {b.cidr: (b.node, set(b.records)) for b in self.store().blocks("blk")}

    def key(self, rel: str) -> bytes | None:
        body = json.dumps({"key": base64.b64encode(f"{self.prefix}/blk/{rel}".encode()).decode()}).encode()
        with urllib.request.urlopen(urllib.request.Request(self.endpoint + "/v3/kv/range", data=body), timeout=5) as r:
            kvs = json.loads(r.read()).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    def put(self, rel: str, value: bytes) -> None:
        body = json.dumps({"key": base64.b64encode(f"{self.prefix}/blk/{rel}".encode()).decode(),
                           "value": base64.b64encode(value).decode()}).encode()
        urllib.request.urlopen(urllib.request.Request(self.endpoint + "/v3/kv/put", data=body), timeout=5).read()


def test_nodes_claim_blocks_and_claim_another_when_full(etcd, request):
    net = Net(etcd.endpoint, f"/{request.node.name}", pools=[{"cidr": "192.0.2.0/24", "rangeStart": "192.0.2.8",
                                                              "rangeEnd": "192.0.2.39", "blockSize": 29}])
    a = [net.add("node-a", f"a{i}") for i in range(5)]
    b = [net.add("node-b", f"b{i}") for i in range(2)]
    blocks = net.blocks()
    owner = {ip: node for node, ips in blocks.values() for ip in ips}
    assert all(owner[ip] == "node-a" for ip in a) and all(owner[ip] == "node-b" for ip in b)
    # a /29 of the range .8-.39 holds 8 addresses: node-a's 5 sit in one block, node-b has its own
    assert sorted(n for n, _ in blocks.values()) == ["node-a", "node-b"]
    a += [net.add("node-a", f"a{i}") for i in range(5, 9)]  # 9 > 8: a second block is claimed
    assert len(set(a)) == 9
    assert sorted(n for n, _ in net.blocks().values()) == ["node-a", "node-a", "node-b"]
    # the node's index lists exactly its blocks
    idx = json.loads(net.key("node/node-a"))["blocks"]
    assert sorted(idx) == sorted(c for c, (n, _) in net.blocks().items() if n == "node-a")


def test_borrowing_when_no_block_is_free_and_strict_affinity_refuses(etcd, request):
    net = Net(etcd.endpoint, f"/{request.node.name}")
    # node-a takes both blocks' worth: the second block is claimed when the first is full
    for i in range(9):
        net.add("node-a", f"a{i}")
    for i in range(9, 16):  # fill the rest: node-a has both blocks of the pool
        net.add("node-a", f"a{i}")
    out, code = net.cni("ADD", "node-b", "b0")
    assert code == 112, out  # the pool is full: nothing to claim, nothing to borrow
    out, code = net.cni("DEL", "node-a", "a3")
    assert code == 0, out
    freed = net.store().read("blk")
    free_ip = next(r.ip for r in freed if r.container_id == "a3")
    strict = Net(etcd.endpoint, net.prefix, strictAffinity=True)
    out, code = strict.cni("ADD", "node-b", "b0")
    assert code == 112 and "no free IPv4" in out["msg"], out  # strictAffinity: never another node's block
    got = net.add("node-b", "b1")  # borrowed from node-a's block
    assert got == free_ip
    blocks = net.blocks()
    assert all(n == "node-a" for n, _ in blocks.values())  # borrowing moves no affinity
    assert json.loads(net.key("node/node-b"))["blocks"] == [c for c, (_n, ips) in blocks.items() if got in ips]
    # node-b's DEL finds its borrowed address through its index
    assert net.cni("DEL", "node-b", "b1")[1] == 0
    r = next(r for r in net.store().read("blk") if r.ip == got)
    assert r.state != ACTIVE


def test_list_shows_blocks_and_their_nodes(etcd, request, tmp_path, capsys):
    from ipam.cli import main as cli
    net = Net(etcd.endpoint, f"/{request.node.name}")
    net.add("node-a", "a0")
    net.add("node-b", "b0")
    net.add("node-b", "b1")
    cfg = tmp_path / "net.conf"
    cfg.write_text(json.dumps(net.netconf))
    assert cli(["list", str(cfg)]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()
            if line.startswith("192.0.2.") and "/" in line.split()[0]}
    assert sorted(rows.values()) == [["node-a", "1", "0"], ["node-b", "2", "0"]]


def test_sticky_pod_recreated_on_another_node_keeps_its_ip_and_its_handle(etcd, request, tmp_path):
    net = Net(etcd.endpoint, f"/{request.node.name}")
    ip = net.add("node-a", "c-old", pod="db-0")
    assert json.loads(net.key("handle/pod:ns/db-0")) == {"ips": {ip: 1}}
    net.add("node-a", "c-other", pod="web-0")
    assert net.cni("DEL", "node-a", "c-old", pod="db-0")[1] == 0  # held for db-0
    assert json.loads(net.key("handle/pod:ns/db-0")) == {"ips": {ip: 2}}
    # the pod comes back on node-b: one handle read finds its IP in node-a's block
    assert net.add("node-b", "c-new", pod="db-0") == ip
    r = next(r for r in net.store().read("blk") if r.ip == ip)
    assert (r.state, r.node, r.container_id, r.seq) == (ACTIVE, "node-b", "c-new", 3)
    assert json.loads(net.key("handle/pod:ns/db-0")) == {"ips": {ip: 3}}
    # node-b holds it in node-a's block: its index lists that block, its DEL and GC find it
    owner_block = next(c for c, (_n, ips) in net.blocks().items() if ip in ips)
    assert owner_block in json.loads(net.key("node/node-b"))["blocks"]
    assert net.cni("DEL", "node-b", "c-new", pod="db-0")[1] == 0
    # an operator's release ends the hold and the identity: the handle goes with it
    from ipam.cli import main as cli
    cfg = tmp_path / "net.conf"
    cfg.write_text(json.dumps(net.netconf))
    assert cli(["release", str(cfg), ip]) == 0
    assert net.key("handle/pod:ns/db-0") is None


def test_explicit_ips_across_blocks(etcd, request):
    net = Net(etcd.endpoint, f"/{request.node.name}")
    a_ip = net.add("node-a", "a0")
    b_ip = net.add("node-b", "b0")
    blocks = net.blocks()
    b_block = next(c for c, (n, _) in blocks.items() if n == "node-b")
    # an explicit IP in node-b's block, asked on node-a: read from that one block, taken there
    want = next(ip for ip in ("192.0.2.%d" % i for i in range(8, 24))
                if ip not in (a_ip, b_ip) and ip in {str(x) for x in __import__("ipaddress").ip_network(b_block)})
    assert net.add("node-a", "a1", ip=want) == want
    assert want in net.blocks()[b_block][1]
    # the one held by another: refused, naming the holder
    out, code = net.cni("ADD", "node-a", "a2", ip=b_ip)
    assert code == 111 and "b0" in out["msg"], out
    # outside every pool: refused, nothing written
    out, code = net.cni("ADD", "node-a", "a3", ip="198.51.100.7")
    assert code == 110, out


def test_explicit_ip_in_an_unclaimed_block_claims_it(etcd, request):
    net = Net(etcd.endpoint, f"/{request.node.name}")
    assert net.add("node-a", "a0", ip="192.0.2.20") == "192.0.2.20"
    assert net.blocks() == {"192.0.2.16/29": ("node-a", {"192.0.2.20"})}
    assert net.key("layout") == b"blocks"


def test_empty_block_goes_back_to_the_pool_after_its_idle_time(etcd, request):
    net = Net(etcd.endpoint, f"/{request.node.name}", release="immediate", blockIdleSeconds=0)
    keep = Net(etcd.endpoint, net.prefix, release="immediate", blockIdleSeconds=3600)
    ips = [net.add("node-a", f"a{i}") for i in range(9)]  # two blocks
    assert len(net.blocks()) == 2
    for i in range(8):  # the first block empties, the second keeps a9's address
        assert net.cni("DEL", "node-a", f"a{i}")[1] == 0
    gc = {"cni.dev/valid-attachments": [{"containerID": "a8", "ifname": "eth0"}]}
    # with an hour of idle time nothing goes back (the cooled-down records are collected though)
    assert keep.cni("GC", "node-a", **gc)[1] == 0
    assert len(net.blocks()) == 2
    assert net.cni("GC", "node-a", **gc)[1] == 0
    left = net.blocks()
    assert list(left.values()) == [("node-a", {ips[8]})]
    assert json.loads(net.key("node/node-a"))["blocks"] == list(left)
    # the released block is claimable again (here by node-b)
    net.add("node-b", "b0")
    assert sorted(n for n, _ in net.blocks().values()) == ["node-a", "node-b"]


def test_corrupt_record_in_a_block_is_quarantined(etcd, request, capfd):
    net = Net(etcd.endpoint, f"/{request.node.name}")
    first = net.add("node-a", "a0")
    cidr, (_n, _ips) = next(iter(net.blocks().items()))
    doc = json.loads(net.key(f"block/{cidr}"))
    bad_ip = str(__import__("ipaddress").ip_address(first) + 1)
    doc["records"][bad_ip] = {"ip": bad_ip, "state": "active", "seq": "x"}
    net.put(f"block/{cidr}", json.dumps(doc).encode())
    got = [net.add("node-a", f"a{i}") for i in range(1, 4)]
    assert bad_ip not in got
    assert "corrupt" in capfd.readouterr().err
    r = next(r for r in net.store().read("blk") if r.ip == bad_ip)
    assert r.state == CORRUPT
    # other writes to the block keep the bad record as it was stored
    assert json.loads(net.key(f"block/{cidr}"))["records"][bad_ip]["seq"] == "x"


def test_gc_reads_only_its_nodes_blocks(etcd, request):
    wide = {"pools": [{"cidr": "198.51.100.0/24", "blockSize": 26}]}
    net = Net(etcd.endpoint, f"/{request.node.name}", **wide)
    for i in range(150):  # node-b fills more than two blocks
        net.add("node-b", f"b{i}")
    net.add("node-a", "a0")
    s = net.store("node-a")
    from ipam.collect import gc
    gc({"MOOR_NODE_NAME": "node-a"}, net.conf, s, {("a0", "eth0")})
    total = sum(len(json.dumps(b.raw)) for b in net.store().blocks("blk"))
    own = len(net.key(next(f"block/{c}" for c, (n, _) in net.blocks().items() if n == "node-a")))
    # GC read node-a's block (twice: collect and the lock sweep) and its index, not node-b's
    assert s.bytes_read < 4 * own + 4096 < total, (s.bytes_read, own, total)


def _churn(args) -> list[tuple[str, str, str]]:
    """A node's worker: ADD/DEL pairs until `stop` exists, retrying code 11 as a runtime does.
    Returns its journal: (event, container, ip)."""
    endpoint, prefix, node, wid, stop = args
    import os
    import time
    net = Net(endpoint, prefix, pools=MIG_POOLS)
    log, i = [], 0
    while not os.path.exists(stop) and i < 400:
        cid = f"{node}-w{wid}-{i}"
        for _ in range(200):
            out, code = net.cni("ADD", node, cid, pod=f"p-{node}-{wid}-{i}")  # one live pod a name
            if code != 11:
                break
            time.sleep(0.02)
        assert code == 0, out
        ip = out["ips"][0]["address"].split("/")[0]
        log.append(("add", cid, ip))
        if i % 2:  # every other pod stays
            out, code = net.cni("DEL", node, cid)
            while code == 11:
                time.sleep(0.02)
                out, code = net.cni("DEL", node, cid)
            assert code == 0, out
            log.append(("del", cid, ip))
        i += 1
    return log


MIG_POOLS = [{"cidr": "198.51.100.0/22", "blockSize": 26}]


def test_migrate_converts_the_first_layout_in_place_while_nodes_allocate(etcd, request, tmp_path):
    import multiprocessing
    prefix = f"/{request.node.name}"
    net = Net(etcd.endpoint, prefix, pools=MIG_POOLS)
    net.put("layout", b"ip")  # a network of the first layout: one key an IP
    held = net.add("node-a", "sticky-old", pod="db-0")
    for i in range(60):
        net.add(f"node-{'abc'[i % 3]}", f"old-{i}")
    assert net.cni("DEL", "node-a", "sticky-old", pod="db-0")[1] == 0  # held for db-0 in the old layout
    assert net.key(f"ip/{held}") is not None and not net.blocks()
    cfg = tmp_path / "net.conf"
    cfg.write_text(json.dumps(net.netconf))
    stop = tmp_path / "stop"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        jobs = pool.map_async(_churn, [(etcd.endpoint, prefix, f"node-{n}", w, str(stop)) for n in "ab" for w in range(2)])
        while net.key("ip/198.51.100.70") is None and not jobs.ready():  # the workers are allocating
            pass
        from ipam.cli import main as cli
        assert cli(["migrate", str(cfg)]) == 0
        n_after = len(net.blocks())
        # the workers go on in blocks: let them make a few more pairs, then stop
        while not jobs.ready() and sum(len(ips) for _n, ips in net.blocks().values()) < 70 + n_after:
            pass
        stop.write_text("")
        logs = jobs.get(timeout=300)
    assert net.key("layout") == b"blocks"
    records = {r.ip: r for r in net.store().read("blk")}
    assert not any(net.key(f"ip/{ip}") for ip in records)  # the old keys are gone
    live: dict[str, str] = {}
    for log in logs:
        for ev, cid, ip in log:
            if ev == "add":
                live[cid] = ip
            else:
                live.pop(cid)
    for i in range(60):
        live[f"old-{i}"] = None
    # one IP one live holder, and the store holds each live container's IP
    ips = [ip for ip in live.values() if ip]
    assert len(ips) == len(set(ips))
    active = {r.container_id: r.ip for r in records.values() if r.state == ACTIVE}
    assert set(active) == set(live)
    assert all(active[c] == ip for c, ip in live.items() if ip)
    # sticky across the migration: db-0 gets its old IP back, from its handle
    assert json.loads(net.key("handle/pod:ns/db-0"))["ips"] == {held: 2}
    assert net.add("node-b", "sticky-new", pod="db-0") == held
    assert len(logs) == 4 and all(any(ev == "add" for ev, *_ in log) for log in logs)
