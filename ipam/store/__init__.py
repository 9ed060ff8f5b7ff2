"""Reservation stores. Each runs `fn(view)` inside one atomic transaction over one network's
reservations and commits the view's changes only if nobody changed the network meanwhile."""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Protocol, TypeVar

    from ..policy import View

    T = TypeVar("T")

    class Store(Protocol):
        def transact(self, network: str, fn: Callable[[View], T]) -> T: ...

        def close(self) -> None: ...


def open_store(conf) -> "Store":
    if conf.etcd_endpoints:
        from .etcd import EtcdStore
        return EtcdStore(conf.etcd_endpoints, conf.etcd_prefix, conf.etcd_timeout_s)
    from .sqlite import SQLiteStore
    return SQLiteStore(conf.data_dir)
