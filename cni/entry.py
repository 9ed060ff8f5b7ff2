"""The `moor` executable: hand the call to moord when it serves CNI on its socket (the fast path),
else do the work in this process (cni.plugin), with the same result either way.

This module is what a runtime's exec imports first, so it imports only what the interpreter has
loaded already (os, sys) and C modules (_socket, _struct): `socket` costs 10 ms, `json` 12 ms.

The exchange on the unix socket (dataplane/cniserver.py is the other side):
  client -> agent  b"MOOR1" !II(len env, len stdin) env stdin        env: NUL-separated KEY=VALUE
  agent  -> client b"P" !I(len) entries    dev NUL ino NUL path NUL ... : objects the agent will use
                   (its netns, CNI_NETNS, stateDir, IPAM dataDir), identified as the agent sees them
  client -> agent  b"G" (the client sees the same objects at those paths) or b"F" (it does not)
  agent  -> client !i(exit code) stdout                                           then it closes
A client in another network namespace, or one whose paths lead elsewhere (a container without
the host's /var/lib/moor), answers F and does the work itself. A connection that ends after G
before the reply (moord stopped mid-call) is finished here: DEL/CHECK/GC/STATUS are run again; an
ADD is undone with a DEL and made again, so the attachment is complete or absent, never half made.
"""
from __future__ import annotations

import os
import sys

DEFAULT_SOCKET = "/run/moor/cni.sock"
MAGIC = b"MOOR1"
CONNECT_TIMEOUT = 2.0  # a listening agent accepts at once; a wedged one must not stall the pod
REPLY_TIMEOUT = 300.0  # longer than an attachment lock wait (120 s)


class Interrupted(Exception):
    """The agent took the call and went away before answering."""


def socket_path(stdin: bytes) -> str:
    """The agent's socket, "" for none: the config key agentSocket ("" turns the fast path off). The
    key is looked for as bytes first, so the common config costs no JSON parse."""
    if b'"agentSocket"' not in stdin:
        return DEFAULT_SOCKET
    fast = _scan_string(stdin, b'"agentSocket"')
    if fast is not None:
        return fast if fast.startswith("/") else ""
    from .spec import jsonc as json
    try:
        v = json.loads(stdin).get("agentSocket")
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        return ""  # the plugin itself will say what is wrong with the config
    return v if isinstance(v, str) and v.startswith("/") else ""


def _scan_string(doc: bytes, key: bytes) -> str | None:
    """The string value of `key` when the document holds it exactly once, as `"key": "plain"` (no
    escapes); None for anything else, which json then reads (importing json costs 9 ms, a third of
    a fast-path call)."""
    i = doc.find(key)
    if i < 0 or doc.find(key, i + 1) >= 0:
        return None
    rest = doc[i + len(key):].lstrip(b" \t\r\n")
    if not rest.startswith(b":"):
        return None
    rest = rest[1:].lstrip(b" \t\r\n")
    if not rest.startswith(b'"'):
        return None
    end = rest.find(b'"', 1)
    value = rest[1:end] if end > 0 else b"\\"
    if b"\\" in value or any(c < 0x20 for c in value):
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def _recv_exact(s, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise Interrupted()
        buf += chunk
    return buf


def _same_objects(entries: bytes) -> bool:
    """Whether every (dev, ino, path) the agent listed is the same object here."""
    parts = entries.split(b"\0")
    for i in range(0, len(parts) - 2, 3):
        dev, ino, path = parts[i], parts[i + 1], parts[i + 2]
        try:
            st = os.stat(path)
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != (int(dev), int(ino)):
            return False
    return True


def call_agent(path: str, environ: dict[bytes, bytes], stdin: bytes) -> tuple[bytes, int] | None:
    """The agent's (stdout, code); None when it is absent, not ready, or elsewhere (do it here);
    Interrupted when it took the call and did not answer."""
    import _socket
    import _struct
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(path)
            env = b"\0".join(k + b"=" + v for k, v in environ.items())
            s.sendall(MAGIC + _struct.pack("!II", len(env), len(stdin)) + env + stdin)
            kind = _recv_exact(s, 1)
            if kind != b"P":
                return None
            (n,) = _struct.unpack("!I", _recv_exact(s, 4))
            same = _same_objects(_recv_exact(s, n))
            s.sendall(b"G" if same else b"F")
        except (OSError, Interrupted):
            return None  # nothing was done yet: no socket, refused, reset, or the agent said no
        if not same:
            return None
        s.settimeout(REPLY_TIMEOUT)
        try:
            (code,) = _struct.unpack("!i", _recv_exact(s, 4))
            out = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out.append(chunk)
        except OSError:
            raise Interrupted() from None
        return b"".join(out), code
    finally:
        s.close()


def _in_process(environ, stdin: bytes) -> tuple[bytes, int]:
    from .plugin import run
    return run(environ, stdin)


def finish_here(environ, stdin: bytes) -> tuple[bytes, int]:
    """The agent went away mid-call: leave the attachment complete or absent."""
    if environ.get("CNI_COMMAND") == "ADD":
        _in_process(dict(environ, CNI_COMMAND="DEL"), stdin)  # whatever the agent made, undone
    return _in_process(environ, stdin)


def main() -> int:
    if len(sys.argv) > 1:  # a runtime runs the plugin without arguments; an operator runs `moor install`
        from .plugin import main as plugin_main
        return plugin_main()
    if sys.stdin is None:
        from .plugin import main as plugin_main
        return plugin_main()  # which answers the closed stdin
    try:
        stdin = sys.stdin.buffer.read()
    except OSError:
        from .plugin import main as plugin_main
        return plugin_main()
    reply = None
    if os.environ.pop("MOOR_AGENT_INTERRUPTED", None) == "1":  # the C client's call went away (cni/client.c)
        reply = finish_here(os.environ, stdin)
    path = socket_path(stdin) if reply is None else ""
    if path:
        try:
            reply = call_agent(path, dict(os.environb), stdin)
        except Interrupted:
            reply = finish_here(os.environ, stdin)
    if reply is None:
        reply = _in_process(os.environ, stdin)
    out, code = reply
    if sys.stdout is not None:
        try:
            sys.stdout.buffer.write(out)
            sys.stdout.flush()
        except OSError:
            pass
    return code
