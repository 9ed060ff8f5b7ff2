"""The embedded store: one SQLite database per node in WAL mode, synchronous=FULL, every
allocation one IMMEDIATE transaction, so concurrent plugin processes serialise on the database's
write lock and a crash (even SIGKILL mid-write) leaves the last committed state."""
from __future__ import annotations

from cni import jsonc as json  # json without its regex start-up cost (cni/jsonc.py)
import os
import _sqlite3 as sqlite3  # the C module: sqlite3.dbapi2 imports datetime for adapters we never use (~1 ms)
import time

from cni.errors import IO_FAILURE, TRY_AGAIN_LATER, CNIError

from . import decode_rows
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
FILENAME = "ipam.sqlite3"


class SQLiteStore:
    def __init__(self, data_dir: str, readonly: bool = False):
        self.path = os.path.join(data_dir, FILENAME)
        self.readonly = readonly
        self.db = None
        if readonly:
            self._open_readonly()
            return
        try:
            os.makedirs(data_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot create the IPAM data directory {data_dir}: {e.strerror or e}") from e
        deadline = time.monotonic() + BUSY_TIMEOUT_S
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
                    self.db = None
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise CNIError(TRY_AGAIN_LATER if "locked" in str(e) else IO_FAILURE,
                                   f"cannot open IPAM database {self.path}: {e}") from e
                time.sleep(0.01)
            except sqlite3.Error as e:
                if self.db is not None:
                    self.db.close()
                    self.db = None
                raise CNIError(IO_FAILURE, f"cannot open IPAM database {self.path}: {e}") from e

    def _open_readonly(self) -> None:
        """Readers (netdiag, the agent, `list`) never create the database nor take its write lock:
        in WAL mode a reader sees the last commit while plugins keep writing."""
        if not os.path.exists(self.path):
            raise CNIError(IO_FAILURE, f"no IPAM database at {self.path}")
        import urllib.parse  # readers only: it imports re, which the plugin's start-up does without
        try:
            self.db = sqlite3.connect(f"file:{urllib.parse.quote(self.path)}?mode=ro", uri=True,
                                      timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self.db.execute("SELECT 1 FROM reservations LIMIT 1").fetchall()
        except sqlite3.Error as e:
            if self.db is not None:
                self.db.close()
                self.db = None
            raise CNIError(IO_FAILURE, f"cannot read IPAM database {self.path}: {e}") from e

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def read(self, network: str) -> list[Reservation]:
        """The network's reservations as last committed (one consistent snapshot, no write lock)."""
        try:
            rows = self.db.execute("SELECT ip, data FROM reservations WHERE network = ?", (network,)).fetchall()
        except sqlite3.Error as e:
            raise CNIError(IO_FAILURE, f"IPAM database {self.path}: {e}") from e
        return list(decode_rows(network, rows, quiet=True)[0].values())

    def read_all(self) -> dict[str, list[Reservation]]:
        """Every network's reservations (netdiag without a network config)."""
        try:
            rows = self.db.execute("SELECT network, ip, data FROM reservations").fetchall()
        except sqlite3.Error as e:
            raise CNIError(IO_FAILURE, f"IPAM database {self.path}: {e}") from e
        by_net: dict[str, list] = {}
        for net, ip, data in rows:
            by_net.setdefault(net, []).append((ip, data))
        return {net: list(decode_rows(net, r, quiet=True)[0].values()) for net, r in by_net.items()}

    def transact(self, network: str, fn: Callable[[View], T]) -> T:
        if self.readonly:
            raise CNIError(IO_FAILURE, f"IPAM database {self.path} is open read-only")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:  # still locked after the busy timeout
            raise CNIError(TRY_AGAIN_LATER, f"IPAM database {self.path} is busy: {e}") from e
        try:
            rows = self.db.execute("SELECT ip, data FROM reservations WHERE network = ?", (network,)).fetchall()
            records, stray = decode_rows(network, rows)
            view = View(records)
            result = fn(view)
            for ip, res in view.changes.items():
                for key in [ip] + stray.get(ip, []):
                    self.db.execute("DELETE FROM reservations WHERE network = ? AND ip = ?", (network, key))
                if res is not None:
                    self.db.execute("INSERT INTO reservations (network, ip, data) VALUES (?, ?, ?)",
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
