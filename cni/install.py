"""Install the plugin into a CNI bin directory as a fast launcher.

The plugin needs only the standard library, so its launcher starts the interpreter with -I -S
(isolated, no site; one shebang argument, so "-IS"): no site-packages scan, no .pth files. Measured here: 14 ms for `python -I -S`
against 40 ms for a venv `python -c pass`. Usage: python -m cni.install /opt/cni/bin   (writes moor and moor-ipam)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

LAUNCHER = """#!{python} -IS
# moor CNI plugin launcher, written by `python -m cni.install`
import sys
sys.path.insert(0, {root!r})
from {module} import main
sys.exit(main())
"""
PLUGINS = {"moor": "cni.plugin", "moor-ipam": "ipam.plugin"}


def write_launcher(target_dir: str | os.PathLike, name: str = "moor", python: str = sys.executable) -> Path:
    path = Path(target_dir) / name
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    tmp.write_text(LAUNCHER.format(python=python, root=str(PACKAGE_ROOT), module=PLUGINS[name]))
    tmp.chmod(0o755)
    os.replace(tmp, path)  # atomic: a runtime never executes a half-written plugin
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cni.install", description=__doc__.split("\n")[0])
    ap.add_argument("target_dir", help="the runtime's CNI bin directory, e.g. /opt/cni/bin")
    ap.add_argument("--only", choices=sorted(PLUGINS), help="install one plugin (default: all)")
    a = ap.parse_args(argv)
    for name in [a.only] if a.only else sorted(PLUGINS):
        print(write_launcher(a.target_dir, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
