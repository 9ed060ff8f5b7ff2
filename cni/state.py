"""What ADD did on the node, kept per attachment so DEL and GC can undo it without prevResult
(containerd's second DEL has no netns and no prevResult), and locks for shared node objects."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Iterator, Optional


@dataclass
class Attachment:
    network: str
    container_id: str
    ifname: str
    parent: str  # the link the pod's macvlan hangs off (master or master.vlan)
    mac: str = ""
    netns: str = ""
    ips: list[str] = field(default_factory=list)  # CIDR strings
    shim: str = ""  # host shim link holding /32 routes to this pod, if any
    host_link: str = ""  # routed mode: the host end of the pod's veth
    gc_seen: int = 0  # a GC found it missing from the runtime's list once; the next GC releases it


class Store:
    def __init__(self, state_dir: str):
        self.root = state_dir

    def _dir(self, network: str) -> str:
        return os.path.join(self.root, "networks", network)

    def _path(self, network: str, container_id: str, ifname: str) -> str:
        return os.path.join(self._dir(network), f"{container_id}_{ifname}.json")

    def put(self, att: Attachment) -> None:
        d = self._dir(att.network)
        os.makedirs(d, mode=0o700, exist_ok=True)
        path = self._path(att.network, att.container_id, att.ifname)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(att), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a crash leaves the old record or the new one

    def get(self, network: str, container_id: str, ifname: str) -> Optional[Attachment]:
        try:
            with open(self._path(network, container_id, ifname)) as f:
                return Attachment(**json.load(f))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None  # a torn or foreign file is not ours to trust

    def remove(self, network: str, container_id: str, ifname: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(network, container_id, ifname))

    def all(self, network: Optional[str] = None) -> list[Attachment]:
        nets = [network] if network else self._networks()
        out = []
        for net in nets:
            try:
                names = os.listdir(self._dir(net))
            except FileNotFoundError:
                continue
            for n in names:
                if not n.endswith(".json"):
                    continue
                try:
                    with open(os.path.join(self._dir(net), n)) as f:
                        out.append(Attachment(**json.load(f)))
                except (OSError, ValueError, TypeError):
                    continue
        return out

    def _networks(self) -> list[str]:
        try:
            return os.listdir(os.path.join(self.root, "networks"))
        except FileNotFoundError:
            return []

    # -- shared node objects (a VLAN sub-interface, a host shim) ----------------------------
    def users(self, parent: str) -> int:
        return sum(1 for a in self.all() if a.parent == parent)

    def _owned(self, link: str) -> str:
        return os.path.join(self.root, "owned", link)

    def mark_owned(self, link: str) -> None:
        os.makedirs(os.path.dirname(self._owned(link)), mode=0o700, exist_ok=True)
        open(self._owned(link), "w").close()

    def owned(self, link: str) -> bool:
        return os.path.exists(self._owned(link))

    def unmark_owned(self, link: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._owned(link))

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise plugin processes that create or delete the same shared link."""
        d = os.path.join(self.root, "locks")
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(d, name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
