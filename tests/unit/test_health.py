"""/healthz and /readyz on moord's metrics listener, over real HTTP on loopback, against the
agent's own view and a real CNI server on a private socket. Start-up is too quick to catch
/readyz at 503 in a running moord, so its states are set here as run() sets them."""
from __future__ import annotations

import asyncio
import json

from dataplane import metrics
from dataplane.cniserver import CNIServer
from dataplane.view import AgentView, Component


async def get(port: int, path: str) -> tuple[int, str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)  # the server closes: Connection: close
    finally:
        writer.close()
    head, body = raw.split(b"\r\n\r\n", 1)
    status = head.split(b"\r\n")[0].decode()
    ctype = next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-type")).decode()
    return int(status.split()[1]), ctype, body


async def probe(port: int, path: str) -> tuple[int, dict]:
    code, ctype, body = await get(port, path)
    assert ctype == "Content-Type: application/json"
    return code, json.loads(body)


def states(doc: dict) -> dict:
    return {c["name"]: (c["ok"], c["detail"]) for c in doc["components"]}


def test_readyz_is_503_until_start_up_is_done_and_the_cni_socket_listens(tmp_path):
    async def main() -> None:
        sock = str(tmp_path / "cni.sock")
        view = AgentView(cni_socket=sock)
        view.components["probe"] = Component("probe", True, "disabled in moord's config")
        server = await metrics.serve(view, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cni = CNIServer(sock)
        started = False
        try:
            # start-up under way: alive, not ready
            code, doc = await probe(port, "/readyz")
            assert (code, doc["status"]) == (503, "not ready")
            assert states(doc)["start-up"] == (False, "not done (or stopping)")
            assert states(doc)["cni"] == (False, f"unix:{sock} not listening")
            code, doc = await probe(port, "/healthz")
            assert (code, doc["status"]) == (200, "alive") and states(doc)["probe"] == (True,
                                                                                        "disabled in moord's config")
            # the CNI socket listens, start-up not done yet
            await cni.start()
            started = True
            view.cni = cni
            code, doc = await probe(port, "/readyz")
            assert code == 503 and states(doc)["cni"] == (True, f"unix:{sock} listening")
            view.serving = True  # what run() sets when start-up is done
            code, doc = await probe(port, "/readyz")
            assert (code, doc["status"]) == (200, "ready")
            # stopping: readiness goes first, then the CNI socket
            view.serving = False
            await cni.stop()
            started = False
            code, doc = await probe(port, "/readyz")
            assert code == 503 and states(doc)["cni"] == (False, f"unix:{sock} not listening")
            assert (await get(port, "/nope"))[0] == 404
        finally:
            server.close()
            if started:
                await cni.stop()

    asyncio.run(main())


def test_readyz_without_a_cni_socket_needs_start_up_only():
    async def main() -> None:
        view = AgentView()  # cni.socket "": the plugin works alone
        server = await metrics.serve(view, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            assert (await probe(port, "/readyz"))[0] == 503
            view.serving = True
            code, doc = await probe(port, "/readyz?verbose=1")
            assert code == 200
            assert states(doc)["cni"] == (True, "cni.socket is off: the plugin works in its own process")
        finally:
            server.close()

    asyncio.run(main())
