"""VPC session pressure arithmetic (dataplane.probe.sessions.pressure): active sessions under an
aging window, per-netns counts, growth from history, long-lived 4-tuples that never age out."""
from __future__ import annotations

import ctypes
import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.probe.sessions import (_KEY, Flow, Pressure, SessionProbe, SessionStat, _addr, _Key, _l2_bits,
                                      _slope, _Val, pressure)

NOW = 1_700_000_000.0
AGING = 300.0


def stat(port: int, first_ago: float, last_ago: float, netns: int = 1, proto: int = 17) -> SessionStat:
    return SessionStat(Flow(netns, proto, "192.0.2.10", 40000 + port, "198.51.100.1", 53),
                       first_seen=NOW - first_ago, last_seen=NOW - last_ago)


def test_no_sessions():
    p = pressure([], NOW, AGING, 1000)
    assert (p.active, p.limit, p.by_netns, p.growth_per_min, p.long_lived, p.aging_s) == (0, 1000, {}, 0.0, [], AGING)
    assert p.utilization == 0.0 and p.minutes_to_limit is None


def test_active_means_last_seen_within_the_aging_window_inclusive():
    stats = [stat(1, 10, 0), stat(2, 400, AGING), stat(3, 400, AGING + 0.001), stat(4, 1000, 999)]
    p = pressure(stats, NOW, AGING, 100)
    assert p.active == 2
    assert p.by_netns == {1: 2}


def test_a_last_seen_in_the_future_counts_as_active():
    # a wall-clock step back between the kernel's reading and ours must not hide sessions
    p = pressure([stat(1, 5, -3)], NOW, AGING, 10)
    assert p.active == 1


def test_by_netns_counts_only_active_sessions_per_pod():
    stats = [stat(1, 1, 1, netns=7), stat(2, 1, 1, netns=7), stat(3, 1, 1, netns=9),
             stat(4, 9999, 9000, netns=11)]  # aged out: its pod is not listed at all
    p = pressure(stats, NOW, AGING, 0)
    assert p.by_netns == {7: 2, 9: 1}
    assert sum(p.by_netns.values()) == p.active == 3


def test_long_lived_are_active_and_refreshed_for_more_than_two_windows_oldest_first():
    never_aged = stat(1, 3 * AGING, 2)           # the stale-path 4-tuple of the loss case
    older = stat(2, 50 * AGING, 1, netns=5)
    exactly = stat(3, 2 * AGING, 0)               # at the threshold: included
    young = stat(4, 2 * AGING - 1, 0)
    idle_old = stat(5, 10 * AGING, AGING + 1)     # old but aged out: the VPC forgot it already
    p = pressure([young, never_aged, idle_old, exactly, older], NOW, AGING, 100)
    assert p.long_lived == [older, never_aged, exactly]
    assert p.long_lived_after_s == 2 * AGING


def test_long_lived_threshold_can_be_set():
    s = stat(1, 100, 1)
    assert pressure([s], NOW, AGING, 10, long_lived_after_s=100).long_lived == [s]
    assert pressure([s], NOW, AGING, 10, long_lived_after_s=101).long_lived == []
    assert pressure([s], NOW, AGING, 10, long_lived_after_s=0).long_lived == [s]


def test_growth_is_the_slope_per_minute_including_the_current_sample():
    history = [(NOW - 180, 100), (NOW - 120, 200), (NOW - 60, 300)]
    stats = [stat(i, 1, 1) for i in range(400)]
    p = pressure(stats, NOW, AGING, 10_000, history)
    assert p.active == 400
    assert p.growth_per_min == pytest.approx(100.0)
    assert p.minutes_to_limit == pytest.approx((10_000 - 400) / 100.0)


def test_growth_from_noisy_history_is_least_squares():
    history = [(NOW - 240, 0), (NOW - 180, 70), (NOW - 120, 110), (NOW - 60, 190)]
    p = pressure([stat(i, 1, 1) for i in range(240)], NOW, AGING, 0, history)
    ts = [-240, -180, -120, -60, 0]
    ys = [0, 70, 110, 190, 240]
    mt, my = sum(ts) / 5, sum(ys) / 5
    expect = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / sum((t - mt) ** 2 for t in ts) * 60
    assert p.growth_per_min == pytest.approx(expect)


def test_shrinking_sessions_have_negative_growth_and_no_time_to_limit():
    history = [(NOW - 60, 50)]
    p = pressure([stat(1, 1, 1)], NOW, AGING, 100, history)
    assert p.growth_per_min == pytest.approx(-49.0)
    assert p.minutes_to_limit is None


