"""Two of moor's speakers talking over loopback (127.0.0.0/8, one address each): connection
collisions (RFC 4271 6.8) and graceful restart as seen by the helper (RFC 4724 4.2). Everything
runs in one event loop; waits are bounded guards, never timing assertions."""
from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from bgp import capability as cap
from bgp.session import ESTABLISHED, LocalConfig, PeerConfig
from bgp.speaker import Speaker

A, B = "127.0.0.2", "127.0.0.3"
HOP = "192.0.2.2"  # an explicit next hop: loopback next hops are rightly refused (RFC 7606)
P = ipaddress.ip_network("203.0.113.7/32")
P2 = ipaddress.ip_network("203.0.113.8/32")


def free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


async def until(pred, what: str, timeout: float = 20.0):
    async def poll():
        while not pred():
            await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"gave up waiting for {what}") from None


def pair(a_rid="192.0.2.1", b_rid="192.0.2.2", gr=False, a_passive=False, b_passive=False, **b_local):
    pa, pb = free_port(A), free_port(B)
    la = LocalConfig(asn=65001, router_id=a_rid, hold_time=9, connect_retry_s=0.2)
    lb = LocalConfig(asn=65002, router_id=b_rid, hold_time=9, connect_retry_s=0.2, **b_local)
    a = Speaker(la, [PeerConfig(B, 65002, port=pb, passive=a_passive, graceful_restart=gr)], A, pa)
    b = Speaker(lb, [PeerConfig(A, 65001, port=pa, passive=b_passive, graceful_restart=gr)], B, pb)
    return a, b, pa, pb


@pytest.mark.parametrize("a_rid,b_rid", [("192.0.2.1", "192.0.2.2"), ("192.0.2.9", "192.0.2.2")])
def test_both_sides_active_end_with_one_session(a_rid, b_rid):
    async def main():
        a, b, _, _ = pair(a_rid, b_rid)
        b.announce(P, HOP)
        await a.start()
        await b.start()
        try:
            await until(lambda: a.sessions[B].state == ESTABLISHED and b.sessions[A].state == ESTABLISHED,
                        "both Established")
            await until(lambda: P in a.rib_in.best, "the route over the surviving connection")
            # both ends use the same TCP connection: the ports cross over
            wa, wb = a.sessions[B].writer, b.sessions[A].writer
            assert wa.get_extra_info("sockname") == wb.get_extra_info("peername")
            await asyncio.sleep(1)  # a few connect-retry periods: it stays one stable session
            assert a.sessions[B].writer is wa and a.sessions[B].state == ESTABLISHED
        finally:
            await a.stop()
            await b.stop()
    asyncio.run(main())


def restarted_b(pa: int, pb: int, forwarding: bool) -> Speaker:
    """b after a restart: R set, F as given, passive on its old address and port."""
    lb = LocalConfig(asn=65002, router_id="192.0.2.2", hold_time=9, connect_retry_s=0.2,
                     restarted=True, forwarding=forwarding)
    return Speaker(lb, [PeerConfig(A, 65001, port=pa, passive=True, graceful_restart=True)], B, pb)


def test_graceful_restart_helper_keeps_stale_routes_until_end_of_rib():
    async def main():
        a, b, pa, pb = pair(gr=True, b_passive=True)
        b.announce(P, HOP)
        b.announce(P2, HOP)
        await b.start()
        await a.start()
        b2 = None
        try:
            await until(lambda: P in a.rib_in.best and P2 in a.rib_in.best, "routes from b")
            got = a.sessions[B].peer_open.find(cap.GracefulRestart)
            assert got is not None and not got.restarting  # a first start: R stays clear
            await b.stop(graceful=True)  # b restarts: its connection drops without a NOTIFICATION
            await until(lambda: B in a.rib_in.stale, "a to keep b's routes as stale")
            assert a.rib_in.best[P] == (HOP,) and a.rib_in.best[P2] == (HOP,)
            # the restarted b: R set, forwarding kept; it sends only P again
            b2 = restarted_b(pa, pb, forwarding=True)
            b2.announce(P, HOP)
            await b2.start()
            await until(lambda: B not in a.rib_in.stale, "End-of-RIB from the restarted b")
            got = a.sessions[B].peer_open.find(cap.GracefulRestart)
            assert got.restarting and all(fwd for _a, _s, fwd in got.families)
            assert P in a.rib_in.best and P2 not in a.rib_in.best  # the unrefreshed one went at End-of-RIB
        finally:
            await a.stop()
            for s in (b, b2):
                if s is not None:
                    await s.stop()
    asyncio.run(main())


