"""Install moor on a node: `moor install` (also `python -m cni.install`).

Copies the running moor — its packages and every Python dependency it declares, from wherever this
interpreter imports them (a wheel, an image's venv, an editable checkout) — into
ROOT/PREFIX/versions/<version>-<digest>/, so the installed plugin never points back at where it came
from, then writes launchers: `moor` and `moor-ipam` into the CNI bin dir (run as `python -IS`: isolated,
no site, standard library only — the plugin's start-up is its largest cost), `moord`, `netdiag`,
`moor-ipam` and `moor` into PREFIX/bin, and the given network configs into the CNI conf dir, last, so a
runtime never sees a config whose plugin is missing (the install-cni pattern of Calico and Cilium).

Every file is written under a temp name and renamed; the version directory is built aside and renamed
into place, so a runtime executes either the old plugin or the new one, never a half-written one. A
launcher names its version directory (not `current`): a plugin that started before an upgrade keeps
importing from its own version, which stays until the next upgrade removes it.

`write_launcher` writes a developer's launcher that runs this checkout in place (tests, lab, bench).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "moor"
TOP_LEVEL = ("cni", "ipam", "bgp", "dataplane", "lab")

LAUNCHER = """#!{python} -IS
# moor CNI plugin launcher, written by `python -m cni.install`
import sys
sys.path.insert(0, {root!r})
from {module} import main
sys.exit(main())
"""
PLUGINS = {"moor": "cni.entry", "moor-ipam": "ipam.plugin"}
# launchers in PREFIX/bin: (module, whether it needs the copied dependencies)
COMMANDS = {"moor": ("cni.entry", False), "moor-ipam": ("ipam.plugin", False),
            "moord": ("dataplane.agent", True), "netdiag": ("dataplane.netdiag.cli", True)}

INSTALLED = """#!{python} {flags}
# moor {version}: written by `moor install` on every install (edits are lost)
import sys
sys.path[:0] = {paths!r}
from {module} import main
sys.exit(main())
"""


class InstallError(Exception):
    """One line for the operator; `moor install` exits 2."""


def write_launcher(target_dir: str | os.PathLike, name: str = "moor", python: str = sys.executable) -> Path:
    """A developer's launcher: runs this checkout in place."""
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    return _write(target / name, LAUNCHER.format(python=python, root=str(PACKAGE_ROOT), module=PLUGINS[name]),
                  0o755)


