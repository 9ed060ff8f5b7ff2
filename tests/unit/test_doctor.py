"""netdiag doctor on constructed evidence: each known UDP-loss case ranks its own cause first, with
the numbers in the evidence and a concrete remedy; adapters from the probe's types."""
from __future__ import annotations

import dataclasses
import time

import pytest

from dataplane.counters import (Conntrack, HostCounters, IpCounters, LinkStats, NetnsCounters, NetSysctls,
                                QdiscStats, Snapshot, SoftnetStat, UdpCounters, UdpSocket)
from dataplane.netdiag.doctor import CAUSES, Finding, diagnose, score
from dataplane.netdiag.evidence import (Evidence, FlowDrop, Session, SessionPressure, SocketDrop, flow_drop,
                                        gather, pressure, session, socket_drop)

NOW = 1_700_000_000.0


def ns(name: str, inode: int, pod: str = "", udp: dict | None = None, ip: dict | None = None, **kw) -> NetnsCounters:
    n = NetnsCounters(name=name, path=f"/run/netns/{name}", inode=inode, pod=pod,
                      udp=UdpCounters(**(udp or {})), ip=IpCounters(**(ip or {})),
                      sysctls=NetSysctls(rmem_default=212992, rmem_max=212992, wmem_default=212992,
                                         wmem_max=212992, udp_rmem_min=4096))
    for k, v in kw.items():
        setattr(n, k, v)
    return n


def snap(*netns: NetnsCounters, taken: float = 100.0, softnet: list | None = None) -> Snapshot:
    host = HostCounters(softnet=softnet or [SoftnetStat(cpu=0, processed=10_000, dropped=0, time_squeeze=0),
                                             SoftnetStat(cpu=1, processed=10_000, dropped=0, time_squeeze=0)],
                        netdev_max_backlog=1000, netdev_budget=300, netdev_budget_usecs=2000,
                        udp_mem=(1000, 2000, 3000), udp_mem_pages=10)
    return Snapshot(taken=taken, wall=NOW, host=host, netns=list(netns))


def noise() -> NetnsCounters:
    """A neighbour namespace with a little of everything that is not the case under test."""
    return ns("other", 900, udp={"no_ports": 40}, ip={"out_no_routes": 3},
              links=[LinkStats(index=2, name="eth0", kind="veth", rx_dropped=7)])


def first(ev: Evidence) -> Finding:
    findings = diagnose(ev)
    assert findings, "no findings"
    return findings[0]


def test_every_finding_carries_a_known_cause_evidence_and_a_remedy():
    ev = Evidence(snapshot=snap(noise(), ns("rx", 1, udp={"rcvbuf_errors": 10, "no_ports": 5})), now=NOW)
    for f in diagnose(ev):
        assert f.cause in CAUSES and f.evidence and f.remedy and f.score == score(f)


# -- the known cases ------------------------------------------------------------------------------


def test_receive_buffer_too_small_names_the_socket_pod_and_sizes():
    sock = UdpSocket(family=4, laddr="0.0.0.0", lport=5001, raddr="0.0.0.0", rport=0, state="UNCONN", inode=77,
                     rx_queue=4480, rcvbuf=4608, drops=15_230, pid=4242, comm="server")
    rx = ns("cni-1", 1, pod="a/web-0", udp={"rcvbuf_errors": 15_230, "in_errors": 15_230, "in_datagrams": 900},
            sockets=[sock])
    s = snap(noise(), rx)
    ev = Evidence(snapshot=s, socket_drops=[socket_drop(d) for d in _kernel_drops(s)], now=NOW)
    f = first(ev)
    assert f.cause == "rcvbuf" and f.where == "pod a/web-0" and f.volume == 15_230
    assert "0.0.0.0:5001" in f.title
    assert any("4,608 B" in e and "4242 server" in e for e in f.evidence)
    assert f.remedy[0].startswith("raise SO_RCVBUF of 0.0.0.0:5001 in pod a/web-0 from 4608 to ≥ 262144 bytes")
    # rmem_max (212992) is above what it needs: no sysctl; the application chose the small size itself
    assert not any("rmem_max" in r for r in f.remedy)
    assert any("the application sets this small buffer itself" in r for r in f.remedy)


