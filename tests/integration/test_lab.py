"""The README's demo command runs green: the macvlan demo, then the routed/BGP and the UDP loss
lab scenarios. Only the exit status and the key lines of the output are asserted; the scenarios
check the details themselves (and print what failed)."""
from __future__ import annotations

import pytest

from lab.demo import main

pytestmark = pytest.mark.integration


def test_demo_passes(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "[FAIL]" not in out
    assert "demo: macvlan ok, bgp ok, loss ok" in out
    assert "received during the agent restart (0 missing)" in out
    for cause in ("[receive buffer too small]", "[no listener]", "[host backlog or queue too small]"):
        assert f"#1 {cause}" in out
