"""CNI calls served by the agent (the fast path): the `moor` executable sends its command, environment
and config over a unix socket, and the agent runs the very same library call as the executable would
(cni.plugin.run, moor-ipam in process), with its interpreter and modules already loaded. cni/entry.py
describes the exchange.

Calls run in threads: each holds its attachment's flock exactly as the executable does, so an agent
call and an executable call for one attachment never overlap. Stopping waits for the calls in flight;
the socket is removed first, so new calls go to the executables.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cni.entry import MAGIC
from cni.spec.errors import CNIError
from cni.spec.netconf import decode

from .api.server import ServeError, claim_socket

log = logging.getLogger("moord.cni")

MAX_ENV = 1 << 20
MAX_STDIN = 16 << 20
# a client sends its request at once (the C client or cni/entry.py); one that stalls is hung up on
READ_TIMEOUT_S = 10.0


def _nearest(path: str) -> str | None:
    """The path, or its nearest existing ancestor (a stateDir not made yet is judged by its parent)."""
    p = os.path.normpath(path)
    while True:
        if os.path.exists(p):
            return p
        parent = os.path.dirname(p) or "."  # as pathlib: a relative path ends at the current directory
        if parent == p:
            return None
        p = parent


def objects(env: dict[str, str], stdin: bytes) -> list[str]:
    """The paths whose objects a call would use, to be compared with the client's view."""
    paths = ["/proc/self/ns/net"]
    if env.get("CNI_NETNS"):
        paths.append(env["CNI_NETNS"])
    # delegated plugins (host-local) are executed from CNI_PATH: the same binaries, not the agent's
    paths += [d for d in env.get("CNI_PATH", "").split(":") if d.startswith("/")]
    try:
        doc = decode(stdin)
    except CNIError:
        doc = None  # the call itself will answer what is wrong with the config
    if doc is not None:
        from cni.config import DEFAULT_STATE_DIR
        state = doc.get("stateDir", DEFAULT_STATE_DIR)
        if isinstance(state, str) and state.startswith("/"):
            paths.append(state)
        ipam = doc.get("ipam")
        if isinstance(ipam, dict) and isinstance(ipam.get("dataDir"), str) and ipam["dataDir"].startswith("/"):
            paths.append(ipam["dataDir"])
        elif isinstance(ipam, dict) and ipam.get("type") == "moor-ipam":
            from ipam.config import DEFAULT_DATA_DIR
            paths.append(DEFAULT_DATA_DIR)
    out = []
    for p in paths:
        n = _nearest(p)
        if n is not None:
            out.append(n)
    return out


def _identify(paths: list[str]) -> bytes:
    parts = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        parts += [str(st.st_dev).encode(), str(st.st_ino).encode(), os.fsencode(p)]
    return b"\0".join(parts)


class CNIServer:
    """The socket, its accepting thread, and one thread per connection (from a pool): a call is a
    few blocking reads and writes around the plugin's own blocking work, so it is served by plain
    threads. Serving it from the event loop cost more of the interpreter than the call itself did
    (py-spy, 100 pods at concurrency 8: 58% of moord's GIL-held samples in asyncio's transports,
    futures and wake-ups), and the GIL, not the CPUs, bounded the pods per second."""

    def __init__(self, path: str, workers: int = 8, read_timeout: float = READ_TIMEOUT_S):
        self.path = path
        self.workers = workers
        self.read_timeout = read_timeout
        # connections are read by up to this many threads at once: a client that connects and
        # stalls holds one of them until read_timeout, never one of the calls' `workers` slots
        self.pool = ThreadPoolExecutor(max_workers=workers * 4, thread_name_prefix="cni")
        self._slots = threading.BoundedSemaphore(workers)  # calls running at once
        self._guard = threading.Lock()
        self._waiting: set[socket.socket] = set()  # connections whose client has not said G yet
        self._sock: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = False
        self.calls = 0
        self.ino = 0

    async def start(self) -> None:
        from cni import plugin  # loaded now, not on the first pod's call
        self._run = plugin.run
        claim_socket(Path(self.path))  # a dead agent's socket goes; a live one's is an error
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # root only, from the moment it exists
        try:
            s.bind(self.path)
            s.listen(128)
        except OSError as e:
            s.close()
            raise ServeError(f"cannot listen: {e.strerror or e}") from None
        finally:
            os.umask(old)
        self.ino = os.stat(self.path).st_ino
        self._sock = s
        self._acceptor = threading.Thread(target=self._accept, name="cni-accept", daemon=True)
        self._acceptor.start()

    def is_serving(self) -> bool:
        return self._sock is not None and not self._stopping

    async def stop(self) -> None:
        """New calls go to the executables (the socket is removed first); a client that has not
        said G yet is hung up on (it does the work itself); calls under way run to their end."""
        if self._sock is None:
            return
        with self._guard:
            self._stopping = True
            waiting = list(self._waiting)  # hung up on below: out of the set, so they will not run
            self._waiting.clear()
        try:  # ours only: never a successor's socket
            if os.stat(self.path).st_ino == self.ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (Linux)
        for conn in waiting:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        await asyncio.to_thread(self._drain)
        self._sock.close()

    def _drain(self) -> None:
        if self._acceptor is not None:
            self._acceptor.join()
        self.pool.shutdown(wait=True)

    def _accept(self) -> None:
        while True:
            try:
                fd, _ = self._sock._accept()  # socket.accept() converts the family to an enum, per call
            except OSError as e:
                if self._stopping:
                    return
                log.warning("CNI socket: accept failed: %s", e.strerror or e)
                time.sleep(0.1)  # out of file descriptors: let calls finish before the next try
                continue
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
            if self._stopping:
                conn.close()
                return
            conn.settimeout(self.read_timeout)
            self.pool.submit(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with self._guard:
            if self._stopping:
                conn.close()
                return
            self._waiting.add(conn)
        try:
            self._exchange(conn)
        except (EOFError, OSError):
            pass  # the client went away (or stalled past read_timeout); if it said G, the call ran to its end
        except Exception as e:  # never let one bad client take the agent down
            log.warning("CNI call failed: %s", e)
        finally:
            with self._guard:
                self._waiting.discard(conn)
            conn.close()

    def _exchange(self, conn: socket.socket) -> None:
        head = _read(conn, len(MAGIC) + 8)
        if head[:len(MAGIC)] != MAGIC:
            return
        n_env, n_stdin = struct.unpack("!II", head[len(MAGIC):])
        if n_env > MAX_ENV or n_stdin > MAX_STDIN:
            return  # the client does the work (and reports the oversized config) itself
        raw_env = _read(conn, n_env)
        stdin = _read(conn, n_stdin)
        env = {}
        for item in raw_env.split(b"\0") if raw_env else []:
            k, sep, v = item.partition(b"=")
            if sep:
                env[os.fsdecode(k)] = os.fsdecode(v)
        ident = _identify(objects(env, stdin))
        conn.sendall(b"P" + struct.pack("!I", len(ident)) + ident)
        if _read(conn, 1) != b"G":
            return
        with self._guard:
            if conn not in self._waiting:
                return  # stop() hung up on it as it said G: the client does the work itself
            self._waiting.discard(conn)
        # from here on the call runs to its end even if the client goes away
        with self._slots:
            out, code = self._run(env, stdin)
        with self._guard:
            self.calls += 1
        conn.sendall(struct.pack("!i", code) + out)


def _read(conn: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:])
        if k == 0:
            raise EOFError
        got += k
    return bytes(buf)
