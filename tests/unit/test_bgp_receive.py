"""The receive side of a session over real TCP on loopback, against a hand-rolled peer: invalid next
hops (RFC 4271 6.3, RFC 7606 7.3), families not negotiated (RFC 4760 7), AFI/SAFI disable
(RFC 7606 7.11), the per-peer prefix limit (RFC 4486), and bounded, single pending connections.
Every wait is a guard that fails the test, never a timing assertion."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct

import pytest

from bgp import capability as cap
from bgp.attribute import Raw, as_path, encode as encode_attrs, next_hop, origin
from bgp.message import notification, open as bopen, update
from bgp.message.keepalive import KEEPALIVE_BYTES
from bgp.session import ESTABLISHED, OPENCONFIRM, LocalConfig, PeerConfig
from bgp.speaker import Speaker
from bgp.wire import AFI_IPV4, AFI_IPV6, NOTIFICATION, OPEN, ROUTE_REFRESH, SAFI_UNICAST, UPDATE, frame, split
from tests.etcd_server import free_port
from tests.unit.test_bgp_speakers import until

SPEAKER, PEER = "127.0.0.1", "127.0.0.2"
PEER_AS, PEER_RID = 65002, "192.0.2.9"

HOP, HOP2 = "192.0.2.50", "192.0.2.51"
HOP6 = "2001:db8::50"
P, P2, P3, P4 = (ipaddress.ip_network(f"203.0.113.{i}/32") for i in (1, 2, 3, 4))
Q, Q2 = ipaddress.ip_network("2001:db8:1::/48"), ipaddress.ip_network("2001:db8:2::/48")
V4, V6 = (AFI_IPV4, SAFI_UNICAST), (AFI_IPV6, SAFI_UNICAST)


class Peer:
    """One TCP connection to the speaker from PEER, and what came back on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.buf = bytearray()
        self.got: list[tuple[int, bytes]] = []
        self.closed = False

    @classmethod
    async def connect(cls, port: int, src: str = PEER) -> "Peer":
        return cls(*await asyncio.open_connection(SPEAKER, port, local_addr=(src, 0)))

    def send(self, *msgs: bytes) -> None:
        self.writer.write(b"".join(msgs))

    def open(self, families=(V4,), gr: bool = False) -> None:
        caps = [cap.Multiprotocol(a, s) for a, s in families]
        if gr:
            caps.append(cap.GracefulRestart(120, families=tuple((a, s, True) for a, s in families)))
        self.send(bopen.Open(asn=PEER_AS, hold_time=30, router_id=PEER_RID, capabilities=caps).encode(),
                  KEEPALIVE_BYTES)

    async def read(self, quiet: float = 0.2) -> None:
        """Take in what arrives until nothing has for `quiet` seconds, or the speaker closed."""
        while not self.closed:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), quiet)
            except asyncio.TimeoutError:
                return
            except ConnectionError:
                data = b""
            if not data:
                self.closed = True
                return
            self.buf += data
            self.got += split(self.buf)

    async def until_closed(self, what: str, timeout: float = 10.0) -> None:
        async def loop():
            while not self.closed:
                await self.read(1.0)
        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"gave up waiting for {what}") from None

    def types(self) -> list[int]:
        return [t for t, _ in self.got]

    def notifications(self) -> list[notification.Notification]:
        return [notification.decode(b) for t, b in self.got if t == NOTIFICATION]

    def close(self) -> None:
        self.writer.close()


def speaker(port: int, passive: bool = True, peer_port: int = 179, local: dict | None = None, on_received=None,
            **peer) -> Speaker:
    lc = LocalConfig(asn=65001, router_id="192.0.2.1", hold_time=30, connect_retry_s=0.1, **(local or {}))
    return Speaker(lc, [PeerConfig(PEER, PEER_AS, passive=passive, port=peer_port, **peer)], SPEAKER, port,
                   on_received=on_received)


async def established(sp: Speaker, port: int, **open_kw) -> Peer:
    peer = await Peer.connect(port)
    peer.open(**open_kw)
    await until(lambda: sp.sessions[PEER].state == ESTABLISHED, "Established")
    return peer


BASE = [origin.Origin(origin.IGP), as_path.ASPath.sequence(PEER_AS)]


def v4(prefixes, hop: str = HOP, withdrawn=()) -> bytes:
    msgs = update.encode_updates(BASE + [next_hop.NextHop(ipaddress.ip_address(hop))], list(prefixes), True,
                                 withdrawn=list(withdrawn))
    return b"".join(msgs)


