"""The VPC session probe on the running kernel: UDP and TCP sessions made between network
namespaces must be counted once each, attributed to the namespace that owns the socket, with the
right addresses and ports; the map bound must hold; and every attachment must go away on close()
and when the owning process dies.

The probe is attached to the root cgroup and sees the whole machine (other tests may run), so every
assertion filters by the lab namespaces' cookies. Each lab is a pair of uniquely named namespaces
joined by a veth pair, removed in `finally` with the processes started in them; traffic goes only to
TEST-NET-1 addresses inside them. Waits are bounded guards, never timing assertions.
"""
from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from typing import Iterator

import pytest

from dataplane import bpfsys
from dataplane.nslab import Lab
from dataplane.probe import sessions as sessions_mod
from dataplane.probe.errors import ProbeUnavailable
from dataplane.probe.sessions import SessionProbe, SessionStat, my_netns_cookie, netns_cookie

pytestmark = pytest.mark.ebpf

PY = sys.executable
CLIENT_IP, SERVER_IP = "192.0.2.1", "192.0.2.2"
GUARD = 10.0  # seconds: an upper bound on waiting for the kernel, not an expectation


def _start(probe: SessionProbe) -> SessionProbe:
    try:
        probe.start()
    except ProbeUnavailable as e:
        pytest.skip(f"session probe cannot load: {e}")
    return probe


@pytest.fixture(scope="module")
def probe() -> Iterator[SessionProbe]:
    p = _start(SessionProbe())
    try:
        yield p
    finally:
        p.close()


class Pair:
    """client netns (192.0.2.1) == veth == server netns (192.0.2.2)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.client, self.server = lab.ns("cl"), lab.ns("sv")
        lab.veth(self.client, "c0", self.server, "s0")
        lab.addr(self.client, "c0", f"{CLIENT_IP}/24")
        lab.addr(self.server, "s0", f"{SERVER_IP}/24")
        self.client_cookie = netns_cookie(Lab.path(self.client))
        self.server_cookie = netns_cookie(Lab.path(self.server))

    def py(self, ns: str, code: str) -> dict:
        """Run a Python snippet in a namespace; it prints one JSON object."""
        out = self.lab.run(ns, PY, "-c", textwrap.dedent(code), timeout=60).stdout
        return json.loads(out)

    def serve(self, code: str) -> subprocess.Popen:
        """Start a server snippet in the server netns; returns once it printed 'ready'."""
        p = self.lab.spawn(self.server, [PY, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        return p


@pytest.fixture
def pair() -> Iterator[Pair]:
    lab = Lab()
    try:
        yield Pair(lab)
    finally:
        lab.close()


UDP_SINK = """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", {port}))
    print("ready", flush=True)
    while True:
        s.recv(2048)
"""

TCP_SINK = """
    import socket
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", {port}))
    ls.listen(16)
    print("ready", flush=True)
    while True:
        c, _ = ls.accept()
        while c.recv(4096):
            pass
        c.close()
