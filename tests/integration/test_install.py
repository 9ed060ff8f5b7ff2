"""`moor install` as an operator (or the DaemonSet's init container) runs it: from a wheel, into another
root, with the source tree and the installing venv gone afterwards; the installed plugins run with an
empty environment, in routed mode, from their node paths (bound in a private mount namespace, so the
host's /opt is never touched); upgrades swap versions atomically and keep the previous one."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import REPO, ipj
from tests.integration.conftest import MacvlanNet

pytestmark = pytest.mark.integration

SOURCES = ("cni", "ipam", "bgp", "dataplane", "lab", "pyproject.toml", "README.md")


def _run(*cmd: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv holding moor installed from a wheel built from a copy of the source tree; the copy and
    the wheel are deleted before the venv is handed out. Its dependencies are this test run's (a .pth),
    as pip would have installed them from an index."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(p, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp / "dist"), str(src))
    wheel = next((tmp / "dist").glob("moor-*.whl"))
    v = tmp / "venv"
    _run("/usr/bin/python3", "-m", "venv", "--without-pip", "--system-site-packages", str(v))
    _run(sys.executable, "-m", "pip", "--python", str(v / "bin/python"), "install", "-q", "--no-deps",
         "--no-index", str(wheel))
    site = next(v.glob("lib/python3*/site-packages"))
    (site / "moor-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.rmtree(src)  # the source tree is gone: nothing installed may point back at it
    shutil.rmtree(tmp / "dist")
    return v


def _root(tmp: Path) -> Path:
    """A node root whose /usr/bin/python3 is a real Python 3.11 (a copy of this machine's)."""
    root = tmp / "root"
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/python3.11", root / "usr/bin/python3.11")
    os.symlink("python3.11", root / "usr/bin/python3")
    return root


def _install(venv: Path, root: Path, *args: str) -> list[str]:
    p = _run(str(venv / "bin/moor"), "install", "--root", str(root), *args, env={})
    return p.stdout.splitlines()


def _on_node(root: Path, cmd: list[str], env: dict[str, str], node_ns: str | None = None,
             stdin: bytes = b"") -> subprocess.CompletedProcess:
    """Run `cmd` with exactly `env` where the installed root's /opt/moor and /opt/cni are the node's
    /opt/moor and /opt/cni: a private mount namespace over a tmpfs /opt."""
    script = ('mount -t tmpfs moor-test /opt && mkdir /opt/moor /opt/cni && '
              'mount --bind "$0/opt/moor" /opt/moor && mount --bind "$0/opt/cni" /opt/cni && exec "$@"')
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(root),
            "env", "-i", *(f"{k}={v}" for k, v in env.items()), *cmd]
    if node_ns:
        argv = ["ip", "netns", "exec", node_ns, *argv]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60)


def test_installed_from_a_wheel_runs_with_nothing_of_its_source(venv: Path, tmp_path: Path, net: MacvlanNet):
    root = _root(tmp_path)
    conf = {"cniVersion": "1.0.0", "name": "inst", "type": "moor", "mode": "bgp",
            "stateDir": str(tmp_path / "state"),
            "ipam": {"type": "moor-ipam", "dataDir": str(tmp_path / "ipam"), "pools": [{"cidr": "203.0.113.0/24"}]}}
    conf_file = tmp_path / "10-inst.conf"
    conf_file.write_text(json.dumps(conf))
    out = _install(venv, root, "--conf", str(conf_file))
    assert str(root / "etc/cni/net.d/10-inst.conf") == out[-1], "the network config is written last"
    assert json.loads((root / "etc/cni/net.d/10-inst.conf").read_text()) == conf

    from cni.client import compiler
    if compiler() is not None:  # the C client where `moor install` can build it
        assert (root / "opt/cni/bin/moor").read_bytes().startswith(b"\x7fELF")
    # nothing points back at the checkout or at the venv it was installed from, which is moved away
    # while the installed copy runs
    os.rename(venv / "lib", venv / "lib.away")
    try:
        _run_installed(root, conf, net)
    finally:
        os.rename(venv / "lib.away", venv / "lib")


def _python_plugin(root: Path) -> str:
    """The Python launcher the CNI plugin runs: the plugin itself, or, where `moor install` built the C
    client (a C compiler here), PREFIX/bin/moor, which that client names and hands its calls to."""
    plugin = (root / "opt/cni/bin/moor").read_bytes()
    if plugin.startswith(b"\x7fELF"):
        assert b"/opt/moor/bin/moor\0" in plugin
        plugin = (root / "opt/moor/bin/moor").read_bytes()
    return plugin.decode()


