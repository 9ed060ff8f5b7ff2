"""A reservation: who holds an IP, in which state, since when. Every change bumps `seq`, and every
release compares the owner it was asked for, so a DEL or GC for an old container can never free
the IP its re-created pod (same name, new UID) now uses."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

ACTIVE = "active"  # attached to a running container
HELD = "held"  # the container is gone; kept for its identity until hold_until (None: forever)
COOLING = "cooling"  # freed; nobody may take it before cool_until


@dataclass
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> "Reservation":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def holder(self) -> str:
        """Who holds it, in words for an error message."""
        who = self.pod or self.identity or "an unnamed container"
        cid = f" container {self.container_id[:12]}" if self.container_id else ""
        node = f" on {self.node}" if self.node else ""
        return f"{who}{cid}{node} ({self.state})"
