"""The drop probe on the running kernel: real drops made in network namespaces, and the probe must
name the reason and attribute each drop to the right namespace, device and flow.

Every lab is a set of uniquely named namespaces joined by veth pairs, removed in `finally` (with the
processes started in them); traffic goes only to TEST-NET and documentation addresses inside them.
Waits are bounded guards (the kernel counts asynchronously, in softirq), never timing assertions.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, Iterator

import pytest

from dataplane.nslab import Lab
from dataplane.probe.drops import DropProbe, DropStat, RcvbufStat, parse_format, tracefs_event_dir
from dataplane.probe.errors import ProbeUnavailable

pytestmark = pytest.mark.ebpf

GUARD = 15.0  # seconds: an upper bound on waiting for the kernel's counts, not an expectation
PY = sys.executable


@pytest.fixture(scope="module", params=["raw", "tracepoint"])
def probe(request) -> Iterator[DropProbe]:
    """The probe attached both ways: raw (arguments from BTF) and classic (the format file)."""
    p = DropProbe(attach=request.param)
    try:
        p.start()
    except ProbeUnavailable as e:
        pytest.skip(str(e))
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def inode(ns: str) -> int:
    return os.stat(Lab.path(ns)).st_ino


def ifindex(lab: Lab, ns: str, dev: str) -> int:
    out = lab.run(ns, "ip", "-j", "link", "show", "dev", dev).stdout
    return int(json.loads(out)[0]["ifindex"])


def wait_for(probe: DropProbe, cond: Callable[[list[DropStat], list[RcvbufStat]], bool]) -> tuple[list[DropStat], list[RcvbufStat]]:
    deadline = time.monotonic() + GUARD
    while True:
        drops, socks = probe.snapshot()
        if cond(drops, socks) or time.monotonic() > deadline:
            return drops, socks
        time.sleep(0.05)


def pair(lab: Lab) -> tuple[str, str]:
    """Sender a and receiver b on one wire, IPv4 and IPv6."""
    a, b = lab.ns("a"), lab.ns("b")
    lab.veth(a, "va", b, "vb")
    lab.addr(a, "va", "192.0.2.1/24")
    lab.addr(b, "vb", "192.0.2.2/24")
    lab.addr(a, "va", "2001:db8:5::1/64")
    lab.addr(b, "vb", "2001:db8:5::2/64")
    return a, b


SEND = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind(("", int(sys.argv[3])))
payload = bytes.fromhex(sys.argv[5]) if len(sys.argv) > 5 else b"m" * 100
for _ in range(int(sys.argv[4])):
    try:
        s.sendto(payload, (sys.argv[1], int(sys.argv[2])))
    except OSError:
        pass  # ENOBUFS from a full qdisc is what the qdisc test wants
"""


def send(lab: Lab, ns: str, dst: str, dport: int, sport: int, count: int, payload: bytes = b"") -> None:
    args = [PY, "-c", SEND, dst, str(dport), str(sport), str(count)]
    if payload:
        args.append(payload.hex())
    lab.run(ns, *args)


@pytest.mark.parametrize("dst,src", [("192.0.2.2", "192.0.2.1"), ("2001:db8:5::2", "2001:db8:5::1")])
def test_udp_to_closed_port_is_no_socket_in_the_receiver_namespace(probe, lab, dst, src):
    a, b = pair(lab)
    send(lab, a, dst, 5301, 41001, 5)

    def mine(d: DropStat) -> bool:
        k = d.key
        return (k.netns == inode(b) and k.proto == 17 and k.saddr == src and k.daddr == dst
                and k.sport == 41001 and k.dport == 5301)

    drops, _ = wait_for(probe, lambda ds, _s: sum(d.packets for d in ds if mine(d)) >= 5)
    hits = [d for d in drops if mine(d)]
    assert hits, f"no drop of 5301/udp seen in {b}: {[d for d in drops if d.key.netns == inode(b)]}"
    assert all("NO_SOCKET" in d.key.reason for d in hits)
    assert sum(d.packets for d in hits) == 5
    assert {d.key.ifindex for d in hits} == {ifindex(lab, b, "vb")}
    assert not any(d.key.fragment or d.key.frag_bytes for d in hits)
    # 100 bytes of payload + UDP header + IP header
    assert sum(d.bytes for d in hits) == 5 * (108 + (40 if ":" in dst else 20))
    # nothing of this flow is blamed on the sender's namespace
    assert not [d for d in drops if d.key.netns == inode(a) and d.key.dport == 5301]


