from __future__ import annotations


import pytest

from dataplane.nslab import require_root
from tests.helpers import have_reference_plugins


def pytest_collection_modifyitems(config, items):
    why_not_root = require_root()
    why_no_vm = None
    if any(item.get_closest_marker("vm") for item in items):
        from lab.vm import why_not  # the VM runner (qemu, virtiofsd, Debian's cloud kernel)
        why_no_vm = why_not()
    for item in items:
        if why_no_vm and item.get_closest_marker("vm"):
            item.add_marker(pytest.mark.skip(reason=f"cannot boot the test VM: {why_no_vm}"))
        if why_not_root and any(item.get_closest_marker(m) for m in ("integration", "interop", "ebpf", "e2e")):
            item.add_marker(pytest.mark.skip(reason=why_not_root))
        elif item.get_closest_marker("integration") and not have_reference_plugins():
            item.add_marker(pytest.mark.skip(reason="containernetworking-plugins not installed in /usr/lib/cni "
                                                    "(scripts/setup.sh installs them)"))
