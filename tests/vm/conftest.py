from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    from tests.vm.guest import TIMINGS
    if TIMINGS:
        terminalreporter.section("moor VM")
        for line in TIMINGS:
            terminalreporter.line(line)