def v6(prefixes, hop: str = HOP6, withdrawn=()) -> bytes:
    return b"".join(update.encode_mp(AFI_IPV6, SAFI_UNICAST, BASE, (ipaddress.ip_address(hop),), list(prefixes), True,
                                     withdrawn=list(withdrawn)))


def raw_update(attrs: list, nlri: bytes = b"") -> bytes:
    a = encode_attrs(attrs, True)
    return frame(UPDATE, b"\0\0" + struct.pack("!H", len(a)) + a + nlri)


def mp_reach_raw(afi: int, safi: int, rest: bytes) -> Raw:
    return Raw(14, 0x80, struct.pack("!HB", afi, safi) + rest)


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


# -- 1. invalid next hops: treat-as-withdraw, one warning, the session stays -------------------------

@pytest.mark.parametrize("bad", ["255.255.255.255", "0.0.0.0", "224.0.0.5", "127.0.0.9", "240.0.0.1",
                                 "192.0.2.77"])  # the last: a node address, as the agent's is_local says
def test_an_invalid_next_hop_withdraws_the_route_and_keeps_the_session(bad, caplog):
    caplog.set_level(logging.WARNING, logger="moor.bgp")

    async def main():
        async with started(local={"is_local": lambda a: a == "192.0.2.77"}) as (sp, port):
            peer = await established(sp, port)
            peer.send(v4([P, P2], HOP))
            await until(lambda: sp.rib_in.best.get(P) == (HOP,), "the route via a good next hop")
            caplog.clear()
            peer.send(v4([P], bad))  # replaces P's path: it must go, not stay or take the bad hop
            await until(lambda: P not in sp.rib_in.best, "the route treated as withdrawn")
            assert sp.rib_in.best == {P2: (HOP,)}
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and PEER in warnings[0] and bad in warnings[0], warnings
            peer.send(v4([P3], HOP2))  # the session carries on
            await until(lambda: P3 in sp.rib_in.best, "a later good route")
            await peer.read()
            assert sp.sessions[PEER].state == ESTABLISHED and NOTIFICATION not in peer.types() and not peer.closed
            peer.close()
    run(main())


@contextlib.asynccontextmanager
async def started(**kw):
    """A speaker listening on a free port, stopped at the end: (speaker, port)."""
    port = free_port()
    sp = speaker(port, **kw)
    await sp.start()
    try:
        yield sp, port
    finally:
        await sp.stop()


async def listening_peer():
    """A peer that listens for the speaker's connections: (accepted Peers, the server, its port)."""
    accepted: asyncio.Queue = asyncio.Queue()

    async def on_conn(r, w):
        await accepted.put(Peer(r, w))
    port = free_port()
    return accepted, await asyncio.start_server(on_conn, PEER, port), port


def test_an_ipv6_next_hop_that_is_ours_or_unusable_is_treat_as_withdraw():
    async def main():
        port = free_port()
        sp = speaker(port, local={"next_hop6": "2001:db8::1"})  # what we announce as our IPv6 next hop
        await sp.start()
        try:
            peer = await established(sp, port, families=(V4, V6))
            peer.send(v6([Q, Q2], HOP6))
            await until(lambda: Q in sp.rib_in.best and Q2 in sp.rib_in.best, "IPv6 routes")
            peer.send(v6([Q], "2001:db8::1"))
            peer.send(v6([Q2], "ff02::1"))
            await until(lambda: not sp.rib_in.best, "both treated as withdrawn")
            peer.send(v6([Q], "::ffff:127.0.0.1"))  # IPv4-mapped loopback (an IPv6 route over IPv4)
            peer.send(v6([Q2], HOP6))
            await until(lambda: Q2 in sp.rib_in.best, "a good one after them")
            assert Q not in sp.rib_in.best and sp.sessions[PEER].state == ESTABLISHED
            peer.close()
        finally:
            await sp.stop()
    run(main())


