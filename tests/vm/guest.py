"""What the VM tests share: pytest run inside the guest with its junit file brought back, the
outcome per test, the timings printed in the terminal summary (conftest.py)."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Sequence

from lab import vm
from tests.helpers import REPO

TIMINGS: list[str] = []  # printed in the terminal summary (tests/vm/conftest.py)


def explain(r: vm.VMResult) -> str:
    return (f"exit {r.returncode}, modules {r.modules}\n--- stdout\n{r.stdout[-6000:]}\n--- stderr\n"
            f"{r.stderr[-3000:]}\n--- console\n{r.console[-3000:]}")


def pytest_in_vm(label: str, tmp_path: Path, args: Sequence[str], modules: Sequence[str]
                 ) -> tuple[vm.VMResult, Optional[dict[str, tuple[str, str]]]]:
    """pytest `args` in the guest; its result and, when the junit file came back, each test's
    outcome ("passed", "failure", "error" or "skipped") and skip message."""
    junit = f"{vm.GUEST_OUT}/junit.xml"
    r = vm.run([sys.executable, "-m", "pytest", *args, "-v", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}"],
               cwd=str(REPO), modules=modules, timeout=600, workdir=tmp_path / "vm")
    if not (r.out / "junit.xml").exists():
        return r, None
    suite = ET.parse(r.out / "junit.xml").getroot().find("testsuite")
    if suite is None:
        return r, None
    TIMINGS.append(f"{label} in the VM: boot {r.boot_seconds:.1f} s, pytest {float(suite.get('time')):.1f} s "
                   f"(command {r.command_seconds:.1f} s), total {r.total_seconds:.1f} s ({r.accel}, {r.kernel})")
    outcome = {}
    for case in suite.iter("testcase"):
        kinds = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        outcome[case.get("name")] = (kinds[0] if kinds else "passed",
                                     case.find("skipped").get("message", "") if "skipped" in kinds else "")
    return r, outcome
