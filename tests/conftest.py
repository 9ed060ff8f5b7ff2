from __future__ import annotations


import pytest

from dataplane.nslab import require_root
from tests.helpers import have_reference_plugins


def pytest_collection_modifyitems(config, items):
    why_not_root = require_root()
    for item in items:
        if why_not_root and any(item.get_closest_marker(m) for m in ("integration", "interop", "ebpf", "e2e")):
            item.add_marker(pytest.mark.skip(reason=why_not_root))
        elif item.get_closest_marker("integration") and not have_reference_plugins():
            item.add_marker(pytest.mark.skip(reason="containernetworking-plugins not installed in /usr/lib/cni "
                                                    "(scripts/setup.sh installs them)"))
