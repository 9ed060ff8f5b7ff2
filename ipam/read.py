"""The one read path for moor-ipam's reservations and pool usage, used by `moor-ipam list`, the
agent's API and metrics, and netdiag. Reads never take the store's write lock and never create
the embedded database; they never raise either: what could not be read is in `error`."""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

from cni.spec.errors import CNIError

from .config import IPAMConf, Pool, parse
from .reservation import ACTIVE, CORRUPT, HELD, Reservation, addr_key, merge

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator, Optional


@dataclass
class PoolUsage:
    cidr: str
    size: int  # addresses the pool can hand out (range, minus gateway, exclusions, network/broadcast)
    active: int = 0
    held: int = 0
    corrupt: int = 0


@dataclass
class Snapshot:
    network: str = ""
    where: str = ""  # the store read, for people
    reservations: list[Reservation] = field(default_factory=list)  # sorted by address
    pools: list[PoolUsage] = field(default_factory=list)
    error: str = ""

    @property
    def corrupt(self) -> list[Reservation]:
        return [r for r in self.reservations if r.state == CORRUPT]


def read_netconf(path: str) -> tuple[dict, IPAMConf]:
    """The network config file (a .conf, or a .conflist whose first moor-ipam plugin is used) and
    its IPAM part; ValueError naming the file and what is wrong."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    if isinstance(doc.get("plugins"), list):  # a conflist: the plugin that uses moor-ipam
        plugin = next((p for p in doc["plugins"] if isinstance(p, dict) and isinstance(p.get("ipam"), dict)
                       and p["ipam"].get("type") == "moor-ipam"), None)
        if plugin is None:
            raise ValueError(f"no plugin in {path} uses moor-ipam")
        doc = dict(plugin, name=doc.get("name"), cniVersion=doc.get("cniVersion"))
    if not isinstance(doc.get("name"), str) or not doc["name"]:
        raise ValueError(f"{path}: the network config has no 'name'")
    try:
        return doc, parse(doc)
    except CNIError as e:
        raise ValueError(f"{path}: {e.msg}") from e


def usable_size(pool: Pool) -> int:
    """How many addresses the pool hands out, counted without walking it (IPv6 pools are huge)."""
    lo, hi = int(pool.start), int(pool.end)
    # exclusions clipped to the range and merged, so an address excluded twice counts once
    spans = sorted((max(lo, int(n.network_address)), min(hi, int(n.broadcast_address))) for n in pool.exclude)
    excluded, cur_lo, cur_hi = 0, None, None
    for a, b in spans:
        if a > b:
            continue
        if cur_hi is None or a > cur_hi + 1:
            if cur_hi is not None:
                excluded += cur_hi - cur_lo + 1
            cur_lo, cur_hi = a, b
        else:
            cur_hi = max(cur_hi, b)
    if cur_hi is not None:
        excluded += cur_hi - cur_lo + 1
    singles = {pool.gateway} if pool.gateway is not None else set()
    if pool.cidr.prefixlen < pool.cidr.max_prefixlen - 1:
        singles.add(pool.cidr.network_address)
        if pool.version == 4:
            singles.add(pool.cidr.broadcast_address)
    # a special address counts only where the range holds it and no exclusion already took it
    special = sum(1 for a in singles if lo <= int(a) <= hi and not any(a in n for n in pool.exclude))
    return max(0, hi - lo + 1 - excluded - special)


def pool_usage(conf: IPAMConf, rows: list[Reservation]) -> list[PoolUsage]:
    out = []
    for p in conf.pools:
        u = PoolUsage(cidr=str(p.cidr), size=usable_size(p))
        for r in rows:
            try:
                inside = ipaddress.ip_address(r.ip) in p.cidr
            except ValueError:
                continue  # a corrupt record under a key that is no address
            if inside:
                u.active += r.state == ACTIVE
                u.held += r.state == HELD
                u.corrupt += r.state == CORRUPT
        out.append(u)
    return out


PAGE_SIZE = 1000


def _where(conf: IPAMConf) -> str:
    if conf.etcd_endpoints:
        return f"etcd {', '.join(conf.etcd_endpoints)} {conf.etcd_prefix}/{conf.network}"
    from .store.sqlite import FILENAME
    return f"{conf.data_dir}/{FILENAME}"


def _error(e: Exception, where: str) -> str:
    if isinstance(e, CNIError):
        return e.msg + (f" ({e.details})" if e.details else "")
    return f"reading {where}: {e.__class__.__name__}: {e}"


def page(conf: IPAMConf, after: str = "", limit: int = PAGE_SIZE, node: str = "", store=None) -> tuple[Snapshot, str]:
    """One page of the network's reservations after the cursor `after` (the store's; "" from the
    start), sorted by address, with the pool usage of this page only, and the next cursor ("" when
    done, or on an error, which is in the snapshot). `node`: that node's reservations only."""
    snap = Snapshot(network=conf.network, where=_where(conf))
    nxt = ""
    try:
        own = store is None
        if own:
            from .store import open_store
            store = open_store(conf, readonly=True)
        try:
            rows, nxt = store.read_page(conf.network, after, limit, node=node)
            snap.reservations = sorted(rows, key=addr_key)
        finally:
            if own:
                store.close()
    except Exception as e:  # noqa: BLE001 - a reader reports, it never takes its caller down
        snap.error, nxt = _error(e, snap.where), ""
    snap.pools = pool_usage(conf, snap.reservations)
    return snap, nxt


