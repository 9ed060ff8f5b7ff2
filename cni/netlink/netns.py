"""Entering a network namespace: the project's one way. entered() for a single-threaded caller
(the plugin), run_in() for a multi-threaded one (a worker thread enters and ends).

Sockets opened while inside stay bound to that netns after we return, so the plugin enters the
pod's netns only to open its sockets and write its sysctls.
"""
from __future__ import annotations

import _ctypes
import contextlib
import errno
import fcntl
import os
import stat
TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Callable, Iterator, TypeVar

    T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): which kind of namespace an nsfs file is


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    if _LIBC_SETNS(fd, CLONE_NEWNET) != 0:
        err = _ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class _Handle:
    """What a foreign function's (name, library) constructor reads: the dlopen handle."""

    def __init__(self, handle: int):
        self._handle = handle


def _libc(name: str):
    """libc's `name` through the C module _ctypes, as ctypes.CDLL(None, use_errno=True) gives it:
    the ctypes package costs the plugin ~2.5 ms of start-up, _ctypes ~0.5 ms."""
    class Int(_ctypes._SimpleCData):
        _type_ = "i"

    class Function(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = Int
    return Function((name, _Handle(_ctypes.dlopen(None, os.RTLD_NOW))))


_LIBC_SETNS = _libc("setns")


def open_netns(path: str) -> int:
    """An fd for a netns path; FileNotFoundError when the netns is gone, ValueError when the path
    is anything but a network namespace (a FIFO, a directory, a mount namespace, a plain file).
    Never blocks: a FIFO given as CNI_NETNS would otherwise hang open() until a writer came."""
    if not path or not os.path.isabs(path):
        raise ValueError(f"{path!r} is not an absolute path")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_dev != os.stat("/proc/self/ns/net").st_dev:
            raise ValueError(f"{path} is not a network namespace")
        try:  # nsfs holds every kind of namespace: only a network one will do
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            kind = CLONE_NEWNET  # kernels before 4.11 lack the ioctl; setns checks the type later
        if kind != CLONE_NEWNET:
            raise ValueError(f"{path} is a namespace, but not a network namespace")
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def entered(fd: int) -> Iterator[None]:
    """Run the body inside the netns of `fd`, then return to the caller's netns."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(fd)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise ValueError("not a network namespace") from e
            raise
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def run_in(path: str, fn: Callable[[], T]) -> T:
    """fn's result, run inside the netns at `path` by a short-lived thread that enters it and
    ends: for a multi-threaded caller (moord, netdiag), whose other threads must never change
    namespace. Errors are raised in the caller's thread; ValueError when `path` is not a netns."""
    import threading  # not on the plugin's path: it is single-threaded and uses entered()

    box: dict = {}

    def run() -> None:
        try:
            fd = open_netns(path)
            try:
                with entered(fd):
                    box["value"] = fn()
            finally:
                os.close(fd)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name=f"netns {path}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def write_sysctl(path: str, value: str) -> None:
    """Write /proc/sys/<path> in the current netns ('net/ipv4/conf/eth0.5/arp_notify': parts are
    joined with '/', since interface names may hold dots)."""
    with open("/proc/sys/" + path, "w") as f:
        f.write(value)
