"""What ADD did on the node, kept per attachment so DEL and GC can undo it without prevResult
(containerd's second DEL has no netns and no prevResult); the lock that makes ADD, DEL, CHECK and
GC of one attachment run one at a time; and locks for shared node objects."""
from __future__ import annotations

import contextlib
import errno
import fcntl
from .spec import jsonc as json  # json without its regex start-up cost (cni/spec/jsonc.py)
import os
import sys
from .spec.record import asdict, record, field

from .spec.errors import IO_FAILURE, CNIError
from .spec.lock import digest, held, sweep

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Iterator, Optional



@record
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
    # when a GC first found it missing from the runtime's list (epoch seconds; 0: never); a GC at
    # least the grace period later releases it (1, from records before the time was kept: long ago)
    gc_seen: float = 0


@record
class ShimAddrs:
    """The host shim's addresses for one network on one parent: what ADD put on the shim and,
    when the network's IPAM gave them, how to give them back (DEL with the same identity and
    config). Written before the IPAM ADD, so a crash in between leaves a record to clean up."""
    network: str
    parent: str
    shim: str  # the shim link's name
    addresses: list[str] = field(default_factory=list)  # CIDRs, one per IP family; [] while pending
    ipam_conf: dict = field(default_factory=dict)  # the config IPAM ADD got; {}: static addresses
    ipam_id: str = ""  # the CNI_CONTAINERID IPAM knows the shim by


def _io_error(what: str, path: str, e: OSError) -> CNIError:
    return CNIError(IO_FAILURE, f"cannot {what} {path}: {e.strerror or e}")


def _load(path: str) -> Optional[Attachment]:
    """A record, or None when there is none; a torn or foreign file is reported and ignored."""
    try:
        with open(path) as f:
            doc = json.load(f)
        return Attachment(**doc)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # a legacy name for a long ID: there is no such file
            return None
        raise _io_error("read", path, e) from e
    except (ValueError, TypeError, RecursionError) as e:
        print(f"moor: ignoring the unreadable attachment record {path}: {e}", file=sys.stderr)
        return None


