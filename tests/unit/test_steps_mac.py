"""The step/undo runner and MAC handling."""
from __future__ import annotations

import ipaddress

import pytest

from cni import mac
from cni.spec.errors import CNIError
from cni.steps import InjectedFailure, Steps


def test_undo_runs_in_reverse_and_survives_a_failing_undo():
    log: list[str] = []

    def bad_undo():
        raise OSError("boom")

    with pytest.raises(RuntimeError):
        with Steps() as s:
            s.run("a", lambda: log.append("a"), lambda: log.append("undo a"))
            s.run("b", lambda: log.append("b"), bad_undo)
            s.run("c", lambda: log.append("c"), lambda: log.append("undo c"))
            raise RuntimeError("step d failed")
    assert log == ["a", "b", "c", "undo c", "undo a"]
    assert s.undo_errors == ["undo b: boom"]


def test_failpoint_fails_after_the_named_step_and_undoes_it():
    log: list[str] = []
    with pytest.raises(InjectedFailure):
        with Steps(failpoint="b") as s:
            s.run("a", lambda: None, lambda: log.append("undo a"))
            s.run("b", lambda: None, lambda: log.append("undo b"))
            s.run("c", lambda: log.append("c"))
    assert log == ["undo b", "undo a"]


def test_mac_from_ip():
    assert mac.from_ip(ipaddress.ip_address("192.0.2.10")) == "0a:58:c0:00:02:0a"
    assert mac.from_ip(ipaddress.ip_address("2001:db8::1:2")) == "0a:59:00:01:00:02"


@pytest.mark.parametrize("bad", ["01:00:5e:00:00:01", "00:00:00:00:00:00", "zz:00:00:00:00:00", "02:00:00:00:00"])
def test_bad_macs(bad):
    with pytest.raises(CNIError):
        mac.parse(bad, "MAC", 7)