def test_our_own_address_as_next_hop_is_refused():
    from bgp.session import Session
    s = Session(LocalConfig(asn=65001, router_id="192.0.2.1", next_hop6="2001:db8::1",
                            is_local=lambda a: a == "198.51.100.7"), PeerConfig("192.0.2.3", 65002), {})
    s.local_address = "::ffff:192.0.2.2"  # a dual-stack listener shows an IPv4 peer's session so
    bad = lambda a: s._bad_next_hop(ipaddress.ip_address(a))  # noqa: E731
    assert bad("192.0.2.2") == bad("::ffff:192.0.2.2") == bad("2001:db8::1") == "our own address"
    assert bad("198.51.100.7") == "an address of this node"
    assert bad("192.0.2.3") is None and bad("2001:db8::3") is None
    s.local.is_local = lambda a: 1 / 0  # a failing kernel lookup judges nothing, crashes nothing
    assert bad("198.51.100.7") is None


# -- 2. families not negotiated are ignored, the session stays ---------------------------------------

def test_families_not_negotiated_are_ignored_once_each_and_never_read_as_unicast(caplog):
    caplog.set_level(logging.WARNING, logger="moor.bgp")
    seen = []

    async def main():
        async with started(on_received=seen.append) as (sp, port):
            peer = await established(sp, port, families=(V4,))  # the peer offers IPv4 unicast only
            # IPv6 unicast, twice; VPNv4 (SAFI 128) with a 12-byte next hop; labelled unicast
            # (SAFI 4) whose NLRI read as plain prefixes would be 0.1.1.0/24-ish garbage
            vpn = mp_reach_raw(1, 128, b"\x0c" + b"\0" * 12 + b"\0" + b"\x70" + b"\x00\x01\x01" + b"\0" * 8 + b"\xcb\x00\x71")
            lu = mp_reach_raw(1, 4, b"\x04\xc0\x00\x02\x02\x00" + b"\x38\x00\x01\x01\xcb\x00\x71")
            peer.send(v6([Q]), v6([Q2]), raw_update(BASE + [vpn]), raw_update(BASE + [lu]))
            peer.send(raw_update([Raw(15, 0x80, struct.pack("!HB", 1, 128))]))  # End-of-RIB of VPNv4
            peer.send(raw_update([Raw(15, 0x80, struct.pack("!HB", 2, 1))]))  # End-of-RIB of IPv6
            peer.send(v4([P]))
            await until(lambda: P in sp.rib_in.best, "the IPv4 route after them")
            await peer.read()
            assert list(sp.rib_in.best) == [P] and sp.sessions[PEER].state == ESTABLISHED
            assert NOTIFICATION not in peer.types() and not peer.closed
            # an End-of-RIB of a family the session does not carry sweeps nothing
            assert all(r.end_of_rib is None for r in seen)
            ignored = [r.getMessage() for r in caplog.records if "not a unicast family" in r.getMessage()]
            assert len(ignored) == 3 and all(PEER in m for m in ignored), ignored  # (2,1), (1,128), (1,4)
            peer.close()
    run(main())


# -- 3. AFI/SAFI disable on a malformed MP_REACH next hop ---------------------------------------------

BAD_NH6 = mp_reach_raw(2, 1, b"\x05" + b"\0" * 5 + b"\0" + b"\x30\x20\x01\x0d\xb8\x00\x03")  # 5-byte next hop


def test_a_bad_mp_next_hop_length_disables_that_family_for_the_session_only(caplog):
    caplog.set_level(logging.WARNING, logger="moor.bgp")

    async def main():
        async with started() as (sp, port):
            peer = await established(sp, port, families=(V4, V6))
            peer.send(v4([P]), v6([Q]))
            await until(lambda: P in sp.rib_in.best and Q in sp.rib_in.best, "both families")
            peer.send(raw_update(BASE + [BAD_NH6]))
            await until(lambda: Q not in sp.rib_in.best, "IPv6 routes dropped")
            assert any("disabled" in r.getMessage() and PEER in r.getMessage() for r in caplog.records)
            peer.send(v6([Q2]), v4([P2]))  # IPv6 ignored from now on, IPv4 carries on
            await until(lambda: P2 in sp.rib_in.best, "IPv4 still working")
            await peer.read()
            assert Q2 not in sp.rib_in.best and sp.rib_in.best.keys() == {P, P2}
            assert NOTIFICATION not in peer.types() and not peer.closed
            assert sp.sessions[PEER].state == ESTABLISHED
            peer.close()
            await until(lambda: not sp.sessions[PEER].busy(), "the session gone")
            peer = await established(sp, port, families=(V4, V6))  # a new session: all families again
            peer.send(v6([Q2]))
            await until(lambda: Q2 in sp.rib_in.best, "IPv6 accepted in a new session")
            peer.close()
    run(main())


