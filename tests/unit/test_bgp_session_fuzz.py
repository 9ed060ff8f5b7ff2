"""Malformed and truncated messages from one peer, over real TCP on loopback: the speaker
answers per RFC 4271/7606 (a NOTIFICATION or treat-as-withdraw), never crashes, and its other
peer keeps its session and keeps receiving updates."""
from __future__ import annotations

import asyncio
import ipaddress
import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from bgp import capability as cap
from bgp.message import open as bopen
from bgp.message.keepalive import KEEPALIVE_BYTES
from bgp.session import ESTABLISHED, LocalConfig, PeerConfig
from bgp.speaker import Speaker
from bgp.wire import AFI_IPV4, NOTIFICATION, SAFI_UNICAST, UPDATE, frame, split
from tests.etcd_server import free_port

SPEAKER, FUZZER, GOOD = "127.0.0.1", "127.0.0.2", "127.0.0.3"


async def _peer(port: int, src: str, asn: int, rid: str):
    """A hand-rolled peer: connect from `src`, exchange OPEN/KEEPALIVE, return the streams."""
    reader, writer = await asyncio.open_connection(SPEAKER, port, local_addr=(src, 0))
    writer.write(bopen.Open(asn=asn, hold_time=30, router_id=rid,
                            capabilities=[cap.Multiprotocol(AFI_IPV4, SAFI_UNICAST)]).encode() + KEEPALIVE_BYTES)
    await writer.drain()
    return reader, writer


async def _messages(reader: asyncio.StreamReader, buf: bytearray, timeout: float = 2.0):
    out = []
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                return out, True  # closed by the speaker
            buf += data
            out += split(buf)
            timeout = 0.2
    except asyncio.TimeoutError:
        return out, False
    except ConnectionError:
        return out, True


async def _scenario(payloads: list[bytes]) -> None:
    port = free_port()
    local = LocalConfig(asn=65001, router_id="192.0.2.2", connect_retry_s=0.2)
    sp = Speaker(local, [PeerConfig(FUZZER, 65002, passive=True), PeerConfig(GOOD, 65003, passive=True)],
                 SPEAKER, port)
    sp.announce("203.0.113.1/32")
    await sp.start()
    try:
        good_r, good_w = await _peer(port, GOOD, 65003, "192.0.2.3")
        gbuf = bytearray()
        msgs, closed = await _messages(good_r, gbuf)
        assert not closed and sp.sessions[GOOD].state == ESTABLISHED
        for payload in payloads:
            fr, fw = await _peer(port, FUZZER, 65002, "192.0.2.4")
            await _messages(fr, bytearray(), 1.0)  # its OPEN, KEEPALIVE and our table
            # the payload as an UPDATE body, or raw bytes on the wire (a broken header)
            fw.write(frame(UPDATE, payload) if len(payload) <= 4000 and payload[:1] != b"\xff" else payload)
            await fw.drain()
            got, closed = await _messages(fr, bytearray(), 0.5)
            if closed:  # a session reset must be announced with a NOTIFICATION first
                assert any(t == NOTIFICATION for t, _ in got) or not got
            fw.close()
            for _ in range(50):  # a peer reconnects once we have seen it go (no collision)
                if not sp.sessions[FUZZER].busy():
                    break
                await asyncio.sleep(0.05)
        # the other peer never noticed: still established, still fed
        assert sp.sessions[GOOD].state == ESTABLISHED
        sp.announce("203.0.113.99/32")
        got, closed = await _messages(good_r, gbuf, 3.0)
        assert not closed
        bodies = [b for t, b in got if t == UPDATE]
        assert any(b.endswith(bytes([32]) + ipaddress.ip_address("203.0.113.99").packed) for b in bodies)
        good_w.close()
    finally:
        await sp.stop()


GOOD_ATTRS = b"\x40\x01\x01\x00" + b"\x40\x02\x06\x02\x01\x00\x00\xfd\xea" + b"\x40\x03\x04\xc0\x00\x02\x04"


def _update(attrs: bytes, nlri: bytes) -> bytes:
    return b"\0\0" + struct.pack("!H", len(attrs)) + attrs + nlri


PAYLOADS = st.one_of(
    st.binary(max_size=200),  # anything at all as an UPDATE body
    st.builds(lambda a, n: _update(a, n), st.binary(max_size=60), st.binary(max_size=20)),  # broken attributes
    st.builds(lambda cut: _update(GOOD_ATTRS, b"\x20\xc6\x33\x64\x07")[:cut], st.integers(0, 30)),  # truncated
    st.builds(lambda junk: b"\xff" * 16 + junk, st.binary(min_size=3, max_size=30)),  # broken headers
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PAYLOADS, min_size=1, max_size=4))
def test_a_peer_sending_garbage_never_hurts_the_other_peer(payloads):
    asyncio.run(asyncio.wait_for(_scenario(payloads), 60))


def test_a_well_formed_update_after_garbage_still_works():
    asyncio.run(asyncio.wait_for(_scenario([b"\x00", _update(GOOD_ATTRS, b"\x20\xc6\x33\x64\x07")]), 60))
