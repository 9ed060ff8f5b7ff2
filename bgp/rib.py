"""Adj-RIB-in of every peer and the best paths chosen from it (RFC 4271 9.1, cut to what a node
needs): the lowest rank wins, and every peer offering an equally good path becomes an ECMP next hop.
Paths a restarting peer left behind stay usable, marked stale, until it refreshes them, sends
End-of-RIB, or its restart time runs out (RFC 4724 4.2)."""
from __future__ import annotations

from dataclasses import dataclass

from .wire import Prefix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable


@dataclass(frozen=True)
class Path:
    peer: str
    next_hop: str
    # lower is better: (-LOCAL_PREF, AS_PATH length, ORIGIN, MED, iBGP after eBGP)
    rank: tuple = (-100, 0, 0, 0, 0)


class RibIn:
    def __init__(self, on_best: Callable[[Prefix, tuple[str, ...]], None] | None = None):
        self.on_best = on_best or (lambda prefix, hops: None)  # hops == (): no route any more
        self.paths: dict[Prefix, dict[str, Path]] = {}
        self.best: dict[Prefix, tuple[str, ...]] = {}
        self.stale: dict[str, set[Prefix]] = {}  # peer -> prefixes kept over its restart

    def update(self, peer: str, announced: list[tuple[Prefix, Path]], withdrawn: list[Prefix]) -> None:
        stale = self.stale.get(peer, set())
        for p in withdrawn:
            stale.discard(p)
            if self.paths.get(p, {}).pop(peer, None) is not None:
                self._select(p)
        for p, path in announced:
            stale.discard(p)  # refreshed by the restarted peer
            self.paths.setdefault(p, {})[peer] = path
            self._select(p)

    def peer_down(self, peer: str, keep: bool) -> int:
        """The peer's session ended: keep its paths as stale (it is restarting gracefully) or drop them.
        Returns how many paths it had."""
        mine = [p for p, by in self.paths.items() if peer in by]
        if keep:
            self.stale.setdefault(peer, set()).update(mine)
        else:
            self.stale.pop(peer, None)
            self._drop(peer, mine)
        return len(mine)

    def sweep(self, peer: str, version: int | None = None) -> int:
        """Drop the peer's paths that are still stale (of one IP version, or all)."""
        stale = self.stale.get(peer, set())
        gone = [p for p in stale if version is None or p.version == version]
        stale.difference_update(gone)
        if not stale:
            self.stale.pop(peer, None)
        self._drop(peer, gone)
        return len(gone)

    def _drop(self, peer: str, prefixes) -> None:
        for p in prefixes:
            by = self.paths.get(p)
            if by is not None and by.pop(peer, None) is not None:
                self._select(p)

    def _select(self, p: Prefix) -> None:
        by = self.paths.get(p) or {}
        if not by:
            self.paths.pop(p, None)
            hops: tuple[str, ...] = ()
        else:
            top = min(path.rank for path in by.values())
            hops = tuple(sorted({path.next_hop for path in by.values() if path.rank == top}))
        if self.best.get(p, ()) != hops:
            if hops:
                self.best[p] = hops
            else:
                self.best.pop(p, None)
            self.on_best(p, hops)
