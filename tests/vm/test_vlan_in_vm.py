"""What this machine's kernel cannot run, run in a VM: Debian's cloud kernel (8021q as a module)
under QEMU, booted by lab/vm.py with the host's root file system shared read-only.

The VLAN-trunk tests (tests/integration/test_vlan.py) skip on a kernel without 8021q; here they
run inside the guest with the venv's python from the shared root, and must PASS there, not skip.
The first test checks the runner itself: the host's files stay read-only, the guest's writes go
to its overlay, the exit code and both output streams come back, modprobe failures are reported.
Both skip with the exact reason where the VM cannot run (tests/conftest.py, marker `vm`)."""
from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from lab import vm
from tests.helpers import REPO
from tests.vm.guest import TIMINGS, explain, pytest_in_vm

pytestmark = pytest.mark.vm

VLAN_TESTS = "tests/integration/test_vlan.py"
NO_8021Q_TEST = "test_vlan_add_fails_cleanly_without_8021q"
SHARING_TEST = "test_pods_share_the_vlan_parent_and_the_last_one_removes_it"
def test_the_guest_reports_back_and_cannot_write_the_host(tmp_path: Path):
    probe = Path("/etc") / f".moor-vm-probe-{secrets.token_hex(4)}"  # on the root file system
    script = f"""
        set -u
        echo to-stdout; echo to-stderr >&2
        echo guest > {probe} && cat {probe}                     # the overlay takes the write
        mkdir /mnt/host && mount -t virtiofs root /mnt/host && mount -o remount,rw /mnt/host 2>/dev/null
        echo guest > /mnt/host{probe} && echo WROTE-THE-HOST     # straight to the share: must fail
        ls -A /var/lib/moor | wc -l                             # fresh, whatever the host has there
        lsmod | grep -q '^8021q ' && echo 8021q-loaded
        echo file > "$MOOR_VM_OUT/from-guest"
        exit 7
    """
    r = vm.run(["/bin/sh", "-c", script], cwd=str(REPO), modules=("8021q", "moor_no_such_module"),
               workdir=tmp_path / "vm")
    TIMINGS.append(f"runner check: boot {r.boot_seconds:.1f} s, total {r.total_seconds:.1f} s ({r.accel})")
    assert r.returncode == 7, explain(r)
    assert r.stdout.split() == ["to-stdout", "guest", "0", "8021q-loaded"], explain(r)
    assert "to-stderr" in r.stderr and "Read-only file system" in r.stderr, explain(r)
    assert not probe.exists(), "the guest wrote a file on the host's root file system"
    assert (r.out / "from-guest").read_text() == "file\n"
    assert r.modules["8021q"] == "ok" and "moor_no_such_module" in r.modules["moor_no_such_module"], r.modules
    assert list(r.modules) == ["8021q", "moor_no_such_module"], r.modules
    assert r.kernel.endswith("-cloud-amd64")


def test_vlan_tests_pass_in_a_vm_with_8021q(tmp_path: Path):
    r, outcome = pytest_in_vm("VLAN tests", tmp_path, [VLAN_TESTS], modules=("8021q",))
    assert r.modules.get("8021q") == "ok", f"modprobe 8021q failed in the guest: {r.modules}"
    assert r.returncode == 0, explain(r)
    assert outcome is not None, explain(r)

    # with 8021q every VLAN test runs and passes, and the no-8021q error path is the one that skips
    assert outcome.get(SHARING_TEST, ("missing",))[0] == "passed", outcome
    assert outcome.pop(NO_8021Q_TEST, ("missing", ""))[0] == "skipped", outcome
    assert len(outcome) >= 2 and all(o == "passed" for o, _ in outcome.values()), outcome