"""


def mine(probe: SessionProbe, cookie: int, proto: int | None = None) -> list[SessionStat]:
    return [s for s in probe.snapshot() if s.flow.netns_cookie == cookie and (proto is None or s.flow.proto == proto)]


def wait_for(probe: SessionProbe, cookie: int, n: int, proto: int | None = None) -> list[SessionStat]:
    """The netns's sessions once there are at least n (the programs run synchronously with the
    packets, so this normally returns at once)."""
    end = time.monotonic() + GUARD
    while True:
        got = mine(probe, cookie, proto)
        if len(got) >= n or time.monotonic() > end:
            return got
        time.sleep(0.05)


def test_netns_cookies_identify_namespaces(pair: Pair):
    assert my_netns_cookie() == netns_cookie("/proc/self/ns/net")
    assert len({my_netns_cookie(), pair.client_cookie, pair.server_cookie}) == 3
    assert netns_cookie(Lab.path(pair.client)) == pair.client_cookie   # stable
    with pytest.raises(ValueError):
        netns_cookie("/etc/hostname")


def test_udp_from_n_source_ports_is_n_sessions_of_the_client_netns(probe: SessionProbe, pair: Pair):
    pair.serve(UDP_SINK.format(port=9000))
    t0 = time.time()
    out = pair.py(pair.client, f"""
        import json, socket
        ports = []
        for i in range(20):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(3):
                s.sendto(b"hello", ("{SERVER_IP}", 9000))
            ports.append(s.getsockname()[1])
        print(json.dumps({{"ports": ports}}))
    """)
    ports = set(out["ports"])
    assert len(ports) == 20

    got = wait_for(probe, pair.client_cookie, 20, socket.IPPROTO_UDP)
    t1 = time.time()
    assert {s.flow.sport for s in got} == ports
    assert len(got) == 20
    for s in got:
        f = s.flow
        assert (f.proto, f.saddr, f.daddr, f.dport) == (socket.IPPROTO_UDP, CLIENT_IP, SERVER_IP, 9000)
        # the kernel's monotonic stamps converted to unix time: a sanity window, not a timing claim
        assert t0 - 5 <= s.first_seen <= s.last_seen <= t1 + 5

    # the sink never answers: the client's sessions received nothing
    assert [s.last_rx for s in got] == [None] * 20

    # the receiving side is counted too, from the server's point of view, and it received
    srv = wait_for(probe, pair.server_cookie, 20, socket.IPPROTO_UDP)
    assert {(s.flow.saddr, s.flow.sport, s.flow.daddr) for s in srv} == {(SERVER_IP, 9000, CLIENT_IP)}
    assert {s.flow.dport for s in srv} == ports
    for s in srv:
        assert s.last_rx is not None and s.first_seen <= s.last_rx <= s.last_seen


def test_repeated_sends_on_one_5_tuple_are_one_session(probe: SessionProbe, pair: Pair):
    pair.serve(UDP_SINK.format(port=9001))
    out = pair.py(pair.client, f"""
        import json, socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(200):
            s.sendto(b"x" * 32, ("{SERVER_IP}", 9001))
            if i == 100:
                time.sleep(0.3)
        print(json.dumps({{"port": s.getsockname()[1]}}))
    """)
    got = wait_for(probe, pair.client_cookie, 1, socket.IPPROTO_UDP)
    assert [(s.flow.sport, s.flow.dport) for s in got] == [(out["port"], 9001)]


def test_connected_udp_and_tcp_are_each_one_session(probe: SessionProbe, pair: Pair):
    pair.serve(UDP_SINK.format(port=9002))
    pair.serve(TCP_SINK.format(port=8080))
    out = pair.py(pair.client, f"""
        import json, socket
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(("{SERVER_IP}", 9002))
        for _ in range(50):
            u.send(b"ping")
        t = socket.create_connection(("{SERVER_IP}", 8080), timeout=10)
        for _ in range(20):
            t.sendall(b"y" * 100)
        tport = t.getsockname()[1]
        t.close()
        print(json.dumps({{"udp": u.getsockname()[1], "tcp": tport}}))
    """)
    udp = wait_for(probe, pair.client_cookie, 1, socket.IPPROTO_UDP)
    tcp = wait_for(probe, pair.client_cookie, 1, socket.IPPROTO_TCP)
    assert [(s.flow.saddr, s.flow.sport, s.flow.daddr, s.flow.dport) for s in udp] == \
        [(CLIENT_IP, out["udp"], SERVER_IP, 9002)]
    assert [(s.flow.saddr, s.flow.sport, s.flow.daddr, s.flow.dport) for s in tcp] == \
        [(CLIENT_IP, out["tcp"], SERVER_IP, 8080)]
    # the accepted connection, from the server's side
    srv = wait_for(probe, pair.server_cookie, 1, socket.IPPROTO_TCP)
    assert [(s.flow.saddr, s.flow.sport, s.flow.daddr, s.flow.dport) for s in srv] == \
        [(SERVER_IP, 8080, CLIENT_IP, out["tcp"])]


def test_the_map_bound_holds_and_refusals_are_counted(pair: Pair):
    small = _start(SessionProbe(max_sessions=8))
    try:
        pair.serve(UDP_SINK.format(port=9003))
        pair.py(pair.client, f"""
            import socket
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(40)]
            for s in socks:
                s.sendto(b"z", ("{SERVER_IP}", 9003))
            print("{{}}")
        """)
        snap = small.snapshot()       # the whole machine's sessions: never more than the bound
        assert len(snap) <= 8
        # 40 client sessions (and 40 on the server side) did not fit in 8 entries
        assert small.dropped() >= 40 - 8
        assert small.counters()["refused_inserts"] >= small.dropped()
    finally:
        small.close()


def test_last_seen_is_refreshed_and_idle_sessions_are_expired(pair: Pair):
    p = _start(SessionProbe(granularity_s=0.1, retention_s=30))
    try:
        pair.serve(UDP_SINK.format(port=9004))
        out = pair.py(pair.client, f"""
            import json, socket, time
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"a", ("{SERVER_IP}", 9004))
            time.sleep(0.5)                      # several granularities later
            s.sendto(b"b", ("{SERVER_IP}", 9004))
            print(json.dumps({{"port": s.getsockname()[1]}}))
        """)
        got = wait_for(p, pair.client_cookie, 1, socket.IPPROTO_UDP)
        assert [s.flow.sport for s in got] == [out["port"]]
        assert got[0].last_seen > got[0].first_seen
        # with a short retention the idle session leaves the map at the next snapshot
        p.retention_s = 0.2
        time.sleep(0.5)
        assert mine(p, pair.client_cookie) == []
    finally:
        p.close()


# -- per direction: the last packet received (last_rx) ------------------------------------------

# answers every datagram, except from a source port that said "mute" (answered one last time)
ECHO_UNLESS_MUTED = """
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", {port}))
    muted = set()
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(2048)
        if data == b"mute":
            muted.add(peer[1])
            s.sendto(b"muted", peer)
        elif peer[1] not in muted:
            s.sendto(b"re:" + data, peer)