def test_growth_needs_two_distinct_times():
    assert pressure([stat(1, 1, 1)], NOW, AGING, 10, []).growth_per_min == 0.0
    assert pressure([stat(1, 1, 1)], NOW, AGING, 10, None).growth_per_min == 0.0
    # a history sample at exactly now replaces the current one: still a single time
    assert pressure([stat(1, 1, 1)], NOW, AGING, 10, [(NOW, 5)]).growth_per_min == 0.0


def test_history_after_now_and_non_finite_times_are_ignored():
    history = [(NOW - 60, 0), (NOW + 60, 10_000), (math.nan, 5), (math.inf, 5)]
    p = pressure([stat(i, 1, 1) for i in range(60)], NOW, AGING, 0, history)
    assert p.growth_per_min == pytest.approx(60.0)


def test_history_order_does_not_matter():
    h = [(NOW - 60, 30), (NOW - 180, 10), (NOW - 120, 20)]
    a = pressure([stat(i, 1, 1) for i in range(40)], NOW, AGING, 0, h)
    b = pressure([stat(i, 1, 1) for i in range(40)], NOW, AGING, 0, sorted(h))
    assert a.growth_per_min == pytest.approx(b.growth_per_min) == pytest.approx(10.0)


def test_limit_reached_or_exceeded():
    stats = [stat(i, 1, 1) for i in range(12)]
    p = pressure(stats, NOW, AGING, 10)
    assert p.utilization == pytest.approx(1.2)
    assert p.minutes_to_limit == 0.0


def test_no_limit_configured():
    p = pressure([stat(1, 1, 1)], NOW, AGING, 0, [(NOW - 60, 0)])
    assert p.utilization is None and p.minutes_to_limit is None
    assert p.growth_per_min == pytest.approx(1.0)


def test_inputs_are_not_modified():
    stats = [stat(2, 1, 1), stat(1, 900, 1)]
    history = [(NOW - 60, 1)]
    before = (list(stats), list(history))
    pressure(stats, NOW, AGING, 5, history)
    assert (stats, history) == before


@pytest.mark.parametrize("aging", [0, -1, math.nan, math.inf, "300"])
def test_bad_aging_window(aging):
    with pytest.raises(ValueError):
        pressure([], NOW, aging, 10)


@pytest.mark.parametrize("limit", [-1, 1.5, True, "10"])
def test_bad_limit(limit):
    with pytest.raises(ValueError):
        pressure([], NOW, AGING, limit)


def test_bad_now_and_threshold():
    with pytest.raises(ValueError):
        pressure([], math.nan, AGING, 1)
    with pytest.raises(ValueError):
        pressure([], NOW, AGING, 1, long_lived_after_s=-1)


def test_pressure_is_a_plain_dataclass():
    p = pressure([stat(1, 1, 1, netns=3)], NOW, AGING, 4)
    assert isinstance(p, Pressure)
    assert p == Pressure(active=1, limit=4, by_netns={3: 1}, growth_per_min=0.0, long_lived=[], aging_s=AGING,
                         long_lived_after_s=2 * AGING)


def test_flows_are_hashable_values():
    a = Flow(1, 17, "192.0.2.1", 1000, "198.51.100.2", 53)
    assert a == Flow(1, 17, "192.0.2.1", 1000, "198.51.100.2", 53)
    assert len({a, Flow(1, 17, "192.0.2.1", 1000, "198.51.100.2", 53), Flow(2, 17, "192.0.2.1", 1000,
                                                                             "198.51.100.2", 53)}) == 2
    with pytest.raises(Exception):
        a.sport = 1  # frozen


stat_st = st.builds(
    lambda port, first_ago, idle, netns: stat(port, first_ago + idle, idle, netns),
    st.integers(0, 20000), st.floats(0, 1e5), st.floats(-10, 2e4), st.integers(1, 4))


@settings(max_examples=300, deadline=None)
@given(st.lists(stat_st, max_size=60), st.floats(1, 5000), st.integers(0, 100))
def test_invariants(stats, aging, limit):
    p = pressure(stats, NOW, aging, limit)
    active = [s for s in stats if NOW - s.last_seen <= aging]
    assert p.active == len(active) == sum(p.by_netns.values())
    assert all(v > 0 for v in p.by_netns.values())
    assert all(any(s is a for a in active) for s in p.long_lived)
    assert all(NOW - s.first_seen >= 2 * aging for s in p.long_lived)
    assert [s.first_seen for s in p.long_lived] == sorted(s.first_seen for s in p.long_lived)
    assert p.growth_per_min == 0.0