RECEIVER = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)   # the kernel raises it to its minimum
s.bind((sys.argv[1], int(sys.argv[2])))
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), flush=True)
sys.stdin.read()   # hold the socket and never read from it, until the test closes stdin
"""


def udp_snmp(lab: Lab, ns: str, field: str, v6: bool) -> int:
    """A UDP counter of a namespace from /proc/net/snmp (or snmp6), read inside it."""
    if v6:
        for line in lab.run(ns, "cat", "/proc/net/snmp6").stdout.decode().splitlines():
            name, _, value = line.partition(" ")
            if name == f"Udp6{field}":
                return int(value)
        raise AssertionError(f"Udp6{field} not in /proc/net/snmp6")
    lines = [ln.split() for ln in lab.run(ns, "cat", "/proc/net/snmp").stdout.decode().splitlines() if ln.startswith("Udp:")]
    return int(lines[1][lines[0].index(field)])


@pytest.mark.parametrize("dst", ["192.0.2.2", "2001:db8:5::2"])
def test_tiny_receive_buffer_overflow_is_counted_per_socket(probe, lab, dst):
    a, b = pair(lab)
    port = 5302
    rx = lab.spawn(b, [PY, "-c", RECEIVER, dst, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = rx.stdout.readline()
    assert line, "receiver did not start"
    rcvbuf = int(line)
    v6 = ":" in dst

    def mine(s: RcvbufStat) -> bool:
        return s.netns == inode(b) and s.lport == port

    try:
        send(lab, a, dst, port, 41002, 300)
        # the namespace's own counter, read until the probe has caught up with it (bounded)
        deadline = time.monotonic() + GUARD
        while True:
            errors = udp_snmp(lab, b, "RcvbufErrors", v6)
            drops, socks = probe.snapshot()
            seen = sum(s.drops for s in socks if mine(s))
            if (errors and seen >= errors) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert errors > 0, "the receive buffer never overflowed: nothing to observe"
    finally:
        rx.stdin.close()
        rx.wait(10)
    stats = [s for s in socks if mine(s)]
    assert len(stats) == 1, socks
    st = stats[0]
    assert st.proto == 17
    assert st.laddr == dst
    assert st.rcvbuf == rcvbuf
    assert st.drops == errors          # the namespace's own RcvbufErrors counter, one for one
    flow = [d for d in drops if d.key.netns == inode(b) and d.key.dport == port and d.key.sport == 41002]
    assert {d.key.reason for d in flow} == {"SOCKET_RCVBUFF"}
    assert sum(d.packets for d in flow) == errors
    assert {d.key.ifindex for d in flow} == {ifindex(lab, b, "vb")}


FLOOD = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    try:
        s.sendto(b"q" * 64, (sys.argv[1], 9))
    except OSError:
        pass
"""


def qdisc_dropped(lab: Lab, ns: str, dev: str) -> int:
    out = json.loads(lab.run(ns, "tc", "-s", "-j", "qdisc", "show", "dev", dev).stdout)
    return sum(int(q.get("drops", 0)) for q in out if q.get("root"))


def test_tiny_qdisc_drops_on_the_senders_device(probe, lab):
    a, b = pair(lab)
    # only the test's UDP may use this queue: a link just brought up sends ICMPv6 (MLD, router
    # solicitations), and the one-packet queue drops those too (test_counters saw the same)
    lab.run(a, "sysctl", "-q", "-w", "net.ipv6.conf.va.disable_ipv6=1")
    lab.run(a, "tc", "qdisc", "replace", "dev", "va", "root", "pfifo", "limit", "1")
    # two senders on two CPUs contend for the one-packet queue; repeat (bounded) until it overflows
    for _ in range(10):
        floods = [lab.spawn(a, [PY, "-c", FLOOD, "192.0.2.2", "100000"]) for _ in range(2)]
        for f in floods:
            f.wait(120)
        if qdisc_dropped(lab, a, "va") > 0:
            break
    dropped = qdisc_dropped(lab, a, "va")
    if not dropped:
        pytest.skip("the one-packet pfifo never overflowed on this machine (too few CPUs contending?)")
    va = ifindex(lab, a, "va")

    def mine(d: DropStat) -> bool:
        return d.key.netns == inode(a) and d.key.ifindex == va and d.key.reason.startswith("QDISC")

    drops, _ = wait_for(probe, lambda ds, _s: sum(d.packets for d in ds if mine(d)) >= dropped)
    hits = [d for d in drops if mine(d)]
    assert {d.key.reason for d in hits} == {"QDISC_DROP"}
    assert sum(d.packets for d in hits) == dropped     # tc's own drop counter, one for one
    for d in hits:
        assert (d.key.proto, d.key.saddr, d.key.daddr, d.key.dport) == (17, "192.0.2.1", "192.0.2.2", 9)
        assert d.bytes == d.packets * (64 + 8 + 20)


