"""Every loss case of the lab (`python -m lab CASE`), each a test: fresh namespaces, a busy
background (UDP to a closed port elsewhere, namespaces and links churning), moord with its eBPF
probe, the loss measured by the lab's own sender and receiver, `netdiag doctor` through the agent
and through the kernel, the doctor's remedy applied, the loss measured again.

Asserted: the loss before the remedy is above the case's threshold, the doctor's first finding
(through the probe, --netns the case's namespaces) names the case's cause about the case's
namespaces, and the loss after the remedy is below the case's threshold. The cases print what they
see (captured; pytest shows it on failure, `-s` shows it always). Waits in the lab are hang guards,
never timing assertions."""
from __future__ import annotations

import json

import pytest

from lab.cases import CASES, run
from lab.loss import probe_prerequisites, tool_missing

pytestmark = pytest.mark.ebpf


def run_case(name: str, tmp_path, **overrides):
    why = probe_prerequisites() or tool_missing(*CASES[name].tools)
    if why:
        pytest.skip(why)
    r = run(name, tmp_path, **overrides)
    if r.skipped:
        pytest.skip(r.skipped)
    assert not r.error, r.error
    return r


def doctor_says(r, source: str = "agent") -> str:
    doc = r.extra.get("doctor", {}).get(source, {})
    if "error" in doc:
        return doc["error"]
    return json.dumps([{k: f.get(k) for k in ("rank", "cause", "title", "where", "severity", "volume", "elsewhere")}
                       for f in (doc.get("findings") or [])[:4]], indent=1, ensure_ascii=False)


def assert_case(r, cls) -> None:
    assert r.loss_before is not None and r.loss_before >= cls.min_before, \
        f"loss before the remedy {r.loss_before} (want >= {cls.min_before})"
    assert r.named_first, f"the doctor's first finding is not {cls.cause} about {r.namespaces}:\n{doctor_says(r)}"
    assert r.loss_after is not None and r.loss_after <= cls.max_after, \
        f"loss after the remedy ({r.remedy}) {r.loss_after} (want <= {cls.max_after})"
    assert not r.failed, [c.text for c in r.failed]


@pytest.mark.parametrize("name", ["fragment-gateway", "rcvbuf", "host-queue", "session-limit", "no-listener"])
def test_case(name, tmp_path):
    cls = CASES[name]
    r = run_case(name, tmp_path)
    assert_case(r, cls)
    if cls.kernel_sees:  # the kernel's counters alone see these causes too
        assert r.first_cause("kernel") == cls.cause, doctor_says(r, "kernel")


def test_fragment_gateway_other_pattern_and_fragment(tmp_path):
    """The pattern, the fragment that carries it and the size are the case's options."""
    r = run_case("fragment-gateway", tmp_path, pattern="0x1234", fragment=3, size=3500)
    assert_case(r, CASES["fragment-gateway"])
    f = r.first["agent"]
    assert "1234" in " ".join([f["title"], *f["evidence"]]).lower(), doctor_says(r)


def test_rcvbuf_and_session_limit_with_other_sizes(tmp_path):
    """A buffer and a session limit the defaults do not use: the remedy the doctor prints follows them."""
    r = run_case("rcvbuf", tmp_path, rcvbuf=4096, burst=32)
    assert_case(r, CASES["rcvbuf"])
    assert "from 8192 to" in r.first["agent"]["remedy"][0], doctor_says(r)  # 4096 doubled: sk_rcvbuf
    (tmp_path / "limit").mkdir()
    r = run_case("session-limit", tmp_path / "limit", limit=60, flows=120)
    assert_case(r, CASES["session-limit"])
    assert any("limit 60" in e for e in r.first["agent"]["evidence"]), doctor_says(r)


@pytest.fixture(scope="module")
def stale(tmp_path_factory):
    return run_case("stale-session", tmp_path_factory.mktemp("stale"))


def test_stale_session_pins_the_old_4tuple_until_its_port_changes(stale):
    """On the wire: the delete-then-add change pins the long-lived 4-tuple to the NAT path (no
    answer at all) while newer flows are answered; a new source port heals it; the same change
    done with `ip route replace` loses nothing and pins nothing."""
    cls = CASES["stale-session"]
    assert stale.loss_before >= cls.min_before, stale.loss_before
    assert stale.extra["new_flows_loss"] <= 0.02
    assert stale.loss_after <= cls.max_after, stale.loss_after
    assert stale.extra["replace_loss"] <= 0.01
    assert not stale.failed, [c.text for c in stale.failed]


def test_stale_session_named_by_the_doctor(stale):
    """The doctor ranks the old 4-tuple's stale session first, about the case's namespaces: it gets
    no replies while newer flows to the same peer do."""
    assert stale.named_first, doctor_says(stale)