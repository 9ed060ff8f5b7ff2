"""The embedded store: one SQLite database per node in WAL mode, synchronous=FULL, every
allocation one IMMEDIATE transaction, so concurrent plugin processes serialise on the database's
write lock and a crash (even SIGKILL mid-write) leaves the last committed state."""
from __future__ import annotations

import json
import os
import sqlite3
import time

from cni.errors import IO_FAILURE, TRY_AGAIN_LATER, CNIError

from ..policy import View
from ..reservation import Reservation

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, TypeVar

    T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    network TEXT NOT NULL,
    ip TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (network, ip)
)
"""
BUSY_TIMEOUT_S = 30.0


class SQLiteStore:
    def __init__(self, data_dir: str):
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(data_dir, "ipam.sqlite3")
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        self.db = None
        while True:
            try:
                self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                # switching to WAL takes a lock the busy handler does not wait for: processes that
                # open a new database together (a node's first pods) retry instead of failing
                if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.execute(SCHEMA)
                return
            except sqlite3.OperationalError as e:
                if self.db is not None:
                    self.db.close()
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise CNIError(TRY_AGAIN_LATER if "locked" in str(e) else IO_FAILURE,
                                   f"cannot open IPAM database {self.path}: {e}") from e
                time.sleep(0.01)
            except sqlite3.Error as e:
                raise CNIError(IO_FAILURE, f"cannot open IPAM database {self.path}: {e}") from e

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def transact(self, network: str, fn: Callable[[View], T]) -> T:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:  # still locked after the busy timeout
            raise CNIError(TRY_AGAIN_LATER, f"IPAM database {self.path} is busy: {e}") from e
        try:
            rows = self.db.execute("SELECT ip, data FROM reservations WHERE network = ?", (network,))
            view = View({ip: Reservation.from_dict(json.loads(data)) for ip, data in rows})
            result = fn(view)
            for ip, res in view.changes.items():
                if res is None:
                    self.db.execute("DELETE FROM reservations WHERE network = ? AND ip = ?", (network, ip))
                else:
                    self.db.execute("INSERT OR REPLACE INTO reservations (network, ip, data) VALUES (?, ?, ?)",
                                    (network, ip, json.dumps(res.to_dict())))
            self.db.execute("COMMIT")
            return result
        except BaseException as e:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one to report
            if isinstance(e, sqlite3.Error):
                raise CNIError(IO_FAILURE, f"IPAM database {self.path}: {e}") from e
            raise
