"""The cluster store: etcd v3 through its JSON gateway (stdlib HTTP, no gRPC stack to import).

Layout of a network (`<prefix>/<network>/`):
- `layout`: "blocks" (the default for a new network), "ip" (the first layout), or "migrating";
  every write compares it, so a migration never interleaves with an allocation;
- `block/<cidr>`: a block of a pool, its node affinity and its reservations (blocks.py);
- `handle/<identity>`: a sticky identity's addresses and their seq, so a re-created pod finds its
  IP in one read wherever it lands;
- `node/<node>`: the blocks a node allocates from or holds reservations in (an index: a node
  reads its own blocks, never the network);
- `ip/<ip>`: one reservation a key, the first layout (read and written while `layout` is not
  "blocks"; `moor-ipam migrate` converts it).

A transaction reads what it needs and commits with a compare on the revision of every key it
writes (block, handle and node index together): if another node changed one in between, nothing
is written and the allocation is recomputed. Two nodes can never take the same IP. An unreachable
etcd is CNI error 11 (try again later), never a guess."""
from __future__ import annotations

import base64
import http.client
import ipaddress
from cni.spec import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
import random
import sys
import time
import urllib.error
import urllib.request

from cni.spec.errors import IO_FAILURE, TRY_AGAIN_LATER, CNIError

from . import decode_rows
from .blocks import (Block, block_of, decode_block, decode_handle, decode_list, encode_block, free_block, in_pool,
                     usable_in)
from ..policy import View
from ..reservation import Reservation, addr_key, merge

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable, Optional, TypeVar

    from ..config import IPAMConf, Pool

    T = TypeVar("T")

MAX_ATTEMPTS = 50
MIGRATION_WAIT_S = 30.0  # how long an allocation waits for a running migration before code 11
BLOCKS, IP, MIGRATING = "blocks", "ip", "migrating"


def _b64(s: str) -> str:
    return base64.b64encode(s.encode(errors="surrogateescape")).decode()


def _unb64(s: str) -> str:
    # a key that is not UTF-8 (written by hand) must still be readable, reportable and deletable
    return base64.b64decode(s).decode(errors="surrogateescape")


def _range_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return base64.b64encode(bytes(b)).decode()


def _same(key: str, rev: Optional[str]) -> dict:
    """The compare that `key` is as read: its mod revision, or still absent."""
    if rev is None:
        return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": rev}


def _put(key: str, value: bytes | str) -> dict:
    v = value.encode() if isinstance(value, str) else value
    return {"requestPut": {"key": _b64(key), "value": base64.b64encode(v).decode()}}


def _delete(key: str) -> dict:
    return {"requestDeleteRange": {"key": _b64(key)}}


