"""Entering a network namespace for a moment (setns), for a single-threaded caller.

Sockets opened while inside stay bound to that netns after we return, so the plugin enters the
pod's netns only to open its sockets and write its sysctls.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Iterator

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str) -> int:
    """An fd for a netns path; FileNotFoundError when the netns is gone, ValueError if not a netns."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # nsfs files report the netns inode; a plain file would make setns fail with EINVAL later
        if os.fstat(fd).st_dev == os.stat("/proc/self/ns/net").st_dev:
            return fd
        raise ValueError(f"{path} is not a network namespace")
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


def write_sysctl(path: str, value: str) -> None:
    """Write /proc/sys/<path> in the current netns ('net/ipv4/conf/eth0.5/arp_notify': parts are
    joined with '/', since interface names may hold dots)."""
    with open("/proc/sys/" + path, "w") as f:
        f.write(value)
