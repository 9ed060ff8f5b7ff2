"""Adj-RIB-in of every peer and the best paths chosen from it (RFC 4271 9.1, cut to what a node
needs): LOCAL_PREF, AS_PATH length, ORIGIN, MED (within one neighbouring AS), eBGP over iBGP; every
peer offering an equally good path becomes an ECMP next hop.
Paths a restarting peer left behind stay usable, marked stale, until it refreshes them, sends
End-of-RIB, or its restart time runs out (RFC 4724 4.2)."""
from __future__ import annotations

from dataclasses import dataclass

from .wire import Prefix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable


@dataclass(frozen=True)
class Rank:
    """The attributes best-path selection compares (RFC 4271 9.1.2.2)."""
    local_pref: int = 100
    as_path_len: int = 0
    origin: int = 0
    med: int = 0
    neighbor_as: int = 0  # MED is compared only between paths from the same neighbouring AS
    ibgp: bool = False

    @property
    def first(self) -> tuple:
        """Higher LOCAL_PREF, shorter AS_PATH, lower ORIGIN: lower is better."""
        return (-self.local_pref, self.as_path_len, self.origin)


@dataclass(frozen=True)
class Path:
    peer: str
    next_hop: str
    rank: Rank = Rank()


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

    def peer_down(self, peer: str, keep: set[int] | bool = frozenset()) -> int:
        """The peer's session ended: keep its paths of the IP versions in `keep` as stale (it is
        restarting gracefully and keeps forwarding those), drop the rest. True keeps both.
        Returns how many paths were kept."""
        versions = {4, 6} if keep is True else set(keep or ())
        mine = [p for p, by in self.paths.items() if peer in by]
        kept = [p for p in mine if p.version in versions]
        if kept:
            self.stale.setdefault(peer, set()).update(kept)
        else:
            self.stale.pop(peer, None)
        self._drop(peer, [p for p in mine if p.version not in versions])
        return len(kept)

    def sweep(self, peer: str, version: int | None = None) -> int:
        """Drop the peer's paths that are still stale (of one IP version, or all)."""
        stale = self.stale.get(peer, set())
        gone = [p for p in stale if version is None or p.version == version]
        stale.difference_update(gone)
        if not stale:
            self.stale.pop(peer, None)
        self._drop(peer, gone)
        return len(gone)

    def forget(self, peer: str, version: int) -> int:
        """Drop every path of one IP version the peer gave, stale or not (that family was disabled,
        RFC 7606). Returns how many."""
        mine = [p for p, by in self.paths.items() if p.version == version and peer in by]
        stale = self.stale.get(peer)
        if stale is not None:
            stale.difference_update(mine)
            if not stale:
                self.stale.pop(peer, None)
        self._drop(peer, mine)
        return len(mine)

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
            top = min(path.rank.first for path in by.values())
            cands = [path for path in by.values() if path.rank.first == top]
            low_med: dict[int, int] = {}
            for path in cands:
                low_med[path.rank.neighbor_as] = min(low_med.get(path.rank.neighbor_as, path.rank.med), path.rank.med)
            cands = [path for path in cands if path.rank.med == low_med[path.rank.neighbor_as]]
            if any(not path.rank.ibgp for path in cands):  # eBGP over iBGP
                cands = [path for path in cands if not path.rank.ibgp]
            hops = tuple(sorted({path.next_hop for path in cands}))
        if self.best.get(p, ()) != hops:
            if hops:
                self.best[p] = hops
            else:
                self.best.pop(p, None)
            self.on_best(p, hops)
