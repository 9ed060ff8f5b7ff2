"""moor-ipam's calls for one attachment run one at a time (an ADD's commit, inventory hook and
confirmation are one unit; a DEL or GC waits for it), on the node-local lock of cni.spec.lock."""
from __future__ import annotations

import os

from cni.spec.lock import AttachmentLock, digest, held, sweep

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import IPAMConf


def _dir(conf: IPAMConf) -> str:
    return os.path.join(conf.data_dir, "locks")


def attachment(conf: IPAMConf, container_id: str, ifname: str):
    return held(_dir(conf), (conf.network, container_id, ifname), f"container {container_id[:64]} {ifname}")


def busy(conf: IPAMConf, container_id: str, ifname: str) -> bool:
    """Whether an ADD or DEL of the attachment is running now (its lock is held elsewhere)."""
    lock = AttachmentLock(os.path.join(_dir(conf), f"att-{digest(conf.network, container_id, ifname)}.lock"))
    if lock.acquire(0.0, create=False):  # never creates the file: a reader leaves nothing behind
        lock.release()
        return False
    return os.path.exists(lock.path)  # not acquired: held elsewhere, unless there is no such file


def sweep_stale(conf: IPAMConf, holders: set[tuple[str, str]]) -> int:
    """Remove the lock files of this network's attachments that hold no IP any more (their DEL
    never came: the pod was re-created and took its IP over, or GC released it)."""
    def stale(key: tuple[str, ...]) -> bool:
        return key[0] == conf.network and (key[1], key[2]) not in holders
    return sweep(_dir(conf), stale)
