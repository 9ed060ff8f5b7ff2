"""One operation per attachment at a time: an flock per attachment (container ID + interface),
held for a whole ADD, DEL, CHECK or GC of it. flock dies with its process, so a SIGKILLed
plugin never leaves an attachment locked."""
from __future__ import annotations

import contextlib
import fcntl
import os
import time

try:  # hashlib's own BLAKE2, without the OpenSSL import hashlib does first (~2.5 ms of start-up)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - other Pythons
    from hashlib import blake2b

from .errors import IO_FAILURE, TRY_AGAIN_LATER, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator, Optional

# how long an operation waits for another one on the same attachment (longer than any ADD takes;
# a holder that hangs past this makes the waiter answer code 11 instead of piling up)
LOCK_WAIT_S = 120.0


def digest(*parts: str) -> str:
    """A file name for any container ID (libcni allows IDs longer than a file name may be)."""
    return blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


@contextlib.contextmanager
def held(lock_dir: str, key: tuple[str, ...], what: str, wait: bool = True) -> Iterator[Optional[AttachmentLock]]:
    """Hold the lock of `key` (network, container ID, interface) for the body. Waits at most
    LOCK_WAIT_S, then code 11; with wait=False yields None at once when another operation holds
    it (GC skips an attachment that is being worked on)."""
    lock = AttachmentLock(os.path.join(lock_dir, f"att-{digest(*key)}.lock"), key)
    if not lock.acquire(LOCK_WAIT_S if wait else 0.0):
        if wait:
            raise CNIError(TRY_AGAIN_LATER, f"another operation on {what} is still running", f"lock {lock.path}")
        yield None
        return
    try:
        yield lock
    finally:
        lock.release()


class AttachmentLock:
    """An flock on a file per attachment. The file is removed when the attachment is gone
    (`discard`), so a node does not collect one file per pod it ever ran; an acquirer that wins
    the flock on a file already unlinked retries on the new one (the classic inode check)."""

    def __init__(self, path: str, key: tuple[str, ...] = ()):
        self.path = path
        self.key = key  # written into the file, so a sweep can tell whose a stray lock file is
        self.fd = -1

    def acquire(self, wait_s: float, create: bool = True) -> bool:
        """Lock the file, waiting at most wait_s; create=False: only a file that exists (a reader
        that must not leave a file behind), False when there is none."""
        deadline = time.monotonic() + wait_s
        pause = 0.001
        while True:
            try:
                if create:
                    os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o600)
            except FileNotFoundError:
                if create:
                    raise CNIError(IO_FAILURE, f"cannot open the lock {self.path}: it vanished") from None
                return False
            except OSError as e:
                raise CNIError(IO_FAILURE, f"cannot open the lock {self.path}: {e.strerror or e}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    return False
                time.sleep(pause)  # polling, so the wait is bounded (flock has no timeout)
                pause = min(pause * 2, 0.02)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                if self.key and os.fstat(fd).st_size == 0:
                    os.write(fd, "\0".join(self.key).encode())
                return True
            os.close(fd)  # the holder removed it as we waited: lock the file that is there now

    def discard(self) -> None:
        """The attachment is gone: remove the lock file (still holding it, so nobody else can be
        inside; a waiter notices the unlink and locks a fresh file)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def owner(self) -> tuple[str, ...]:
        """The key written into the file (call while holding it)."""
        return tuple(os.pread(self.fd, 4096, 0).decode(errors="replace").split("\0")) if self.fd >= 0 else ()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _is_attachment_lock(name: str) -> bool:
    """att-<32 hex>.lock only: the same directory holds the shared-link locks (<link>.lock), which
    have no inode check and must never be unlinked under a waiter."""
    return (len(name) == 41 and name.startswith("att-") and name.endswith(".lock")
            and all(c in "0123456789abcdef" for c in name[4:36]))


def sweep(lock_dir: str, stale) -> int:
    """Remove the lock files nobody holds whose owner `stale((network, container ID, interface))`
    says is gone (an attachment whose DEL never came); returns how many. A file an operation is about to lock is safe: that operation
    finds it unlinked and locks a fresh one."""
    try:
        names = [n for n in os.listdir(lock_dir) if _is_attachment_lock(n)]
    except FileNotFoundError:
        return 0
    n = 0
    for name in names:
        lock = AttachmentLock(os.path.join(lock_dir, name))
        try:
            got = lock.acquire(0.0, create=False)
        except CNIError:
            continue
        if got:
            try:
                key = lock.owner()
                # a key that is not (network, container ID, interface): its writer died before
                # naming it, so nobody can be waiting for it
                if len(key) != 3 or stale(key):
                    lock.discard()
                    n += 1
            finally:
                lock.release()
    return n