def test_restart_without_forwarding_state_drops_stale_routes_at_once():
    async def main():
        a, b, pa, pb = pair(gr=True, b_passive=True)
        b.announce(P, HOP)
        await b.start()
        await a.start()
        b2 = None
        try:
            await until(lambda: P in a.rib_in.best, "the route")
            await b.stop(graceful=True)
            await until(lambda: B in a.rib_in.stale, "stale")
            b2 = restarted_b(pa, pb, forwarding=False)  # e.g. the node rebooted
            b2.sessions[A].changed = lambda *a: None  # it holds routes back: only the OPEN matters here
            await b2.start()
            await until(lambda: a.sessions[B].state == ESTABLISHED, "Established again")
            assert P not in a.rib_in.best and B not in a.rib_in.stale
        finally:
            await a.stop()
            for s in (b, b2):
                if s is not None:
                    await s.stop()
    asyncio.run(main())


def test_a_notification_is_not_a_graceful_restart():
    async def main():
        a, b, _, _ = pair(gr=True, b_passive=True)
        b.announce(P, HOP)
        await b.start()
        await a.start()
        try:
            await until(lambda: P in a.rib_in.best, "the route")
            await b.stop()  # a Cease: b is going away for good
            await until(lambda: P not in a.rib_in.best, "the route withdrawn at once")
            assert B not in a.rib_in.stale
        finally:
            await a.stop()
    asyncio.run(main())


def test_one_speaker_serves_many_peers_on_one_loop():
    async def main():
        n = 24
        hub_port = free_port(A)
        addrs = [f"127.0.1.{i}" for i in range(1, n + 1)]
        hub = Speaker(LocalConfig(asn=65001, router_id="192.0.2.1", hold_time=9, connect_retry_s=0.2),
                      [PeerConfig(a, 65100 + i, passive=True) for i, a in enumerate(addrs)], A, hub_port)
        spokes = [Speaker(LocalConfig(asn=65100 + i, router_id=f"198.51.100.{i + 1}", hold_time=9, connect_retry_s=0.2),
                          [PeerConfig(A, 65001, port=hub_port)], a, free_port(a)) for i, a in enumerate(addrs)]
        hub.announce(P, HOP)
        for i, s in enumerate(spokes):
            s.announce(ipaddress.ip_network(f"203.0.113.{100 + i}/32"), HOP)
        await hub.start()
        for s in spokes:
            await s.start()
        try:
            await until(lambda: all(P in s.rib_in.best for s in spokes), "every spoke to learn the hub's route")
            await until(lambda: len(hub.rib_in.best) == n, "the hub to learn every spoke's route")
            assert all(s.state == ESTABLISHED for s in hub.sessions.values())
        finally:
            for s in [hub, *spokes]:
                await s.stop()
    asyncio.run(main())


def test_a_peers_own_hold_time_is_the_one_advertised():
    from bgp.session import Session
    local = LocalConfig(asn=65001, router_id="192.0.2.1", hold_time=90)
    assert Session(local, PeerConfig(B, 65002, hold_time=9), {}).open_message().hold_time == 9
    assert Session(local, PeerConfig(B, 65002), {}).open_message().hold_time == 90