def test_receive_buffer_remedy_follows_the_drop_rate_and_raises_rmem_max():
    def rx(drops: int) -> NetnsCounters:
        sock = UdpSocket(family=4, laddr="198.51.100.2", lport=9000, raddr="0.0.0.0", rport=0, state="UNCONN",
                         inode=5, rcvbuf=212992, drops=drops)
        return ns("rx", 1, udp={"rcvbuf_errors": drops}, sockets=[sock])
    s0, s1 = snap(rx(1000), taken=100.0), snap(rx(51_000), taken=102.0)  # 25,000 drops/s
    ev = Evidence(snapshot=s1, previous=s0, socket_drops=_kernel_drops(s1),
                  previous_socket_drops=_kernel_drops(s0), now=NOW)
    f = first(ev)
    assert f.cause == "rcvbuf" and f.rate == 25_000
    assert "drops at the current rate 25,000/s" in f.remedy[0]
    # 4x the buffer, or the buffer plus 250 ms of the drop rate at ~2.3 kB each: the larger, rounded up
    want = 1 << (int(max(4 * 212992, 212992 + 0.25 * 25_000 * 2304)) - 1).bit_length()
    assert f"to ≥ {want} bytes" in f.remedy[0]
    assert any(f"net.core.rmem_max={want}" in r and r.startswith("ip netns exec rx ") for r in f.remedy)
    assert any(f"net.core.rmem_default={want} (now 212992)" in r for r in f.remedy)  # it has the default size


def test_overflows_of_closed_sockets_still_name_the_namespace():
    f = first(Evidence(snapshot=snap(noise(), ns("rx", 1, udp={"rcvbuf_errors": 300})), now=NOW))
    assert f.cause == "rcvbuf" and f.where == "netns rx" and "rmem_default" in " ".join(f.remedy)


def test_qdisc_drops_name_the_interface_its_limit_and_absorb_sndbuf_errors():
    q = QdiscStats(ifindex=3, ifname="veth-tx", kind="pfifo", handle="8001:", parent="root", root=True,
                   packets=100_000, drops=3_000, limit=1, limit_unit="packets", txqueuelen=1000)
    tx = ns("tx", 1, udp={"sndbuf_errors": 3_000, "out_datagrams": 103_000}, qdiscs=[q])
    findings = diagnose(Evidence(snapshot=snap(noise(), tx), now=NOW))
    f = findings[0]
    assert f.cause == "host-queue" and "veth-tx" in f.title and f.volume == 3_000
    assert any("limit 1 packets" in e for e in f.evidence) and any("SndbufErrors 3,000" in e for e in f.evidence)
    assert "ip netns exec tx tc qdisc replace dev veth-tx root pfifo limit 1000" in f.remedy[0]
    assert not any("UDP sends failed" in x.title for x in findings)  # explained by the queue


def test_softnet_backlog_overflow_is_a_host_finding_with_netdev_max_backlog():
    softnet = [SoftnetStat(cpu=0, processed=10**6, dropped=8_000, time_squeeze=50),
               SoftnetStat(cpu=1, processed=10**6, dropped=100, time_squeeze=0)]
    f = first(Evidence(snapshot=snap(noise(), softnet=softnet), now=NOW))
    assert f.cause == "host-queue" and f.scope == "host" and f.volume == 8_100
    assert "net.core.netdev_max_backlog=4096 (now 1000)" in f.remedy[0]
    assert any("netdev_budget" in r for r in f.remedy) and any("cpu0 takes most" in r for r in f.remedy)
    assert any("per host, not per network namespace" in e for e in f.evidence)


def test_nic_ring_overflow_is_a_queue_finding():
    lk = LinkStats(index=2, name="eth1", rx_missed_errors=5_000, rx_fifo_errors=10)
    f = first(Evidence(snapshot=snap(noise(), ns("node", 1, links=[lk])), now=NOW))
    assert f.cause == "host-queue" and "ethtool -G eth1 rx" in f.remedy[0]


def test_vpc_session_table_near_its_limit():
    p = SessionPressure(active=9_800, limit=10_000, by_netns={"a/dns-0": 7_000, "b/api-1": 2_800},
                        growth_per_min=50, aging_s=180)
    f = first(Evidence(snapshot=snap(noise()), pressure=p, now=NOW))
    assert f.cause == "session-limit" and f.unit == "sessions"
    assert f.remedy[0] == ("raise the VPC session limit or shorten UDP session aging (now 180 s): 9,800 active vs "
                           "limit 10,000")
    assert any("full in about 4 min" in e for e in f.evidence) and any("a/dns-0 (7,000)" in e for e in f.evidence)


def test_vpc_session_table_well_below_its_limit_is_no_finding():
    p = SessionPressure(active=1_000, limit=10_000, aging_s=180)
    assert not [f for f in diagnose(Evidence(snapshot=snap(), pressure=p, now=NOW)) if f.cause == "session-limit"]