class Store:
    def __init__(self, state_dir: str):
        self.root = state_dir

    def _dir(self, network: str) -> str:
        return os.path.join(self.root, "networks", network)

    def _path(self, network: str, container_id: str, ifname: str) -> str:
        return os.path.join(self._dir(network), digest(container_id, ifname) + ".json")

    def _legacy_path(self, network: str, container_id: str, ifname: str) -> str:
        # records written before names were hashed; read and removed, never written
        return os.path.join(self._dir(network), f"{container_id}_{ifname}.json")

    def put(self, att: Attachment, durable: bool = True) -> None:
        """Write the record atomically; durable=False skips the fsync (a pending record: it must
        survive the plugin being killed, which the page cache does, not a power loss)."""
        d = self._dir(att.network)
        path = self._path(att.network, att.container_id, att.ifname)
        # one temp name per record: writers of a record hold its attachment lock, and a writer
        # that was killed leaves at most this one file, which the next put, remove or GC clears
        tmp = path + ".tmp"
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(asdict(att), f)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: a crash leaves the old record or the new one
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _io_error("write the attachment record", path, e) from e

    def get(self, network: str, container_id: str, ifname: str) -> Optional[Attachment]:
        att = _load(self._path(network, container_id, ifname))
        if att is None:
            att = _load(self._legacy_path(network, container_id, ifname))
        if att is not None and (att.network, att.container_id, att.ifname) != (network, container_id, ifname):
            return None  # a hash collision, or a record copied by hand: not this attachment's
        return att

    def written_at(self, att: Attachment) -> float:
        """When the record was last written (its file's mtime); 0 when it cannot be read."""
        for path in (self._path(att.network, att.container_id, att.ifname),
                     self._legacy_path(att.network, att.container_id, att.ifname)):
            try:
                return os.stat(path).st_mtime
            except OSError:
                continue
        return 0.0

    def remove(self, network: str, container_id: str, ifname: str) -> None:
        path = self._path(network, container_id, ifname)
        for path in (path, path + ".tmp", self._legacy_path(network, container_id, ifname)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.ENAMETOOLONG:
                    raise _io_error("remove", path, e) from e

    def has_temp(self, att: Attachment) -> bool:
        """A writer of this record was killed mid-write: its temp file is still there."""
        return os.path.exists(self._path(att.network, att.container_id, att.ifname) + ".tmp")

    def drop_temp(self, att: Attachment) -> None:
        """A killed writer's temp file of this record (call with the attachment's lock held)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(att.network, att.container_id, att.ifname) + ".tmp")

    def all(self, network: Optional[str] = None) -> list[Attachment]:
        nets = [network] if network else self._networks()
        out = []
        for net in nets:
            try:
                names = os.listdir(self._dir(net))
            except FileNotFoundError:
                continue
            for n in names:
                if n.endswith(".json"):
                    att = _load(os.path.join(self._dir(net), n))
                    if att is not None:
                        out.append(att)
        return out

    def _networks(self) -> list[str]:
        try:
            return os.listdir(os.path.join(self.root, "networks"))
        except FileNotFoundError:
            return []

    # -- the host shim's addresses (kept apart from attachments: GC must never judge them) -----
    def _shim_path(self, network: str, parent: str) -> str:
        return os.path.join(self.root, "shims", digest(network, parent) + ".json")

    def shim_get(self, network: str, parent: str) -> Optional[ShimAddrs]:
        path = self._shim_path(network, parent)
        try:
            with open(path) as f:
                rec = ShimAddrs(**json.load(f))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _io_error("read", path, e) from e
        except (ValueError, TypeError) as e:
            # unreadable: treated as pending (no addresses known) so the next ADD re-allocates
            print(f"moor: ignoring the unreadable shim record {path}: {e}", file=sys.stderr)
            return None
        return rec if (rec.network, rec.parent) == (network, parent) else None

    def shim_put(self, rec: ShimAddrs) -> None:
        path = self._shim_path(rec.network, rec.parent)
        tmp = path + ".tmp"  # writers hold the parent lock
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(asdict(rec), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _io_error("write the shim record", path, e) from e

    def shim_remove(self, network: str, parent: str) -> None:
        path = self._shim_path(network, parent)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _io_error("remove", path, e) from e

    def shims(self, network: str) -> list[ShimAddrs]:
        d = os.path.join(self.root, "shims")
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            if not n.endswith(".json"):
                continue
            try:
                with open(os.path.join(d, n)) as f:
                    rec = ShimAddrs(**json.load(f))
            except (OSError, ValueError, TypeError):
                continue
            if rec.network == network:
                out.append(rec)
        return out

    # -- one operation per attachment --------------------------------------------------------
    def attachment_lock(self, network: str, container_id: str, ifname: str, wait: bool = True):
        """The attachment's lock, held for a whole ADD, DEL, CHECK or GC of it (cni.spec.lock.held)."""
        return held(os.path.join(self.root, "locks"), (network, container_id, ifname),
                    f"container {container_id[:64]} {ifname}", wait)

    def sweep_locks(self, network: str) -> int:
        """Remove this network's attachment lock files that nobody holds and whose attachment has
        no record: an ADD, DEL or GC SIGKILLed after it created the file and before it wrote the
        record or discarded the file, for a container whose DEL never comes (GC runs this)."""
        def stale(key: tuple[str, ...]) -> bool:
            if key[0] != network:
                return False
            try:
                if self.get(*key) is not None:
                    return False
            except CNIError:
                return False  # an unreadable record: keep its lock, the record is the question
            try:
                self.remove(*key)  # a temp file its killed writer left (we hold the lock: nobody writes)
            except CNIError:
                return False
            return True
        return sweep(os.path.join(self.root, "locks"), stale)

    # -- shared node objects (a VLAN sub-interface, a host shim) ----------------------------
    def _owned(self, link: str) -> str:
        return os.path.join(self.root, "owned", link)

    def mark_owned(self, link: str, parent: str) -> None:
        """Mark a link moor is about to create as its own; `parent` (the uplink or VLAN it serves)
        lets GC find it again when the ADD that made it died before recording its attachment."""
        os.makedirs(os.path.dirname(self._owned(link)), mode=0o700, exist_ok=True)
        with open(self._owned(link), "w") as f:
            f.write(parent)

    def owned_parents(self) -> set[str]:
        """The parents of every link marked as moor's (markers of older versions name none)."""
        d = os.path.join(self.root, "owned")
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return set()
        out = set()
        for n in names:
            try:
                with open(os.path.join(d, n)) as f:
                    parent = f.read().strip()
            except OSError:
                continue
            if parent:
                out.add(parent)
        return out

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
