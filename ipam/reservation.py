"""A reservation: who holds an IP, in which state, since when. Every change bumps `seq`, and every
release compares the owner it was asked for, so a DEL or GC for an old container can never free
the IP its re-created pod (same name, new UID) now uses."""
from __future__ import annotations

import ipaddress
from cni.spec import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
from cni.spec.record import asdict, record, fields

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

ACTIVE = "active"  # attached to a running container
HELD = "held"  # the container is gone; kept for its identity until hold_until (None: forever)
COOLING = "cooling"  # freed; nobody may take it before cool_until
CORRUPT = "corrupt"  # the stored record does not parse: in use for everyone until repaired
STATES = (ACTIVE, HELD, COOLING)

_STR, _NUM = (str,), (int, float)
# field -> accepted JSON types (bool is an int in Python: checked apart)
_TYPES = {"ip": _STR, "pool": _STR, "state": _STR, "identity": _STR, "pod": _STR, "pod_uid": _STR,
          "container_id": _STR, "ifname": _STR, "netns": _STR, "node": _STR, "seq": (int,),
          "updated": _NUM, "hold_until": _NUM + (type(None),), "cool_until": _NUM, "gc_mark": (int,),
          "gc_mark_at": _NUM, "announced": (bool,), "prev": (dict, type(None)), "detail": _STR}


@record
class Reservation:
    ip: str
    pool: str
    state: str
    identity: str = ""  # sticky key: "pod:<ns>/<name>" or "workload:<ns>/<key>"; "" when not sticky
    pod: str = ""  # <ns>/<name>, for people reading it
    pod_uid: str = ""
    container_id: str = ""
    ifname: str = ""
    netns: str = ""
    node: str = ""
    seq: int = 0
    updated: float = 0.0
    hold_until: Optional[float] = None
    cool_until: float = 0.0
    gc_mark: int = 0  # seq at which a GC pass first saw this reservation leaked (two-pass release)
    gc_mark_at: float = 0.0  # when; the release waits at least the grace period after it
    announced: bool = False  # the inventory hook has acknowledged this binding
    # the record this one replaced when its container's ADD took the IP: a rolled-back ADD puts
    # it back exactly (state, container, seq), so a failed ADD never changes who holds an IP
    prev: Optional[dict] = None
    detail: str = ""  # CORRUPT only: why, and the stored text (never written for a good record)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["detail"]:
            del d["detail"]
        return d

    @classmethod
    def from_dict(cls, doc: object) -> "Reservation":
        """A record as stored; ValueError when it is not one (a field missing or of a wrong type,
        an unknown state, an address that is not one). Unknown keys are ignored (newer writers)."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        for k in ("ip", "pool", "state"):
            if k not in doc:
                raise ValueError(f"no {k!r}")
        names = {f.name for f in fields(cls)}
        for k, v in doc.items():
            want = _TYPES.get(k)
            if want is None:
                continue
            if not isinstance(v, want) or (isinstance(v, bool) and bool not in want):
                raise ValueError(f"{k!r} is {json.dumps(v)[:40]}")
        if doc["state"] not in STATES:
            raise ValueError(f"unknown state {doc['state']!r}")
        if str(ipaddress.ip_address(doc["ip"])) != doc["ip"]:
            raise ValueError(f"{doc['ip']!r} is not written canonically")
        return cls(**{k: v for k, v in doc.items() if k in names and k != "detail"})

    @classmethod
    def decode(cls, key: str, data: str | bytes) -> "Reservation":
        """A stored record under `key` (its IP); one that does not parse, names another IP or sits
        under a non-canonical spelling of one comes back quarantined as CORRUPT, keyed by the
        canonical IP (so that IP is never handed out), instead of failing the caller."""
        return cls.decode_doc(key, data, json.loads)

    @classmethod
    def decode_doc(cls, key: str, data: object, parse=lambda d: d) -> "Reservation":
        """decode() of a record already parsed from JSON (a record inside an etcd block)."""
        try:
            canon = str(ipaddress.ip_address(key))
        except ValueError:
            canon = key  # not an address at all: it can shadow none, but it is reported
        try:
            r = cls.from_dict(parse(data))
            if key != canon:
                raise ValueError(f"stored under the non-canonical key {key!r}")
            if r.ip != key:
                raise ValueError(f"it names {r.ip}")
            return r
        except (ValueError, TypeError, RecursionError, UnicodeDecodeError) as e:
            if isinstance(data, bytes):
                text = data.decode(errors="replace")
            else:
                text = data if isinstance(data, str) else json.dumps(data)
            return cls(ip=canon, pool="", state=CORRUPT, detail=f"{e}; stored: {text[:120]!r}")

    def holder(self) -> str:
        """Who holds it, in words for an error message."""
        if self.state == CORRUPT:
            return f"a corrupt record ({self.detail})"
        who = self.pod or self.identity or "an unnamed container"
        cid = f" container {self.container_id[:12]}" if self.container_id else ""
        node = f" on {self.node}" if self.node else ""
        return f"{who}{cid}{node} ({self.state})"


def addr_key(r: Reservation) -> tuple:
    """Sort key: by address (IPv4 first), a corrupt record's key that is no address last."""
    try:
        ip = ipaddress.ip_address(r.ip)
        return (ip.version, int(ip), "")
    except ValueError:
        return (9, 0, r.ip)


def merge(records: dict[str, Reservation], r: Reservation) -> None:
    """Add a decoded record to a view's records; where a corrupt record and another claim one IP,
    the corrupt one stays (the IP is in doubt, so nobody gets it)."""
    old = records.get(r.ip)
    if old is None or (r.state == CORRUPT and old.state != CORRUPT):
        records[r.ip] = r