def _write(path: Path, text: str | bytes, mode: int) -> Path:
    """Write under a temp name and rename: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# -- what to copy -------------------------------------------------------------------------------------

@dataclass
class Payload:
    """The files of a complete moor: destination (relative to lib/ or site/) -> source."""
    version: str
    lib: dict[str, Path] = field(default_factory=dict)   # moor's own packages
    site: dict[str, Path] = field(default_factory=dict)  # its dependencies, as installed
    dists: list[str] = field(default_factory=list)

    def digest(self) -> str:
        h = hashlib.blake2b(digest_size=6)
        for part, files in (("lib", self.lib), ("site", self.site)):
            for rel in sorted(files):
                h.update(f"{part}/{rel}\0".encode())
                h.update(files[rel].read_bytes())
        return h.hexdigest()


def _requirement(req: str) -> tuple[str | None, bool]:
    """(the distribution a Requires-Dist line names, whether it applies here): None when only an extra
    asks for it; a marker (platform_system == "Windows") is evaluated when `packaging` is importable,
    else the dependency is taken when installed and skipped when not."""
    name, _, marker = req.partition(";")
    if "extra" in marker:
        return None, False
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", name)
    if m is None:
        return None, False
    if not marker.strip():
        return m.group(1), True
    try:
        from packaging.markers import Marker
    except ImportError:
        return m.group(1), False
    return (m.group(1), True) if Marker(marker).evaluate() else (None, False)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dependency_closure(root: metadata.Distribution) -> list[metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    todo = [r for r in (root.requires or [])]
    while todo:
        name, required = _requirement(todo.pop())
        if name is None or _canonical(name) in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if not required:
                continue
            raise InstallError(f"dependency {name} is not installed for {sys.executable}: "
                               "install moor with its dependencies first (pip install moor)") from None
        seen[_canonical(name)] = dist
        todo.extend(dist.requires or [])
    return sorted(seen.values(), key=lambda d: _canonical(d.metadata["Name"]))


def _package_files(top: Path, rel_to: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(top.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"):
            out[str(p.relative_to(rel_to))] = p
    return out


def _installed_copy() -> dict | None:
    """The manifest when this moor runs from an installed version directory (PREFIX/versions/X/lib),
    as in moor's image, whose init container installs the image's copy onto the node."""
    vdir = PACKAGE_ROOT.parent
    if PACKAGE_ROOT.name != "lib" or not (vdir / ".complete").is_file():
        return None
    try:
        manifest = json.loads((vdir / "MANIFEST.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("moor"), str) else None


def collect() -> Payload:
    """The running moor and its dependencies."""
    installed = _installed_copy()
    if installed is not None:  # the same files again: the same digest, the same version name
        payload = Payload(version=installed["moor"], dists=list(installed.get("dependencies", [])))
        for top in TOP_LEVEL:
            payload.lib.update(_package_files(PACKAGE_ROOT / top, PACKAGE_ROOT))
        site = PACKAGE_ROOT.parent / "site"
        if site.is_dir():
            payload.site.update(_package_files(site, site))
        return payload
    try:
        dist = metadata.distribution(DISTRIBUTION)
        version = dist.version
    except metadata.PackageNotFoundError:
        dist, version = None, "0+unknown"
    payload = Payload(version=version)
    # moor's own packages from where they are imported (a wheel's site-packages or an editable
    # checkout alike), so what is installed is what runs here
    base = PACKAGE_ROOT
    for top in TOP_LEVEL:
        if not (base / top / "__init__.py").is_file():
            raise InstallError(f"package {top} is missing beside {base / 'cni'}")
        payload.lib.update(_package_files(base / top, base))
    if dist is not None:
        for dep in _dependency_closure(dist):
            payload.dists.append(f"{dep.metadata['Name']}=={dep.version}")
            if dep.files is None:
                raise InstallError(f"{dep.metadata['Name']} {dep.version} lists no files (no RECORD): "
                                   "reinstall it with pip")
            for f in dep.files:
                rel = Path(str(f))
                # scripts land outside site-packages (../../bin); byte code is rebuilt
                if rel.parts and rel.parts[0] == ".." or rel.suffix in (".pyc", ".pyo") or "__pycache__" in rel.parts:
                    continue
                src = Path(dep.locate_file(f))
                if not src.is_file():
                    raise InstallError(f"{dep.metadata['Name']} {dep.version}: {src} is missing: reinstall it")
                payload.site[str(rel)] = src
    return payload


# -- where it goes ------------------------------------------------------------------------------------

@dataclass
class Layout:
    root: Path
    prefix: str          # as seen on the node
    cni_bin_dir: str
    cni_conf_dir: str
    python: str

    def host(self, node_path: str) -> Path:
        """A node path under ROOT."""
        return self.root / node_path.lstrip("/")


def _check_python(lay: Layout) -> str | None:
    """The launchers' interpreter must exist on the node; a warning when its version is unknowable."""
    p = lay.host(lay.python)
    for _ in range(16):  # resolve symlinks inside ROOT, not on this machine
        if not p.is_symlink():
            break
        target = os.readlink(p)
        p = lay.host(target) if target.startswith("/") else p.parent / target
    if not p.is_file():
        raise InstallError(f"--python {lay.python}: no such interpreter under {lay.root} (the plugin needs "
                           "Python >= 3.11 on the node; name another with --python)")
    m = re.fullmatch(r"python(\d+)\.(\d+)", p.name)
    if m and (int(m.group(1)), int(m.group(2))) < (3, 11):
        raise InstallError(f"--python {lay.python} is Python {m.group(1)}.{m.group(2)}; moor needs >= 3.11")
    here = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if m is None:
        return f"cannot tell the version of {lay.python}; moord and netdiag need {here} (compiled dependencies)"
    if p.name != here:
        return (f"{lay.python} is {p.name}: the CNI plugins run on it (standard library only), but moord and "
                f"netdiag need {here} for their compiled dependencies")
    return None


