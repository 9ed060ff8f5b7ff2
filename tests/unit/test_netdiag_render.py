"""netdiag's output and command line without privileges: tables, JSON documents, the parsers of the
kernel's /proc text, bad arguments (exit 2, naming them), IPAM and pod views from a data dir, and
--watch ending with Ctrl-C."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dataplane import counters as kc
from dataplane.counters import (HostCounters, NetnsCounters, QdiscStats, Snapshot, SoftnetStat, UdpCounters,
                                UdpSocket)
from dataplane.netdiag import render
from dataplane.netdiag.cli import main
from dataplane.netdiag.doctor import diagnose
from dataplane.netdiag.evidence import Evidence
from tests.helpers import REPO

# -- the kernel's text ------------------------------------------------------------------------------

SNMP = """Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 1 64 1000 0 0 0 0 2 990 800 0 3 4 20 5 6 0 7 0 800
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs OutMsgs OutErrors OutDestUnreachs
Icmp: 0 0 0 0 9 0 9
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 500 9 120 400 100 11 20 0 0
"""
SNMP6 = "Ip6InReceives                   \t5\nIp6ReasmFails 2\nIcmp6OutDestUnreachs 1\nUdp6NoPorts 4\nUdp6RcvbufErrors 8\n"


def test_snmp_counters():
    udp, udp6, ip, ip6 = kc.udp_ip_counters(SNMP, SNMP6)
    assert (udp.no_ports, udp.rcvbuf_errors, udp.in_errors, udp.sndbuf_errors, udp.in_csum_errors) == (9, 100, 120,
                                                                                                        11, 20)
    assert (udp6.no_ports, udp6.rcvbuf_errors) == (4, 8)
    assert (ip.reasm_fails, ip.reasm_timeout, ip.frag_fails, ip.out_no_routes, ip.out_dest_unreachs) == (6, 4, 7, 3, 9)
    assert (ip6.in_receives, ip6.reasm_fails, ip6.out_dest_unreachs) == (5, 2, 1)


def test_softnet_stat_columns():
    text = ("0011a25b 00000010 00000003 00000000 00000000 00000000 00000000 00000000 00000000 00000002 00000001 "
            "00000000 00000000 00000000 00000000\n"
            "00000100 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 "
            "00000000 00000003 00000000 00000000\n")
    cpu0, cpu3 = kc.parse_softnet(text)
    assert (cpu0.cpu, cpu0.processed, cpu0.dropped, cpu0.time_squeeze, cpu0.received_rps, cpu0.flow_limit) == (
        0, 0x11A25B, 16, 3, 2, 1)
    assert cpu3.cpu == 3 and cpu3.processed == 256  # the 13th column is the CPU id (offline CPUs are skipped)


def test_proc_net_udp_drops_column_and_addresses():
    import socket
    import struct
    head = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops"
    lo = "%08X" % struct.unpack("=I", socket.inet_aton("127.0.0.1"))[0]
    line = f"  1: {lo}:1389 00000000:0000 07 00000000:00001180 00:00000000 00000000     0        0 4242 2 0 37"
    (s,) = kc.parse_proc_udp(head + "\n" + line + "\n", 4)
    assert (s.laddr, s.lport, s.state, s.rx_queue, s.inode, s.drops, s.rcvbuf) == ("127.0.0.1", 5001, "UNCONN",
                                                                                 0x1180, 4242, 37, None)


def test_conntrack_stat_sums_cpus():
    text = ("entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n"
            "00000002  0 0 0 00000001 0 0 0 0 00000003 00000004 0\n"
            "00000002  0 0 0 00000001 0 0 0 0 00000000 00000006 00000001\n")
    st = kc.parse_conntrack_stat(text)
    assert (st["invalid"], st["insert_failed"], st["drop"], st["early_drop"]) == (2, 3, 10, 1)


def test_counter_delta_clamps_resets():
    a, b = UdpCounters(no_ports=10, rcvbuf_errors=5), UdpCounters(no_ports=15, rcvbuf_errors=2)
    d = kc.counter_delta(a, b)
    assert (d.no_ports, d.rcvbuf_errors) == (5, 0)


# -- rendering --------------------------------------------------------------------------------------


def _snap(drops: int, taken: float) -> Snapshot:
    q = QdiscStats(ifindex=2, ifname="veth0", kind="pfifo", handle="8001:", parent="root", root=True, packets=900,
                   drops=drops, limit=1, limit_unit="packets", txqueuelen=1000)
    sock = UdpSocket(family=4, laddr="0.0.0.0", lport=5001, raddr="0.0.0.0", rport=0, state="UNCONN", inode=3,
                     rcvbuf=4608, drops=drops, rx_queue=4000)
    n = NetnsCounters(name="rx", path="/run/netns/rx", inode=11, pod="a/web-0",
                      udp=UdpCounters(rcvbuf_errors=drops, no_ports=1), qdiscs=[q], sockets=[sock])
    return Snapshot(taken=taken, wall=0.0, host=HostCounters(softnet=[SoftnetStat(0, 10, 0, 0)]), netns=[n])


def test_table_aligns_numbers_right_and_text_left():
    out = render.table(["NAME", "DROPS"], [["a", 5], ["longer", 12345]]).splitlines()
    assert out == ["NAME     DROPS", "a            5", "longer  12,345"]


def test_drops_view_shows_queues_rates_and_what_is_not_visible():
    prev, cur = _snap(100, 10.0), _snap(300, 12.0)
    ev = Evidence(snapshot=cur, previous=prev, unavailable=["per-flow drops need the probe"])
    text = render.drops_text(ev, "kernel")
    assert "rx (pod a/web-0)" in text and "veth0" in text and "300 (+100/s)" in text
    assert "per host, NOT per namespace" in text and "per-flow drops need the probe" in text
    doc = json.loads(render.to_json(render.drops_doc(ev, "kernel")))
    assert doc["rates"]["11"]["udp"]["rcvbuf_errors"] == 100.0 and doc["netns"][0]["label"] == "pod a/web-0"


def test_doctor_text_and_json():
    ev = Evidence(snapshot=_snap(300, 1.0), unavailable=["sessions need the probe", "BGP needs the agent"])
    findings = diagnose(ev)
    text = render.doctor_text(findings, ev, "kernel")
    assert "#1 [" in text and "evidence:" in text and "remedy:" in text
    assert "sessions need the probe" in text and "BGP needs the agent" not in text  # only what the doctor uses
    doc = json.loads(render.to_json(render.doctor_doc(findings, ev, "kernel")))
    assert doc["findings"][0]["rank"] == 1 and doc["findings"][0]["cause"] in ("rcvbuf", "host-queue")
    assert {"title", "cause_text", "evidence", "remedy", "severity", "volume", "score"} <= set(doc["findings"][0])


def test_udp_view_names_the_socket_and_its_buffer():
    text = render.udp_text(Evidence(snapshot=_snap(7, 1.0)), "kernel")
    row = next(ln for ln in text.splitlines() if "0.0.0.0:5001" in ln)
    assert "4,608" in row and "7" in row


# -- the command line -------------------------------------------------------------------------------


def _run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_flags_exit_2_naming_them(capsys):
    code, _, err = _run(capsys, "doctor", "--bogus")
    assert code == 2 and "--bogus" in err
    code, _, err = _run(capsys, "drops", "--watch", "soon")
    assert code == 2 and "--watch" in err and "'soon'" in err
    code, _, err = _run(capsys, "frobnicate")
    assert code == 2 and "frobnicate" in err
    code, _, err = _run(capsys, "pod", "no-slash", "--source", "kernel")
    assert code == 2 and "'no-slash' must be NAMESPACE/NAME" in err


def test_an_unknown_netns_exits_2_naming_it(capsys):
    code, _, err = _run(capsys, "drops", "--netns", "no-such-netns-4711", "--source", "kernel")
    assert code == 2 and "'no-such-netns-4711' not found" in err


def _ipam_and_state(tmp: Path) -> tuple[Path, Path]:
    from cni.state import Attachment, Store
    from ipam.reservation import Reservation
    from ipam.store.sqlite import SQLiteStore
    ipam_dir, state_dir = tmp / "ipam", tmp / "state"
    store = SQLiteStore(str(ipam_dir))
    try:
        def put(v):
            v.put(Reservation(ip="203.0.113.7", pool="203.0.113.0/24", state="active", identity="pod:a/web-0",
                              pod="a/web-0", container_id="c0ffee" * 4, ifname="eth0", netns="/run/netns/gone-x",
                              node="n1", seq=3))
            v.put(Reservation(ip="203.0.113.8", pool="203.0.113.0/24", state="held", identity="pod:a/web-1",
                              pod="a/web-1", node="n1", seq=5))
        store.transact("rnet", put)
    finally:
        store.close()
    Store(str(state_dir)).put(Attachment(network="rnet", container_id="c0ffee" * 4, ifname="eth0", parent="",
                                         netns="/run/netns/gone-x", ips=["203.0.113.7/32"], host_link="moorabc"))
    return ipam_dir, state_dir


def test_ipam_lists_reservations_read_only(capsys, tmp_path: Path):
    ipam_dir, _ = _ipam_and_state(tmp_path)
    before = (ipam_dir / "ipam.sqlite3").read_bytes()
    code, out, _ = _run(capsys, "ipam", "--ipam-dir", str(ipam_dir), "--source", "kernel")
    assert code == 0 and "203.0.113.7" in out and "a/web-0" in out and "held" in out
    code, out, _ = _run(capsys, "ipam", "--json", "--ipam-dir", str(ipam_dir), "--source", "kernel")
    doc = json.loads(out)
    assert [r["ip"] for r in doc["reservations"]] == ["203.0.113.7", "203.0.113.8"]
    assert (ipam_dir / "ipam.sqlite3").read_bytes() == before  # opened read-only (SQLite may add -shm/-wal)


def test_ipam_node_shows_one_nodes_reservations_paged(capsys, tmp_path: Path):
    from ipam.reservation import Reservation
    from ipam.store.sqlite import SQLiteStore
    ipam_dir = tmp_path / "ipam"
    rows = [Reservation(ip=f"198.51.100.{1 + i % 254}" if i < 254 else f"2001:db8:5::{i:x}",
                        pool="198.51.100.0/24" if i < 254 else "2001:db8:5::/112", state="active", pod=f"a/p{i}",
                        node="node-a.example" if i % 3 == 0 else "node-b", seq=1) for i in range(2500)]
    store = SQLiteStore(str(ipam_dir))
    try:
        store.transact("pnet", lambda v: [v.put(r) for r in rows])
    finally:
        store.close()
    conf = tmp_path / "10-pnet.conf"
    conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": "pnet", "type": "macvlan",
                                "ipam": {"type": "moor-ipam", "dataDir": str(ipam_dir),
                                         "pools": [{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:5::/112"}]}}))
    want = [r.ip for r in rows if r.node == "node-a.example"]
    for where in (["--ipam-dir", str(ipam_dir)], ["--ipam-config", str(conf)]):  # 3 pages of 1000
        code, out, err = _run(capsys, "ipam", "--json", "--node", "node-a.example", "--source", "kernel", *where)
        doc = json.loads(out)
        assert code == 0, err
        assert [r["ip"] for r in doc["reservations"]] == want and {r["node"] for r in doc["reservations"]} == {
            "node-a.example"}
        code, out, _ = _run(capsys, "ipam", "--source", "kernel", *where)
        assert f"Reservations (2500)" in out and "2001:db8:5::9c3" in out
    code, out, _ = _run(capsys, "ipam", "--json", "--source", "kernel", "--ipam-config", str(conf))
    pools = json.loads(out)["pools"]  # each page's usage, summed
    assert [(p["cidr"], p["active"]) for p in pools] == [("198.51.100.0/24", 254), ("2001:db8:5::/112", 2246)]
    for bad in ("node/a", "", "-n1", "n1 n2", "ñ"):
        code, out, err = _run(capsys, "ipam", f"--node={bad}", "--source", "kernel", "--ipam-dir", str(ipam_dir))
        assert code == 2 and not out and err.count("\n") == 1 and f"--node {bad!r} is not a node name" in err


def test_pod_joins_the_ipam_reservation_and_the_cni_record(capsys, tmp_path: Path):
    ipam_dir, state_dir = _ipam_and_state(tmp_path)
    dirs = ["--ipam-dir", str(ipam_dir), "--cni-state-dir", str(state_dir), "--source", "kernel"]
    code, out, _ = _run(capsys, "pod", "a/web-0", "--json", *dirs)
    doc = json.loads(out)
    assert code == 0 and doc["pod"] == "a/web-0" and doc["reservations"][0]["ip"] == "203.0.113.7"
    (att,) = doc["attachments"]
    assert att["host_link"] == "moorabc" and att["mode"] == "bgp" and "/run/netns/gone-x is gone" in att["error"]
    code, out, _ = _run(capsys, "pod", "a/web-1", *dirs)  # held: no attachment on this node
    assert code == 0 and "no CNI attachment of it on this node (203.0.113.8 held on n1)" in out
    code, _, err = _run(capsys, "pod", "a/web-9", *dirs)
    assert code == 2 and "pod a/web-9 not found" in err and str(ipam_dir) in err


def test_watch_redraws_until_ctrl_c_and_exits_0():
    p = subprocess.Popen([sys.executable, "-m", "dataplane.netdiag", "drops", "--json", "--watch", "0.2",
                          "--netns", "host", "--source", "kernel"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        docs = [json.loads(p.stdout.readline()) for _ in range(2)]  # one document per line
        assert all(d["command"] == "drops" for d in docs) and docs[1]["interval_s"] > 0
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


@pytest.mark.parametrize("cmd", ["drops", "udp", "sessions", "doctor"])
def test_each_command_reads_this_netns(capsys, cmd: str):
    code, out, err = _run(capsys, cmd, "--netns", "host", "--source", "kernel", "--interval", "0")
    assert code == 0, err
    assert out.startswith(f"netdiag {cmd} | source: kernel")