def _run_installed(root: Path, conf: dict, net: MacvlanNet) -> None:
    for p in (root / "opt").rglob("*"):
        if p.is_file() and p.suffix in ("", ".py", ".pth", ".txt", ".json", ".cfg"):
            text = p.read_text(errors="replace")
            assert str(REPO) not in text and "/venv/" not in text, p
    launcher = _python_plugin(root)
    assert launcher.startswith("#!/usr/bin/python3 -IS\n") and "/opt/moor/versions/" in launcher

    ver = _on_node(root, ["/opt/cni/bin/moor"], {"CNI_COMMAND": "VERSION"}, stdin=b'{"cniVersion":"1.0.0"}')
    assert ver.returncode == 0 and "1.1.0" in json.loads(ver.stdout)["supportedVersions"], ver
    ver = _on_node(root, ["/opt/cni/bin/moor-ipam"], {"CNI_COMMAND": "VERSION"}, stdin=b'{"cniVersion":"1.0.0"}')
    assert ver.returncode == 0, ver
    for cmd in ("moord", "netdiag"):  # the agent's side imports its copied dependencies
        h = _on_node(root, [f"/opt/moor/bin/{cmd}", "--help"], {})
        assert h.returncode == 0 and b"usage" in h.stdout, h

    # ADD and DEL in a pod namespace, from inside the node namespace, with only the CNI variables
    pod = net.pod("pod1")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c-inst", "CNI_NETNS": pod, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=inst;K8S_POD_UID=u1"}
    add = _on_node(root, ["/opt/cni/bin/moor"], env, node_ns=net.node, stdin=json.dumps(conf).encode())
    assert add.returncode == 0, (add.stdout, add.stderr)
    ip = json.loads(add.stdout)["ips"][0]["address"].split("/")[0]
    routes = ipj(net.node, "route", "show", "proto", "109")
    assert [r["dst"] for r in routes] == [ip]
    dele = _on_node(root, ["/opt/cni/bin/moor"], {**env, "CNI_COMMAND": "DEL"}, node_ns=net.node,
                    stdin=json.dumps(conf).encode())
    assert dele.returncode == 0, (dele.stdout, dele.stderr)
    assert ipj(net.node, "route", "show", "proto", "109") == []
    assert [l["ifname"] for l in ipj(net.pods["pod1"], "link", "show")] == ["lo"]


def test_upgrade_swaps_versions_and_keeps_the_previous_one(venv: Path, tmp_path: Path):
    root = _root(tmp_path)
    site = next(venv.glob("lib/python3*/site-packages"))
    versions = root / "opt/moor/versions"
    seen = []
    marker = site / "cni" / "_build.py"
    try:
        for n in range(3):
            marker.write_text(f"BUILD = {n}\n")  # a new build: new content, a new digest
            _install(venv, root)
            current = os.readlink(root / "opt/moor/current")
            seen.append(current.rsplit("/", 1)[1])
            assert seen[-1] in _python_plugin(root)
            assert (versions / seen[-1] / "lib/cni/_build.py").read_text() == f"BUILD = {n}\n"
        again = _install(venv, root)  # the same content again: nothing new, nothing removed
        assert os.readlink(root / "opt/moor/current").endswith(seen[-1])
        assert not any(l.startswith("removed") for l in again)
    finally:
        marker.unlink(missing_ok=True)
    assert len(set(seen)) == 3
    # the newest and the one before it (a plugin started before the upgrade still runs from it)
    assert sorted(p.name for p in versions.iterdir()) == sorted(seen[1:])
    assert not list(root.rglob(".*.tmp")), "no temp file or directory is left"


def test_bad_input_is_one_line_and_writes_nothing(venv: Path, tmp_path: Path):
    root = _root(tmp_path)
    bad = tmp_path / "bad.conflist"
    bad.write_text('{"name": "x"}')
    cases = [(["--conf", str(bad)], "not a CNI network config"),
             (["--conf", str(tmp_path / "missing.conf")], "No such file"),
             (["--python", "/usr/bin/python9"], "no such interpreter"),
             (["--prefix", "opt/moor"], "must be an absolute path"),
             (["--frobnicate"], "unrecognized arguments")]
    for args, msg in cases:
        p = _run(str(venv / "bin/moor"), "install", "--root", str(root), *args, env={}, check=False)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert not (root / "opt").exists() and not (root / "etc").exists(), args


def test_an_installed_moor_installs_itself(venv: Path, tmp_path: Path, net: MacvlanNet):
    """What the image's init container does: the image's /opt/moor (itself a `moor install`) installs
    the same version onto the node, dependencies included, from nothing but its own files."""
    image = _root(tmp_path / "image")
    _install(venv, image)
    name = os.readlink(image / "opt/moor/current").rsplit("/", 1)[1]
    os.rename(venv / "lib", venv / "lib.away")  # the image has no venv: only its /opt/moor
    try:
        node = _root(tmp_path / "node")
        conf = {"cniVersion": "1.0.0", "name": "inst", "type": "moor", "mode": "bgp",
                "stateDir": str(tmp_path / "state"),
                "ipam": {"type": "moor-ipam", "dataDir": str(tmp_path / "ipam"), "pools": [{"cidr": "203.0.113.0/24"}]}}
        (tmp_path / "10-inst.conf").write_text(json.dumps(conf))
        # the image's launcher, at its node path, with only the image's files
        p = _on_node(image, ["/opt/moor/bin/moor", "install", "--root", str(node), "--conf",
                             str(tmp_path / "10-inst.conf")], {})
        assert p.returncode == 0, p.stderr
        assert os.readlink(node / "opt/moor/current").rsplit("/", 1)[1] == name, "the same version, the same digest"
        assert (image / "opt/moor/versions" / name / "MANIFEST.json").read_text() == \
            (node / "opt/moor/versions" / name / "MANIFEST.json").read_text()
        _run_installed(node, conf, net)
    finally:
        os.rename(venv / "lib.away", venv / "lib")
