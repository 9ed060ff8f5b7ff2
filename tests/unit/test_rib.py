"""Best-path choice, ECMP and the graceful-restart stale handling of the adj-RIB-in."""
from __future__ import annotations

import ipaddress

from bgp.rib import Path, Rank, RibIn

P = ipaddress.ip_network("203.0.113.7/32")
Q = ipaddress.ip_network("2001:db8:7::7/128")


def rib():
    events = []
    return RibIn(lambda p, hops: events.append((str(p), hops))), events


def test_equal_paths_from_two_peers_are_ecmp_and_a_better_one_wins_alone():
    r, ev = rib()
    r.update("a", [(P, Path("a", "192.0.2.1", Rank(as_path_len=1)))], [])
    r.update("b", [(P, Path("b", "192.0.2.9", Rank(as_path_len=1)))], [])
    assert ev[-1] == (str(P), ("192.0.2.1", "192.0.2.9"))
    r.update("b", [(P, Path("b", "192.0.2.9", Rank(as_path_len=0)))], [])  # shorter AS path
    assert ev[-1] == (str(P), ("192.0.2.9",))
    r.update("b", [], [P])
    assert ev[-1] == (str(P), ("192.0.2.1",))
    r.update("a", [], [P])
    assert ev[-1] == (str(P), ()) and not r.paths and not r.best


def test_no_event_when_the_best_set_does_not_change():
    r, ev = rib()
    r.update("a", [(P, Path("a", "192.0.2.1"))], [])
    r.update("b", [(P, Path("b", "192.0.2.9", Rank(as_path_len=5)))], [])  # worse: not used
    r.update("b", [], [P])
    assert ev == [(str(P), ("192.0.2.1",))]


def test_graceful_restart_keeps_stale_paths_until_refreshed_or_swept():
    r, ev = rib()
    other = ipaddress.ip_network("203.0.113.8/32")
    r.update("a", [(P, Path("a", "192.0.2.1")), (other, Path("a", "192.0.2.1")), (Q, Path("a", "2001:db8::1"))], [])
    assert r.peer_down("a", keep=True) == 3
    assert r.best[P] == ("192.0.2.1",)  # still forwarding on the stale path
    r.update("a", [(P, Path("a", "192.0.2.1"))], [])  # refreshed after the restart
    assert r.sweep("a", version=4) == 1  # End-of-RIB for IPv4: only the unrefreshed IPv4 one goes
    assert other not in r.best and P in r.best and Q in r.best
    assert r.sweep("a") == 1 and Q not in r.best and "a" not in r.stale


def test_peer_down_without_graceful_restart_drops_everything_at_once():
    r, ev = rib()
    r.update("a", [(P, Path("a", "192.0.2.1"))], [])
    r.update("b", [(P, Path("b", "192.0.2.9"))], [])
    r.peer_down("a", keep=False)
    assert r.best[P] == ("192.0.2.9",) and ev[-1] == (str(P), ("192.0.2.9",))


def test_med_is_compared_only_within_one_neighbouring_as():
    r, ev = rib()
    r.update("a", [(P, Path("a", "192.0.2.1", Rank(as_path_len=1, med=50, neighbor_as=65000)))], [])
    r.update("b", [(P, Path("b", "192.0.2.9", Rank(as_path_len=1, med=10, neighbor_as=65009)))], [])
    assert r.best[P] == ("192.0.2.1", "192.0.2.9")  # two ToRs in different ASes: still ECMP
    r.update("c", [(P, Path("c", "192.0.2.5", Rank(as_path_len=1, med=10, neighbor_as=65000)))], [])
    assert r.best[P] == ("192.0.2.5", "192.0.2.9")  # lower MED beats a's path from the same AS
    r.update("d", [(P, Path("d", "192.0.2.7", Rank(as_path_len=1, ibgp=True, neighbor_as=65001)))], [])
    assert "192.0.2.7" not in r.best[P]  # eBGP over iBGP


def test_graceful_restart_keeps_only_the_families_the_peer_keeps_forwarding():
    r, ev = rib()
    r.update("a", [(P, Path("a", "192.0.2.1")), (Q, Path("a", "2001:db8::1"))], [])
    assert r.peer_down("a", {4}) == 1
    assert P in r.best and Q not in r.best
    r.update("a", [(Q, Path("a", "2001:db8::1"))], [])
    assert r.peer_down("a", set()) == 0  # a capability without families (BIRD's "aware"): keep nothing
    assert not r.best and "a" not in r.stale