def test_conntrack_full_is_a_session_table_finding():
    n = ns("node", 1, conntrack=Conntrack(count=262_144, max=262_144, drop=900))
    f = first(Evidence(snapshot=snap(noise(), n), now=NOW))
    assert f.cause == "session-limit" and "nf_conntrack_max=524288" in f.remedy[0]


def _frag(saddr: str, daddr: str, sport: int, dport: int, pat: str, packets: int, netns: int = 1) -> FlowDrop:
    return FlowDrop(reason="SKB_DROP_REASON_FRAG_REASM_TIMEOUT", netns=netns, ifindex=2, proto=17, saddr=saddr,
                    daddr=daddr, sport=sport, dport=dport, fragment=True, frag_bytes=pat, packets=packets)


def test_fragments_with_one_byte_pattern_across_flows_point_at_a_middlebox():
    drops = [_frag("192.0.2.10", "198.51.100.5", 40000, 0, "0daf", 120),
             _frag("192.0.2.11", "198.51.100.5", 40001, 0, "0daf", 80),
             _frag("192.0.2.12", "198.51.100.6", 40002, 0, "0daf", 60),
             _frag("192.0.2.13", "198.51.100.6", 40003, 0, "1a2b", 2)]
    noise_drop = FlowDrop(reason="SKB_DROP_REASON_NO_SOCKET", netns=900, ifindex=2, proto=17, saddr="192.0.2.99",
                          daddr="198.51.100.9", sport=1, dport=7, packets=500)
    s = snap(noise(), ns("rx", 1, ip={"reasm_fails": 262}, links=[LinkStats(index=2, name="eth0")]))
    ev = Evidence(snapshot=s, flow_drops=drops + [noise_drop], now=NOW)
    for d in ev.flow_drops:
        d.ifname = "eth0" if d.netns == 1 else ""
    f = first(ev)
    assert f.cause == "fragment-pattern" and f.volume == 260
    assert "0x0DAF" in f.title and any("(3503)" in e and "3 flows" in e for e in f.evidence)
    assert f.remedy[0].startswith("the fragments with bytes 0x0DAF after the IP header are dropped in netns rx: "
                                  "avoid fragmentation")
    assert any("dropped at: FRAG_REASM_TIMEOUT on eth0 in netns rx" in e for e in f.evidence)


def test_a_pattern_in_one_flow_only_is_not_a_middlebox():
    drops = [_frag("192.0.2.10", "198.51.100.5", 40000, 0, "0daf", 120)]
    findings = diagnose(Evidence(snapshot=snap(ns("rx", 1)), flow_drops=drops, now=NOW))
    assert findings[0].cause == "generic" and "no common byte pattern" in findings[0].title


def test_non_first_fragments_without_ports_sharing_bytes_are_a_pattern():
    # what the probe reports for non-first fragments: no ports, so several sockets look like one flow
    drops = [_frag("192.0.2.1", "198.51.100.1", 0, 0, "0daf", 9), _frag("192.0.2.1", "198.51.100.1", 0, 0, "0000", 2)]
    findings = diagnose(Evidence(snapshot=snap(ns("gw", 1)), flow_drops=drops, now=NOW))
    assert findings[0].cause == "fragment-pattern" and "0x0DAF" in findings[0].title


def _long_lived() -> Session:
    return Session(netns=7, proto=17, saddr="203.0.113.5", sport=5060, daddr="198.51.100.20", dport=5060,
                   first_seen=NOW - 7200, last_seen=NOW - 1, where="pod voip/sbc-0")


def test_a_long_lived_session_whose_packets_are_dropped_is_stale():
    s = _long_lived()
    dropped = FlowDrop(reason="SKB_DROP_REASON_NEIGH_FAILED", netns=7, ifindex=0, proto=17, saddr=s.saddr,
                       sport=s.sport, daddr=s.daddr, dport=s.dport, packets=40)
    p = SessionPressure(active=500, limit=10_000, long_lived=[s], aging_s=180)
    ev = Evidence(snapshot=snap(ns("big", 1, udp={"no_ports": 5_000})), flow_drops=[dropped], pressure=p, now=NOW)
    f = first(ev)
    assert f.cause == "stale-session" and f.where == "pod voip/sbc-0" and f.volume == 40
    assert "203.0.113.5:5060 → 198.51.100.20:5060" in f.title
    assert any("alive for 2 h 0 min" in e and "never ages out" in e for e in f.evidence)
    assert f.remedy[0].startswith("restart/rebind the socket or change the source port to get a fresh session")


