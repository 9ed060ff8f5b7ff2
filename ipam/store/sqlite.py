"""The embedded store: one SQLite database per node in WAL mode, synchronous=FULL, every
allocation one IMMEDIATE transaction, so concurrent plugin processes serialise on the database's
write lock and a crash (even SIGKILL mid-write) leaves the last committed state."""
from __future__ import annotations

from cni.spec import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
import ipaddress
import os
import _sqlite3 as sqlite3  # the C module: sqlite3.dbapi2 imports datetime for adapters we never use (~1 ms)
import _thread  # threading's C half: the executable does not import threading
import time

from cni.spec.errors import IO_FAILURE, TRY_AGAIN_LATER, CNIError

from . import decode_rows
from ..policy import View
from ..reservation import ACTIVE, CORRUPT, COOLING, HELD, Reservation, merge

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable, Optional, TypeVar

    from ..config import Pool

    T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    network TEXT NOT NULL,
    ip TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (network, ip)
)
"""
# indexed copies of the record's fields, so a transaction reads the rows it needs (by IP, by
# identity, by attachment, a pool's range in order) instead of decoding the table. A row without
# them (written by an older moor-ipam, or by hand) has ipkey NULL: it is decoded on every
# transaction, as before, so it still shadows its IP.
COLUMNS = {"ipkey": "TEXT", "state": "TEXT NOT NULL DEFAULT ''", "identity": "TEXT NOT NULL DEFAULT ''",
           "container_id": "TEXT NOT NULL DEFAULT ''", "ifname": "TEXT NOT NULL DEFAULT ''",
           "node": "TEXT NOT NULL DEFAULT ''", "hold_until": "REAL", "cool_until": "REAL NOT NULL DEFAULT 0"}
INDEXES = """
CREATE INDEX IF NOT EXISTS rsv_ipkey ON reservations (network, ipkey);
CREATE INDEX IF NOT EXISTS rsv_identity ON reservations (network, identity);
CREATE INDEX IF NOT EXISTS rsv_attachment ON reservations (network, container_id, ifname)
"""


def ipkey(ip: str) -> str:
    """An address as text that sorts as the address (IPv4 before IPv6)."""
    a = ipaddress.ip_address(ip)
    return f"{a.version}:{int(a):032x}"


def _row(network: str, res: Reservation) -> tuple:
    return (network, res.ip, json.dumps(res.to_dict()), ipkey(res.ip), res.state, res.identity, res.container_id,
            res.ifname, res.node, res.hold_until, res.cool_until)


def _sortkey(ip: str) -> str:
    try:
        return ipkey(ip)
    except ValueError:
        return ""  # a key that is no address sorts first


INSERT = ("INSERT INTO reservations (network, ip, data, ipkey, state, identity, container_id, ifname, node, "
          "hold_until, cool_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
BUSY_TIMEOUT_S = 30.0
FILENAME = "ipam.sqlite3"

# One writer lock per database file in this process (moord's CNI threads). SQLite's busy handler
# polls a held write lock with sleeps of 1 to 100 ms, so threads of one process queued on it
# waited longer than the transactions they waited for; a process lock hands over at once. Other
# processes (executables while moord is down) still meet on SQLite's lock, as before. Keyed by the
# file (device, inode), since two paths may name one database.
_WRITERS: dict[tuple[int, int], object] = {}
_WRITERS_GUARD = _thread.allocate_lock()


def _writer_lock(path: str):
    try:
        st = os.stat(path)
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot open IPAM database {path}: {e.strerror or e}") from e
    with _WRITERS_GUARD:
        return _WRITERS.setdefault((st.st_dev, st.st_ino), _thread.allocate_lock())


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
                self.writer = _writer_lock(self.path)
                self._upgrade()
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

    def _upgrade(self) -> None:
        """Add the indexed columns to a database of an older moor-ipam and fill them, once, under
        the write lock (processes opening it together: the first does it, the others see it done)."""
        have = {r[1] for r in self.db.execute("PRAGMA table_info(reservations)")}
        if set(COLUMNS) <= have:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            have = {r[1] for r in self.db.execute("PRAGMA table_info(reservations)")}
            for col, decl in COLUMNS.items():
                if col not in have:
                    self.db.execute(f"ALTER TABLE reservations ADD COLUMN {col} {decl}")
            for stmt in INDEXES.split(";"):
                self.db.execute(stmt)
            rows = self.db.execute("SELECT network, ip, data FROM reservations WHERE ipkey IS NULL").fetchall()
            for net, ip, data in rows:
                r = Reservation.decode(ip, data)
                if r.state != CORRUPT and r.ip == ip:  # a bad row stays unindexed: decoded every time
                    self.db.execute("UPDATE reservations SET ipkey = ?, state = ?, identity = ?, container_id = ?, "
                                    "ifname = ?, node = ?, hold_until = ?, cool_until = ? WHERE network = ? AND ip = ?",
                                    _row(net, r)[3:] + (net, ip))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

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

    def read_page(self, network: str, after: str, limit: int, node: str = "") -> tuple[list[Reservation], str]:
        """Up to `limit` reservations whose ipkey sorts after the cursor `after` ("": from the
        start), in address order, through the (network, ipkey) index; `node`: only that node's
        (a column filter on the same index: the embedded store is one node's anyway). Returns the
        page and the cursor of the next one ("" when done). A listing, not a transaction: a row
        written behind the cursor meanwhile is missed, one moved ahead can be seen twice; a quiet
        store gives every row exactly once. Rows without index columns (hand-written, corrupt)
        shadow their IP in every page, as they do in a transaction. A database no writer has
        upgraded yet has no ipkey: it pages by the stored key instead (text order)."""
        limit = max(1, limit)
        try:
            if "ipkey" not in {r[1] for r in self.db.execute("PRAGMA table_info(reservations)")}:
                return self._read_page_old(network, after, limit, node)
            q = "SELECT ip, data, ipkey FROM reservations WHERE network = ? AND ipkey > ?"
            args: list = [network, after]
            if node:
                q += " AND node = ?"
                args.append(node)
            # one row more than asked: whether another page follows, without an empty last page
            rows = self.db.execute(q + " ORDER BY ipkey LIMIT ?", (*args, limit + 1)).fetchall()
            loose = self.db.execute("SELECT ip, data FROM reservations WHERE network = ? AND ipkey IS NULL",
                                    (network,)).fetchall()
        except sqlite3.Error as e:
            raise CNIError(IO_FAILURE, f"IPAM database {self.path}: {e}") from e
        shadow, _ = decode_rows(network, loose, quiet=True)
        more = len(rows) > limit
        rows = rows[:limit]
        upper = rows[-1][2] if more else None  # None: the last page, no upper bound
        page = []
        for ip, data, key in rows:
            r = shadow.get(ip)
            page.append(r if r is not None else Reservation.decode(ip, data))
        # an unindexed row of an IP inside this page's span that no indexed row has: shown here
        have = {r.ip for r in page}
        for r in shadow.values():
            try:
                k = ipkey(r.ip)
            except ValueError:
                k = ""  # a key that is no address: shown on the first page
            in_span = (k > after or (not after and not k)) and (upper is None or k <= upper)
            if in_span and r.ip not in have and (not node or r.node == node):
                page.append(r)
        page.sort(key=lambda r: _sortkey(r.ip))
        return page, upper or ""

    def _read_page_old(self, network: str, after: str, limit: int, node: str) -> tuple[list[Reservation], str]:
        rows = self.db.execute("SELECT ip, data FROM reservations WHERE network = ? AND ip > ? ORDER BY ip LIMIT ?",
                               (network, after, limit + 1)).fetchall()
        more, rows = len(rows) > limit, rows[:limit]
        page = [r for r in decode_rows(network, rows, quiet=True)[0].values() if not node or r.node == node]
        return page, (rows[-1][0] if more else "")

    def networks(self) -> list[str]:
        """The networks that have reservations (from the primary key's index, no row decoded)."""
        try:
            return [r[0] for r in self.db.execute("SELECT DISTINCT network FROM reservations ORDER BY network")]
        except sqlite3.Error as e:
            raise CNIError(IO_FAILURE, f"IPAM database {self.path}: {e}") from e

    def transact(self, network: str, fn: Callable[[View], T]) -> T:
        if self.readonly:
            raise CNIError(IO_FAILURE, f"IPAM database {self.path} is open read-only")
        writer = self.writer
        if not writer.acquire(timeout=BUSY_TIMEOUT_S):
            raise CNIError(TRY_AGAIN_LATER, f"IPAM database {self.path} is busy: another call of this process "
                           f"held its write lock for {BUSY_TIMEOUT_S:g} s")
        try:
            return self._transact(network, fn)
        finally:
            writer.release()

    def _transact(self, network: str, fn: Callable[[View], T]) -> T:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:  # still locked after the busy timeout
            raise CNIError(TRY_AGAIN_LATER, f"IPAM database {self.path} is busy: {e}") from e
        try:
            view = SQLiteView(self.db, network)
            result = fn(view)
            for ip, res in view.changes.items():
                for key in [ip] + view.stray.get(ip, []):
                    self.db.execute("DELETE FROM reservations WHERE network = ? AND ip = ?", (network, key))
                if res is not None:
                    self.db.execute(INSERT, _row(network, res))
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


class SQLiteView(View):
    """The policy's view inside one IMMEDIATE transaction: rows read by index as the policy asks
    (by IP, identity, attachment; a pool's taken addresses from the narrow columns), each decoded
    once; the whole network only when the policy walks all of it (GC)."""

    def __init__(self, db, network: str):
        # rows without index columns (older writer, hand edits, corrupt rows) are read every time
        rows = db.execute("SELECT ip, data FROM reservations WHERE network = ? AND ipkey IS NULL",
                          (network,)).fetchall()
        records, self.stray = decode_rows(network, rows)
        super().__init__(records)
        self.db, self.network = db, network
        self.loaded: set[str] = set(records)  # IPs whose row (or its absence) is known
        self.full = False

    def _absorb(self, rows: list) -> None:
        for ip, data in rows:
            if ip not in self.loaded:
                self.loaded.add(ip)
                merge(self.records, Reservation.decode(ip, data))

    def get(self, ip: str) -> Optional[Reservation]:
        if ip not in self.changes and ip not in self.loaded and not self.full:
            self._absorb(self.db.execute("SELECT ip, data FROM reservations WHERE network = ? AND ip = ?",
                                         (self.network, ip)).fetchall())
            self.loaded.add(ip)
        return super().get(ip)

    def values(self) -> list[Reservation]:
        if not self.full:
            self._absorb(self.db.execute("SELECT ip, data FROM reservations WHERE network = ?", (self.network,)).fetchall())
            self.full = True
        return super().values()

    def of_container(self, container_id: str, ifname: str) -> list[Reservation]:
        self._absorb(self.db.execute("SELECT ip, data FROM reservations WHERE network = ? AND container_id = ? "
                                     "AND ifname = ?", (self.network, container_id, ifname)).fetchall())
        return [r for r in self._known() if r.state == ACTIVE and r.container_id == container_id and r.ifname == ifname]

    def of_identity(self, key: str) -> list[Reservation]:
        self._absorb(self.db.execute("SELECT ip, data FROM reservations WHERE network = ? AND identity = ?",
                                     (self.network, key)).fetchall())
        return [r for r in self._known() if r.identity == key]

    def _known(self) -> list[Reservation]:
        """What was read so far, with the changes (View.values without reading everything)."""
        return View.values(self)

    def candidates(self, pool: Pool) -> Iterable:
        """The pool's addresses in order, skipping those the narrow columns show are taken
        (active, or held or cooling and not yet expired); the policy still reads and checks each."""
        import time
        now = time.time()
        lo, hi = ipkey(str(pool.start)), ipkey(str(pool.end))
        taken = set()
        for key, state, hold_until, cool_until in self.db.execute(
                "SELECT ipkey, state, hold_until, cool_until FROM reservations WHERE network = ? AND ipkey BETWEEN ? AND ?",
                (self.network, lo, hi)):
            free = ((state == HELD and hold_until is not None and now >= hold_until)
                    or (state == COOLING and now >= cool_until))
            if not free:
                taken.add(int(key[2:], 16))  # ipkey(): "<version>:<the address as 32 hex digits>"
        return super().candidates(pool, taken)