def gateway_lab(lab: Lab) -> tuple[str, str, str]:
    """a -- g -- b: the gateway g forwards IPv4 and IPv6 between two subnets."""
    a, g, b = lab.ns("a"), lab.ns("gw"), lab.ns("b")
    lab.veth(a, "va", g, "ga")
    lab.veth(g, "gb", b, "vb")
    for ns, dev, cidr in ((a, "va", "192.0.2.1/24"), (g, "ga", "192.0.2.254/24"),
                          (g, "gb", "198.51.100.254/24"), (b, "vb", "198.51.100.1/24"),
                          (a, "va", "2001:db8:1::1/64"), (g, "ga", "2001:db8:1::fe/64"),
                          (g, "gb", "2001:db8:2::fe/64"), (b, "vb", "2001:db8:2::1/64")):
        lab.addr(ns, dev, cidr)
    lab.run(a, "ip", "route", "add", "default", "via", "192.0.2.254")
    lab.run(b, "ip", "route", "add", "default", "via", "198.51.100.254")
    lab.run(a, "ip", "-6", "route", "add", "default", "via", "2001:db8:1::fe")
    lab.run(b, "ip", "-6", "route", "add", "default", "via", "2001:db8:2::fe")
    lab.run(g, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    return a, g, b


# The first-generation gateway of the incident: it dropped every UDP fragment whose 3rd and 4th bytes
# after the IP header were 0x0D 0xAF. nft's @th cannot be read in non-first fragments, so the rule
# uses the network header: byte 22 = 20 (IPv4 header without options) + 2; for IPv6, byte 50 =
# 40 + 8 (fragment header) + 2. Only in the test's own gateway namespace.
GATEWAY_RULES = b"""
table inet moor_test_gateway {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ip frag-off & 0x3fff != 0 @nh,176,16 0x0daf counter drop
        ip6 nexthdr ipv6-frag @nh,400,16 0x0daf counter drop
    }
}
"""


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_fragments_dropped_by_the_gateway_carry_their_bytes(probe, lab, v6):
    nft = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    if nft is None:
        pytest.skip("nft (nftables) is not installed")
    a, g, b = gateway_lab(lab)
    r = lab.run(g, nft, "-f", "-", input=GATEWAY_RULES, check=False)
    if r.returncode != 0:
        pytest.skip(f"nftables rule not accepted here: {r.stderr.decode().strip()}")
    src, dst = ("2001:db8:1::1", "2001:db8:2::1") if v6 else ("192.0.2.1", "198.51.100.1")
    # One 2000-byte datagram over a 1500-byte MTU leaves the sender in two fragments. The second
    # starts at byte `frag` of the UDP datagram (IPv4: 1480, IPv6: 1448, multiples of 8); the
    # datagram's payload begins after the 8-byte UDP header, so the pattern sits at frag - 8 + 2.
    # The first fragment's bytes 2-3 are the destination port (7000 = 0x1b58) and pass.
    frag = (1500 - 40 - 8) & ~7 if v6 else (1500 - 20) & ~7
    payload = bytearray(2000)
    payload[frag - 8 + 2:frag - 8 + 4] = b"\x0d\xaf"
    send(lab, a, dst, 7000, 41004, 1, bytes(payload))

    def mine(d: DropStat) -> bool:
        return d.key.netns == inode(g) and d.key.saddr == src and d.key.daddr == dst

    drops, _ = wait_for(probe, lambda ds, _s: any(mine(d) for d in ds))
    hits = [d for d in drops if mine(d)]
    assert len(hits) == 1, hits
    d = hits[0]
    assert d.key.reason == "NETFILTER_DROP"
    assert d.key.fragment is True
    assert d.key.frag_bytes == "0daf"
    assert d.key.proto == 17
    assert (d.key.sport, d.key.dport) == (0, 0)        # a non-first fragment has no UDP header
    assert d.key.ifindex == ifindex(lab, g, "ga")       # the gateway's ingress device
    assert d.packets == 1
    hdr = 40 + 8 if v6 else 20
    assert d.bytes == hdr + (2000 + 8 - frag)
    # the first fragment was not dropped at the gateway
    assert not [x for x in drops if x.key.netns == inode(g) and x.key.frag_bytes == "1b58"]


def test_reason_names_come_from_the_running_kernel(probe):
    names = probe.reasons()
    by_name = {n: v for v, n in names.items()}
    for name in ("NOT_SPECIFIED", "NO_SOCKET", "SOCKET_RCVBUFF", "NETFILTER_DROP", "QDISC_DROP"):
        assert name in by_name
    # the tracepoint's own table (printed by the kernel) agrees with BTF
    tp = tracefs_event_dir("skb", "kfree_skb")
    assert tp is not None
    symbols = parse_format((tp / "format").read_text())[1]
    for value, name in symbols.items():
        assert names.get(value) == name


def test_attached_the_way_asked(probe, request):
    mode = request.node.callspec.params["probe"]
    assert probe.attached_as == {"raw": "raw_tracepoint", "tracepoint": "tracepoint"}[mode]


def started(**kw) -> DropProbe:
    p = DropProbe(**kw)
    try:
        p.start()
    except ProbeUnavailable as e:
        pytest.skip(str(e))
    return p


def test_a_full_flow_map_counts_the_rest_as_overflow(lab):
    p = started(max_flows=2)
    try:
        a, b = pair(lab)
        for sport in range(41100, 41108):          # eight flows, eight keys
            send(lab, a, "192.0.2.2", 5303, sport, 1)
        assert udp_snmp(lab, b, "NoPorts", False) == 8

        def mine(d: DropStat) -> bool:
            return d.key.netns == inode(b) and d.key.dport == 5303

        deadline = time.monotonic() + GUARD
        while True:
            drops, _ = p.snapshot()
            over = p.overflow()[0]
            in_map = sum(d.packets for d in drops if mine(d))
            if in_map + over >= 8 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(drops) <= 2                     # the map never grows past its size
        assert over >= 8 - 2                       # what did not fit is counted, not lost
        assert in_map + over >= 8
    finally:
        p.close()


def test_ignored_reasons_are_not_counted(lab):
    p = started(ignore=("NO_SOCKET",))
    try:
        a, b = pair(lab)
        send(lab, a, "192.0.2.2", 5304, 41200, 3)
        assert udp_snmp(lab, b, "NoPorts", False) == 3
        # a drop this probe does count, sent after the ignored ones, marks when they are all in
        lab.run(a, "tc", "qdisc", "replace", "dev", "va", "root", "pfifo", "limit", "0")
        send(lab, a, "192.0.2.2", 5305, 41201, 1)

        def marker(ds: list[DropStat], _s) -> bool:
            return any(d.key.netns == inode(a) and d.key.dport == 5305 for d in ds)

        drops, _ = wait_for(p, marker)
        assert marker(drops, [])
        assert not [d for d in drops if d.key.reason == "NO_SOCKET"]
    finally:
        p.close()


# Times. The probe stamps each aggregate in the kernel (jiffies) and snapshot() converts the stamps
# to unix seconds; eps() is the stamps' own resolution (probe.time_error_s: two ticks) plus a
# millisecond for the conversion, well below the time a sender process takes to start.
def eps(probe: DropProbe) -> float:
    return probe.time_error_s + 1e-3


def _one(items: list, pred) -> object:
    hits = [x for x in items if pred(x)]
    assert len(hits) == 1, hits
    return hits[0]


def test_a_flow_aggregate_keeps_its_first_and_last_drop_time(probe, lab):
    a, b = pair(lab)
    EPS = eps(probe)

    def mine(d: DropStat) -> bool:
        return d.key.netns == inode(b) and d.key.dport == 5306 and d.key.sport == 41300

    t0 = time.time()
    send(lab, a, "192.0.2.2", 5306, 41300, 3)
    drops, _ = wait_for(probe, lambda ds, _s: sum(d.packets for d in ds if mine(d)) >= 3)
    t1 = time.time()
    first = _one(drops, mine)
    assert first.packets == 3 and first.key.reason == "NO_SOCKET"
    assert t0 - EPS <= first.first_seen <= first.last_seen <= t1 + EPS

    time.sleep(0.2)   # a gap between the bursts, so the second one's stamps are apart from the first's
    t2 = time.time()
    send(lab, a, "192.0.2.2", 5306, 41300, 2)             # the same flow: the same aggregate
    drops, _ = wait_for(probe, lambda ds, _s: sum(d.packets for d in ds if mine(d)) >= 5)
    t3 = time.time()
    later = _one(drops, mine)
    assert later.packets == 5
    assert later.first_seen == pytest.approx(first.first_seen, abs=EPS)   # the first drop stays
    assert t2 - EPS <= later.last_seen <= t3 + EPS                       # the last one moved on
    assert later.last_seen > first.last_seen
    assert later.first_seen <= later.last_seen


def test_a_socket_entry_keeps_its_first_and_last_overflow_time(probe, lab):
    a, b = pair(lab)
    EPS = eps(probe)
    port, dst = 5307, "192.0.2.2"
    rx = lab.spawn(b, [PY, "-c", RECEIVER, dst, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert rx.stdout.readline(), "receiver did not start"

    def sock(s: RcvbufStat) -> bool:
        return s.netns == inode(b) and s.lport == port

    def flow(d: DropStat) -> bool:
        return d.key.netns == inode(b) and d.key.dport == port and d.key.reason == "SOCKET_RCVBUFF"

    def burst(count: int) -> tuple[float, float, list[DropStat], RcvbufStat]:
        """Send, then wait until the probe counts every overflow the namespace counted."""
        t0 = time.time()
        send(lab, a, dst, port, 41301, count)
        deadline = time.monotonic() + GUARD
        while True:
            errors = udp_snmp(lab, b, "RcvbufErrors", False)
            drops, socks = probe.snapshot()
            seen = sum(s.drops for s in socks if sock(s))
            if (errors and seen >= errors and sum(d.packets for d in drops if flow(d)) >= errors) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        t1 = time.time()
        assert errors > 0, "the receive buffer never overflowed: nothing to observe"
        return t0, t1, drops, _one(socks, sock)

    try:
        t0, t1, drops, s1 = burst(300)
        f1 = _one(drops, flow)
        for x in (s1, f1):
            assert t0 - EPS <= x.first_seen <= x.last_seen <= t1 + EPS
        time.sleep(0.2)
        t2, t3, drops, s2 = burst(300)   # the receiver never reads: its queue is still full
        f2 = _one(drops, flow)
    finally:
        rx.stdin.close()
        rx.wait(10)
    assert s2.drops > s1.drops and f2.packets > f1.packets
    for old, new in ((s1, s2), (f1, f2)):
        assert new.first_seen == pytest.approx(old.first_seen, abs=EPS)
        assert t2 - EPS <= new.last_seen <= t3 + EPS
        assert new.last_seen > old.last_seen


def test_the_agent_api_carries_the_drop_times(probe, lab):
    """server.py's Drops reply: the probe's first/last seen on every Drop and RcvbufOverflow."""
    from dataplane.api.server import AgentService

    class View:
        def drop_snapshot(self):
            return (*probe.snapshot(), "")

        def pods(self):
            return {}, {}

    a, b = pair(lab)
    EPS = eps(probe)
    t0 = time.time()
    send(lab, a, "192.0.2.2", 5308, 41302, 2)
    wait_for(probe, lambda ds, _s: sum(d.packets for d in ds if d.key.netns == inode(b) and d.key.dport == 5308) >= 2)
    reply = AgentService(View())._drops()
    t1 = time.time()
    mine = [d for d in reply.drops if d.netns == inode(b) and d.dport == 5308]
    assert len(mine) == 1 and mine[0].packets == 2
    assert t0 - EPS <= mine[0].first_seen <= mine[0].last_seen <= t1 + EPS
    assert all(0 < d.first_seen <= d.last_seen for d in reply.drops)
    assert all(0 < r.first_seen <= r.last_seen for r in reply.rcvbuf)


def test_without_a_known_hz_drop_times_come_from_the_boot_clock(lab, monkeypatch):
    """No kernel config and no /proc/timer_list: the probe stamps CLOCK_BOOTTIME ns (a helper call
    per drop) instead of jiffies, says so, and its times are as right (finer, even)."""
    from dataplane.probe import drops as drops_mod
    monkeypatch.setattr(drops_mod.JiffiesClock, "calibrate", classmethod(lambda cls: None))
    p = started()
    try:
        assert any("HZ unknown" in x for x in p.limitations), p.limitations
        a, b = pair(lab)
        EPS = eps(p)
        t0 = time.time()
        send(lab, a, "192.0.2.2", 5309, 41303, 2)

        def mine(d: DropStat) -> bool:
            return d.key.netns == inode(b) and d.key.dport == 5309

        drops, _ = wait_for(p, lambda ds, _s: sum(d.packets for d in ds if mine(d)) >= 2)
        t1 = time.time()
        d = _one(drops, mine)
        assert d.packets == 2
        assert t0 - EPS <= d.first_seen <= d.last_seen <= t1 + EPS
    finally:
        p.close()