def _stage_version(lay: Layout, payload: Payload, name: str) -> Path:
    versions = lay.host(lay.prefix) / "versions"
    final = versions / name
    if (final / ".complete").is_file():
        return final  # the same content is already there: idempotent
    versions.mkdir(parents=True, exist_ok=True)
    stage = versions / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        for part, files in (("lib", payload.lib), ("site", payload.site)):
            for rel, src in files.items():
                dst = stage / part / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        import compileall  # byte code now, so the first pod does not pay for it
        compileall.compile_dir(str(stage), quiet=2, stripdir=str(stage),
                               prependdir=f"{lay.prefix}/versions/{name}")
        (stage / "MANIFEST.json").write_text(json.dumps(
            {"moor": payload.version, "dependencies": payload.dists, "python": lay.python}, indent=1) + "\n")
        (stage / ".complete").write_text("")
        shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover of a killed install
        os.rename(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return final


def _swap_current(lay: Layout, name: str) -> str | None:
    """Point PREFIX/current at the new version; return the previous version's name (None when there
    was none, or it was this one)."""
    cur = lay.host(lay.prefix) / "current"
    previous = os.readlink(cur).rsplit("/", 1)[-1] if cur.is_symlink() else None
    tmp = cur.with_name(f".current.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(f"versions/{name}", tmp)
    os.replace(tmp, cur)
    return previous if previous != name else None


def _prune(lay: Layout, keep: set[str]) -> list[str]:
    versions = lay.host(lay.prefix) / "versions"
    removed = []
    for d in sorted(versions.iterdir()):
        if d.name.startswith("."):  # a stage: another install's (alive) or a killed one's (removed)
            try:
                os.kill(int(d.name.rsplit(".", 2)[-2]), 0)
                continue
            except (ValueError, IndexError, ProcessLookupError):
                pass
            except PermissionError:
                continue
        if d.name not in keep and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


def _check_conf(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InstallError(f"--conf {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise InstallError(f"--conf {path}: not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not (
            isinstance(doc.get("type"), str) or isinstance(doc.get("plugins"), list)):
        raise InstallError(f"--conf {path}: not a CNI network config (needs name, and type or plugins)")
    return raw


def install(lay: Layout, confs: list[Path], cni: bool = True) -> list[str]:
    """Install; returns one line per thing done."""
    warning = _check_python(lay)
    conf_bytes = [(c.name, _check_conf(c)) for c in confs]  # refuse bad input before writing anything
    payload = collect()
    name = f"{payload.version}-{payload.digest()}"
    done = [f"warning: {warning}"] if warning else []
    vdir = _stage_version(lay, payload, name)
    done.append(str(vdir))
    node_vdir = f"{lay.prefix}/versions/{name}"
    lib, site = f"{node_vdir}/lib", f"{node_vdir}/site"
    bin_dir = lay.host(lay.prefix) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for cmd, (module, deps) in COMMANDS.items():
        text = INSTALLED.format(python=lay.python, flags="-I" if deps else "-IS", version=payload.version,
                                paths=[lib, site] if deps else [lib], module=module)
        done.append(str(_write(bin_dir / cmd, text, 0o755)))
    if cni:
        cni_bin = lay.host(lay.cni_bin_dir)
        cni_bin.mkdir(parents=True, exist_ok=True)
        client, why = _client(vdir, f"{lay.prefix}/bin/moor")
        if why:
            done.append(f"note: the CNI plugin `moor` is the Python client ({why}): ~7 ms more a call on the fast path")
        for cmd, module in PLUGINS.items():
            text = INSTALLED.format(python=lay.python, flags="-IS", version=payload.version, paths=[lib],
                                    module=module)
            if cmd == "moor" and client is not None:
                text = client.read_bytes()  # the C client; PREFIX/bin/moor (Python) does what it cannot
            done.append(str(_write(cni_bin / cmd, text, 0o755)))
    previous = _swap_current(lay, name)
    done.append(f"{lay.host(lay.prefix) / 'current'} -> versions/{name}")
    if previous:  # an upgrade: keep the version it replaced, remove the older ones
        for gone in _prune(lay, {name, previous}):
            done.append(f"removed versions/{gone}")
    if conf_bytes:
        conf_dir = lay.host(lay.cni_conf_dir)
        conf_dir.mkdir(parents=True, exist_ok=True)
        for base, raw in conf_bytes:
            done.append(str(_write(conf_dir / base, raw, 0o644)))
    return done


def _client(vdir: Path, fallback: str) -> tuple[Path | None, str]:
    """The version's C client (cni/client.c) for this prefix: already built, copied from the
    installed copy this runs from (an image's init container has no compiler), or built now.
    (None, why) when there is none."""
    from .client import build
    out = vdir / "client" / "moor"
    stamp = out.with_name("FALLBACK")  # the Python client the binary was built to hand calls to

    def fits(binary: Path) -> bool:
        try:
            return binary.is_file() and binary.with_name("FALLBACK").read_text() == fallback
        except OSError:
            return False

    if fits(out):
        return out, ""
    mine = PACKAGE_ROOT.parent / "client" / "moor"
    if _installed_copy() is not None and fits(mine):
        out.parent.mkdir(parents=True, exist_ok=True)
        _write(out, mine.read_bytes(), 0o755)
    else:
        why = build(out, fallback)
        if why:
            return None, why
    _write(stamp, fallback, 0o644)
    return out, ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="moor install", description="Install moor on a node: a self-contained copy under PREFIX, the "
        "CNI plugins into the CNI bin dir, and network configs into the CNI conf dir.")
    ap.add_argument("--root", default="/", help="install into this root, e.g. the host's / mounted in a "
                    "container, or an image being built (default /)")
    ap.add_argument("--prefix", default="/opt/moor", help="where moor lives on the node (default /opt/moor)")
    ap.add_argument("--cni-bin-dir", default="/opt/cni/bin", help="the runtime's CNI bin dir (default /opt/cni/bin)")
    ap.add_argument("--cni-conf-dir", default="/etc/cni/net.d", help="the runtime's CNI conf dir (default /etc/cni/net.d)")
    ap.add_argument("--conf", action="append", default=[], metavar="FILE",
                    help="a network config (.conf/.conflist) to install into the conf dir, written last; repeatable")
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="the interpreter the launchers run, as a path on the node (default /usr/bin/python3)")
    ap.add_argument("--no-cni", action="store_true", help="do not write the CNI bin dir (an image's own copy)")
    ap.add_argument("--develop", metavar="DIR", help=argparse.SUPPRESS)  # launchers that run this checkout
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    try:
        if a.develop:
            for name in sorted(PLUGINS):
                print(write_launcher(a.develop, name))
            return 0
        for opt in ("prefix", "cni_bin_dir", "cni_conf_dir", "python"):
            if not getattr(a, opt).startswith("/"):
                raise InstallError(f"--{opt.replace('_', '-')} {getattr(a, opt)}: must be an absolute path")
        lay = Layout(Path(a.root), a.prefix.rstrip("/") or "/", a.cni_bin_dir, a.cni_conf_dir, a.python)
        for line in install(lay, [Path(c) for c in a.conf], cni=not a.no_cni):
            print(line)
        return 0
    except InstallError as e:
        print(f"moor install: {e}", file=sys.stderr)
    except OSError as e:
        print(f"moor install: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