def test_a_long_lived_session_without_replies_while_new_flows_get_them_is_stale():
    s = _long_lived()
    other = Session(netns=7, proto=17, saddr="203.0.113.5", sport=40000, daddr=s.daddr, dport=5060,
                    first_seen=NOW - 60, last_seen=NOW - 1)
    reply = Session(netns=7, proto=17, saddr=s.daddr, sport=5060, daddr="203.0.113.5", dport=40000,
                    first_seen=NOW - 60, last_seen=NOW - 2)
    old_reply = Session(netns=7, proto=17, saddr=s.daddr, sport=5060, daddr=s.saddr, dport=5060,
                        first_seen=NOW - 7200, last_seen=NOW - 3600)
    p = SessionPressure(active=4, limit=0, long_lived=[s], aging_s=180)
    ev = Evidence(snapshot=snap(noise()), sessions=[s, other, reply, old_reply], pressure=p, now=NOW)
    f = first(ev)
    assert f.cause == "stale-session" and f.unit == "seconds" and f.volume == 3599
    assert any("no reply seen for 59 min" in e and "1 newer flow(s)" in e for e in f.evidence)


def test_a_long_lived_session_whose_last_reception_is_old_is_stale():
    s = dataclasses.replace(_long_lived(), last_rx=NOW - 1800)
    new = Session(netns=7, proto=17, saddr=s.saddr, sport=41000, daddr=s.daddr, dport=5060, first_seen=NOW - 30,
                  last_seen=NOW - 1, last_rx=NOW - 1)
    p = SessionPressure(active=2, limit=0, long_lived=[s], aging_s=180)
    f = first(Evidence(snapshot=snap(noise()), sessions=[s, new], pressure=p, now=NOW))
    assert f.cause == "stale-session" and f.volume == 1799 and f.severity == 5


def test_long_lived_sessions_without_direction_or_drops_are_only_a_risk_note():
    s = _long_lived()  # the probe's sessions: one per request and reply, no direction
    p = SessionPressure(active=1, limit=0, long_lived=[s], aging_s=180)
    f = first(Evidence(snapshot=snap(ns("rx", 1, udp={"no_ports": 3})), sessions=[s], pressure=p, now=NOW))
    assert f.cause == "no-listener"  # a risk note (severity 1) ranks below real drops
    risk = [x for x in diagnose(Evidence(snapshot=snap(), sessions=[s], pressure=p, now=NOW))]
    assert [(x.cause, x.severity) for x in risk] == [("stale-session", 1)]


def test_a_long_lived_session_that_gets_replies_is_healthy():
    s = _long_lived()
    reply = Session(netns=7, proto=17, saddr=s.daddr, sport=5060, daddr=s.saddr, dport=5060,
                    first_seen=NOW - 7200, last_seen=NOW - 1)
    p = SessionPressure(active=2, limit=0, long_lived=[s], aging_s=180)
    assert not diagnose(Evidence(snapshot=snap(), sessions=[s, reply], pressure=p, now=NOW))


def test_no_listener_from_the_counters():
    n = ns("rx", 1, udp={"no_ports": 200}, ip={"out_dest_unreachs": 200},
           sockets=[UdpSocket(family=4, laddr="0.0.0.0", lport=53, raddr="0.0.0.0", rport=0, state="UNCONN",
                              inode=1)])
    f = first(Evidence(snapshot=snap(n), now=NOW))
    assert f.cause == "no-listener" and f.where == "netns rx" and f.volume == 200
    assert any("listening now: 0.0.0.0:53" in r for r in f.remedy)
    assert any("ip netns exec rx tcpdump" in r for r in f.remedy)


def test_no_listener_from_the_probe_names_port_and_senders():
    drops = [FlowDrop(reason="SKB_DROP_REASON_NO_SOCKET", netns=1, ifindex=2, proto=17, saddr=f"192.0.2.{i}",
                      sport=30000 + i, daddr="198.51.100.2", dport=5353, packets=10 * i) for i in range(1, 5)]
    n = ns("rx", 1, udp={"no_ports": 100})
    findings = diagnose(Evidence(snapshot=snap(n), flow_drops=drops, now=NOW))
    assert [f.cause for f in findings] == ["no-listener"]  # the counter finding is the same drops
    assert "udp 198.51.100.2:5353" in findings[0].title and findings[0].volume == 100


