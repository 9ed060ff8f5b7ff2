"""moor-ipam configuration (the `ipam` object of a network config), validated field by field."""
from __future__ import annotations

import ipaddress
from cni.spec.record import record, field

from cni.spec.errors import INVALID_CONFIG, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

STICKY = ("pod", "workload", "none")
RELEASE = ("hold", "never", "immediate")
DEFAULT_HOLD_S = 300
DEFAULT_COOLDOWN_S = 30
DEFAULT_DATA_DIR = "/var/lib/moor/ipam"
DEFAULT_GC_GRACE_S = 60
DEFAULT_BLOCK_IDLE_S = 600
# /26 as Calico: 64 addresses a block; a block is one etcd value, so it stays well under etcd's
# 1.5 MB request limit (1,024 records of ~400 bytes at most)
DEFAULT_BLOCK = {4: 26, 6: 122}
MAX_BLOCK_BITS = 10


def _err(msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"invalid ipam config: {msg}")


def _get(doc: dict, key: str, typ: type | tuple, default: Any = None, where: str = "ipam") -> Any:
    if doc.get(key) is None:
        return default
    val = doc[key]
    if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise _err(f"'{where}.{key}' must be {names}, got {val!r}")
    return val


def _ip(doc: dict, key: str, where: str) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    val = _get(doc, key, str, None, where)
    if val is None:
        return None
    try:
        return ipaddress.ip_address(val)
    except ValueError:
        raise _err(f"'{where}.{key}' {val!r} is not an IP address") from None


@record
class Route:
    dst: str
    gw: str = ""


@record
class Pool:
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    start: ipaddress.IPv4Address | ipaddress.IPv6Address
    end: ipaddress.IPv4Address | ipaddress.IPv6Address
    gateway: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = None
    exclude: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    release: str = "hold"
    hold_s: float = DEFAULT_HOLD_S
    block_prefix: int = 0  # the prefix length of the pool's blocks in the etcd layout (blockSize)

    @property
    def version(self) -> int:
        return self.cidr.version

    def usable(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """In range, not the gateway, not excluded, not the IPv4 network/broadcast address."""
        if not (self.start <= ip <= self.end) or ip == self.gateway:
            return False
        if self.cidr.prefixlen < self.cidr.max_prefixlen - 1:
            # IPv4 network and broadcast addresses; IPv6 subnet-router anycast (the ::0 address)
            if ip == self.cidr.network_address or (self.version == 4 and ip == self.cidr.broadcast_address):
                return False
        return not any(ip in ex for ex in self.exclude)

    def size(self) -> int:
        return int(self.end) - int(self.start) + 1


@record
class IPAMConf:
    network: str
    pools: list[Pool]
    sticky: str = "pod"
    cooldown_s: float = DEFAULT_COOLDOWN_S
    data_dir: str = DEFAULT_DATA_DIR
    etcd_endpoints: list[str] = field(default_factory=list)
    etcd_prefix: str = "/moor/ipam"
    etcd_timeout_s: float = 5.0
    inventory_hook: list[str] = field(default_factory=list)
    dns: dict = field(default_factory=dict)
    gc_grace_s: float = DEFAULT_GC_GRACE_S
    node_name: str = ""
    strict_affinity: bool = False  # etcd blocks: never borrow from another node's block
    block_idle_s: float = DEFAULT_BLOCK_IDLE_S  # an empty block goes back to the pool after this

    def pool_of(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Optional[Pool]:
        return next((p for p in self.pools if ip in p.cidr), None)


# addresses no pod can have: the kernel refuses them, or they mean something else on every host
_RESERVED = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "ff00::/8", "fe80::/10", "::ffff:0:0/96")]