def test_a_bad_ipv4_unicast_mp_reach_disables_ipv4_classic_nlri_too():
    async def main():
        async with started() as (sp, port):
            peer = await established(sp, port, families=(V4, V6))
            peer.send(v4([P]), v6([Q]))
            await until(lambda: P in sp.rib_in.best and Q in sp.rib_in.best, "both families")
            peer.send(raw_update(BASE + [mp_reach_raw(1, 1, b"\x07" + b"\0" * 8)]))
            await until(lambda: P not in sp.rib_in.best, "IPv4 routes dropped")
            peer.send(v4([P2]), v6([Q2]))
            await until(lambda: Q2 in sp.rib_in.best, "IPv6 still working")
            assert P2 not in sp.rib_in.best and sp.sessions[PEER].state == ESTABLISHED
            peer.close()
    run(main())


def test_mp_reach_with_wrong_flags_withdraws_without_a_reset():
    async def main():
        async with started() as (sp, port):
            peer = await established(sp, port, families=(V4, V6))
            peer.send(v6([Q]))
            await until(lambda: Q in sp.rib_in.best, "the IPv6 route")
            value = (struct.pack("!HBB", 2, 1, 16) + ipaddress.ip_address(HOP6).packed + b"\0"
                     + bytes([48]) + Q.network_address.packed[:6])
            peer.send(raw_update(BASE + [Raw(14, 0xC0, value)]))  # flagged transitive: RFC 7606 3(c)
            await until(lambda: Q not in sp.rib_in.best, "treated as withdrawn")
            await peer.read()
            assert NOTIFICATION not in peer.types() and sp.sessions[PEER].state == ESTABLISHED
            peer.close()
    run(main())


# -- 4. the prefix limit --------------------------------------------------------------------------------

def test_over_the_prefix_limit_the_session_ends_with_cease_and_the_peer_is_held_off():
    async def main():
        async with started(max_prefixes=3, max_prefixes_idle_s=60.0, graceful_restart=True) as (sp, port):
            peer = await established(sp, port, families=(V4, V6), gr=True)
            peer.send(v4([P, P2]))
            peer.send(v4([P3], withdrawn=[P2]), v6([Q]))  # 3 after the withdrawal: at the limit, fine
            await until(lambda: sp.rib_in.best.keys() == {P, P3, Q}, "three routes")
            peer.send(v6([Q2]))  # the fourth
            await peer.until_closed("the session to end")
            assert [(n.code, n.subcode, n.data) for n in peer.notifications()] == \
                [(6, 1, struct.pack("!HBI", AFI_IPV6, SAFI_UNICAST, 3))]
            await until(lambda: not sp.rib_in.best, "every route from the peer removed")
            assert PEER not in sp.rib_in.stale  # a NOTIFICATION is no graceful restart
            # held off: a new connection is closed at once, without an OPEN
            again = await Peer.connect(port)
            again.open(families=(V4, V6))
            await again.until_closed("the connection refused")
            assert OPEN not in again.types() and sp.sessions[PEER].state != ESTABLISHED
    run(main())


def test_after_the_idle_hold_the_peer_is_accepted_again():
    async def main():
        async with started(max_prefixes=1, max_prefixes_idle_s=0.5) as (sp, port):
            peer = await established(sp, port)
            peer.send(v4([P, P2]))
            await peer.until_closed("the session to end")
            assert peer.notifications()[0].subcode == 1
            for _ in range(100):  # retry like a peer would, until one gets an OPEN
                again = await Peer.connect(port)
                await again.read(0.1)
                if OPEN in again.types():
                    break
                again.close()
                await asyncio.sleep(0.1)
            again.open()
            await until(lambda: sp.sessions[PEER].state == ESTABLISHED, "Established again")
            again.close()
    run(main())


def test_over_the_prefix_limit_we_do_not_reconnect_during_the_idle_hold():
    async def main():
        accepted, server, peer_port = await listening_peer()
        sp = speaker(free_port(), passive=False, peer_port=peer_port, max_prefixes=1, max_prefixes_idle_s=60.0)
        await sp.start()
        try:
            peer = await asyncio.wait_for(accepted.get(), 10)
            peer.open()
            await until(lambda: sp.sessions[PEER].state == ESTABLISHED, "Established")
            peer.send(v4([P, P2]))
            await peer.until_closed("the session to end")
            assert [(n.code, n.subcode) for n in peer.notifications()] == [(6, 1)]
            await asyncio.sleep(1.0)  # ten connect-retry periods: none of them may be used
            assert accepted.empty() and sp.sessions[PEER].idle_hold() > 0
        finally:
            await sp.stop()
            server.close()
    run(main())


