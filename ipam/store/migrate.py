"""`moor-ipam migrate CONFIG`: convert a network in etcd from the first layout (one key an IP)
to blocks, in place, while nodes allocate.

1. the `layout` marker goes to "migrating" (compared): from then on every allocation's commit
   fails its compare on the marker, so nobody writes the old keys any more, and allocations wait
   (up to MIGRATION_WAIT_S, then code 11, which the runtime retries);
2. the old keys are read (now frozen) and written as blocks (affine to the node holding most of
   their records), handles and node indexes, in batches each compared on the marker;
3. one last txn sets the marker to "blocks" and deletes the old keys.
A migration that dies half way leaves the marker at "migrating" and the old keys intact: run it
again and it starts over from step 2 (it overwrites what it wrote)."""
from __future__ import annotations

import ipaddress
import sys
from collections import Counter
from cni.spec import jsonc as json

from cni.spec.errors import IO_FAILURE, CNIError

from . import decode_rows
from .blocks import block_of
from .etcd import BLOCKS, MIGRATING, EtcdStore, _b64, _put, _range_end, _same

BATCH_OPS = 100  # etcd takes at most 128 operations a txn
BATCH_BYTES = 1 << 20  # and at most 1.5 MB a request


def migrate(store: EtcdStore, conf) -> dict:
    """Returns counts of what was converted; CNIError when etcd refuses or is unreachable."""
    net = conf.network
    base = store._base(net)
    lay, rev = store.layout(net)
    if lay == BLOCKS:
        if rev is None:
            return {"records": 0, "blocks": 0, "handles": 0, "nodes": 0}  # a new network: nothing to convert
        return {"already": 1}
    if lay != MIGRATING:
        ok = store._post("/v3/kv/txn", {"compare": [_same(base + "layout", rev)],
                                         "success": [_put(base + "layout", MIGRATING)]}).get("succeeded")
        if not ok:
            raise CNIError(IO_FAILURE, f"network {net}: its layout changed while the migration started: run it again")
    (marker,) = store._get([base + "layout"])
    mrev = marker[0][2]
    rows, _revs = store._range_ip(net)
    records, _stray = decode_rows(net, rows)
    raw = dict(rows)
    blocks: dict[str, dict] = {}
    nodes: dict[str, Counter] = {}
    handles: dict[str, dict] = {}
    index: dict[str, set] = {}
    skipped = 0
    for key, data in rows:
        r = records.get(key) or next((x for x in records.values() if x.ip == key), None)
        try:
            addr = ipaddress.ip_address(r.ip if r else key)
        except ValueError:
            addr = None
        pool = conf.pool_of(addr) if addr is not None else None
        if pool is None:  # no address, or none of a pool: it shadows nothing the pools hand out
            print(f"moor-ipam: network {net}: the key {key!r} is in no pool; it is not migrated", file=sys.stderr)
            skipped += 1
            continue
        cidr = str(block_of(pool, addr))
        doc = blocks.setdefault(cidr, {"cidr": cidr, "node": "", "emptySince": 0, "records": {}})
        try:
            doc["records"][key] = json.loads(raw[key])
        except ValueError:
            doc["records"][key] = raw[key].decode(errors="replace")  # kept as stored: still corrupt
        if r is not None and r.ip == key and r.node:
            nodes.setdefault(cidr, Counter())[r.node] += 1
            index.setdefault(r.node, set()).add(cidr)
        if r is not None and r.ip == key and r.identity:
            handles.setdefault(r.identity, {})[r.ip] = r.seq
    for cidr, doc in blocks.items():
        if cidr in nodes:
            doc["node"] = nodes[cidr].most_common(1)[0][0]
    puts = [(f"{base}block/{c}", json.dumps(d)) for c, d in blocks.items()]
    puts += [(f"{base}handle/{k}", json.dumps({"ips": v})) for k, v in handles.items()]
    puts += [(f"{base}node/{n}", json.dumps({"blocks": sorted(v)})) for n, v in index.items()]
    batch, size = [], 0
    for key, value in puts:
        if batch and (len(batch) >= BATCH_OPS or size + len(value) > BATCH_BYTES):
            _write(store, base, mrev, batch)
            batch, size = [], 0
        batch.append(_put(key, value))
        size += len(value) * 4 // 3 + len(key)
    if batch:
        _write(store, base, mrev, batch)
    prefix = base + "ip/"
    _write(store, base, mrev, [_put(base + "layout", BLOCKS),
                               {"requestDeleteRange": {"key": _b64(prefix), "range_end": _range_end(prefix)}}])
    return {"records": len(rows) - skipped, "blocks": len(blocks), "handles": len(handles), "nodes": len(index),
            "skipped": skipped}


def _write(store: EtcdStore, base: str, mrev: str, ops: list) -> None:
    if not store._post("/v3/kv/txn", {"compare": [_same(base + "layout", mrev)], "success": ops}).get("succeeded"):
        raise CNIError(IO_FAILURE, "the network's layout marker changed during the migration (another migrate?): "
                       "run it again")

