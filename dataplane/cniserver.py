"""CNI calls served by the agent (the fast path): the `moor` executable sends its command, environment
and config over a unix socket, and the agent runs the very same library call as the executable would
(cni.plugin.run, moor-ipam in process), with its interpreter and modules already loaded. cni/entry.py
describes the exchange.

Calls run in a thread pool: each holds its attachment's flock exactly as the executable does, so an
agent call and an executable call for one attachment never overlap. Stopping waits for the calls in
flight; the socket is removed first, so new calls go to the executables.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cni.entry import MAGIC
from cni.spec.errors import CNIError
from cni.spec.netconf import decode

from .api.server import claim_socket

log = logging.getLogger("moord.cni")

MAX_ENV = 1 << 20
MAX_STDIN = 16 << 20


def _nearest(path: str) -> str | None:
    """The path, or its nearest existing ancestor (a stateDir not made yet is judged by its parent)."""
    p = Path(path)
    while True:
        if p.exists():
            return str(p)
        if p.parent == p:
            return None
        p = p.parent


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
    def __init__(self, path: str, workers: int = 8):
        self.path = path
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cni")
        self.server: asyncio.AbstractServer | None = None
        self.inflight: set[asyncio.Task] = set()
        self.calls = 0
        self.ino = 0

    async def start(self) -> None:
        from cni import plugin  # loaded now, not on the first pod's call
        self._run = plugin.run
        claim_socket(Path(self.path))  # a dead agent's socket goes; a live one's is an error
        old = os.umask(0o177)  # root only, from the moment it exists
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=self.path)
        finally:
            os.umask(old)
        self.ino = os.stat(self.path).st_ino

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            try:  # ours only: never a successor's socket
                if os.stat(self.path).st_ino == self.ino:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self.inflight:  # let the calls in flight finish: an attachment is never left half made
            await asyncio.gather(*self.inflight, return_exceptions=True)
        self.pool.shutdown(wait=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.inflight.add(task)
        try:
            await self._exchange(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away; if it said G, the call ran to its end anyway
        except Exception as e:  # never let one bad client take the agent down
            log.warning("CNI call failed: %s", e)
        finally:
            self.inflight.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readexactly(len(MAGIC) + 8)
        if head[:len(MAGIC)] != MAGIC:
            return
        n_env, n_stdin = struct.unpack("!II", head[len(MAGIC):])
        if n_env > MAX_ENV or n_stdin > MAX_STDIN:
            return  # the client does the work (and reports the oversized config) itself
        raw_env = await reader.readexactly(n_env)
        stdin = await reader.readexactly(n_stdin)
        env = {}
        for item in raw_env.split(b"\0") if raw_env else []:
            k, sep, v = item.partition(b"=")
            if sep:
                env[os.fsdecode(k)] = os.fsdecode(v)
        loop = asyncio.get_running_loop()
        ident = await loop.run_in_executor(self.pool, lambda: _identify(objects(env, stdin)))
        writer.write(b"P" + struct.pack("!I", len(ident)) + ident)
        await writer.drain()
        if await reader.readexactly(1) != b"G":
            return
        # from here on the call runs to its end even if the client goes away
        out, code = await asyncio.shield(loop.run_in_executor(self.pool, self._run, env, stdin))
        self.calls += 1
        writer.write(struct.pack("!i", code) + out)
        await writer.drain()