def pages(conf: IPAMConf, node: str = "", page_size: int = PAGE_SIZE) -> Iterator[Snapshot]:
    """The network's reservations a page at a time (at least one page, maybe empty; an error ends
    the walk in its page). Each page's pool usage counts that page only: the caller sums. What a
    walk holds is one page; what it sees is a listing, not one transaction (see the stores'
    read_page)."""
    from .store import open_store
    try:
        store = open_store(conf, readonly=True)
    except Exception as e:  # noqa: BLE001
        where = _where(conf)
        yield Snapshot(network=conf.network, where=where, error=_error(e, where),
                       pools=pool_usage(conf, []))
        return
    try:
        after = ""
        while True:
            snap, after = page(conf, after, page_size, node, store=store)
            yield snap
            if not after:
                return
    finally:
        store.close()


def add_usage(total: list[PoolUsage], more: list[PoolUsage]) -> list[PoolUsage]:
    """Pool usage of pages summed (the same pools, in order)."""
    if not total:
        return [PoolUsage(p.cidr, p.size, p.active, p.held, p.corrupt) for p in more]
    for t, p in zip(total, more):
        t.active, t.held, t.corrupt = t.active + p.active, t.held + p.held, t.corrupt + p.corrupt
    return total


def snapshot(conf: IPAMConf, node: str = "") -> Snapshot:
    """The network's reservations and pool usage, from its store, read-only (every page)."""
    snap = Snapshot(network=conf.network, where=_where(conf))
    records: dict[str, Reservation] = {}
    for p in pages(conf, node=node):
        for r in p.reservations:
            merge(records, r)  # an IP listed twice (a stray key in another page): one row, corrupt first
        snap.error = snap.error or p.error
    snap.reservations = sorted(records.values(), key=addr_key)
    snap.pools = pool_usage(conf, snap.reservations)
    return snap


def snapshot_file(path: str) -> Snapshot:
    """Like snapshot(), for the network a config file names."""
    try:
        _doc, conf = read_netconf(path)
    except ValueError as e:
        return Snapshot(where=path, error=str(e))
    return snapshot(conf)


def pages_dir(data_dir: str, network: Optional[str] = None, node: str = "",
              page_size: int = PAGE_SIZE) -> Iterator[Snapshot]:
    """Every network in an embedded store (netdiag without a network config), a page at a time:
    reservations only, since pool sizes live in the network configs. An error ends the walk."""
    from .store.sqlite import FILENAME, SQLiteStore
    where = f"{data_dir}/{FILENAME}"
    try:
        store = SQLiteStore(data_dir, readonly=True)
    except CNIError as e:
        yield Snapshot(network=network or "", where=where, error=e.msg)
        return
    try:
        nets = [network] if network else store.networks()
        for net in nets:
            after = ""
            while True:
                try:
                    rows, after = store.read_page(net, after, page_size, node=node)
                except CNIError as e:
                    yield Snapshot(network=net, where=where, error=e.msg)
                    return
                yield Snapshot(network=net, where=where, reservations=sorted(rows, key=addr_key))
                if not after:
                    break
    finally:
        store.close()


def snapshot_dir(data_dir: str, network: Optional[str] = None, node: str = "") -> list[Snapshot]:
    """Like pages_dir(), one snapshot a network."""
    out: dict[str, Snapshot] = {}
    for p in pages_dir(data_dir, network, node):
        snap = out.setdefault(p.network, Snapshot(network=p.network, where=p.where))
        snap.reservations += p.reservations
        snap.error = snap.error or p.error
    return list(out.values())
