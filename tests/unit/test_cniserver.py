"""moord's CNI socket against clients that misbehave: one that connects and says nothing must not
hold a call's slot, is hung up on after the read timeout, and a stop hangs up on every client that
has not said G yet (that client does the work itself) instead of waiting for it. A real server on a
private socket, the real client (cni.entry.call_agent) and raw sockets; VERSION changes nothing."""
from __future__ import annotations

import asyncio
import json
import socket
import struct

from cni.entry import MAGIC, call_agent
from dataplane.cniserver import CNIServer

VERSION_ENV = {b"CNI_COMMAND": b"VERSION"}
VERSION_STDIN = b'{"cniVersion": "1.0.0"}'
HANG_GUARD_S = 30  # only so a broken server fails the test instead of hanging it


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(HANG_GUARD_S)
    s.connect(path)
    return s


def _request(s: socket.socket) -> bytes:
    """Send a VERSION request and read the agent's P message (up to G)."""
    env = b"CNI_COMMAND=VERSION"
    s.sendall(MAGIC + struct.pack("!II", len(env), len(VERSION_STDIN)) + env + VERSION_STDIN)
    kind = s.recv(1)
    (n,) = struct.unpack("!I", s.recv(4))
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return kind


def _hung_up(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_silent_client_holds_no_call_slot_and_stop_hangs_up_on_it(tmp_path):
    async def main() -> None:
        sock = str(tmp_path / "cni.sock")
        server = CNIServer(sock, workers=1, read_timeout=600)  # one call at a time, no timeout in reach
        await server.start()
        silent = _connect(sock)
        try:
            # the silent client is being read; the single call slot is free for a real call
            reply = await asyncio.to_thread(call_agent, sock, VERSION_ENV, VERSION_STDIN)
            assert reply is not None and reply[1] == 0
            assert "1.0.0" in json.loads(reply[0])["supportedVersions"]
            assert server.calls == 1
            await asyncio.wait_for(server.stop(), HANG_GUARD_S)  # does not wait for the silent one
            assert await asyncio.to_thread(_hung_up, silent)
            assert not (tmp_path / "cni.sock").exists() and not server.is_serving()
        finally:
            silent.close()
    asyncio.run(main())


def test_a_client_that_stalls_is_hung_up_on_after_the_read_timeout(tmp_path):
    async def main() -> None:
        sock = str(tmp_path / "cni.sock")
        server = CNIServer(sock, workers=1, read_timeout=0.2)
        await server.start()
        try:
            stalled = [_connect(sock) for _ in range(5)]  # more than the threads that read requests
            try:
                for s in stalled:
                    assert await asyncio.to_thread(_hung_up, s)
            finally:
                for s in stalled:
                    s.close()
            reply = await asyncio.to_thread(call_agent, sock, VERSION_ENV, VERSION_STDIN)
            assert reply is not None and reply[1] == 0
        finally:
            await asyncio.wait_for(server.stop(), HANG_GUARD_S)
    asyncio.run(main())


def test_stop_between_p_and_g_runs_nothing_and_the_client_works_alone(tmp_path):
    async def main() -> None:
        sock = str(tmp_path / "cni.sock")
        server = CNIServer(sock, read_timeout=600)
        await server.start()
        s = _connect(sock)
        try:
            assert await asyncio.to_thread(_request, s) == b"P"
            await asyncio.wait_for(server.stop(), HANG_GUARD_S)
            try:
                s.sendall(b"G")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the hang-up already reached us
            assert await asyncio.to_thread(_hung_up, s)  # no exit code: the client runs it itself
            assert server.calls == 0
        finally:
            s.close()
    asyncio.run(main())
