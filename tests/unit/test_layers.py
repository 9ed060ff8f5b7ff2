"""The packages depend downward only: cni.spec (the CNI protocol) imports nothing else of moor;
ipam builds on cni.spec and cni.netlink, never on moor's modes; the modes on both. Checked in a
fresh interpreter, by what importing each layer puts in sys.modules, and in the source, where a
late import inside a function would hide from the first check."""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys

import pytest

import cni.spec
from tests.helpers import REPO

SPEC = sorted(f"cni.spec.{m.name}" for m in pkgutil.iter_modules(cni.spec.__path__))
IPAM = ["ipam.plugin", "ipam.cli", "ipam.read", "ipam.inprocess", "ipam.store.sqlite", "ipam.store.etcd",
        "ipam.store.migrate"]


def _moor_modules(modules: list[str]) -> set[str]:
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1])\n"
            "for m in sys.argv[2:]: importlib.import_module(m)\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('cni', 'ipam', 'bgp', 'dataplane', 'lab'))))")
    out = subprocess.run([sys.executable, "-IS", "-c", code, str(REPO), *modules], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_the_spec_imports_nothing_else_of_moor():
    assert len(SPEC) >= 10, SPEC
    outside = {m for m in _moor_modules(SPEC) if m not in ("cni", "cni.spec") and not m.startswith("cni.spec.")}
    assert not outside, f"cni.spec pulls in {sorted(outside)}"


def test_ipam_builds_on_the_spec_and_netlink_only():
    loaded = _moor_modules(IPAM)
    above = {m for m in loaded if m.startswith("cni.") and not m.startswith(("cni.spec", "cni.netlink"))}
    assert not above, f"ipam pulls in moor's modes: {sorted(above)}"
    assert not {m for m in loaded if m.split(".")[0] in ("dataplane", "lab", "bgp")}


@pytest.mark.parametrize("mode", ["cni.macvlan", "cni.routed"])
def test_a_mode_loads_moor_ipam_only_when_it_is_called(mode):
    """The modes name moor-ipam to the delegate (ipam.inprocess); the IPAM itself is imported by the
    first call, so a network with host-local never loads it."""
    loaded = _moor_modules([mode])
    assert "ipam.inprocess" in loaded and "ipam.plugin" not in loaded


def _imports(path) -> list[tuple[int, str]]:
    """(level, module) of every import statement in the file, function bodies included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(0, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
    return out


MOOR = ("cni", "ipam", "bgp", "dataplane", "lab")


def test_no_late_import_leaves_its_layer():
    for path in sorted((REPO / "cni" / "spec").glob("*.py")):
        for level, name in _imports(path):
            assert level <= 1 and (level == 1 or name.split(".")[0] not in MOOR), f"{path.name} imports {'.' * level}{name}"
    for path in sorted((REPO / "ipam").rglob("*.py")):
        for level, name in _imports(path):
            if level == 0 and name.split(".")[0] in MOOR:
                assert name.startswith(("cni.spec", "cni.netlink")), f"{path.relative_to(REPO)} imports {name}"
