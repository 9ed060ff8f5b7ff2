"""vagrant/: the Vagrantfile passes `vagrant validate` (Debian 12's vagrant with its libvirt
provider, a private VAGRANT_HOME, no network), and provision.sh is valid bash that runs the lab's
entry point and the VLAN tests under the names they have in the tree. `vagrant up` itself needs a
hypervisor these machines lack; the VLAN tests run in a QEMU VM instead (test_vlan_in_vm.py)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

VAGRANT_DIR = REPO / "vagrant"


def _vagrant_env(tmp: Path) -> dict:
    """Everything vagrant writes goes to tmp: its home and the project's .vagrant directory."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(VAGRANT_HOME=str(tmp / "vagrant.d"), VAGRANT_DOTFILE_PATH=str(tmp / "dot-vagrant"),
               VAGRANT_CWD=str(VAGRANT_DIR), VAGRANT_DEFAULT_PROVIDER="libvirt",
               VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_BOX_UPDATE_CHECK_DISABLE="1", VAGRANT_NO_COLOR="1")
    return env


def _offline(cmd: list[str]) -> list[str]:
    """As root, in a fresh network namespace: nothing but a loopback that is down."""
    return ["unshare", "--net", *cmd] if os.geteuid() == 0 and shutil.which("unshare") else cmd


def test_vagrantfile_validates(tmp_path: Path):
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (Debian 12 package vagrant; scripts/setup.sh installs it)")
    env = _vagrant_env(tmp_path)
    plugins = subprocess.run(_offline(["vagrant", "plugin", "list"]), env=env, capture_output=True, text=True,
                             timeout=300)
    if "vagrant-libvirt" not in plugins.stdout:
        pytest.skip("vagrant's libvirt provider is not installed (Debian 12 package vagrant-libvirt; "
                    f"scripts/setup.sh installs it): {plugins.stdout.strip() or plugins.stderr.strip()}")
    r = subprocess.run(_offline(["vagrant", "validate"]), env=env, cwd=VAGRANT_DIR, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "validated successfully" in r.stdout, (r.stdout, r.stderr)
    assert not list((tmp_path / "dot-vagrant").glob("machines/*/*/id")), "validate created a machine"
    assert not (VAGRANT_DIR / ".vagrant").exists(), "vagrant wrote into the tree"


def test_provision_script_runs_the_lab_and_the_vlan_tests():
    script = VAGRANT_DIR / "provision.sh"
    assert 'path: "provision.sh"' in (VAGRANT_DIR / "Vagrantfile").read_text()
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    assert "modprobe 8021q" in text
    assert re.search(r"^\./run demo\b", text, re.M), "provision.sh no longer runs the lab (./run demo)"
    assert re.search(r"^\s*demo\)[^\n]*python -m lab\b", (REPO / "run").read_text(), re.M), \
        "./run demo no longer runs the lab's entry point (python -m lab ...)"
    tests = re.findall(r"\./run test (\S+)", text)
    assert tests and all((REPO / t).is_file() for t in tests), tests
    vlan_tests = (REPO / "tests/integration/test_vlan.py").read_text()
    for name in set(re.findall(r"(?<![/\w])(test_[a-z0-9_]+)\b(?!\.py)", text)):
        assert f"def {name}(" in vlan_tests, f"provision.sh names {name}, which test_vlan.py no longer has"