def test_netfilter_drops_are_generic_and_say_moor_writes_no_rules():
    drops = [FlowDrop(reason="SKB_DROP_REASON_NETFILTER_DROP", netns=1, ifindex=2, proto=17, saddr="192.0.2.1",
                      sport=1000, daddr="198.51.100.2", dport=53, packets=50)]
    f = first(Evidence(snapshot=snap(ns("rx", 1)), flow_drops=drops, now=NOW))
    assert f.cause == "generic" and "moor writes none" in f.remedy[0]


def test_nothing_wrong_is_no_finding():
    assert diagnose(Evidence(snapshot=snap(ns("quiet", 1), ns("calm", 2)), now=NOW)) == []


@dataclasses.dataclass
class Source:
    """A data source (evidence.Source) that answers with what it was given."""
    snapshot: Snapshot
    drops: list = dataclasses.field(default_factory=list)
    sessions: list = dataclasses.field(default_factory=list)
    pressure: object = None
    name: str = "test"

    def __post_init__(self):
        given = (self.snapshot, self.drops, self.sessions, self.pressure)
        self.counters, self.drops, self.sessions, self.pressure = (lambda v=v: v for v in given)
        self.rcvbuf = self.unavailable = lambda: []


# -- ranking ---------------------------------------------------------------------------------------


def test_severity_dominates_then_volume_and_ongoing_before_history():
    # many NoPorts (severity 2) do not outrank a moderate receive-buffer overflow (severity 4)
    f = first(Evidence(snapshot=snap(ns("a", 1, udp={"no_ports": 100_000}), ns("b", 2, udp={"rcvbuf_errors": 500})),
                       now=NOW))
    assert f.cause == "rcvbuf"
    # not even when only the no-listener drops still grow and the overflow is seconds-old history: a
    # cause that breaks a service outranks background noise whatever its rate
    s0 = snap(ns("a", 1, udp={"no_ports": 50_000}), ns("b", 2, udp={"rcvbuf_errors": 500}), taken=100.0)
    s1 = snap(ns("a", 1, udp={"no_ports": 1_000_000}), ns("b", 2, udp={"rcvbuf_errors": 500}), taken=101.0)
    findings = diagnose(Evidence(snapshot=s1, previous=s0, now=NOW))
    assert [f.cause for f in findings] == ["rcvbuf", "no-listener"]
    assert findings[0].rate == 0 and findings[1].rate == 950_000
    # within one severity, what still happens ranks before history of the same size
    s0 = snap(ns("a", 1, udp={"rcvbuf_errors": 500}), ns("b", 2, udp={"rcvbuf_errors": 500}), taken=100.0)
    s1 = snap(ns("a", 1, udp={"rcvbuf_errors": 500}), ns("b", 2, udp={"rcvbuf_errors": 900}), taken=101.0)
    assert [f.where for f in diagnose(Evidence(snapshot=s1, previous=s0, now=NOW))] == ["netns b", "netns a"]


def test_named_namespaces_rank_before_host_wide_counters():
    softnet = [SoftnetStat(cpu=0, processed=10**6, dropped=90_000, time_squeeze=0)]
    ev = Evidence(snapshot=snap(ns("rx", 1, udp={"no_ports": 20}), softnet=softnet), now=NOW)
    assert first(ev).scope == "host"
    ev.scoped = True
    assert first(ev).cause == "no-listener"


def _flow(reason: str, netns: int, saddr: str, daddr: str, dport: int, packets: int, proto: int = 17,
          last: float = NOW - 1, **kw) -> FlowDrop:
    return FlowDrop(reason=f"SKB_DROP_REASON_{reason}", netns=netns, ifindex=2, proto=proto, saddr=saddr,
                    daddr=daddr, sport=40000 if proto == 17 else 0, dport=dport, packets=packets,
                    first_seen=last - 30, last_seen=last, **kw)


def _busy() -> list[FlowDrop]:
    """What a busy node drops all the time: another namespace's closed port at 200/s, and the
    ICMPv6 of links and namespaces coming and going, in the host and elsewhere."""
    return [_flow("NO_SOCKET", 900, "198.51.100.7", "198.51.100.9", 9999, 60_000),
            _flow("NOT_SPECIFIED", 4026531840, "fe80::1", "ff02::16", 0, 3_000, proto=58),
            _flow("NOT_SPECIFIED", 4026531840, "::", "ff02::1:ff00:1", 0, 400, proto=58),
            _flow("IPV6DISABLED", 900, "fe80::2", "ff02::2", 0, 80, proto=58)]