# -- 5. bounded OPEN wait, one pending connection ------------------------------------------------------

@pytest.mark.parametrize("trickle", [False, True])
def test_a_connection_without_an_open_is_closed_after_open_wait(trickle):
    async def main():
        async with started(local={"open_wait_s": 0.5}) as (sp, port):
            peer = await Peer.connect(port)

            async def drip():  # an OPEN's marker, a byte every 0.2 s: the wait is for the OPEN, not a read
                for _ in range(100):
                    peer.send(b"\xff")
                    await asyncio.sleep(0.2)
            task = asyncio.ensure_future(drip()) if trickle else None
            await peer.until_closed("the connection closed")
            assert peer.types()[0] == OPEN and [(n.code, n.subcode) for n in peer.notifications()] == [(4, 0)]
            if task:
                task.cancel()
    run(main())


def test_a_second_connection_without_an_open_is_closed_and_the_session_stays():
    async def main():
        async with started(local={"open_wait_s": 0.5}) as (sp, port):
            peer = await established(sp, port)
            second = await Peer.connect(port)  # collision handling waits for its OPEN: not for long
            await second.until_closed("the second connection closed")
            assert sp.sessions[PEER].state == ESTABLISHED
            await peer.read()
            assert not peer.closed
            peer.close()
    run(main())


@pytest.mark.parametrize("while_established", [False, True])
def test_a_newer_pending_connection_replaces_the_older(while_established):
    async def main():
        port = free_port()
        sp = speaker(port)  # the default open wait: only the replacement closes the first one
        await sp.start()
        try:
            first = await established(sp, port) if while_established else None
            old = await Peer.connect(port)
            await old.read(0.3)
            assert OPEN in old.types()  # being served (or contending): the speaker sent its OPEN
            new = await Peer.connect(port)
            await old.until_closed("the older pending connection closed")
            await new.read(0.3)
            assert not new.closed and OPEN in new.types()
            if first is not None:
                assert sp.sessions[PEER].state == ESTABLISHED and sp.sessions[PEER].writer is not None
                first.close()
            else:
                new.open()
                await until(lambda: sp.sessions[PEER].state == ESTABLISHED, "Established on the newer one")
            new.close()
        finally:
            await sp.stop()
    run(main())


# -- 6. other receive-path defects ----------------------------------------------------------------------

def test_a_failing_route_callback_ends_the_session_with_cease_and_we_reconnect():
    async def main():
        accepted, server, peer_port = await listening_peer()
        sp = speaker(free_port(), passive=False, peer_port=peer_port)
        calls = []

        def on_best(prefix, hops):
            calls.append(prefix)
            if len(calls) == 1:
                raise RuntimeError("the kernel said no")
        sp.rib_in.on_best = on_best
        await sp.start()
        try:
            peer = await asyncio.wait_for(accepted.get(), 10)
            peer.open()
            await until(lambda: sp.sessions[PEER].state == ESTABLISHED, "Established")
            peer.send(v4([P]))
            await peer.until_closed("the session to end")
            assert [(n.code, n.subcode) for n in peer.notifications()] == [(6, 0)]
            again = await asyncio.wait_for(accepted.get(), 10)  # the reconnect loop survived
            again.open()
            await until(lambda: sp.sessions[PEER].state == ESTABLISHED, "Established again")
            again.send(v4([P]))
            await until(lambda: P in sp.rib_in.best, "the route")
            again.close()
        finally:
            await sp.stop()
            server.close()
    run(main())


