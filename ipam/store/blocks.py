"""IPAM blocks (the etcd layout): a pool is cut into aligned blocks of `blockSize`; one etcd value
per block holds the node it is affine to and the reservations inside it, so an allocation reads
and writes its node's block instead of the whole network. Pure: address math and the codec."""
from __future__ import annotations

import ipaddress
import sys
import zlib
from cni.spec import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
from cni.spec.record import field, record

from ..reservation import CORRUPT, Reservation, merge

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Optional

    from ..config import Pool

Net = "ipaddress.IPv4Network | ipaddress.IPv6Network"


def block_of(pool: Pool, ip) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_interface((ip, pool.block_prefix)).network


def _span(pool: Pool) -> tuple[int, int, int]:
    """(first block index, last block index, host bits) of the blocks the pool's range touches."""
    bits = pool.cidr.max_prefixlen - pool.block_prefix
    return int(pool.start) >> bits, int(pool.end) >> bits, bits


def _block_at(pool: Pool, idx: int, bits: int):
    return ipaddress.ip_network((idx << bits, pool.block_prefix))


def usable_in(pool: Pool, block) -> Iterable:
    """The pool's usable addresses inside one block, in order."""
    lo = max(int(block.network_address), int(pool.start))
    hi = min(int(block.broadcast_address), int(pool.end))
    cls = type(pool.start)
    for n in range(lo, hi + 1):
        ip = cls(n)
        if pool.usable(ip):
            yield ip


def free_block(pool: Pool, taken: set[str], node: str, max_walk: int = 4096):
    """A block of the pool that no key holds yet and that has a usable address, or None. The walk
    starts at a place derived from the node's name, so nodes claiming at once rarely race for
    one block (each race costs a CAS retry)."""
    first, last, bits = _span(pool)
    n = last - first + 1
    start = zlib.crc32(node.encode()) % n
    for i in range(min(n, len(taken) + max_walk)):
        b = _block_at(pool, first + (start + i) % n, bits)
        if str(b) not in taken and next(iter(usable_in(pool, b)), None) is not None:
            return b
    return None


def in_pool(pool: Pool, cidr: str) -> bool:
    try:
        net = ipaddress.ip_network(cidr)
    except ValueError:
        return False
    return net.version == pool.version and net.subnet_of(pool.cidr) and net.prefixlen == pool.block_prefix


@record
class Block:
    """One block as read (rev None: no key yet) and its records by canonical IP."""
    cidr: str
    node: str = ""
    rev: Optional[str] = None
    records: dict = field(default_factory=dict)  # ip -> Reservation
    raw: dict = field(default_factory=dict)  # stored key -> stored doc, written back as it was
    strays: dict = field(default_factory=dict)  # ip -> stored keys that are not its canonical spelling
    empty_since: float = 0.0
    corrupt: str = ""  # why the whole value is unreadable: every address in it is in doubt

    @property
    def exists(self) -> bool:
        return self.rev is not None


def decode_block(network: str, cidr: str, rev: str, data: bytes, quiet: bool = False) -> Block:
    """A stored block; an unreadable value quarantines every address of the block (CORRUPT), an
    unreadable record inside it just that address."""
    b = Block(cidr=cidr, rev=rev)
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("cidr") != cidr or not isinstance(doc.get("records"), dict) \
                or not isinstance(doc.get("node", ""), str):
            raise ValueError("not a block of this CIDR")
        net = ipaddress.ip_network(cidr)
    except (ValueError, TypeError, RecursionError, UnicodeDecodeError) as e:
        b.corrupt = f"{e}; stored: {data[:120]!r}"
        if not quiet:
            print(f"moor-ipam: network {network}: block {cidr} is corrupt ({b.corrupt}); its addresses are "
                  f"kept in use until it is repaired", file=sys.stderr)
        try:
            net = ipaddress.ip_network(cidr)
            for ip in net:
                b.records[str(ip)] = Reservation(ip=str(ip), pool="", state=CORRUPT, detail=f"block: {b.corrupt}")
        except ValueError:
            pass
        return b
    b.node = doc.get("node", "")
    es = doc.get("emptySince", 0)
    b.empty_since = float(es) if isinstance(es, (int, float)) and not isinstance(es, bool) else 0.0
    b.raw = doc["records"]
    for key, rd in b.raw.items():
        r = Reservation.decode_doc(key, rd)
        if r.state != CORRUPT:
            try:
                if ipaddress.ip_address(r.ip) not in net:
                    r = Reservation(ip=r.ip, pool="", state=CORRUPT, detail=f"stored in block {cidr}, outside it")
            except ValueError:
                pass
        if r.ip != key:
            b.strays.setdefault(r.ip, []).append(key)
        if r.state == CORRUPT and not quiet:
            print(f"moor-ipam: network {network}: the record {key!r} in block {cidr} is corrupt ({r.detail}); "
                  f"it is kept in use until `moor-ipam release CONFIG {r.ip} --force` repairs it", file=sys.stderr)
        merge(b.records, r)
    return b


def encode_block(b: Block, changes: dict, now: float) -> tuple[dict, bytes]:
    """The block's new stored records after `changes` (ip -> Reservation or None), and its value."""
    raw = dict(b.raw)
    for ip, res in changes.items():
        for key in b.strays.get(ip, []):  # a non-canonical copy of this IP goes with the write
            raw.pop(key, None)
        if res is None:
            raw.pop(ip, None)
        else:
            raw[ip] = res.to_dict()
    # when it became empty: an idle block goes back to the pool a grace period later (GC)
    empty_since = (b.empty_since or now) if not raw else 0
    doc = {"cidr": b.cidr, "node": b.node, "emptySince": empty_since, "records": raw}
    return raw, json.dumps(doc).encode()


def decode_handle(data: bytes) -> Optional[dict]:
    """A handle's {ip: seq}, or None when it does not parse."""
    try:
        doc = json.loads(data)
        ips = doc["ips"]
        if isinstance(ips, dict) and all(isinstance(k, str) and isinstance(v, int) for k, v in ips.items()):
            return ips
    except (ValueError, TypeError, KeyError, RecursionError, UnicodeDecodeError):
        pass
    return None


def decode_list(data: bytes, key: str = "blocks") -> Optional[list]:
    try:
        doc = json.loads(data)
        got = doc[key]
        if isinstance(got, list) and all(isinstance(x, str) for x in got):
            return got
    except (ValueError, TypeError, KeyError, RecursionError, UnicodeDecodeError):
        pass
    return None
