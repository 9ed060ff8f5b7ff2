"""Building moor's C client (cni/client.c): the CNI plugin's fast path without an interpreter start.

`moor install` and the bench build it with the system's C compiler, statically where the C library
allows (the binary then runs in any root: a node, an image, an init container's copy); without a
compiler the Python client (cni/entry.py) stays the plugin, with the same results, ~7 ms slower a call.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("client.c")


def compiler() -> str | None:
    path = os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
    for cc in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        found = shutil.which(cc, path=path) if cc else None
        if found:
            return found
    return None


def build(out: Path, fallback: str) -> str:
    """Compile the client to `out` (written under a temp name and renamed); `fallback`: the Python
    client's path on the node, which the binary executes for whatever it cannot do. Returns "" when
    built, else why not (no compiler, the compiler's first error line)."""
    cc = compiler()
    if cc is None:
        return "no C compiler (cc, gcc or clang) on this machine"
    if not fallback.startswith("/") or '"' in fallback or "\\" in fallback:
        return f"the fallback {fallback!r} is not a plain absolute path"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        why = ""
        # the compiler finds its linker on PATH: an init container or `env -i` may have none
        env = dict(os.environ, PATH=os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin")
        for static in (["-static"], []):  # static: no dependency on the node's C library
            r = subprocess.run([cc, "-O2", "-s", "-Wall", "-Werror", *static, f'-DMOOR_FALLBACK="{fallback}"',
                                "-o", tmp, str(SOURCE)], capture_output=True, text=True, env=env)
            if r.returncode == 0:
                os.chmod(tmp, 0o755)
                os.replace(tmp, out)
                return ""
            why = why or next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:200])
        return f"{Path(cc).name} failed: {why}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