def _unusable(cidr: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """Why a pool cannot hold pod addresses, or ""."""
    if cidr.prefixlen == 0:
        return "is the whole address space (a /0 pool would route everything to pods)"
    for r in _RESERVED:
        if r.version == cidr.version and cidr.overlaps(r):
            return f"overlaps {r}, which holds no pod addresses (unspecified, loopback, multicast, link-local or reserved)"
    return ""


def _nonneg(doc: dict, key: str, default: float, where: str = "ipam") -> float:
    val = float(_get(doc, key, (int, float), default, where))
    if val < 0:
        raise _err(f"'{where}.{key}' must not be negative")
    return val


def _pool(doc: Any, i: int, release: str, hold_s: float) -> Pool:
    where = f"ipam.pools[{i}]"
    if not isinstance(doc, dict):
        raise _err(f"'{where}' must be an object")
    cidr_s = _get(doc, "cidr", str, None, where)
    if cidr_s is None:
        raise _err(f"'{where}.cidr' is missing")
    try:
        cidr = ipaddress.ip_network(cidr_s, strict=False)
    except ValueError:
        raise _err(f"'{where}.cidr' {cidr_s!r} is not a CIDR") from None
    bad = _unusable(cidr)
    if bad:
        raise _err(f"'{where}.cidr' {cidr} {bad}")
    hosts_first = cidr.network_address + (1 if cidr.prefixlen < cidr.max_prefixlen - 1 else 0)
    start = _ip(doc, "rangeStart", where) or hosts_first
    end = _ip(doc, "rangeEnd", where) or cidr.broadcast_address
    gw = _ip(doc, "gateway", where)
    for name, val in (("rangeStart", start), ("rangeEnd", end), ("gateway", gw)):
        if val is not None and val not in cidr:
            raise _err(f"'{where}.{name}' {val} is outside {cidr}")
    if start > end:
        raise _err(f"'{where}.rangeStart' {start} is after rangeEnd {end}")
    exclude = []
    for j, ex in enumerate(_get(doc, "exclude", list, [], where)):
        try:
            if not isinstance(ex, str):
                raise TypeError
            exclude.append(ipaddress.ip_network(ex, strict=False))
        except (ValueError, TypeError):
            raise _err(f"'{where}.exclude[{j}]' {ex!r} is not an IP or CIDR") from None
    routes = []
    for j, r in enumerate(_get(doc, "routes", list, [], where)):
        if not isinstance(r, dict) or not isinstance(r.get("dst"), str):
            raise _err(f"'{where}.routes[{j}]' needs a 'dst' CIDR")
        try:
            ipaddress.ip_network(r["dst"], strict=False)
            if r.get("gw"):
                ipaddress.ip_address(r["gw"])
        except ValueError as e:
            raise _err(f"'{where}.routes[{j}]': {e}") from None
        routes.append(Route(dst=r["dst"], gw=r.get("gw", "")))
    rel = _get(doc, "release", str, release, where)
    if rel not in RELEASE:
        raise _err(f"'{where}.release' {rel!r} is not one of {', '.join(RELEASE)}")
    hold = _nonneg(doc, "holdSeconds", hold_s, where)
    block = _get(doc, "blockSize", int, max(cidr.prefixlen, DEFAULT_BLOCK[cidr.version]), where)
    if not cidr.prefixlen <= block <= cidr.max_prefixlen or cidr.max_prefixlen - block > MAX_BLOCK_BITS:
        lo = max(cidr.prefixlen, cidr.max_prefixlen - MAX_BLOCK_BITS)
        raise _err(f"'{where}.blockSize' {block} must be a prefix length from {lo} to {cidr.max_prefixlen}")
    return Pool(cidr=cidr, start=start, end=end, gateway=gw, exclude=exclude, routes=routes, release=rel,
                hold_s=float(hold), block_prefix=block)


def parse(netconf: dict) -> IPAMConf:
    doc = netconf.get("ipam")
    if not isinstance(doc, dict):
        raise _err("the network config has no 'ipam' object")
    release = _get(doc, "release", str, "hold")
    if release not in RELEASE:
        raise _err(f"'ipam.release' {release!r} is not one of {', '.join(RELEASE)}")
    hold = _get(doc, "holdSeconds", (int, float), DEFAULT_HOLD_S)
    if hold < 0:
        raise _err("'ipam.holdSeconds' must not be negative")
    pools_doc = _get(doc, "pools", list, [])
    if not pools_doc:
        raise _err("'ipam.pools' needs at least one pool")
    pools = [_pool(p, i, release, float(hold)) for i, p in enumerate(pools_doc)]
    for i, a in enumerate(pools):
        for b in pools[i + 1:]:
            if a.cidr.version == b.cidr.version and a.cidr.overlaps(b.cidr):
                raise _err(f"pools {a.cidr} and {b.cidr} overlap")
    sticky = _get(doc, "sticky", str, "pod")
    if sticky not in STICKY:
        raise _err(f"'ipam.sticky' {sticky!r} is not one of {', '.join(STICKY)}")
    conf = IPAMConf(network=str(netconf.get("name", "")), pools=pools, sticky=sticky,
                    cooldown_s=_nonneg(doc, "cooldownSeconds", DEFAULT_COOLDOWN_S),
                    gc_grace_s=_nonneg(doc, "gcGraceSeconds", DEFAULT_GC_GRACE_S),
                    node_name=_get(doc, "nodeName", str, ""),
                    strict_affinity=_get(doc, "strictAffinity", bool, False),
                    block_idle_s=_nonneg(doc, "blockIdleSeconds", DEFAULT_BLOCK_IDLE_S),
                    data_dir=_get(doc, "dataDir", str, DEFAULT_DATA_DIR),
                    dns=_get(doc, "dns", dict, {}))
    if not conf.data_dir.startswith("/"):
        raise _err(f"'ipam.dataDir' {conf.data_dir!r} is not an absolute path")
    etcd = _get(doc, "etcd", dict, None)
    if etcd is not None:
        eps = _get(etcd, "endpoints", list, [], "ipam.etcd")
        if not eps or not all(isinstance(e, str) and e.startswith(("http://", "https://")) for e in eps):
            raise _err("'ipam.etcd.endpoints' must list http(s):// URLs")
        conf.etcd_endpoints = eps
        conf.etcd_prefix = _get(etcd, "prefix", str, "/moor/ipam", "ipam.etcd").rstrip("/")
        conf.etcd_timeout_s = float(_get(etcd, "timeoutSeconds", (int, float), 5.0, "ipam.etcd"))
        if conf.etcd_timeout_s <= 0:
            raise _err("'ipam.etcd.timeoutSeconds' must be positive")
    hook = _get(doc, "inventoryHook", (list, str), [])
    conf.inventory_hook = [hook] if isinstance(hook, str) else [str(h) for h in hook]
    return conf
