"""netkit pods (routed mode, "device": "auto" | "netkit"), run where netkit exists: this machine's
kernel has no CONFIG_NETKIT, Debian's 6.12 cloud kernel has it built in (scripts/setup.sh installs
it beside the 6.1 one; lab/vm.py boots the newest). The netkit tests of tests/integration/
test_routed.py skip without netkit; here they must PASS, and the no-netkit error path must be the
one that skips."""
from __future__ import annotations

from pathlib import Path

import pytest

from lab import vm
from tests.vm.guest import explain, pytest_in_vm

pytestmark = pytest.mark.vm

ROUTED_TESTS = "tests/integration/test_routed.py"
MUST_PASS = ("test_netkit_pods_reach_each_other", "test_netkit_pod_auto_check_del_and_readd_keep_the_ip")
NO_NETKIT_TEST = "test_device_netkit_without_netkit_fails_naming_the_field_and_undoes_everything"


def _netkit_kernel() -> str | None:
    """Why the guest's kernel cannot run netkit pods, or None when it can."""
    k = vm.find_cloud_kernel()
    if k is None:
        return None  # the VM marker skips with the runner's own reason
    config = Path("/boot") / f"config-{k.version}"
    try:
        text = config.read_text()
    except OSError as e:
        return f"cannot read {config}: {e.strerror}"
    if "CONFIG_NETKIT=y" not in text:
        return (f"the guest kernel {k.version} has no CONFIG_NETKIT (Debian package linux-image-6.12-cloud-amd64 "
                "has it; scripts/setup.sh installs it)")
    return None


def test_netkit_tests_pass_in_a_vm_with_netkit(tmp_path: Path):
    why = _netkit_kernel()
    if why:
        pytest.skip(why)
    r, outcome = pytest_in_vm("netkit tests", tmp_path, [ROUTED_TESTS, "-k", "netkit"], modules=())
    assert r.returncode == 0, explain(r)
    assert outcome is not None, explain(r)
    assert all(outcome.get(name, ("missing",))[0] == "passed" for name in MUST_PASS), outcome
    assert outcome.get(NO_NETKIT_TEST, ("missing",))[0] == "skipped", outcome
