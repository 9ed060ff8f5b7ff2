"""The README's demo command runs green."""
from __future__ import annotations

import pytest

from dataplane.lab import main

pytestmark = pytest.mark.integration


def test_demo_passes(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "[FAIL]" not in out
