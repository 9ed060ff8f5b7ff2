"""Paging through a network's reservations (issue 14): every store's read_page walks 2,500
reservations of several nodes in pages, each exactly once and in the store's order, `node=` gives
exactly that node's, an empty network is one empty page; SQLite pages by its ipkey index (its
query plan says so); ipam.read.pages/snapshot sum to the same as the whole network."""
from __future__ import annotations

import base64
import ipaddress
import json
import sqlite3
import urllib.request

import pytest

from ipam import config
from ipam.read import add_usage, pages, snapshot
from ipam.reservation import ACTIVE, HELD, Reservation
from ipam.store.etcd import EtcdStore
from ipam.store.sqlite import FILENAME, SQLiteStore

NODES = ("n1", "n2", "n3", "n4")
V4 = "198.51.100.0/24"
V6 = "2001:db8:1::/112"


def _conf(**ipam) -> config.IPAMConf:
    doc = {"type": "moor-ipam", "pools": [{"cidr": V4, "blockSize": 26}, {"cidr": V6, "blockSize": 122}]}
    doc.update(ipam)
    return config.parse({"cniVersion": "1.1.0", "name": "pg", "type": "macvlan", "ipam": doc})


def _rows(n: int = 2500) -> list[Reservation]:
    """n reservations: the v4 pool's 254 usable, the rest in the v6 pool; nodes in runs of 64
    (a block each), with every 10th address another node's (borrowed in the blocks layout)."""
    ips = [ipaddress.ip_address(f"198.51.100.{i}") for i in range(1, 255)]
    ips += [ipaddress.ip_address("2001:db8:1::") + i for i in range(1, n - len(ips) + 1)]
    out = []
    for i, ip in enumerate(ips[:n]):
        node = NODES[(i // 64) % len(NODES)] if i % 10 else NODES[(i // 64 + 1) % len(NODES)]
        pool = V4 if ip.version == 4 else V6
        out.append(Reservation(ip=str(ip), pool=pool, state=HELD if i % 7 == 0 else ACTIVE, pod=f"ns/p{i}",
                               container_id=f"c{i}", ifname="eth0", node=node, seq=1, updated=1.0,
                               hold_until=None))
    return out


def _walk(store, after: str = "", limit: int = 100, node: str = "") -> list[list[Reservation]]:
    out = []
    for _ in range(10_000):  # a hang guard: a cursor that never ends fails the test
        page, after = store.read_page("pg", after, limit, node=node)
        out.append(page)
        if not after:
            return out
    raise AssertionError("the page walk did not end")


def _check(walk: list[list[Reservation]], want: list[Reservation], limit: int) -> None:
    got = [r.ip for p in walk for r in p]
    assert len(got) == len(set(got)), "a reservation came twice"
    assert sorted(got) == sorted(r.ip for r in want)
    assert all(len(p) <= limit for p in walk)
    by_ip = {r.ip: r for r in want}
    assert all(r == by_ip[r.ip] for p in walk for r in p)  # records come back as written


# -- SQLite -------------------------------------------------------------------------------------

def _sqlite(tmp, rows: list[Reservation]) -> None:
    s = SQLiteStore(str(tmp))
    try:
        s.transact("pg", lambda v: [v.put(r) for r in rows])
        s.transact("other", lambda v: v.put(Reservation(ip="192.0.2.9", pool="192.0.2.0/24", state=ACTIVE)))
    finally:
        s.close()


def test_sqlite_pages_every_reservation_once_in_address_order(tmp_path):
    rows = _rows()
    _sqlite(tmp_path, rows)
    s = SQLiteStore(str(tmp_path), readonly=True)
    try:
        walk = _walk(s)
        _check(walk, rows, 100)
        assert len(walk) == 25 and [len(p) for p in walk] == [100] * 25  # the last page says "done" itself
        flat = [ipaddress.ip_address(r.ip) for p in walk for r in p]
        assert flat == sorted(flat, key=lambda a: (a.version, a))  # address order across pages
        for node in NODES:
            want = [r for r in rows if r.node == node]
            nw = _walk(s, node=node)
            _check(nw, want, 100)
            assert len(want) > 100  # the node's walk takes several pages
        assert _walk(s, node="nobody") == [[]]
    finally:
        s.close()


def test_sqlite_page_query_uses_the_ipkey_index(tmp_path):
    _sqlite(tmp_path, _rows(300))
    s = SQLiteStore(str(tmp_path), readonly=True)
    try:
        for node in ("", "n1"):
            seen: list[str] = []
            s.db.set_trace_callback(seen.append)  # the statements as SQLite runs them, values bound
            s.read_page("pg", "", 100, node=node)
            s.read_page("pg", "6:" + "0" * 32, 100, node=node)
            s.db.set_trace_callback(None)
            pages = [q for q in seen if "ORDER BY ipkey" in q]
            assert len(pages) == 2 and all("ipkey >" in q and "LIMIT" in q for q in pages), seen
            assert ("node =" in pages[0]) == bool(node)
            for q in pages + [q for q in seen if "ipkey IS NULL" in q]:
                plan = " ".join(r[3] for r in s.db.execute("EXPLAIN QUERY PLAN " + q))
                assert "USING INDEX rsv_ipkey (network=? AND ipkey" in plan, (q, plan)
                assert "TEMP B-TREE" not in plan and "SCAN" not in plan, (q, plan)  # no sort, no table walk
    finally:
        s.close()


def test_sqlite_unindexed_rows_are_listed_once_and_shadow_their_ip(tmp_path):
    rows = _rows(300)
    _sqlite(tmp_path, rows)
    db = sqlite3.connect(tmp_path / FILENAME)
    # a torn row without index columns under another spelling of an IP an indexed row has, and
    # one over a free IP
    assert rows[280].ip.startswith("2001:db8:1::")
    db.execute("INSERT INTO reservations (network, ip, data) VALUES ('pg', ?, '{\"ip\": \"torn')",
               (rows[280].ip.replace("2001:db8:", "2001:0db8:"),))
    db.execute("INSERT INTO reservations (network, ip, data) VALUES ('pg', '2001:db8:1::ffff', '{')")
    db.commit()
    db.close()
    s = SQLiteStore(str(tmp_path), readonly=True)
    try:
        got = [r for p in _walk(s) for r in p]
    finally:
        s.close()
    assert len(got) == 301 and len({r.ip for r in got}) == 301
    states = {r.ip: r.state for r in got}
    assert states[rows[280].ip] == "corrupt" and states["2001:db8:1::ffff"] == "corrupt"


def test_sqlite_database_without_index_columns_pages_by_key(tmp_path):
    db = sqlite3.connect(tmp_path / FILENAME)
    db.execute("CREATE TABLE reservations (network TEXT NOT NULL, ip TEXT NOT NULL, data TEXT NOT NULL, "
               "PRIMARY KEY (network, ip))")
    rows = _rows(250)
    db.executemany("INSERT INTO reservations VALUES ('pg', ?, ?)", [(r.ip, json.dumps(r.to_dict())) for r in rows])
    db.commit()
    db.close()
    s = SQLiteStore(str(tmp_path), readonly=True)  # a reader never upgrades it
    try:
        _check(_walk(s), rows, 100)
        _check(_walk(s, node="n2"), [r for r in rows if r.node == "n2"], 100)
    finally:
        s.close()


def test_sqlite_empty_network_is_one_empty_page(tmp_path):
    _sqlite(tmp_path, [])
    s = SQLiteStore(str(tmp_path), readonly=True)
    try:
        assert s.read_page("pg", "", 100) == ([], "")
    finally:
        s.close()


def test_read_pages_sum_to_the_snapshot(tmp_path):
    rows = _rows()
    _sqlite(tmp_path, rows)
    conf = _conf(dataDir=str(tmp_path))
    walk = list(pages(conf, page_size=100))
    assert len(walk) == 25 and not any(p.error for p in walk)
    total: list = []
    for p in walk:
        total = add_usage(total, p.pools)
    whole = snapshot(conf)
    assert [(u.cidr, u.size, u.active, u.held) for u in total] == \
        [(u.cidr, u.size, u.active, u.held) for u in whole.pools]
    assert sum(u.active + u.held for u in total) == 2500
    assert [r.ip for p in walk for r in p.reservations] == [r.ip for r in whole.reservations]
    mine = snapshot(conf, node="n3")
    assert {r.ip for r in mine.reservations} == {r.ip for r in rows if r.node == "n3"}
    broken = list(pages(_conf(dataDir=str(tmp_path / "none"))))
    assert len(broken) == 1 and "no IPAM database" in broken[0].error


# -- etcd ---------------------------------------------------------------------------------------

def _etcd_blocks(endpoint: str, prefix: str, rows: list[Reservation]) -> None:
    """Written through the store: each node claims its blocks, then writes its borrowed records."""
    conf = _conf(etcd={"endpoints": [endpoint], "prefix": prefix})
    for node in NODES:
        st = EtcdStore([endpoint], prefix, conf=conf, node=node)
        mine = [r for r in rows if r.node == node]
        for i in range(0, len(mine), 64):
            st.transact("pg", lambda v, chunk=mine[i:i + 64]: [v.put(r) for r in chunk])


def _key_order(walk: list[list[Reservation]], key) -> None:
    """Pages come in etcd's bytewise key order: every key of a page sorts before the next page's."""
    spans = [(min(key(r) for r in p), max(key(r) for r in p)) for p in walk if p]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans


def _block_key(r: Reservation) -> bytes:
    a = ipaddress.ip_address(r.ip)
    return f"block/{ipaddress.ip_interface((a, 26 if a.version == 4 else 122)).network}".encode()


def test_etcd_blocks_pages_are_whole_blocks_each_reservation_once(etcd, request):
    prefix = f"/{request.node.name}"
    rows = _rows()
    _etcd_blocks(etcd.endpoint, prefix, rows)
    st = EtcdStore([etcd.endpoint], prefix, conf=_conf(etcd={"endpoints": [etcd.endpoint], "prefix": prefix}))
    walk = _walk(st)
    _check(walk, rows, 100)
    blocks = {_block_key(r) for r in rows}
    assert len(walk) == len(blocks)  # limit 100, blocks of 64: one block a page
    assert all(len({_block_key(r) for r in p}) == 1 for p in walk)
    _key_order(walk, _block_key)
    big = _walk(st, limit=1000)  # 15 blocks a page
    _check(big, rows, 1000)
    assert len(big) == -(-len(blocks) // 15)
    for node in NODES:
        want = [r for r in rows if r.node == node]
        nw = _walk(st, node=node)
        _check(nw, want, 100)
        _key_order(nw, _block_key)
    assert _walk(st, node="nobody") == [[]]


def test_etcd_first_layout_pages_with_limit_and_filters_nodes_here(etcd, request):
    prefix = f"/{request.node.name}"
    rows = _rows()
    for i in range(0, len(rows), 100):  # the first layout: one key an IP (as an old moor-ipam wrote it)
        ops = [{"requestPut": {"key": base64.b64encode(f"{prefix}/pg/ip/{r.ip}".encode()).decode(),
                               "value": base64.b64encode(json.dumps(r.to_dict()).encode()).decode()}}
               for r in rows[i:i + 100]]
        body = json.dumps({"success": ops}).encode()
        urllib.request.urlopen(urllib.request.Request(etcd.endpoint + "/v3/kv/txn", data=body), timeout=10).read()
    st = EtcdStore([etcd.endpoint], prefix, conf=_conf(etcd={"endpoints": [etcd.endpoint], "prefix": prefix}))
    assert st.layout("pg")[0] == "ip"
    walk = _walk(st)
    _check(walk, rows, 100)
    assert [len(p) for p in walk] == [100] * 25
    _key_order(walk, lambda r: r.ip.encode())
    for node in NODES:
        _check(_walk(st, node=node), [r for r in rows if r.node == node], 100)


def test_etcd_empty_network_is_one_empty_page(etcd, request):
    st = EtcdStore([etcd.endpoint], f"/{request.node.name}", conf=_conf(etcd={"endpoints": [etcd.endpoint]}))
    assert st.read_page("pg", "", 100) == ([], "")
    assert st.read_page("pg", "", 100, node="n1") == ([], "")
