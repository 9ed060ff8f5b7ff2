"""Executing another plugin (a delegated IPAM such as host-local) without `subprocess`.

`import subprocess` costs the plugin ~11 ms of start-up here (it imports locale, re, selectors,
threading, signal, enum), twice what the Go reference spends on a whole ADD. posix_spawn does what
subprocess.run did for us: stdin from the config, stdout and stderr captured, SIGPIPE and SIGXFSZ
back to their defaults in the child (Python ignores them), no descriptor of ours inherited, a
timeout that kills. The child's stdin, stdout and stderr are memfds, not pipes: nothing to pump
while it runs, so no deadlock on a large config or a chatty plugin, and a daemon the plugin leaves
behind holding them cannot make us wait for an end of file.
"""
from __future__ import annotations

import os
import time

import _signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping


class Timeout(Exception):
    """The child ran longer than allowed; it was killed."""

    def __init__(self, exe: str, seconds: float):
        super().__init__(f"{exe} timed out after {seconds:g} seconds")


def run(exe: str, stdin: bytes, env: Mapping[str, str], timeout: float) -> tuple[bytes, bytes, int]:
    """(stdout, stderr, exit code; minus the signal number when a signal ended it). OSError when it
    cannot be executed (the message subprocess gave: "[Errno 2] No such file or directory: '...'")."""
    fds = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("stdin", "stdout", "stderr")]
    try:
        view = memoryview(stdin)
        while view:
            view = view[os.write(fds[0], view):]
        os.lseek(fds[0], 0, os.SEEK_SET)
        _no_inherited_fds()
        pid = os.posix_spawn(exe, [exe], env,
                             file_actions=[(os.POSIX_SPAWN_DUP2, fd, i) for i, fd in enumerate(fds)],
                             setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))
        status = _wait(pid, exe, timeout)
        out, err = _read(fds[1]), _read(fds[2])
    finally:
        for fd in fds:
            os.close(fd)
    return out, err, os.waitstatus_to_exitcode(status)


def _no_inherited_fds() -> None:
    """subprocess's close_fds: a descriptor the runtime left us without close-on-exec (ours have it,
    PEP 446) must not reach the child either."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, closed by now
                pass


def _wait(pid: int, exe: str, timeout: float) -> int:
    """The child's wait status, waiting at most `timeout` (then it is killed and reaped)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # kernels before 5.3: poll waitpid
        pidfd = -1
    if pidfd >= 0:
        try:
            import select  # a C module (~0.05 ms)
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            deadline = time.monotonic() + timeout
            while not poller.poll(max(0.0, deadline - time.monotonic()) * 1e3):
                if time.monotonic() >= deadline:
                    _kill(pid)
                    raise Timeout(exe, timeout)
        finally:
            os.close(pidfd)
        return os.waitpid(pid, 0)[1]
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            _kill(pid)
            raise Timeout(exe, timeout)
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, _signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def _read(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    parts = []
    while chunk := os.read(fd, 1 << 16):
        parts.append(chunk)
    return b"".join(parts)