def test_asked_about_one_namespace_its_cause_comes_first_on_a_busy_node():
    """The review's case: asked about GW (through the agent), another namespace dropping ~200/s at a
    closed port and the host's ICMPv6 background outranked a fragment pattern and a receive-buffer
    overflow of GW itself, a few seconds old."""
    gw = ns("gw", 1)
    old = NOW - 8  # the cause stopped 8 s ago; the background goes on
    frags = [_flow("NETFILTER_DROP", 1, f"198.51.100.{i}", "203.0.113.5", 0, 40, last=old, fragment=True,
                   frag_bytes="0daf") for i in (2, 3, 4)]
    rcv = _flow("SOCKET_RCVBUFF", 1, "198.51.100.2", "198.51.100.1", 5001, 900, last=old)
    ev = Evidence(snapshot=snap(gw, noise(), taken=101.0), previous=snap(gw, noise(), taken=100.0),
                  previous_flow_drops=_busy() + frags + [rcv], now=NOW, scoped=True)
    busy = _busy()
    for d in busy:
        d.packets += 200  # still dropping
    ev.flow_drops = busy + frags + [rcv]
    ev.snapshot.netns = [gw]  # scoped: the counters of the named namespace only
    findings = diagnose(ev)
    assert [f.cause for f in findings[:2]] == ["fragment-pattern", "rcvbuf"]
    assert not findings[0].elsewhere and findings[0].netns == 1 and "last drop 8 s ago" in " ".join(findings[0].evidence)
    elsewhere = [f for f in findings if f.elsewhere]
    assert [f.cause for f in elsewhere] == ["no-listener"] and elsewhere[0].rate == 200
    assert findings[-1].cause == "noise" and findings[-1].volume == 3_480 + 3 * 200
    # unscoped, severity still dominates: the busy background never outranks the causes
    ev.scoped = False
    assert [f.cause for f in diagnose(ev)[:2]] == ["fragment-pattern", "rcvbuf"]


def test_since_keeps_only_drops_the_probe_saw_in_the_window():
    from dataplane.netdiag.evidence import gather

    def src():
        return Source(snap(ns("a", 1)), drops=[
            _flow("SOCKET_RCVBUFF", 1, "198.51.100.2", "198.51.100.1", 5001, 900, last=time.time() - 300),
            _flow("NO_SOCKET", 1, "198.51.100.2", "198.51.100.1", 53, 9, last=time.time() - 5)])
    assert [f.cause for f in diagnose(gather(src()))] == ["rcvbuf", "no-listener"]
    assert [f.cause for f in diagnose(gather(src(), since=60))] == ["no-listener"]


# -- adapters from the probe's types ---------------------------------------------------------------


def _kernel_drops(s: Snapshot) -> list[SocketDrop]:
    from dataplane.netdiag.evidence import kernel_socket_drops
    return kernel_socket_drops(s)


def test_adapters_take_the_probes_drop_types():
    drops = pytest.importorskip("dataplane.probe.drops")
    key = drops.DropKey(reason="SKB_DROP_REASON_SOCKET_RCVBUFF", netns=1, ifindex=2, proto=17, saddr="192.0.2.1",
                        daddr="198.51.100.2", sport=4000, dport=5001, fragment=False, frag_bytes="")
    fd = flow_drop(drops.DropStat(key=key, packets=10, bytes=10_000), {1: "pod a/web-0"})
    assert (fd.short_reason, fd.where, fd.dport, fd.packets) == ("SOCKET_RCVBUFF", "pod a/web-0", 5001, 10)
    rb = socket_drop(drops.RcvbufStat(netns=1, proto=17, laddr="0.0.0.0", lport=5001, rcvbuf=4608, drops=10))
    assert (rb.local, rb.rcvbuf, rb.drops) == ("0.0.0.0:5001", 4608, 10)


def test_adapters_take_the_probes_session_types():
    sessions = pytest.importorskip("dataplane.probe.sessions")
    flow = sessions.Flow(netns_cookie=9, proto=17, saddr="192.0.2.1", sport=5060, daddr="198.51.100.2", dport=5060)
    st = sessions.SessionStat(flow=flow, first_seen=NOW - 10, last_seen=NOW)
    p = sessions.Pressure(active=5, limit=10, by_netns={9: 5}, growth_per_min=1.0, long_lived=[st], aging_s=30.0)
    sp = pressure(p)
    assert sp.active == 5 and sp.long_lived[0].tuple5 == (17, "192.0.2.1", 5060, "198.51.100.2", 5060)
    assert session(st).netns == 9


