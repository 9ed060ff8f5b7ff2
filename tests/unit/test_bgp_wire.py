"""BGP wire format: framing, OPEN and capabilities, packed UPDATEs, End-of-RIB, RFC 7606 error
handling; cross-checked with scapy's independent BGP decoder."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings, strategies as st

from bgp import capability as cap
from bgp.attribute import as_path, communities, med, mp_reach, next_hop, origin
from bgp.errors import BGPError
from bgp.message import notification, open as bopen, refresh, update
from bgp.message.keepalive import KEEPALIVE_BYTES
from bgp.wire import (AFI_IPV4, AFI_IPV6, AS_TRANS, HEADER_LEN, MAX_LEN, SAFI_UNICAST, UPDATE, encode_prefix, frame,
                      key_network, key_of, key_str, parse_header, split)


def _body(msg: bytes) -> bytes:
    return msg[HEADER_LEN:]


def _v4_attrs(nh: str = "192.0.2.2") -> list:
    return [origin.Origin(origin.IGP), as_path.ASPath.sequence(4200000001), next_hop.NextHop(ipaddress.ip_address(nh)),
            communities.Communities((communities.parse("65000:100"),))]


def test_open_round_trip_with_capabilities_and_a_four_byte_asn():
    caps = [cap.Multiprotocol(AFI_IPV4, SAFI_UNICAST), cap.Multiprotocol(AFI_IPV6, SAFI_UNICAST), cap.RouteRefresh(),
            cap.GracefulRestart(120, restarting=True, families=((AFI_IPV4, SAFI_UNICAST, True),))]
    msg = bopen.Open(asn=4200000001, hold_time=90, router_id="192.0.2.2", capabilities=caps).encode()
    length, mtype = parse_header(msg)
    assert (length, mtype) == (len(msg), 1)
    assert struct.unpack_from("!H", msg, HEADER_LEN + 1)[0] == AS_TRANS  # 2-byte field (RFC 6793)
    got = bopen.decode(_body(msg))
    assert got.asn == 4200000001 and got.hold_time == 90 and got.router_id == "192.0.2.2" and got.four_octet
    gr = got.find(cap.GracefulRestart)
    assert gr.restart_time == 120 and gr.restarting and gr.families == ((1, 1, True),)
    assert cap.Multiprotocol(2, 1) in got.capabilities and got.find(cap.RouteRefresh)


def test_scapy_decodes_our_open_and_update():
    from scapy.contrib.bgp import BGPHeader, BGPOpen, BGPUpdate
    o = BGPHeader(bopen.Open(asn=65001, hold_time=90, router_id="192.0.2.2",
                             capabilities=[cap.Multiprotocol(AFI_IPV4, SAFI_UNICAST)]).encode())
    assert o[BGPOpen].my_as == 65001 and o[BGPOpen].bgp_id == "192.0.2.2" and o[BGPOpen].hold_time == 90
    msg = update.encode_updates(_v4_attrs(), [ipaddress.ip_network("203.0.113.7/32")], four_octet=True)[0]
    u = BGPHeader(msg)[BGPUpdate]
    assert [n.prefix for n in u.nlri] == ["203.0.113.7/32"]
    assert {a.type_code for a in u.path_attr} == {1, 2, 3, 8}


@pytest.mark.parametrize("mutate,code,sub", [
    (lambda b: bytes([3]) + b[1:], 2, 1),  # version 3
    (lambda b: b[:3] + b"\x00\x01" + b[5:], 2, 6),  # hold time 1
    (lambda b: b[:5] + b"\0\0\0\0" + b[9:], 2, 3),  # BGP identifier 0
    (lambda b: b[:-1], 2, 0),  # truncated parameters
])
def test_bad_open_is_a_notification(mutate, code, sub):
    body = _body(bopen.Open(asn=65001, hold_time=90, router_id="192.0.2.2").encode())
    with pytest.raises(BGPError) as e:
        bopen.decode(mutate(body))
    assert (e.value.code, e.value.subcode) == (code, sub)


@pytest.mark.parametrize("msg,sub", [
    (b"\xfe" + b"\xff" * 15 + b"\x00\x13\x04", 1), (b"\xff" * 16 + b"\x00\x14\x04", 2),
    (b"\xff" * 16 + b"\x00\x13\x09", 3), (b"\xff" * 16 + b"\x10\x01\x02", 2),
])
def test_bad_headers(msg, sub):
    with pytest.raises(BGPError) as e:
        parse_header(msg)
    assert (e.value.code, e.value.subcode) == (1, sub)


def test_split_handles_partial_and_coalesced_reads():
    stream = KEEPALIVE_BYTES + notification.Notification(6, 2, b"bye").encode() + KEEPALIVE_BYTES
    buf = bytearray(stream[:25])
    assert [t for t, _ in split(buf)] == [4]
    buf += stream[25:]
    got = split(buf)
    assert [t for t, _ in got] == [3, 4] and notification.decode(got[0][1]).data == b"bye" and not buf


def test_ten_thousand_routes_are_packed_into_few_updates():
    prefixes = [ipaddress.ip_network(f"10.{i >> 8}.{i & 255}.1/32") for i in range(10000)]
    msgs = update.encode_updates(_v4_attrs(), prefixes, four_octet=True)
    assert all(len(m) <= MAX_LEN for m in msgs)
    assert len(msgs) <= 10000 * 5 // (MAX_LEN - 100) + 1  # ~800 /32s an UPDATE, not one each
    back = [p for m in msgs for p in update.decode(_body(m), True).announced]
    assert back == prefixes


@given(st.one_of(st.tuples(st.just(4), st.integers(0, 2**32 - 1), st.integers(0, 32)),
                 st.tuples(st.just(6), st.integers(0, 2**128 - 1), st.integers(0, 128))))
def test_a_key_is_the_prefix_it_was_made_from_and_its_nlri(v):
    version, addr, plen = v
    net = (ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)((addr, plen), strict=False)
    key = key_of(net)
    assert key == key_of(str(net)) == key_of(key) and key[0] == version
    assert key_network(key) == net and key_str(key) == str(net)
    assert encode_prefix(key) == encode_prefix(net) and len(key) == 2 + (plen + 7) // 8


def test_routes_kept_as_keys_are_packed_and_decoded_like_networks():
    prefixes = [ipaddress.ip_network(f"10.{i >> 8}.{i & 255}.0/{24 + i % 9}") for i in range(3000)]
    assert update.encode_updates(_v4_attrs(), [key_of(p) for p in prefixes], True) == \
        update.encode_updates(_v4_attrs(), prefixes, True)
    msgs = update.encode_updates([], [], True, withdrawn=[key_of(p) for p in prefixes])
    assert [p for m in msgs for p in update.decode(_body(m), True).withdrawn] == prefixes
    v6 = [ipaddress.ip_network(f"2001:db8:{i:x}::/{48 + i % 81}", strict=False) for i in range(300)]
    nh = (ipaddress.ip_address("2001:db8::2"),)
    assert update.encode_mp(AFI_IPV6, SAFI_UNICAST, _v4_attrs()[:2], nh, [key_of(p) for p in v6], True) == \
        update.encode_mp(AFI_IPV6, SAFI_UNICAST, _v4_attrs()[:2], nh, v6, True)


def test_ipv6_routes_and_withdrawals_in_mp_attributes():
    pfx = [ipaddress.ip_network(f"2001:db8:{i:x}::1/128") for i in range(300)]
    nh = (ipaddress.ip_address("2001:db8::2"), ipaddress.ip_address("fe80::2"))
    msgs = update.encode_mp(AFI_IPV6, SAFI_UNICAST, _v4_attrs()[:2], nh, pfx, True, withdrawn=pfx[:3])
    decoded = [update.decode(_body(m), True) for m in msgs]
    assert [p for d in decoded for p in d.withdrawn_all] == pfx[:3]
    assert [p for d in decoded for p in d.announced] == pfx
    reach = decoded[-1].attributes[mp_reach.TYPE]
    assert reach.next_hops == nh


def test_end_of_rib_markers():
    assert update.decode(_body(update.end_of_rib(AFI_IPV4, SAFI_UNICAST)), True).end_of_rib() == (1, 1)
    assert update.decode(_body(update.end_of_rib(AFI_IPV6, SAFI_UNICAST)), True).end_of_rib() == (2, 1)
    normal = update.encode_updates(_v4_attrs(), [ipaddress.ip_network("203.0.113.1/32")], True)[0]
    assert update.decode(_body(normal), True).end_of_rib() is None


def _update_with(raw_attrs: bytes, nlri: bytes = b"\x20\xcb\x00\x71\x07") -> bytes:
    return b"\0\0" + struct.pack("!H", len(raw_attrs)) + raw_attrs + nlri


GOOD = b"\x40\x01\x01\x00" + b"\x40\x02\x06\x02\x01\xfa\x56\xea\x01" + b"\x40\x03\x04\xc0\x00\x02\x02"


@pytest.mark.parametrize("raw,why", [
    (b"\x40\x01\x01\x07" + GOOD[4:], "ORIGIN 7"),
    (GOOD[:4] + b"\x40\x02\x03\x02\x05\x01" + GOOD[13:], "AS_PATH segment overruns"),
    (GOOD[:13], "NEXT_HOP missing with IPv4 NLRI"),
    (GOOD + b"\xc0\x08\x03\x01\x02\x03", "COMMUNITIES length 3"),
    (GOOD + b"\x80\x04\x02\x00\x01", "MED length 2"),
    (b"\x80\x01\x01\x00" + GOOD[4:], "ORIGIN flagged optional"),
    (GOOD + b"\x40\x05\x04\x00", "attribute overruns the list"),
])
def test_rfc7606_treat_as_withdraw(raw, why):
    u = update.decode(_update_with(raw), True)
    assert u.treat_as_withdraw, why
    assert u.announced == [] and u.withdrawn_all == [ipaddress.ip_network("203.0.113.7/32")]


def test_rfc7606_keeps_unknown_optional_transitive_as_partial_and_discards_bad_aggregator():
    u = update.decode(_update_with(GOOD + b"\xc0\x63\x02\xab\xcd" + b"\xc0\x07\x01\x00"), True)
    assert not u.treat_as_withdraw and u.attributes[99].flags & 0x20 and 7 not in u.attributes


@pytest.mark.parametrize("raw,nlri,sub", [
    (GOOD + b"\x80\x0e\x02\x00\x02", b"", 9),  # MP_REACH without even its SAFI: whose NLRI?
    (GOOD + b"\x80\x0f\x03\x00\x02\x01" * 2, b"", 1),  # MP_UNREACH twice
    (GOOD + b"\x40\x09\x00", b"\x20\xcb\x00\x71\x07", 2),  # an unrecognised well-known attribute
    (GOOD, b"\x21\xcb\x00\x71\x07", 10),  # prefix length 33
])
def test_rfc7606_session_reset_cases(raw, nlri, sub):
    with pytest.raises(BGPError) as e:
        update.decode(_update_with(raw, nlri), True)
    assert (e.value.code, e.value.subcode) == (3, sub)


def test_route_refresh_round_trip():
    r = refresh.decode(_body(refresh.RouteRefresh(AFI_IPV6, SAFI_UNICAST).encode()))
    assert (r.afi, r.safi) == (2, 1)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_garbage_updates_never_crash(data, four):
    try:
        update.decode(data, four)
    except BGPError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_garbage_opens_never_crash(data):
    try:
        bopen.decode(data)
    except BGPError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2 ** 32 - 1), st.integers(0, 32)), min_size=1, max_size=50, unique=True),
       st.integers(0, 2 ** 32 - 1))
def test_routes_and_attributes_round_trip(routes, med_value):
    prefixes = list(dict.fromkeys(ipaddress.ip_network((ipaddress.ip_address(a), l), strict=False) for a, l in routes))
    attrs = _v4_attrs() + [med.MED(med_value)]
    msgs = update.encode_updates(attrs, prefixes, four_octet=False)
    decoded = [update.decode(_body(m), False) for m in msgs]
    assert [p for d in decoded for p in d.announced] == prefixes
    assert decoded[0].attributes[med.TYPE].value == med_value
    assert decoded[0].attributes[as_path.TYPE].segments == ((2, (AS_TRANS,)),)  # 2-byte session: AS_TRANS
    assert frame(UPDATE, b"\0\0\0\0")[18] == UPDATE


@pytest.mark.parametrize("addr,why", [
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "in 0/8"), ("127.0.0.9", "loopback"), ("224.0.0.5", "multicast"),
    ("255.255.255.255", "broadcast"), ("240.0.0.1", "class E (240/4)"), ("::", "unspecified"), ("::1", "loopback"),
    ("ff02::5", "multicast"), ("::ffff:255.255.255.255", "broadcast"), ("::ffff:127.0.0.1", "loopback"),
    ("192.0.2.1", None), ("2001:db8::1", None), ("fe80::1", None), ("::ffff:192.0.2.1", None),
])
def test_next_hops_no_router_can_have(addr, why):
    assert next_hop.unusable(ipaddress.ip_address(addr)) == why


def test_next_hop_decode_is_syntax_only():
    # the session judges the address (it knows its own); decoding only checks the length
    assert str(next_hop.decode(b"\xff\xff\xff\xff", True).address) == "255.255.255.255"
    u = update.decode(_update_with(GOOD[:13] + b"\x40\x03\x04\xff\xff\xff\xff"), True)
    assert not u.treat_as_withdraw and u.attributes[next_hop.TYPE].address == ipaddress.ip_address("255.255.255.255")


def _mp(type_: int, value: bytes, flags: int = 0x80) -> bytes:
    return bytes([flags | (0x10 if len(value) > 255 else 0), type_]) + (
        struct.pack("!H", len(value)) if len(value) > 255 else bytes([len(value)])) + value


@pytest.mark.parametrize("afi,safi,value", [
    (1, 128, b"\x0c" + b"\0" * 12 + b"\0" + b"\x70" + b"\x00\x01\x01" + b"\0" * 8 + b"\xcb\x00\x71"),  # VPNv4
    (1, 4, b"\x04\xc0\x00\x02\x02\x00" + b"\x38\x00\x01\x01\xcb\x00\x71"),  # labelled unicast, label 16
    (25, 70, b"\x04\xc0\x00\x02\x02\x00" + b"\x00\x10" + b"\xab" * 16),  # EVPN-ish, any bytes
    (2, 128, b"\x07\x00"),  # next hop overruns: not ours to judge
])
def test_mp_reach_of_other_families_is_kept_raw_never_decoded_as_prefixes(afi, safi, value):
    attrs = GOOD[:13] + _mp(14, struct.pack("!HB", afi, safi) + value)
    u = update.decode(_update_with(attrs, b""), True)
    reach = u.attributes[mp_reach.TYPE]
    assert (reach.afi, reach.safi, reach.nlri, reach.next_hops) == (afi, safi, (), ())
    assert reach.raw == struct.pack("!HB", afi, safi) + value and reach.encode(True) == reach.raw
    assert u.announced == [] and not u.broken


def test_mp_unreach_of_another_family_is_kept_raw_and_is_no_end_of_rib():
    u = update.decode(_update_with(_mp(15, struct.pack("!HB", 1, 128) + b"\x70" + b"\0" * 14), b""), True)
    unreach = u.attributes[15]
    assert unreach.withdrawn == () and unreach.raw and u.withdrawn_all == [] and u.end_of_rib() is None
    eor = update.decode(_update_with(_mp(15, struct.pack("!HB", 1, 128)), b""), True)
    assert eor.end_of_rib() == (1, 128)  # a real End-of-RIB of that family: the session decides what it means


@pytest.mark.parametrize("value", [
    struct.pack("!HBB", 2, 1, 5) + b"\0" * 5 + b"\0" + b"\x40\x20\x01\x0d\xb8\0\0\0\0",  # 5-byte IPv6 next hop
    struct.pack("!HBB", 2, 1, 4) + b"\xc0\x00\x02\x02\x00",  # an IPv4 next hop for IPv6
    struct.pack("!HBB", 2, 1, 40) + b"\0" * 8,  # the next hop overruns the attribute
    struct.pack("!HB", 2, 1),  # no room for a next hop at all
    struct.pack("!HBB", 2, 1, 16) + ipaddress.ip_address("2001:db8::2").packed + b"\0" + b"\x81\x20",  # bad NLRI
])
def test_malformed_mp_reach_of_a_known_family_disables_that_family_only(value):
    u = update.decode(_update_with(GOOD + _mp(14, value)), True)
    assert u.broken == [(2, 1)] and mp_reach.TYPE not in u.attributes
    # the classic IPv4 part of the UPDATE is still usable
    assert not u.treat_as_withdraw and u.announced == [ipaddress.ip_network("203.0.113.7/32")]


def test_malformed_mp_unreach_of_a_known_family_disables_it():
    u = update.decode(_update_with(_mp(15, struct.pack("!HB", 2, 1) + b"\x90\x20\x01"), b""), True)
    assert u.broken == [(2, 1)] and u.end_of_rib() is None


def test_mp_reach_with_wrong_flags_is_treat_as_withdraw_not_a_reset():
    # RFC 7606 3(c): the attribute is parsed to know which routes to withdraw
    value = struct.pack("!HBB", 2, 1, 16) + ipaddress.ip_address("2001:db8::2").packed + b"\0" + b"\x20\x20\x01\x0d\xb8"
    u = update.decode(_update_with(GOOD[:13] + _mp(14, value, flags=0xC0), b""), True)
    assert u.treat_as_withdraw and u.announced == [] and u.withdrawn_all == [ipaddress.ip_network("2001:db8::/32")]
    # MP_UNREACH with wrong flags: its withdrawals still stand, nothing else is withdrawn
    u = update.decode(_update_with(GOOD + _mp(15, struct.pack("!HB", 2, 1) + b"\x20\x20\x01\x0d\xb8", flags=0xC0)), True)
    assert not u.treat_as_withdraw and u.withdrawn_all == [ipaddress.ip_network("2001:db8::/32")]


def test_a_second_mp_reach_is_a_reset_even_when_the_first_was_malformed():
    bad = _mp(14, struct.pack("!HBB", 2, 1, 5) + b"\0" * 6)
    with pytest.raises(BGPError) as e:
        update.decode(_update_with(GOOD + bad + bad, b""), True)
    assert (e.value.code, e.value.subcode) == (3, 1)


def test_as_zero_in_the_path_is_treat_as_withdraw():
    # RFC 7607
    u = update.decode(_update_with(GOOD[:4] + b"\x40\x02\x06\x02\x01\x00\x00\x00\x00" + GOOD[13:]), True)
    assert u.treat_as_withdraw and u.announced == []
