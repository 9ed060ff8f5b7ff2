"""Threads of one process (moord's CNI server) queue on one writer lock per database file, not on
SQLite's sleeping busy handler: two paths to one database share it, and a call that cannot get it
within the busy timeout answers code 11 and changes nothing."""
from __future__ import annotations

import threading

from ipam.store import sqlite
from ipam.store.sqlite import SQLiteStore
from tests.unit.test_ipam_sqlite_index import _add as add


def _add(data_dir, cid: str) -> tuple[dict, int]:
    """An ADD of container `cid` (its own pod) on a /24 of the embedded store in `data_dir`."""
    return add({"cniVersion": "1.1.0", "name": "wl", "type": "macvlan",
                "ipam": {"type": "moor-ipam", "dataDir": str(data_dir), "cooldownSeconds": 0,
                         "pools": [{"cidr": "198.51.100.0/24"}]}}, cid, cid)


def test_two_paths_to_one_database_share_the_writer_lock(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    a, b = SQLiteStore(str(tmp_path / "data")), SQLiteStore(str(tmp_path / "alias"))
    other = SQLiteStore(str(tmp_path / "other"))
    try:
        assert a.writer is b.writer
        assert other.writer is not a.writer
    finally:
        for s in (a, b, other):
            s.close()


def test_a_writer_lock_held_past_the_busy_timeout_answers_11_and_changes_nothing(tmp_path, monkeypatch):
    assert _add(tmp_path, "c0")[1] == 0
    store = SQLiteStore(str(tmp_path))
    before = store.read("wl")
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_S", 0.2)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:  # another call of this process, inside its transaction
        s = SQLiteStore(str(tmp_path))
        try:
            s.transact("wl", lambda v: (held.set(), release.wait(10)))
        finally:
            s.close()
    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        out, code = _add(tmp_path, "c1")
        assert code != 0 and out["code"] == 11, out
        assert "busy" in out["msg"]
        assert store.read("wl") == before
    finally:
        release.set()
        t.join()
    # the lock is free again: the runtime's retry succeeds
    out, code = _add(tmp_path, "c1")
    assert code == 0, out
    store.close()


def test_threads_allocate_distinct_addresses(tmp_path):
    results: dict[str, str] = {}
    errors: list = []

    def work(k: int) -> None:
        for i in range(10):
            out, code = _add(tmp_path, f"t{k}-{i}")
            if code != 0:
                errors.append(out)
                return
            results[f"t{k}-{i}"] = out["ips"][0]["address"]
    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    assert len(results) == 80 and len(set(results.values())) == 80