def test_adapters_take_flat_objects_like_the_grpc_messages():
    @dataclasses.dataclass
    class Drop:  # the shape of moor.v1.Drop
        reason: str = "SKB_DROP_REASON_NO_SOCKET"
        netns: int = 1
        ifindex: int = 0
        proto: int = 17
        saddr: str = "192.0.2.1"
        daddr: str = "198.51.100.2"
        sport: int = 1
        dport: int = 2
        fragment: bool = True
        frag_bytes: str = "0x0DAF"
        packets: int = 3
        bytes: int = 300
        pod: str = "a/b"

    fd = flow_drop(Drop())
    assert fd.where == "pod a/b" and fd.frag_bytes == "0daf" and fd.packets == 3


def test_gather_asks_the_source_and_adapts():
    class Fake:
        name = "fake"

        def counters(self):
            return snap(ns("rx", 1, links=[LinkStats(index=2, name="eth0")]))

        def drops(self):
            return [FlowDrop(reason="SKB_DROP_REASON_NO_SOCKET", netns=1, ifindex=2, proto=17, saddr="192.0.2.1",
                             sport=1, daddr="198.51.100.2", dport=2, packets=5)]

        def rcvbuf(self):
            return []

        def sessions(self):
            return []

        def pressure(self):
            return None

        def unavailable(self):
            return ["nothing"]

    ev = gather(Fake())
    assert ev.flow_drops[0].where == "netns rx" and ev.flow_drops[0].ifname == "eth0"
    assert ev.unavailable == ["nothing"] and ev.previous is None
    ev2 = gather(Fake(), ev)
    assert ev2.previous is ev.snapshot and ev2.previous_flow_drops == ev.flow_drops


# -- what the lab found on a busy node ---------------------------------------------------------------


def test_a_pattern_in_the_third_fragment_is_found_and_its_expired_victims_are_its_evidence():
    """The gateway drops 84 third fragments carrying 0x1234; at the server the datagrams' other
    fragments expire (FRAG_REASM_TIMEOUT: first fragments carry the port, second ones zeros). The
    expired ones are the pattern's victims, not a competing pattern nor a finding of their own."""
    gw, srv = ns("fg-gw", 1), ns("fg-server", 2, ip={"reasm_fails": 33})
    lost = [FlowDrop(reason="SKB_DROP_REASON_NETFILTER_DROP", netns=1, ifindex=3, proto=17, saddr=f"192.0.2.{i}",
                     daddr="198.51.100.130", sport=0, dport=0, fragment=True, frag_bytes="1234", packets=28)
            for i in (2, 3, 4)]
    victims = [FlowDrop(reason="SKB_DROP_REASON_FRAG_REASM_TIMEOUT", netns=2, ifindex=2, proto=17,
                        saddr=f"192.0.2.{i}", daddr="198.51.100.130", sport=40000 + i, dport=5001, fragment=True,
                        frag_bytes="1389", packets=11) for i in (2, 3, 4)]
    victims += [FlowDrop(reason="SKB_DROP_REASON_FRAG_REASM_TIMEOUT", netns=0, ifindex=0, proto=17,
                         saddr=f"192.0.2.{i}", daddr="198.51.100.130", sport=0, dport=0, fragment=True,
                         frag_bytes="0000", packets=11) for i in (2, 3, 4)]
    ev = Evidence(snapshot=snap(gw, srv), flow_drops=lost + victims, now=NOW, scoped=True)
    findings = diagnose(ev)
    f = findings[0]
    assert f.cause == "fragment-pattern" and "0x1234" in f.title and f.where == "netns fg-gw" and f.volume == 84
    assert any("66 other fragments of these datagrams expired at the receiver" in e for e in f.evidence)
    assert any("ReasmFails 33 in netns fg-server" in e for e in f.evidence)
    assert [x.title for x in findings if "fragment" in x.title.lower() and x is not f] == []


def test_a_long_lived_session_to_a_closed_port_is_no_listener_not_stale():
    s = _long_lived()
    closed = FlowDrop(reason="SKB_DROP_REASON_NO_SOCKET", netns=3, ifindex=2, proto=17, saddr=s.saddr,
                      daddr=s.daddr, sport=s.sport, dport=s.dport, packets=8200)
    p = SessionPressure(active=1, limit=0, long_lived=[s], aging_s=30)
    findings = diagnose(Evidence(snapshot=snap(ns("a", 3)), flow_drops=[closed], sessions=[s], pressure=p, now=NOW))
    assert findings[0].cause == "no-listener" and not any(f.cause == "stale-session" and f.severity == 5
                                                          for f in findings)


