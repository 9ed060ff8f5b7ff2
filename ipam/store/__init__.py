"""Reservation stores. Each runs `fn(view)` inside one atomic transaction over one network's
reservations and commits the view's changes only if nobody changed the network meanwhile, and
reads a network's reservations without taking any write lock (`read`)."""
from __future__ import annotations

import sys

from ..reservation import CORRUPT, Reservation, merge

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable, Protocol, TypeVar

    from ..policy import View

    T = TypeVar("T")

    class Store(Protocol):
        def transact(self, network: str, fn: Callable[[View], T]) -> T: ...

        def read(self, network: str) -> list[Reservation]: ...

        def close(self) -> None: ...


def decode_rows(network: str, rows: Iterable[tuple[str, str | bytes]], quiet: bool = False
                ) -> tuple[dict[str, Reservation], dict[str, list[str]]]:
    """Stored (key, data) rows as records by IP. A row that does not parse is quarantined (state
    CORRUPT: in use, never handed out, shown by `moor-ipam list`) and named on stderr, so one bad
    row blocks nothing else. Also returns the stored keys that differ from their record's IP (a
    non-canonical spelling), which a write to that IP must remove."""
    records: dict[str, Reservation] = {}
    stray: dict[str, list[str]] = {}
    for key, data in rows:
        r = Reservation.decode(key, data)
        if r.ip != key:
            stray.setdefault(r.ip, []).append(key)
        if r.state == CORRUPT and not quiet:
            print(f"moor-ipam: network {network}: the record under key {key!r} is corrupt ({r.detail}); "
                  f"it is kept in use until `moor-ipam release CONFIG {r.ip} --force` repairs it", file=sys.stderr)
        merge(records, r)
    return records, stray


def open_store(conf, readonly: bool = False, node: str = "") -> "Store":
    """The network's store; `readonly` (netdiag, the agent, `moor-ipam list`): never creates or
    writes the embedded database. `node`: this node's name (the etcd blocks it allocates from)."""
    if conf.etcd_endpoints:
        from .etcd import EtcdStore
        if not node:
            import os
            from ..collect import node_name
            node = node_name(os.environ, conf)
        return EtcdStore(conf.etcd_endpoints, conf.etcd_prefix, conf.etcd_timeout_s, conf=conf, node=node)
    from .sqlite import SQLiteStore
    return SQLiteStore(conf.data_dir, readonly=readonly)
