"""The README's demo command runs green: `python -m lab demo` (what `./run demo` runs), here on a
subset that keeps the suite short: the macvlan and routed/BGP scenarios and one loss case (every
loss case is a test of its own in tests/lab/). Only the exit status and the key lines of the output
are asserted; the scenarios check the details themselves (and print what failed)."""
from __future__ import annotations

import pytest

from lab.demo import main
from lab.loss import probe_prerequisites

pytestmark = pytest.mark.integration


def test_demo_passes(capsys):
    why = probe_prerequisites()
    if why:
        pytest.skip(f"the demo's loss cases need moord's eBPF probe: {why}")
    code = main(["demo", "--only", "macvlan,bgp,rcvbuf"])
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    assert "all checks passed" in out and "[FAIL]" not in out
    assert "demo: macvlan ok, bgp ok, rcvbuf ok" in out
    assert "received during the agent restart (0 missing)" in out
    assert "#1 [receive buffer too small]" in out
    assert "[ok] loss after the remedy" in out


def test_lab_lists_every_case(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for case in ("fragment-gateway", "stale-session", "rcvbuf", "host-queue", "session-limit", "no-listener"):
        assert f"  {case} " in out