class EtcdStore:
    def __init__(self, endpoints: list[str], prefix: str, timeout_s: float = 5.0,
                 conf: Optional[IPAMConf] = None, node: str = ""):
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.prefix = prefix
        self.timeout = timeout_s
        self.conf = conf  # the pools (block sizes) and strictAffinity; None: the first layout only
        self.node = node
        self.bytes_read = 0  # response bytes, for the bench: an ADD's cost in etcd traffic
        self.retries = 0  # CAS conflicts redone
        # the runtime's HTTP(S)_PROXY must not route the node's store traffic
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def close(self) -> None:
        pass

    def _post(self, path: str, body: dict) -> dict:
        errors = []
        for ep in random.sample(self.endpoints, len(self.endpoints)):
            req = urllib.request.Request(ep + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    data = resp.read()
                    self.bytes_read += len(data)
                    return json.loads(data)
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if 400 <= e.code < 500:  # etcd refused the request itself: no other member will take it
                    raise CNIError(IO_FAILURE, f"etcd refused {path} (HTTP {e.code})", detail) from e
                errors.append(f"{ep}: HTTP {e.code} {detail}")
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
                errors.append(f"{ep}: {e.__class__.__name__}: {e}")
        raise CNIError(TRY_AGAIN_LATER, "etcd is unreachable", "; ".join(errors))

    def _get(self, keys: list[str | tuple[str, dict]]) -> list[list[tuple[str, bytes, str]]]:
        """Several reads in one round trip (one read-only txn, one revision): for each key (or
        (prefix, options) for a range), its [(key, value, mod_revision)]."""
        ops = []
        for k in keys:
            if isinstance(k, tuple):
                ops.append({"requestRange": dict({"key": _b64(k[0]), "range_end": _range_end(k[0])}, **k[1])})
            else:
                ops.append({"requestRange": {"key": _b64(k)}})
        got = self._post("/v3/kv/txn", {"success": ops})
        out = []
        try:
            for resp in got.get("responses") or []:
                out.append([(_unb64(kv["key"]), base64.b64decode(kv.get("value", "")), kv.get("mod_revision", "0"))
                            for kv in resp["response_range"].get("kvs") or []])
        except (KeyError, ValueError, TypeError, AttributeError) as e:  # not what etcd sends
            raise CNIError(IO_FAILURE, f"etcd returned an unreadable answer: {e}") from e
        if len(out) != len(keys):
            raise CNIError(IO_FAILURE, f"etcd answered {len(out)} of {len(keys)} reads")
        return out

    def _base(self, network: str) -> str:
        return f"{self.prefix}/{network}/"

    def layout(self, network: str) -> tuple[str, Optional[str]]:
        """The network's layout and the revision of its marker (None: no marker yet, and then the
        layout is "ip" when the network already has first-layout keys, else "blocks")."""
        base = self._base(network)
        (marker,) = self._get([base + "layout"])
        return _layout(marker, self._legacy_probe(network) if not marker else [])

    def _legacy_probe(self, network: str) -> list:
        """Whether the network has keys of the first layout. Only asked when it has no marker:
        after a migration the old range holds deleted keys, which etcd walks until compaction."""
        (rows,) = self._get([(self._base(network) + "ip/", {"keys_only": True, "limit": 1})])
        return rows

    # -- reads ------------------------------------------------------------------------------------
    def read(self, network: str) -> list[Reservation]:
        """Every reservation of the network (list, netdiag): the whole network, on purpose."""
        lay, _rev = self.layout(network)
        if lay == BLOCKS:
            records: dict[str, Reservation] = {}
            for b in self.blocks(network):
                for r in b.records.values():
                    merge(records, r)
            return list(records.values())
        rows, _revs = self._range_ip(network)
        return list(decode_rows(network, rows, quiet=True)[0].values())

    def read_page(self, network: str, after: str, limit: int, node: str = "") -> tuple[list[Reservation], str]:
        """A page of the network's reservations after the cursor `after` ("": from the start) and
        the cursor of the next page ("" when done); the cursor is the last key read, relative to
        the network ("block/<cidr>" or "ip/<ip>"), and etcd orders keys bytewise, so pages come in
        key order (192.0.2.128/26 before 192.0.2.64/26), each sorted by address.
        Blocks: a page is whole blocks, as many as `limit` reservations fit when each is full (at
        least one), read with one range request; `node`: the blocks its index (`node/<node>`)
        names, keeping the records that name it. First layout: `limit` keys of `ip/`, `node`
        filtered here (a page can come back empty with a cursor: go on).
        A listing, not a transaction: a reservation written behind the cursor meanwhile is missed,
        one moved ahead can be seen twice; a quiet store gives each exactly once."""
        limit = max(1, limit)
        lay, _rev = self.layout(network)
        want = "block/" if lay == BLOCKS else "ip/"
        if lay == MIGRATING:
            raise CNIError(TRY_AGAIN_LATER, f"etcd: network {network} is being migrated to blocks: list it again after")
        if after and not after.startswith(want):
            raise CNIError(IO_FAILURE, f"etcd: network {network} changed layout during the listing: start it again")
        if lay == BLOCKS:
            n = max(1, limit // self._block_capacity())
            return self._block_page(network, after, n, node)
        kvs, more = self._range_after(network, want, after, limit)
        rows = [(k[len(self._base(network)) + len(want):], v) for k, v in kvs]
        page = [r for r in decode_rows(network, rows, quiet=True)[0].values() if not node or r.node == node]
        return sorted(page, key=addr_key), (kvs[-1][0][len(self._base(network)):] if more and kvs else "")

    def _block_capacity(self) -> int:
        """Addresses in the largest block of the network's pools (64 without a config)."""
        pools = self.conf.pools if self.conf is not None else []
        return max([1 << (p.cidr.max_prefixlen - p.block_prefix) for p in pools if p.block_prefix] or [64])

    def _block_page(self, network: str, after: str, n: int, node: str) -> tuple[list[Reservation], str]:
        base = self._base(network)
        if node:  # the node's index names its blocks: read just those, n at a time, in key order
            (idx,) = self._get([f"{base}node/{node}"])
            cidrs = (decode_list(idx[0][1]) or []) if idx else []
            keys = sorted({"block/" + c for c in cidrs}, key=lambda k: k.encode(errors="surrogateescape"))
            keys = [k for k in keys if k.encode(errors="surrogateescape") > after.encode(errors="surrogateescape")]
            got = self._get([base + k for k in keys[:n]]) if keys else []
            kvs = [(k, v, rev) for rows in got for k, v, rev in rows]
            nxt = keys[n - 1] if len(keys) > n else ""
        else:
            found, more = self._range_after(network, "block/", after, n, revs=True)
            kvs = found
            nxt = found[-1][0][len(base):] if more and found else ""
        records: dict[str, Reservation] = {}
        for k, v, rev in kvs:
            for r in decode_block(network, k[len(base) + len("block/"):], rev, v, quiet=True).records.values():
                if not node or r.node == node:
                    merge(records, r)
        return sorted(records.values(), key=addr_key), nxt

    def _range_after(self, network: str, sub: str, after: str, limit: int, revs: bool = False) -> tuple[list, bool]:
        """Up to `limit` keys of `<network>/<sub>` after the relative key `after`, in one range
        request, and whether more follow."""
        base = self._base(network)
        start = base + after + "\0" if after else base + sub  # the first key after the cursor
        got = self._post("/v3/kv/range", {"key": _b64(start), "range_end": _range_end(base + sub), "limit": limit})
        try:
            kvs = [(_unb64(kv["key"]), base64.b64decode(kv.get("value", "")), kv.get("mod_revision", "0"))
                   for kv in got.get("kvs") or []]
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise CNIError(IO_FAILURE, f"etcd returned an unreadable answer: {e}") from e
        return (kvs if revs else [(k, v) for k, v, _ in kvs]), bool(got.get("more"))

    def blocks(self, network: str) -> list[Block]:
        base = self._base(network) + "block/"
        (rows,) = self._get([(base, {})])
        return [decode_block(network, k[len(base):], rev, v, quiet=True) for k, v, rev in rows]

    def _range_ip(self, network: str) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        """The first layout's stored (key, value) rows and each key's mod revision."""
        prefix = self._base(network) + "ip/"
        (kvs,) = self._get([(prefix, {})])
        return [(k[len(prefix):], v) for k, v, _ in kvs], {k[len(prefix):]: rev for k, _, rev in kvs}

    # -- transactions ----------------------------------------------------------------------------
    def transact(self, network: str, fn: Callable[[View], T]) -> T:
        deadline = None
        attempt = 0
        while attempt < MAX_ATTEMPTS:
            tx = _Tx(self, network)
            if tx.layout == MIGRATING:  # nobody writes while `moor-ipam migrate` copies: wait for it
                deadline = deadline or time.monotonic() + MIGRATION_WAIT_S
                if time.monotonic() > deadline:
                    raise CNIError(TRY_AGAIN_LATER, f"etcd: network {network} is being migrated to blocks",
                                   "if no `moor-ipam migrate` is running, run it again to finish")
                time.sleep(random.uniform(0.02, 0.1))
                continue
            view = _legacy_view(self, network, tx) if tx.layout == IP else BlockView(tx)
            result = fn(view)
            if not view.changes:
                return result
            if tx.commit(view):
                return result
            self.retries += 1
            attempt += 1
            time.sleep(random.uniform(0, min(0.05, 0.002 * attempt)))  # another writer won: redo
        raise CNIError(TRY_AGAIN_LATER, f"etcd: network {network} is too contended, gave up after {MAX_ATTEMPTS} attempts")

    def tidy(self, network: str, now: float) -> list[str]:
        """GC of this node's blocks: an empty block affine to it goes back to the pool once it
        has been empty for blockIdleSeconds (delete with a compare on its revision, so an
        allocation in between keeps it); blocks it no longer holds anything in leave its index.
        Returns the CIDRs released."""
        if self.conf is None:
            return []
        for _ in range(MAX_ATTEMPTS):
            tx = _Tx(self, network)
            if tx.layout != BLOCKS:
                return []
            tx.load_blocks(tx.node_blocks)
            compare, ops, released, keep = [tx.marker_compare()], [], [], []
            for cidr in tx.node_blocks:
                b = tx.blocks[cidr]
                mine = any(r.node == self.node for r in b.records.values())
                if b.exists and b.node == self.node and not b.records and not b.corrupt:
                    if b.empty_since and now - b.empty_since >= self.conf.block_idle_s:
                        compare.append(_same(tx.key_block(cidr), b.rev))
                        ops.append(_delete(tx.key_block(cidr)))
                        released.append(cidr)
                        continue
                elif not b.exists or (b.node != self.node and not mine):
                    continue  # gone, or someone else's block this node no longer holds anything in
                keep.append(cidr)
            if keep == tx.node_blocks:
                return []
            compare.append(_same(tx.key_node(), tx.node_rev))
            ops.append(_put(tx.key_node(), json.dumps({"blocks": keep})))
            if self._post("/v3/kv/txn", {"compare": compare, "success": ops}).get("succeeded"):
                return released
            time.sleep(random.uniform(0, 0.02))
        return []


def _layout(marker: list, legacy: list) -> tuple[str, Optional[str]]:
    if marker:
        value = marker[0][1].decode(errors="replace")
        return (value if value in (BLOCKS, IP, MIGRATING) else IP), marker[0][2]
    return (IP if legacy else BLOCKS), None


class _Tx:
    """What one attempt read, with revisions, for the compare of its commit."""

    def __init__(self, store: EtcdStore, network: str):
        self.s = store
        self.network = network
        self.base = store._base(network)
        self.node = store.node
        marker, node = store._get([self.base + "layout", self.key_node()])
        self.layout, self.marker_rev = _layout(marker, store._legacy_probe(network) if not marker else [])
        self.node_rev: Optional[str] = node[0][2] if node else None
        self.node_blocks: list[str] = []
        if node:
            got = decode_list(node[0][1])
            if got is None:
                print(f"moor-ipam: network {network}: the index of node {self.node} is unreadable; it is rewritten",
                      file=sys.stderr)
            self.node_blocks = got or []
        self.node_dirty = False
        self.blocks: dict[str, Block] = {}
        self.handles: dict[str, tuple[Optional[str], dict]] = {}  # identity -> (rev, {ip: seq})
        self.existing: Optional[set[str]] = None

    def key_block(self, cidr: str) -> str:
        return f"{self.base}block/{cidr}"

    def key_node(self) -> str:
        return f"{self.base}node/{self.node}"

    def key_handle(self, identity: str) -> str:
        return f"{self.base}handle/{identity}"

    def marker_compare(self) -> dict:
        return _same(self.base + "layout", self.marker_rev)

    def load_blocks(self, cidrs: Iterable[str]) -> None:
        want = [c for c in dict.fromkeys(cidrs) if c not in self.blocks]
        if not want:
            return
        for cidr, rows in zip(want, self.s._get([self.key_block(c) for c in want])):
            if rows:
                self.blocks[cidr] = decode_block(self.network, cidr, rows[0][2], rows[0][1])
            else:
                self.blocks[cidr] = Block(cidr=cidr)

    def load_handles(self, keys: Iterable[str]) -> None:
        want = [k for k in dict.fromkeys(keys) if k and k not in self.handles]
        if not want:
            return
        for key, rows in zip(want, self.s._get([self.key_handle(k) for k in want])):
            if not rows:
                self.handles[key] = (None, {})
                continue
            ips = decode_handle(rows[0][1])
            if ips is None:
                print(f"moor-ipam: network {self.network}: the handle of {key} is unreadable; it is rebuilt from "
                      f"the blocks read", file=sys.stderr)
            self.handles[key] = (rows[0][2], ips or {})

    def existing_blocks(self) -> set[str]:
        if self.existing is None:
            (rows,) = self.s._get([(self.base + "block/", {"keys_only": True})])
            self.existing = {k[len(self.base) + len("block/"):] for k, _, _ in rows}
        return self.existing

    def index(self, cidr: str) -> None:
        if cidr not in self.node_blocks:
            self.node_blocks.append(cidr)
            self.node_dirty = True

    def commit(self, view: BlockView) -> bool:
        now = time.time()
        by_block: dict[str, dict] = {}
        for ip, res in view.changes.items():
            by_block.setdefault(view.block_key(ip), {})[ip] = res
        # every identity whose handle changes: the one an address had and the one it has now
        idents = set()
        for cidr, changes in by_block.items():
            b = self.blocks[cidr]
            for ip, res in changes.items():
                if (old := b.records.get(ip)) is not None and old.identity:
                    idents.add(old.identity)
                if res is not None and res.identity:
                    idents.add(res.identity)
        self.load_handles(idents)
        compare, ops = [self.marker_compare()], []
        if self.marker_rev is None:  # the network's first write: it is in the blocks layout from now on
            ops.append(_put(self.base + "layout", BLOCKS))
        handles = {k: dict(self.handles[k][1]) for k in idents}
        for cidr, changes in by_block.items():
            b = self.blocks[cidr]
            if b.corrupt:
                raise CNIError(IO_FAILURE, f"etcd: block {cidr} of network {self.network} is corrupt ({b.corrupt})",
                               f"repair or delete the key {self.key_block(cidr)}")
            if not b.exists:  # claim it: a block is created by the node that first allocates in it
                b.node = self.node
            raw, value = encode_block(b, changes, now)
            compare.append(_same(self.key_block(cidr), b.rev))
            ops.append(_put(self.key_block(cidr), value))
            if b.node == self.node or any(r is not None and r.node == self.node for r in changes.values()):
                self.index(cidr)
            for ip, res in changes.items():
                if (old := b.records.get(ip)) is not None and old.identity:
                    handles[old.identity].pop(ip, None)
                if res is not None and res.identity:
                    handles[res.identity][ip] = res.seq
        for key, ips in handles.items():
            rev, before = self.handles[key]
            if ips == before and rev is not None:
                continue
            compare.append(_same(self.key_handle(key), rev))
            ops.append(_put(self.key_handle(key), json.dumps({"ips": ips})) if ips else _delete(self.key_handle(key)))
        if self.node_dirty:
            compare.append(_same(self.key_node(), self.node_rev))
            ops.append(_put(self.key_node(), json.dumps({"blocks": self.node_blocks})))
        return bool(self.s._post("/v3/kv/txn", {"compare": compare, "success": ops}).get("succeeded"))


class BlockView(View):
    """The policy's view of a network in blocks: the node's blocks, plus any other block the
    policy asks about (an explicit IP, a handle's addresses, a borrowed block), read on demand."""

    def __init__(self, tx: _Tx):
        super().__init__({})
        self.tx = tx
        self.conf = tx.s.conf
        tx.load_blocks(tx.node_blocks)
        for cidr in tx.node_blocks:
            self._absorb(tx.blocks[cidr])

    def _absorb(self, b: Block) -> None:
        for r in b.records.values():
            merge(self.records, r)

    def block_key(self, ip: str) -> str:
        """The CIDR of the block holding `ip`, its block read (or known absent)."""
        addr = ipaddress.ip_address(ip)
        pool = self.conf.pool_of(addr)
        if pool is None:
            raise CNIError(IO_FAILURE, f"{ip} is in no pool of network {self.tx.network}: it has no block")
        cidr = str(block_of(pool, addr))
        if cidr not in self.tx.blocks:
            self.tx.load_blocks([cidr])
            self._absorb(self.tx.blocks[cidr])
        return cidr

    def get(self, ip: str) -> Optional[Reservation]:
        if ip in self.changes:
            return self.changes[ip]
        try:
            self.block_key(ip)
        except (ValueError, CNIError):
            pass  # no address, or in no pool: it can only be what was read
        return self.records.get(ip)

    def of_identity(self, key: str) -> list[Reservation]:
        self.tx.load_handles([key])
        for ip in self.tx.handles[key][1]:
            try:
                self.block_key(ip)
            except (ValueError, CNIError):
                continue  # an address the pools no longer hold: nothing to find
        return super().of_identity(key)

    def candidates(self, pool: Pool) -> Iterable:
        tx, me = self.tx, self.tx.node
        mine = sorted((c for c in tx.node_blocks if tx.blocks[c].node == me and tx.blocks[c].exists and in_pool(pool, c)),
                      key=lambda c: int(ipaddress.ip_network(c).network_address))
        for cidr in mine:
            yield from usable_in(pool, ipaddress.ip_network(cidr))
        # its blocks are full: claim a free one (created by the commit, compared absent)
        b = free_block(pool, tx.existing_blocks(), me)
        if b is not None:
            tx.existing_blocks().add(str(b))
            tx.blocks[str(b)] = Block(cidr=str(b))  # known absent: the commit creates it, compared absent
            yield from usable_in(pool, b)
        if self.conf.strict_affinity:
            return
        # the pool has no free block: borrow a free address from another node's block
        others = sorted((c for c in tx.existing_blocks() if c not in mine and in_pool(pool, c)),
                        key=lambda c: int(ipaddress.ip_network(c).network_address))
        for cidr in others:
            tx.load_blocks([cidr])
            self._absorb(tx.blocks[cidr])
            yield from usable_in(pool, ipaddress.ip_network(cidr))


def _legacy_view(store: EtcdStore, network: str, tx: _Tx) -> View:
    """The first layout: the whole network, every key its own record."""
    rows, revs = store._range_ip(network)
    records, stray = decode_rows(network, rows)
    view = View(records)

    def commit(v: View) -> bool:
        prefix = tx.base + "ip/"
        compare, ops = [tx.marker_compare()], []
        for ip, res in v.changes.items():
            for key in stray.get(ip, []):  # a non-canonical copy of this IP goes with the write
                compare.append(_same(prefix + key, revs[key]))
                ops.append(_delete(prefix + key))
            compare.append(_same(prefix + ip, revs.get(ip)))
            ops.append(_delete(prefix + ip) if res is None else _put(prefix + ip, json.dumps(res.to_dict())))
        return bool(store._post("/v3/kv/txn", {"compare": compare, "success": ops}).get("succeeded"))

    tx.commit = commit  # type: ignore[method-assign]
    return view