def test_the_session_table_is_about_the_namespaces_whose_sessions_fill_it():
    """Asked about the client and its gateway: the VPC table over its limit (severity 5, node-wide)
    is about the client, whose sessions fill it, and outranks the gateway's in-scope drops (3)."""
    client, gw = ns("sl-client", 1, cookie=4711), ns("sl-gw", 2, cookie=4712)
    drops = [FlowDrop(reason="SKB_DROP_REASON_NETFILTER_DROP", netns=2, ifindex=2, proto=17, saddr="192.0.2.2",
                      daddr=f"198.51.100.{i}", sport=40000 + i, dport=6000, packets=3) for i in range(100, 280)]
    p = SessionPressure(active=303, limit=100, by_netns={4711: 300, 99: 3}, aging_s=30)
    findings = diagnose(Evidence(snapshot=snap(client, gw), flow_drops=drops, pressure=p, now=NOW, scoped=True))
    f = findings[0]
    assert f.cause == "session-limit" and f.netns == 1 and not f.elsewhere
    assert any("most sessions: netns sl-client (300)" in e for e in f.evidence)


def test_sessions_are_named_after_the_namespace_of_their_cookie():
    from dataplane.netdiag.evidence import gather

    src = Source(snap(ns("voip", 5, cookie=81)), sessions=[_long_lived_at(81)],
                 pressure=SessionPressure(active=1, limit=0, long_lived=[_long_lived_at(81)], aging_s=30))
    ev = gather(src, scoped=True)
    assert ev.sessions[0].where == "netns voip" and ev.sessions[0].inode == 5
    assert ev.pressure.long_lived[0].inode == 5


def _long_lived_at(cookie: int) -> Session:
    return Session(netns=cookie, proto=17, saddr="203.0.113.5", sport=5060, daddr="198.51.100.20", dport=5060,
                   first_seen=NOW - 7200, last_seen=NOW - 1)


def test_a_stale_session_on_a_real_node_is_found_from_the_agents_last_rx():
    """On a real node the peer is remote, so the probe has no reverse sessions to tell replies by; it
    keeps when each session last received a packet (last_rx), the agent's gRPC Session carries it,
    and the doctor reads it through Session.last_rx. A long-lived session that last received 60 s
    ago, while two newer flows to the same peer receive now, is the stale session."""
    pytest.importorskip("grpc")
    from dataplane.api import moor_pb2 as pb
    from dataplane.api.server import AgentService
    from dataplane.probe.sessions import Flow, SessionStat
    from dataplane.probe.sessions import pressure as probe_pressure

    t = time.time()
    peer = ("198.51.100.20", 5060)
    old = SessionStat(Flow(81, 17, "203.0.113.5", 5060, *peer), first_seen=t - 3600, last_seen=t - 1,
                      last_rx=t - 60)
    newer = [SessionStat(Flow(81, 17, "203.0.113.5", 40000 + i, *peer), first_seen=t - 20, last_seen=t - 1,
                         last_rx=t - 1) for i in (1, 2)]
    stats = [old, *newer]

    class View:  # moord's view of its probe, as the API server asks it
        def session_snapshot(self):
            return probe_pressure(stats, t, 30.0, 0), stats, 0, ""

        def pods(self):
            return {}, {}

    reply = pb.SessionsReply.FromString(AgentService(View())._sessions(True).SerializeToString())
    assert [(s.sport, s.last_rx) for s in reply.sessions] == [(5060, t - 60), (40001, t - 1), (40002, t - 1)]
    assert [(s.sport, s.last_rx) for s in reply.long_lived] == [(5060, t - 60)]
    assert not any((s.saddr, s.sport) == peer for s in reply.sessions)  # no reverse sessions: the peer is remote

    class Agent:  # what netdiag's AgentSource hands to gather(): the reply's messages as they are
        name = "agent"

        def counters(self):
            return snap(noise())

        def drops(self):
            return []

        def rcvbuf(self):
            return []

        def sessions(self):
            return list(reply.sessions)

        def pressure(self):
            return reply

        def unavailable(self):
            return []

    ev = gather(Agent())
    assert [s.last_rx for s in ev.sessions] == [t - 60, t - 1, t - 1]
    f = first(ev)
    assert (f.cause, f.severity) == ("stale-session", 5)
    assert "203.0.113.5:5060 → 198.51.100.20:5060" in f.title
    assert f.unit == "seconds" and f.volume == 59
    assert any("2 newer flow(s) to 198.51.100.20:5060 get replies" in e for e in f.evidence)