"""

# two sockets to one server; both answered, then "a" muted; then per line on stdin one round: "a" sends
# (no answer comes), "b" asks and gets its answer. Socket timeouts are hang guards.
TWO_CLIENTS = """
    import json, socket, sys
    def sock():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("{server}", {port}))
        s.settimeout({guard})
        return s
    def ask(s, msg):
        s.send(msg)
        return s.recv(2048)
    a, b = sock(), sock()
    assert ask(a, b"hello") == b"re:hello" and ask(b, b"hello") == b"re:hello"
    assert ask(a, b"mute") == b"muted"
    print(json.dumps({{"a": a.getsockname()[1], "b": b.getsockname()[1]}}), flush=True)
    for _ in sys.stdin:
        a.send(b"still there?")
        assert ask(b, b"ping") == b"re:ping"
        print(json.dumps({{"round": 1}}), flush=True)
    a.setblocking(False)
    got = 0
    try:
        while a.recv(2048):
            got += 1
    except BlockingIOError:
        pass
    print(json.dumps({{"a_received_after_mute": got}}), flush=True)
"""


def _line(proc: subprocess.Popen) -> dict:
    """The next JSON line of a child, waiting at most GUARD seconds."""
    ready, _, _ = select.select([proc.stdout], [], [], GUARD)
    if not ready:
        pytest.fail(f"no line from the child within {GUARD} s")
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"the child ended (exit code {proc.wait(GUARD)}) without a line")
    return json.loads(line)


def _one(stats: list[SessionStat], cookie: int, lport: int, rport: int) -> SessionStat:
    got = [s for s in stats if s.flow.netns_cookie == cookie and s.flow.proto == socket.IPPROTO_UDP
           and (s.flow.sport, s.flow.dport) == (lport, rport)]
    assert len(got) == 1, got
    return got[0]


def test_last_rx_stops_on_a_session_that_gets_no_answers_while_its_last_seen_goes_on(pair: Pair):
    """The stale-session case seen from the client's node: a long-lived 4-tuple keeps sending (its
    last_seen goes on) but nothing comes back (its last_rx stands still), while another socket to the
    same peer is answered (its last_rx goes on). Times are compared only in units of the probe's
    granularity g: a refresh moves a stamp by at least g (the map is written only when the stored
    stamp is g old), and two snapshots' conversions to unix time differ by far less."""
    g = 0.1
    p = _start(SessionProbe(granularity_s=g, retention_s=60))
    try:
        port = 9006
        pair.serve(ECHO_UNLESS_MUTED.format(port=port))
        cl = pair.lab.spawn(pair.client, [PY, "-c", textwrap.dedent(TWO_CLIENTS.format(
            server=SERVER_IP, port=port, guard=GUARD))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ports = _line(cl)

        def sessions() -> tuple[SessionStat, SessionStat, SessionStat]:
            snap = p.snapshot()
            return (_one(snap, pair.client_cookie, ports["a"], port),   # muted
                    _one(snap, pair.client_cookie, ports["b"], port),   # answered
                    _one(snap, pair.server_cookie, port, ports["a"]))   # the server's side of "a"

        a0, b0, sa0 = sessions()
        # both were answered, and "a" got its last answer ("muted") before this snapshot
        assert a0.last_rx is not None and b0.last_rx is not None and sa0.last_rx is not None
        for s in (a0, b0, sa0):
            assert s.first_seen <= s.last_rx <= s.last_seen

        def moved(after: float, before: float) -> bool:
            return after - before >= g / 2

        end = time.monotonic() + GUARD
        rounds = 0
        while True:
            cl.stdin.write("round\n")
            cl.stdin.flush()
            assert "round" in _line(cl)
            rounds += 1
            a, b, sa = sessions()
            if (moved(a.last_seen, a0.last_seen) and moved(b.last_rx, b0.last_rx) and moved(sa.last_rx, sa0.last_rx))                     or time.monotonic() > end:
                break
            time.sleep(g / 4)
        cl.stdin.close()
        assert _line(cl) == {"a_received_after_mute": 0}   # the server kept to it

        assert moved(a.last_seen, a0.last_seen), (rounds, a0, a)        # "a" kept sending...
        assert not moved(a.last_rx, a0.last_rx) and not moved(a0.last_rx, a.last_rx), (a0, a)  # ...got nothing
        assert moved(b.last_rx, b0.last_rx), (rounds, b0, b)            # "b" to the same peer is answered
        assert moved(sa.last_rx, sa0.last_rx), (rounds, sa0, sa)        # the server receives what "a" sends
        # the gap the doctor looks for, here at least one granularity (last_seen moved past last_rx)
        assert a.last_seen - a.last_rx >= g / 2
        assert b.last_rx <= b.last_seen and sa.last_rx <= sa.last_seen
    finally:
        p.close()


def test_without_ingress_last_rx_is_unknown(pair: Pair):
    p = _start(SessionProbe(ingress=False))
    try:
        pair.serve(ECHO_UNLESS_MUTED.format(port=9007))
        out = pair.py(pair.client, f"""
            import json, socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(("{SERVER_IP}", 9007))
            s.settimeout({GUARD})
            s.send(b"q")
            assert s.recv(64) == b"re:q"
            print(json.dumps({{"port": s.getsockname()[1]}}))
        """)
        got = wait_for(p, pair.client_cookie, 1, socket.IPPROTO_UDP)
        assert [(s.flow.sport, s.last_rx) for s in got] == [(out["port"], None)]
    finally:
        p.close()


def test_netns_from_a_sock_create_hook_on_older_kernels(pair: Pair, monkeypatch):
    """Kernels before 2025 cannot give a cgroup_skb program the netns cookie; the fallback keeps it
    per socket from a sock_create hook (for sockets created after start())."""
    monkeypatch.setattr(sessions_mod, "_skb_can_get_netns_cookie", lambda: False)
    p = _start(SessionProbe())
    try:
        assert p.netns_from_skb is False
        pair.serve(UDP_SINK.format(port=9005))
        out = pair.py(pair.client, f"""
            import json, socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"q", ("{SERVER_IP}", 9005))
            print(json.dumps({{"port": s.getsockname()[1]}}))
        """)
        got = wait_for(p, pair.client_cookie, 1, socket.IPPROTO_UDP)
        assert [(s.flow.sport, s.flow.dport) for s in got] == [(out["port"], 9005)]
    finally:
        p.close()


# -- cleanup: nothing stays attached ----------------------------------------------------------

def _prog_id(fd: int) -> int:
    info = ctypes.create_string_buffer(256)
    attr = struct.pack("<IIQ", fd, 256, ctypes.addressof(info)).ljust(64, b"\0")
    bpfsys.bpf(15, attr)                       # BPF_OBJ_GET_INFO_BY_FD
    return struct.unpack_from("<I", info.raw, 4)[0]   # struct bpf_prog_info.id


def _attached_ids(attach_type: int) -> set[int]:
    fd = os.open(sessions_mod._cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = (ctypes.c_uint32 * 256)()
        attr = bytearray(struct.pack("<IIIIQI", fd, attach_type, 0, 0, ctypes.addressof(ids), 256).ljust(64, b"\0"))
        buf = ctypes.create_string_buffer(bytes(attr), len(attr))
        nr = bpfsys.NR_BPF[os.uname().machine]
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(ctypes.c_long(nr), ctypes.c_int(16), buf, ctypes.c_uint(len(attr))) != 0:  # BPF_PROG_QUERY
            raise OSError(ctypes.get_errno(), "BPF_PROG_QUERY")
        cnt = struct.unpack_from("<I", buf.raw, 24)[0]
        return set(ids[:cnt])
    finally:
        os.close(fd)


def test_close_detaches_everything():
    p = _start(SessionProbe())
    try:
        ids = {_prog_id(fd) for fd in p.prog_fds().values()}
        attached = _attached_ids(0) | _attached_ids(1)
        assert ids and ids <= attached
    finally:
        p.close()
    assert not ids & (_attached_ids(0) | _attached_ids(1))
    p.close()  # twice is fine


CHILD = """
    import json, sys, time
    from dataplane.probe.sessions import SessionProbe
    p = SessionProbe()
    p.start()
    import ctypes, struct
    from dataplane import bpfsys as m
    ids = []
    for fd in p.prog_fds().values():
        info = ctypes.create_string_buffer(256)
        m.bpf(15, struct.pack("<IIQ", fd, 256, ctypes.addressof(info)).ljust(64, b"\\0"))
        ids.append(struct.unpack_from("<I", info.raw, 4)[0])
    print(json.dumps(ids), flush=True)
    time.sleep(120)
"""


def test_a_killed_owner_leaves_nothing_attached():
    """The attachments are bpf links owned by the process: SIGKILL (no close(), no atexit) must
    not leave programs on the root cgroup."""
    if not bpfsys.NR_BPF.get(os.uname().machine):
        pytest.skip("bpf syscall number unknown here")
    proc = subprocess.Popen([PY, "-c", textwrap.dedent(CHILD)], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.skip("the probe could not start in a child process")
        ids = set(json.loads(line))
        assert ids and ids <= (_attached_ids(0) | _attached_ids(1))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        end = time.monotonic() + GUARD   # links are released as the process's files close
        while ids & (_attached_ids(0) | _attached_ids(1)) and time.monotonic() < end:
            time.sleep(0.05)
        assert not ids & (_attached_ids(0) | _attached_ids(1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