def test_route_refresh_of_a_family_not_negotiated_is_ignored_and_a_bad_one_is_a_notification():
    async def main():
        port = free_port()
        sp = speaker(port)
        sp.announce("198.51.100.0/24", "192.0.2.1")
        await sp.start()
        try:
            peer = await established(sp, port, families=(V4,))
            await peer.read(0.3)
            n = peer.types().count(UPDATE)
            peer.send(frame(ROUTE_REFRESH, struct.pack("!HBB", AFI_IPV6, 0, SAFI_UNICAST)))
            await peer.read(0.3)
            assert peer.types().count(UPDATE) == n  # nothing of a family the peer did not negotiate
            peer.send(frame(ROUTE_REFRESH, struct.pack("!HBB", AFI_IPV4, 0, SAFI_UNICAST)))
            await peer.read(0.3)
            assert peer.types().count(UPDATE) == n + 1  # the IPv4 table again
            peer.send(frame(ROUTE_REFRESH, struct.pack("!HBBB", AFI_IPV4, 0, SAFI_UNICAST, 0)))
            await peer.until_closed("the session ended")
            assert [(n.code, n.subcode) for n in peer.notifications()] == [(7, 1)]
        finally:
            await sp.stop()
    run(main())


def test_graceful_restart_families_of_other_safis_keep_no_unicast_routes():
    # a peer whose GR capability lists VPNv4 and EVPN only keeps no IPv4/IPv6 unicast state over a
    # restart: AFI 1 or 25 alone must not be read as "IPv4" / "IPv6"
    async def main():
        async with started(graceful_restart=True) as (sp, port):
            peer = await Peer.connect(port)
            gr = cap.GracefulRestart(120, families=((1, 128, True), (25, 70, True)))
            peer.send(bopen.Open(asn=PEER_AS, hold_time=30, router_id=PEER_RID,
                                 capabilities=[cap.Multiprotocol(*V4), cap.Multiprotocol(*V6), gr]).encode(),
                      KEEPALIVE_BYTES)
            await until(lambda: sp.sessions[PEER].state == ESTABLISHED, "Established")
            peer.send(v4([P]), v6([Q]))
            await until(lambda: P in sp.rib_in.best and Q in sp.rib_in.best, "both routes")
            peer.close()  # a drop without NOTIFICATION: a graceful restart
            await until(lambda: not sp.sessions[PEER].busy(), "the session gone")
            assert not sp.rib_in.best and PEER not in sp.rib_in.stale
    run(main())


def test_a_connection_that_lost_a_collision_never_becomes_established(caplog):
    """RFC 4271 6.8: our connection (in OpenConfirm) loses to the one the peer opened (a higher BGP
    identifier). Its KEEPALIVE arrives while the Cease is on its way out (the drop yields there):
    it is closed from OpenConfirm, and only the winner is ever Established."""
    caplog.set_level(logging.INFO, logger="moor.bgp")

    async def main():
        port, peer_port = free_port(), free_port()
        accepted: asyncio.Queue = asyncio.Queue()
        server = await asyncio.start_server(lambda r, w: accepted.put_nowait(Peer(r, w)), PEER, peer_port)
        sp = speaker(port, passive=False, peer_port=peer_port)  # it connects: the connection we lose
        await sp.start()
        sess = sp.sessions[PEER]
        try:
            ours = await asyncio.wait_for(accepted.get(), 10)
            ours.send(bopen.Open(asn=PEER_AS, hold_time=30, router_id=PEER_RID,
                                 capabilities=[cap.Multiprotocol(*V4)]).encode())  # an OPEN, no KEEPALIVE yet
            await until(lambda: sess.state == OPENCONFIRM, "OpenConfirm on the speaker's connection")
            send = sess._send

            async def cease_meets_keepalive(data: bytes) -> None:
                await send(data)
                if data[18:19] == bytes([NOTIFICATION]):  # the Cease is out; drain may yield here
                    ours.send(KEEPALIVE_BYTES)  # the loser's KEEPALIVE, read while the drop yields
                    await until(lambda: sess.state != OPENCONFIRM, "the loser to read its KEEPALIVE")
            sess._send = cease_meets_keepalive
            theirs = await Peer.connect(port)  # the peer's connection: 192.0.2.9 > 192.0.2.1, it wins
            theirs.open()  # OPEN and KEEPALIVE
            await until(lambda: sess.state == ESTABLISHED and sess.writer is not None
                        and sess.writer.get_extra_info("peername")[1] != peer_port, "Established on theirs")
            await ours.until_closed("the losing connection closed")
            assert [(n.code, n.subcode) for n in ours.notifications()] == [(6, 7)]  # Cease, collision
            theirs.close()
        finally:
            await sp.stop()
            server.close()
    run(main())
    established = [r for r in caplog.records if getattr(r, "new", None) == ESTABLISHED]
    assert len(established) == 1, [r.getMessage() for r in caplog.records]