@settings(max_examples=200, deadline=None)
@given(st.floats(-1000, 1000), st.integers(0, 10**6), st.lists(st.integers(1, 3600), min_size=1, max_size=10,
                                                                 unique=True))
def test_slope_of_a_line_is_exact(rate, start, offsets):
    pts = sorted((NOW - o, start + rate * (-o)) for o in offsets) + [(NOW, float(start))]
    assert _slope(pts) == pytest.approx(rate, rel=1e-6, abs=1e-6)


def test_kernel_key_and_value_layout_match_the_bpf_structs():
    # struct skey / struct sval in sessions.bpf.c: u64, u32[4] x2, u16 x2, u8 x2, u16 pad; u64 x3
    assert ctypes.sizeof(_Key) == 48 and ctypes.sizeof(_Val) == 24
    assert [_Val.__dict__[n].offset for n in ("first", "last", "last_rx")] == [0, 8, 16]
    assert [(_Key.__dict__[n].offset) for n in ("netns", "laddr", "raddr", "lport", "rport", "proto", "family")] \
        == [0, 8, 24, 40, 42, 44, 45]


def test_keys_are_decoded_from_the_kernel_layout():
    k = _Key(netns=77, lport=40000, rport=53, proto=17, family=4)
    k.laddr[0] = int.from_bytes(bytes([192, 0, 2, 7]), "little")     # network order in memory
    k.raddr[0] = int.from_bytes(bytes([198, 51, 100, 1]), "little")
    netns, laddr, raddr, lport, rport, proto, fam, _ = _KEY.unpack(bytes(k))
    assert (netns, _addr(fam, laddr), lport, _addr(fam, raddr), rport, proto) == \
        (77, "192.0.2.7", 40000, "198.51.100.1", 53, 17)
    assert _KEY.size == ctypes.sizeof(_Key)
    assert _addr(6, bytes.fromhex("20010db8000000000000000000000001")) == "2001:db8::1"


def test_per_cpu_cache_size_keeps_to_the_node_budget():
    assert _l2_bits(1) == _l2_bits(2) == _l2_bits(64) == 10
    assert _l2_bits(128) == 10 and _l2_bits(256) == 9 and _l2_bits(100_000) == 6
    for n in (1, 2, 64, 128, 256, 1024):
        assert (1 << _l2_bits(n)) * 128 * n <= 16 << 20 or _l2_bits(n) == 6   # 2 x struct l2ent (64 B)


def _raw_key(lport: int, rport: int) -> bytes:
    k = _Key(netns=5, lport=lport, rport=rport, proto=17, family=4)
    k.laddr[0] = int.from_bytes(bytes([192, 0, 2, 1]), "little")
    k.raddr[0] = int.from_bytes(bytes([192, 0, 2, 2]), "little")
    return bytes(k)


@pytest.mark.parametrize("ingress", [True, False])
def test_snapshot_converts_last_rx_and_keeps_none_for_never_received(ingress):
    """snapshot() on the kernel's values (CLOCK_MONOTONIC ns; last_rx 0 = nothing received): last_rx
    in unix seconds like last_seen, None when nothing was received or when received packets are not
    counted (ingress=False); last_seen is never before last_rx."""
    probe = SessionProbe(ingress=ingress, retention_s=100)
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    s = 1_000_000_000
    rows = [(_raw_key(1000, 53), mono - 50 * s, mono - 1 * s, mono - 30 * s),   # answered 30 s ago
            (_raw_key(1001, 53), mono - 50 * s, mono - 2 * s, 0),               # never answered
            (_raw_key(1002, 53), mono - 50 * s, mono - 3 * s, mono - 2 * s),    # rx written after last
            (_raw_key(1003, 53), mono - 500 * s, mono - 200 * s, mono - 200 * s)]   # past retention
    probe._entries = lambda: rows
    deleted = []
    probe._delete = deleted.extend
    wall = time.time()
    got = {x.flow.sport: x for x in probe.snapshot()}
    assert sorted(got) == [1000, 1001, 1002] and deleted == [rows[3][0]]
    assert got[1000].last_seen == pytest.approx(wall - 1, abs=0.5)
    if ingress:
        assert got[1000].last_rx == pytest.approx(wall - 30, abs=0.5)
        assert got[1000].last_seen - got[1000].last_rx == pytest.approx(29, abs=1e-6)
        assert got[1002].last_rx == got[1002].last_seen == pytest.approx(wall - 2, abs=0.5)
    else:
        assert got[1000].last_rx is None and got[1002].last_rx is None
    assert got[1001].last_rx is None
    assert SessionStat(Flow(1, 17, "192.0.2.1", 1, "192.0.2.2", 2), 0.0, 0.0).last_rx is None   # the default
