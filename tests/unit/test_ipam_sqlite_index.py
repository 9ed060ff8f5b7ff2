"""The embedded store reads by index: an ADD, a DEL and a sticky re-ADD read the rows they need
(statements traced from SQLite itself), never the network's table; a database of an older
moor-ipam (no index columns) is upgraded in place, and its rows keep their owners; rows without
index columns (hand-written, corrupt) still shadow their IP."""
from __future__ import annotations

import json
import sqlite3

from ipam import config
from ipam.plugin import run
from ipam.reservation import ACTIVE, HELD, Reservation
from ipam.store.sqlite import FILENAME, SQLiteStore


def _netconf(tmp) -> dict:
    return {"cniVersion": "1.1.0", "name": "idx", "type": "macvlan",
            "ipam": {"type": "moor-ipam", "dataDir": str(tmp), "holdSeconds": 600, "cooldownSeconds": 0,
                     "pools": [{"cidr": "198.51.100.0/24", "rangeStart": "198.51.100.2"}]}}


def _add(netconf: dict, cid: str, pod: str) -> tuple[dict, int]:
    out, code = run({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0",
                     "MOOR_NODE_NAME": "n1", "CNI_ARGS": f"K8S_POD_NAMESPACE=ns;K8S_POD_NAME={pod}"},
                    json.dumps(netconf).encode())
    return json.loads(out), code


def _old_database(tmp, n: int) -> None:
    """The table as moor-ipam wrote it before the index columns: n active rows, one held, one torn."""
    db = sqlite3.connect(tmp / FILENAME)
    db.execute("CREATE TABLE reservations (network TEXT NOT NULL, ip TEXT NOT NULL, data TEXT NOT NULL, "
               "PRIMARY KEY (network, ip))")
    for i in range(n):
        ip = f"198.51.100.{2 + i}"
        r = Reservation(ip=ip, pool="198.51.100.0/24", state=ACTIVE, identity=f"pod:ns/old{i}", pod=f"ns/old{i}",
                        container_id=f"old{i}", ifname="eth0", node="n1", seq=1, updated=1.0)
        db.execute("INSERT INTO reservations VALUES ('idx', ?, ?)", (ip, json.dumps(r.to_dict())))
    held = Reservation(ip=f"198.51.100.{2 + n}", pool="198.51.100.0/24", state=HELD, identity="pod:ns/db-0",
                       pod="ns/db-0", container_id="gone", ifname="eth0", node="n1", seq=2, updated=1.0, hold_until=None)
    db.execute("INSERT INTO reservations VALUES ('idx', ?, ?)", (held.ip, json.dumps(held.to_dict())))
    db.execute("INSERT INTO reservations VALUES ('idx', ?, ?)", (f"198.51.100.{3 + n}", '{"ip": "torn'))
    db.commit()
    db.close()


def test_old_database_is_upgraded_and_reads_go_by_index(tmp_path):
    n = 150
    _old_database(tmp_path, n)
    netconf = _netconf(tmp_path)
    out, code = _add(netconf, "new0", "web-0")
    assert code == 0, out
    # the 150 active, the held IP (db-0's) and the torn row's IP are all skipped
    assert out["ips"][0]["address"] == f"198.51.100.{4 + n}/24"
    db = sqlite3.connect(tmp_path / FILENAME)
    cols = {r[1] for r in db.execute("PRAGMA table_info(reservations)")}
    assert {"ipkey", "state", "identity", "container_id"} <= cols
    assert db.execute("SELECT count(*) FROM reservations WHERE ipkey IS NULL").fetchone()[0] == 1  # the torn row
    db.close()

    # one transaction, traced: an ADD of a sticky pod, and its DEL, never read the whole table
    store = SQLiteStore(str(tmp_path))
    seen: list[str] = []
    store.db.set_trace_callback(seen.append)
    conf = config.parse(netconf)
    from ipam import policy
    from ipam.identity import identify
    req = policy.Request(container_id="c-db", ifname="eth0", ident=identify(
        {"K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "db-0"}, {}, "pod"), node="n1", now=2.0)
    got = store.transact("idx", lambda v: policy.allocate(v, conf, req))
    assert [r.ip for r in got] == [f"198.51.100.{2 + n}"]  # db-0 found its held IP through the identity index
    store.transact("idx", lambda v: policy.release(v, conf, "c-db", "eth0", 3.0))
    store.close()
    reads = [s for s in seen if s.startswith("SELECT") and "data" in s]
    assert reads and all("AND" in s for s in reads), reads  # every decoding read is by an index
    # the old rows keep their owners: their DEL releases them
    assert run({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "old7", "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0",
                "MOOR_NODE_NAME": "n1"}, json.dumps(netconf).encode())[1] == 0
    store = SQLiteStore(str(tmp_path), readonly=True)
    r = next(r for r in store.read("idx") if r.ip == "198.51.100.9")
    store.close()
    assert r.state == HELD and r.container_id == "old7"
